"""The accelerator as a cost-model backend: `analyze --device gemmini-*`, one target resolver, joules in Cost."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

import tstack
from tstack.accel.model import CATEGORIES
from tstack.accel.model import run as run_accel
from tstack.cli.core import run
from tstack.costmodel import Cost, calibrated, cost_workload, for_device, load_target, roofline, systolic
from tstack.errors import SpecError, UnknownNameError
from tstack.hardware.accel import accel_to_dict, load_accel
from tstack.hardware.device import DeviceSpec, device_to_dict, load_device
from tstack.models import load_model
from tstack.spec import RunSpec
from tstack.sweep import configs
from tstack.workload import build

IBERT = load_accel("gemmini-ibert")
REL = 1e-9


def json_doc(capsys, *args: str) -> dict:
    code = run([*args, "--json", "-"])
    res = capsys.readouterr()
    assert code == 0, res.err
    return json.loads(res.out)


def test_analyze_on_an_accelerator_sums_to_what_accel_reports(capsys):
    doc = json_doc(capsys, "analyze", "bert-base", "--seq", "512", "--device", "gemmini-ibert")
    (acc,) = json_doc(capsys, "accel", "bert-base", "--seq", "512", "--hw", "gemmini-ibert")["records"]
    recs = doc["records"]
    assert doc["run"]["device"] == "gemmini-ibert" and doc["run"]["spec"]["precision"] == "int8"
    assert sum(r["seconds"] for r in recs) == pytest.approx(acc["seconds"], rel=REL)
    assert sum(r["joules"] for r in recs) == pytest.approx(acc["joules"], rel=REL)
    assert doc["summary"]["seconds"] == pytest.approx(acc["seconds"], rel=REL)
    assert doc["summary"]["joules"] == pytest.approx(acc["joules"], rel=REL)
    assert all(r["joules"] >= 0 and r["accel"] in CATEGORIES for r in recs)
    for cat in ("matmul", "softmax", "layernorm", "gelu", "other"):
        key = f"{cat}_seconds"
        assert sum(r["seconds"] for r in recs if r["accel"] == cat) == pytest.approx(acc[key], rel=REL, abs=1e-15)


def test_host_nonlinear_ops_show_their_dequantization_apart(capsys):
    doc = json_doc(capsys, "analyze", "bert-base", "--seq", "128", "--device", "gemmini-baseline", "--group-by", "000")
    (acc,) = json_doc(capsys, "accel", "bert-base", "--seq", "128", "--hw", "gemmini-baseline")["records"]
    quant = [r for r in doc["records"] if r["accel"] == "(de)quant"]
    assert quant and all(r["name"].endswith(".(de)quant") and r["flops"] == 0 for r in quant)
    assert sum(r["seconds"] for r in quant) == pytest.approx(acc["quant_seconds"], rel=REL)
    assert sum(r["joules"] for r in doc["records"]) == pytest.approx(acc["joules"], rel=REL)
    assert doc["run"]["options"]["group_by"] == "000"


def test_group_by_on_an_accelerator_breakdown():
    b = tstack.analyze("bert-base", device="gemmini-baseline", seq=256)
    r = run_accel("bert-base", 256, load_accel("gemmini-baseline"))
    by = b.group_by("accel")
    assert set(by) == set(CATEGORIES)
    for cat, seconds in r.by_category().items():
        assert by[cat].seconds == pytest.approx(seconds, rel=REL)
    assert b.group_by("000").keys() == by.keys()
    assert sum(b.shares("block").values()) == pytest.approx(1.0)
    assert b.group_by("block")["attention"].joules > 0  # energy adds up inside any group
    assert r.breakdown.group_by("accel")["matmul"].seconds == pytest.approx(by["matmul"].seconds, rel=REL)


def test_python_api_takes_an_accelerator_and_a_run():
    b = tstack.analyze("bert-base", RunSpec(mode="infer", precision="int8", seq=128), "gemmini-ibert")
    r = run_accel("bert-base", 128, IBERT)
    assert b.device == "gemmini-ibert"
    assert b.total.seconds == pytest.approx(r.seconds, rel=REL) and b.total.joules == pytest.approx(r.joules, rel=REL)
    assert tstack.analyze("bert-base", device=IBERT, seq=128).run.precision == "int8"  # the accelerator's default
    with pytest.raises(SpecError, match="int8 GEMMs"):
        tstack.analyze("bert-base", RunSpec(seq=128), "gemmini-ibert")


def test_a_sweep_over_an_accelerator():
    """Every configuration of a sweep costs on the accelerator as `accel run` does."""
    spec = load_model("bert-base")
    points = configs(spec, RunSpec(precision="int8", seq=128), {"seq": [64, 128]})
    for p in points:
        b = tstack.analyze(p.model, p.run, "gemmini-ibert")
        assert b.total.seconds == pytest.approx(run_accel(p.model, p.run.seq, IBERT).seconds, rel=REL)


def test_sweep_command_over_an_accelerator(capsys):
    doc = json_doc(capsys, "sweep", "bert-base", "--seq", "64,128", "--precision", "int8", "--device",
                   "gemmini-ibert", "--executor", "serial")
    for seq in (64, 128):
        total = sum(r["seconds"] for r in doc["records"] if r["seq"] == seq)
        assert total == pytest.approx(run_accel("bert-base", seq, IBERT).seconds, rel=REL)


def test_roofline_totals_are_unchanged(capsys):
    """bert-base infer fp32 on a100 at 512, as before the accelerator became a backend."""
    s = json_doc(capsys, "analyze", "bert-base", "--seq", "512")["summary"]
    assert s["seconds"] == pytest.approx(0.011376367825061014, rel=1e-12)
    assert (s["flops"], s["bytes"], s["kernels"]) == (97094467584.0, 2324328448.0, 198)
    assert s["utilization"] == pytest.approx(0.4376795425757473, rel=1e-12)
    assert s["joules"] is None  # the roofline does not model energy


def test_load_target_resolves_every_kind(tmp_path):
    assert isinstance(load_target("a100"), DeviceSpec) and load_target("gemmini-ibert") == IBERT
    acc = tmp_path / "mine.yaml"
    acc.write_text(yaml.safe_dump({**accel_to_dict(IBERT), "name": "mine"}))
    dev = tmp_path / "dev.yaml"
    dev.write_text(yaml.safe_dump({**device_to_dict(load_device("t4")), "name": "dev"}))
    assert load_target(str(acc)) == replace(IBERT, name="mine")
    assert load_target(dev).name == "dev" and isinstance(load_target(dev), DeviceSpec)
    with pytest.raises(UnknownNameError, match="accelerator presets: gemmini-baseline"):
        load_target("nope")


def test_for_device_dispatches_on_the_target():
    a100 = load_device("a100")
    assert for_device(IBERT) is systolic and for_device(a100) is roofline
    assert for_device(replace(a100, calibration=object())) is calibrated


def test_one_signature_op_target_to_cost():
    ops = build(load_model("bert-base"), RunSpec(precision="int8", seq=128), collapse=True)
    fc1 = next(op for op in ops if op.name == "ffn.fc1")
    c = systolic(fc1, IBERT)
    assert c.joules > 0 and c.kernels == fc1.count and c.flops == fc1.flops * fc1.count
    assert roofline(fc1, load_device("a100")).joules is None
    entries, costs = cost_workload(ops, IBERT)  # the whole workload: neighbours change costs (GELU under fc1)
    assert len(entries) == len(costs) == len(ops)
    assert [op.label("accel") for op in entries][:3] == ["other"] * 3


def test_cost_energy_is_known_only_when_every_part_is():
    a, b = Cost(1.0, joules=2.0), Cost(2.0)
    assert (a + a).joules == 4.0 and (a * 3).joules == 6.0
    assert (a + b).joules is None and (b + a).joules is None and (b * 2).joules is None
    assert Cost.total([a, a]).joules == 4.0 and sum([a, a]).joules == 4.0
    assert Cost.total([]) == Cost() and Cost.total([a, b]).seconds == 3.0
