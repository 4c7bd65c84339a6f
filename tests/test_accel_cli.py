"""`tstack accel`: the issue's command lines, the output contract (--json/--csv/--plot), one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tstack.accel import mapping as mp
from tstack.accel.energy import COMPONENTS
from tstack.accel.model import CATEGORIES
from tstack.accel.model import run as run_model
from tstack.accel.timing import GemmShape
from tstack.cli.core import run
from tstack.hardware.accel import accel_to_dict, load_accel
from tstack.report import units
from tstack.report.output import SCHEMA_VERSION
from tstack.search.dse import design_points, explore, pareto
from tstack.studies.repro_000 import reproduce_000

PNG = b"\x89PNG"
CAT_FIELDS = ["matmul_seconds", "softmax_seconds", "layernorm_seconds", "gelu_seconds", "quant_seconds", "other_seconds"]


def accel(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tstack.cli", "accel", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def call(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["accel", *args])
    res = capsys.readouterr()
    return code, res.out, res.err


def json_doc(capsys, *args: str) -> dict:
    code, out, err = call(capsys, *args, "--json", "-")
    assert code == 0, err
    doc = json.loads(out)  # nothing but the document on stdout: no table
    assert doc["schema"] == "tstack.output" and doc["schema_version"] == SCHEMA_VERSION
    assert {"tstack_version", "command", "run", "records"} <= set(doc)
    return doc


def row_of(table: str, *words: str) -> str:
    """The table line holding every word."""
    lines = [line for line in table.splitlines() if "│" in line and all(w in line for w in words)]
    assert len(lines) == 1, (words, table)
    return lines[0]


def test_model_as_first_argument_runs_every_hardware(tmp_path):
    res = accel("bert-base", "--seq", "128", "--hw", "gemmini-baseline,gemmini-ibert", "--plot", "f.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "gemmini-baseline" in res.stdout and "gemmini-ibert" in res.stdout and "speed-up" in res.stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == PNG


def test_run_json_has_the_run_and_one_record_per_hardware_and_schedule(capsys):
    doc = json_doc(capsys, "bert-base", "--seq", "128", "--hw", "gemmini-ibert", "--schedule", "non-fused,fused",
                   "--mapping", "best", "--objective", "edp")
    r = doc["run"]
    assert doc["command"] == "accel run"
    assert r["model"] == "bert-base" and r["model_spec"]["hidden"] == 768 and r["seq"] == 128
    assert r["spec"]["seq"] == 128 and r["spec"]["precision"] == "int8" and r["spec"]["mode"] == "infer"
    assert r["hw"] == ["gemmini-ibert"] and r["schedule"] == ["non-fused", "fused"]
    assert r["mapping"] == "best" and r["objective"] == "edp"
    assert r["accelerators"]["gemmini-ibert"] == json.loads(json.dumps(accel_to_dict(load_accel("gemmini-ibert"))))
    assert [(x["hardware"], x["schedule"]) for x in doc["records"]] == [("gemmini-ibert", "non-fused"),
                                                                         ("gemmini-ibert", "fused")]
    for rec in doc["records"]:
        res = run_model("bert-base", 128, load_accel(rec["hardware"]), rec["schedule"], "best", "edp")
        assert rec["seconds"] == res.seconds and rec["joules"] == res.joules and rec["joule_seconds"] == res.edp
        assert rec["utilization"] == res.utilization and rec["cycles"] == load_accel(rec["hardware"]).cycles(res.seconds)
        cats = res.by_category()
        assert [rec[f] for f in CAT_FIELDS] == [cats[c] for c in CATEGORIES]
        assert sum(rec[f"{c}_joules"] for c in COMPONENTS) == pytest.approx(rec["joules"])
    assert doc["records"][0]["speedup_over_first"] == 1.0
    ops = doc["ops"]
    assert {(o["hardware"], o["schedule"]) for o in ops} == {("gemmini-ibert", "non-fused"), ("gemmini-ibert", "fused")}
    gemms = [o for o in ops if "ti" in o]
    assert gemms and all({"m", "n", "k", "gemm_batch", "cycles", "tk", "order"} <= set(o) for o in gemms)
    assert all(o["l2_read_bytes"] + o["dram_read_bytes"] == pytest.approx(o["load_bytes"]) for o in gemms)
    assert all(0 <= o["dram_rate_bound_tiles"] <= o["dma_bound_tiles"] <= o["tiles"] for o in gemms)
    first = [o for o in ops if o["schedule"] == "non-fused"]
    assert sum(o["total_seconds"] for o in first) == pytest.approx(doc["records"][0]["seconds"])


def test_run_table_shows_the_json_numbers(capsys):
    doc = json_doc(capsys, "bert-base", "--seq", "128", "--hw", "gemmini-baseline,gemmini-ibert")
    code, out, _ = call(capsys, "bert-base", "--seq", "128", "--hw", "gemmini-baseline,gemmini-ibert")
    assert code == 0
    for rec in doc["records"]:
        line = row_of(out, rec["hardware"], rec["schedule"])
        assert units.seconds(rec["seconds"]) in line and units.si(rec["joules"], "J") in line
        assert units.percent(rec["matmul_share"]) in line and units.percent(rec["utilization"]) in line


def test_run_csv_rows_are_the_records(capsys, tmp_path):
    code, _, err = call(capsys, "bert-base", "--seq", "128", "--hw", "gemmini-baseline,gemmini-ibert",
                        "--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    records = json.loads((tmp_path / "r.json").read_text())["records"]
    assert [r["hardware"] for r in rows] == [r["hardware"] for r in records]
    assert [float(r["seconds"]) for r in rows] == [r["seconds"] for r in records]


def test_gemm_explain_and_json(capsys):
    code, out, err = call(capsys, "gemm", "512", "768", "768", "--hw", "gemmini-baseline", "--mapping", "auto,best",
                          "--explain")
    assert code == 0, err
    assert "5×5×48" in out and "scratchpad rows 7680/8192" in out
    args = ("gemm", "512", "768", "768", "--batch", "2", "--hw", "gemmini-baseline", "--mapping", "auto,best",
            "--objective", "energy")
    doc = json_doc(capsys, *args)
    assert doc["command"] == "accel gemm"
    assert doc["run"]["m"] == 512 and doc["run"]["gemm_batch"] == 2 and doc["run"]["mapping"] == ["auto", "best"]
    assert doc["run"]["objective"] == "energy" and "gemmini-baseline" in doc["run"]["accelerators"]
    code, out, _ = call(capsys, *args)
    assert code == 0
    hw = load_accel("gemmini-baseline")
    shape = GemmShape(512, 768, 768, 2)
    for rec, name in zip(doc["records"], ("auto", "best"), strict=True):
        m, t = mp.mapper(name, "energy")(hw, shape, False, 1)
        assert rec["mapping"] == name and (rec["ti"], rec["tj"], rec["tk"]) == (m.ti, m.tj, m.tk)
        assert rec["cycles"] == t.cycles and rec["seconds"] == hw.seconds(t.cycles)
        assert rec["utilization"] == t.utilization and rec["gemm_batch"] == 2
        assert rec["joules"] == pytest.approx(sum(rec[f"{c}_joules"] for c in COMPONENTS))
        assert rec["joule_seconds"] == pytest.approx(rec["joules"] * rec["seconds"])
        line = row_of(out, f" {name} ")
        assert f"{m.ti}×{m.tj}×{m.tk}" in line and units.seconds(rec["seconds"]) in line
        assert units.si(rec["joules"], "J") in line and units.percent(rec["utilization"]) in line


def test_gemm_json_carries_the_dma_counts_and_the_l2_dram_split(capsys):
    """128×3072×768 with auto (5,5,48) on the baseline: the record's DMA fields are the timing's, and the L2 and DRAM
    bytes add up to the bytes loaded."""
    doc = json_doc(capsys, "gemm", "128", "3072", "768", "--hw", "gemmini-baseline")
    (rec,) = doc["records"]
    hw = load_accel("gemmini-baseline")
    _, t = mp.auto(hw, GemmShape(128, 3072, 768))
    assert rec["load_requests"] == t.load_requests and rec["store_requests"] == t.store_requests
    assert rec["l2_hit_rate"] == t.hit_rate and rec["dma_bound_tiles"] == t.dma_bound_tiles
    assert rec["dram_rate_bound_tiles"] == t.dram_rate_bound_tiles <= t.dma_bound_tiles
    assert rec["l2_read_bytes"] + rec["dram_read_bytes"] == pytest.approx(rec["load_bytes"])
    # tiles of 80×80×768: ceil(128/80) = 2 row tiles × ceil(3072/80) = 39 column tiles × one K step
    assert rec["tiles"] == 2 * 39 and 0 < rec["l2_hit_rate"] < 1
    assert rec["dram_joules"] == pytest.approx((rec["dram_read_bytes"] + rec["store_bytes"]) * hw.energy.dram_byte)


def test_gemm_maps_a_huge_shape_with_the_bounded_search(capsys):
    doc = json_doc(capsys, "gemm", "1000000000000", "64", "64", "--mapping", "best")
    (rec,) = doc["records"]
    assert rec["m"] == 10**12 and 0 < rec["utilization"] <= 1


def test_dse_json_ranks_and_pareto(capsys):
    args = ("dse", "bert-base", "--seq", "128", "--split", "64:256,128:192,304:16", "--dims", "16",
            "--dma", "8,16", "--objective", "latency,edp", "--executor", "serial")
    doc = json_doc(capsys, *args)
    r = doc["run"]
    assert r["sram_total_bytes"] == 320 * 1024 and r["dims"] == [16] and r["dma_bytes_per_cycle"] == [8, 16]
    assert r["objective"] == ["latency", "edp"] and r["executor"] == "serial" and r["hw"] == "gemmini-ibert"
    recs = doc["records"]
    assert len(recs) == 6
    from tstack.search.dse import parse_splits

    points = design_points(parse_splits("64:256,128:192,304:16", 320 * 1024), [16], [8, 16])
    outs = explore(load_accel("gemmini-ibert"), "bert-base", 128, points, executor="serial")
    front = pareto(outs)
    for rec, o, on_front in zip(recs, outs, front, strict=True):
        assert rec["design"] == o.point.label and rec["feasible"] == o.feasible and rec["pareto"] == on_front
        if o.feasible:
            assert rec["latency_seconds"] == o.latency_s and rec["joules"] == o.joules
            assert rec["matmul_seconds"] == o.matmul_s and rec["joule_seconds"] == o.edp
            assert rec["rank_latency"] >= 1 and rec["reason"] is None
        else:
            assert rec["latency_seconds"] is None and rec["rank_edp"] is None and rec["reason"]
    feasible = [x for x in recs if x["feasible"]]
    assert sorted(x["rank_latency"] for x in feasible) == list(range(1, len(feasible) + 1))
    code, out, _ = call(capsys, *args)
    assert code == 0
    for rec in feasible:
        line = row_of(out, rec["design"])
        assert units.seconds(rec["latency_seconds"]) in line and units.si(rec["joules"], "J") in line


def test_repro_json_one_record_per_claim(capsys, tmp_path):
    doc = json_doc(capsys, "repro", "--seq", "128")
    rows = reproduce_000("bert-base", 128).rows
    assert [r["key"] for r in doc["records"]] == [r.key for r in rows]
    assert {"claim", "paper", "tstack", "unit", "target_low", "target_high", "gap", "note"} <= set(doc["records"][0])
    assert doc["records"][0]["tstack"] == rows[0].tstack
    assert "numeric claims" in doc["summary"]["line"]
    assert doc["run"]["paper"] == "000" and doc["run"]["seq"] == 128
    assert [f["label"] for f in doc["fig2"]][0] == "baseline n=128" and "seconds" in doc["fig2"][0]
    code, out, err = call(capsys, "repro", "--seq", "128", "--plot", str(tmp_path / "fig2.svg"))
    assert code == 0, err
    assert "baseline-utilization" not in out and "MAC utilization" in out
    assert (tmp_path / "fig2.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("args", [
    ("gemm", "256", "768", "768", "--mapping", "auto,best"),
    ("dse", "bert-base", "--seq", "128", "--split", "64:256,304:16", "--executor", "serial"),
])
def test_plot_writes_a_figure_and_figure_is_gone(capsys, tmp_path, args):
    code, _, err = call(capsys, *args, "--plot", str(tmp_path / "f.png"))
    assert code == 0, err
    assert (tmp_path / "f.png").read_bytes()[:4] == PNG
    code, _, err = call(capsys, *args, "--figure", str(tmp_path / "g.png"))
    assert code == 2 and "No such option: --figure" in err and not (tmp_path / "g.png").exists()


BAD = [
    (("gemm", "0", "768", "768"), "M=0 must be an integer in [1, 1099511627776]"),
    (("gemm", "1", "1", str(2**40 + 1)), "K=1099511627777"),
    (("gemm", "1", "1", "1", "--batch", "0"), "--batch=0"),
    (("gemm", "1", "1", "1", "--batch", str(10**30)), "--batch="),
    (("gemm", "1", "1", "1", "--mapping", "fast"), "--mapping='fast'"),
    (("gemm", "1", "1", "1", "--objective", "speed"), "--objective='speed'"),
    (("gemm", "512", "4096", "64", "--full-rows"), "accumulator rows"),
    (("bert-base", "--hw", "nope"), "unknown accelerator 'nope'"),
    (("bert-base", "--schedule", "fused"), "needs the nonlinear ops on the accelerator"),
    (("bert-base", "--schedule", "fused,sometimes", "--hw", "gemmini-ibert"), "--schedule="),
    (("bert-base", "--seq", "0"), "--seq=0"),
    (("bert-base", "--seq", str(2**40)), "--seq="),
    (("bert-base", "--seq", "600"), "--seq: seq=600 exceeds max_positions=512"),
    (("bert-base", "--mapping", "all"), "--mapping='all'"),
    (("bert-base", "--objective", ""), "--objective=''"),
    (("bert-base", "--plot", "f.txt"), "--plot="),
    (("dse", "bert-base", "--executor", "threads"), "--executor='threads'"),
    (("dse", "bert-base", "--dims", "0"), "--dims="),
    (("dse", "bert-base", "--dims", "16,x"), "--dims="),
    (("dse", "bert-base", "--dma", "99999"), "--dma="),
    (("dse", "bert-base", "--split", "64:255"), "--split 64:255 sums to 319 KiB"),
    (("dse", "bert-base", "--split", "9" * 5000 + ":1"), "--split entry"),
    (("dse", "bert-base", "--sram-total", "9" * 5000), "--sram-total="),
    (("dse", "bert-base", "--sram-total", "0KiB"), "--sram-total="),
    (("dse", "bert-base", "--objective", "latency,power"), "--objective="),
    (("dse", "bert-base", "--workers", "0"), "--workers=0"),
    (("dse", "bert-base", "--dims", ",".join(map(str, range(1, 65))), "--dma", ",".join(map(str, range(1, 65)))),
     "design points"),
    (("repro", "--seq", "-1"), "--seq=-1"),
    (("repro", "--model", "[bold]x"), "unknown model '[bold]x'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=lambda a: " ".join(a)[:50] if isinstance(a, tuple) else None)
def test_bad_input_is_one_error_line_before_any_output(capsys, tmp_path, args, message):
    out_json = tmp_path / "out.json"
    code, out, err = call(capsys, *args, "--json", str(out_json))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert out == "" and not out_json.exists() and list(tmp_path.iterdir()) == []
