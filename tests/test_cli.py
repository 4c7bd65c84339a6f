"""The `tstack` command, run as a subprocess: output contents, files written, and one-line errors on bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import tstack
from conftest import HF_CONFIGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OP_COLUMNS = ["M", "N", "K", "gemm_batch", "flops", "bytes", "intensity_flop_per_byte", "seconds", "bound"]
BERT_LARGE_TRAIN = ["analyze", "bert-large", "--mode", "train", "--batch", "32", "--seq", "128", "--precision", "fp32",
                    "--device", "mi100"]


def tstack_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # A wide terminal so rich tables do not abbreviate group names.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tstack.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


@pytest.fixture(scope="module")
def bert_large_train(tmp_path_factory):
    """One run of the 002 configuration (BERT-Large pre-training, B=32, n=128, FP32, MI100) with --json and --csv."""
    cwd = tmp_path_factory.mktemp("bert-large")
    res = tstack_cli(*BERT_LARGE_TRAIN, "--json", "out.json", "--csv", "out.csv", cwd=cwd)
    return res, cwd


def test_analyze_prints_the_002_hierarchy(bert_large_train):
    res, _ = bert_large_train
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "bert-large train B=32 S=128 fp32 on mi100" in out
    # 002 Fig. 3 and 4: one table per level, each under its own title line
    titles = {line.strip() for line in out.splitlines()}
    assert {"Iteration", "Transformer layer", "Attention", "FC"} <= titles
    for word in ("Linear GEMM", "Attn B-GEMM", "FC GEMM", "GeLU", "DR+RC+LN", "Scale+Mask+DR+SM"):
        assert word in out, word
    assert "Traceback" not in res.stderr


def test_analyze_hierarchy_names_the_optimizer_lamb(tmp_path):
    # 002 Fig. 3: an iteration splits into embedding, Transformer layers, output and the LAMB update.
    res = tstack_cli(*BERT_LARGE_TRAIN, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "LAMB" in res.stdout


def test_analyze_group_by_nlpfast_op(tmp_path):
    res = tstack_cli(*BERT_LARGE_TRAIN, "--group-by", "nlpfast-op", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # 003 (NLP-Fast) Fig. 2: the operations of a Transformer encoder layer
    for name in ("Q-Gen", "K/V-Gen", "dot product", "softmax", "weighted sum", "attention FC", "linear trans-1",
                 "activation", "linear trans-2"):
        assert name in res.stdout, name


def test_analyze_json_and_csv_have_one_row_per_op(bert_large_train):
    res, cwd = bert_large_train
    assert res.returncode == 0, res.stderr
    spec = tstack.load_model("bert-large")
    run = tstack.RunSpec(mode="train", batch=32, seq=128, precision="fp32")
    n_ops = len(tstack.build(spec, run))
    doc = json.loads((cwd / "out.json").read_text())
    ops = pd.DataFrame.from_records(doc["records"])
    csv = pd.read_csv(cwd / "out.csv")
    for table in (ops, csv):
        assert len(table) == n_ops
        assert set(OP_COLUMNS) <= set(table.columns)
        assert set(table["bound"]) <= {"compute", "memory", "overhead", "-"}
    assert n_ops > 100  # 24 layers × (fwd + bwd) kernels, not a collapsed or grouped table
    # the two files describe the same ops, and the summary is their total
    assert csv["flops"].sum() == ops["flops"].sum() == doc["summary"]["flops"]
    assert csv["bytes"].sum() == ops["bytes"].sum() == doc["summary"]["bytes"]
    assert csv["seconds"].sum() == pytest.approx(doc["summary"]["seconds"], rel=1e-9)
    gemms = csv[csv["kind"] == "gemm"]
    # every GEMM's FLOPs are 2·M·N·K per batch entry (a multiply-add is 2 FLOPs) times its count
    assert (gemms["flops"] == 2 * gemms["M"] * gemms["N"] * gemms["K"] * gemms["gemm_batch"] * gemms["count"]).all()
    assert doc["summary"]["model"] == "bert-large" and doc["summary"]["device"] == "mi100"


def test_analyze_hf_config_json(tmp_path):
    folder = tmp_path / "bert-base-uncased"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIGS["bert-base-uncased"]), encoding="utf-8")
    res = tstack_cli("analyze", str(folder / "config.json"), "--device", "mi100", "--seq", "128", "--json", "hf.json",
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bert-base-uncased infer B=1 S=128 fp32 on mi100" in res.stdout
    # bert-base-uncased's config has the shapes of the bert-base preset and, following its architectures
    # (BertForMaskedLM), a masked-LM head instead of the pooler: with that head the predictions agree
    preset = tstack.analyze(tstack.load_model("bert-base").replace(head="mlm"), device="mi100", seq=128).summary()
    got = json.loads((tmp_path / "hf.json").read_text())["summary"]
    assert (got["flops"], got["bytes"], got["kernels"]) == (preset["flops"], preset["bytes"], preset["kernels"])


def test_sweep_writes_table_and_plot(tmp_path):
    res = tstack_cli("sweep", "bert-large", "--mode", "train", "--batch", "4,8", "--seq", "128,512", "--device", "mi100",
                     "--csv", "s.csv", "--plot", "s.png", "--workers", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(tmp_path / "s.csv")
    configs = set(zip(df["batch"], df["seq"]))
    assert configs == {(4, 128), (4, 512), (8, 128), (8, 512)}
    assert df.groupby(["batch", "seq"])["share"].sum().sub(1).abs().max() < 1e-9
    assert "LAMB" in set(df["group"])
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_MAGIC)


def test_presets_lists_every_preset(tmp_path):
    res = tstack_cli("presets", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in tstack.models.model_presets() + tstack.hardware.device.device_presets():
        assert name in res.stdout, name


# --- bad input: one line on stderr, non-zero exit, no traceback, no output file ----------------------------

def _write_inputs(cwd: Path) -> None:
    (cwd / "config.json").write_text('{"model_type": "bert", "hidden_size": 768,', encoding="utf-8")
    bad = {**dataclasses.asdict(tstack.load_model("bert-base")), "name": "bad-heads", "heads": 5}
    del bad["head_dim"]  # derived from hidden / heads
    (cwd / "bad-heads.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")


# (arguments, output files that must not exist afterwards, fragments the error line must contain)
BAD_INPUT = [
    (["analyze", "no-such-model", "--json", "o.json"], ["o.json"], ["'no-such-model'", "bert-large"]),
    (["analyze", "config.json", "--csv", "o.csv"], ["o.csv"], ["config.json", "JSON"]),
    (["analyze", "bad-heads.yaml", "--json", "o.json", "--plot", "o.png"], ["o.json", "o.png"], ["heads=5", "hidden=768"]),
    (["analyze", "bert-base", "--batch", "-1", "--json", "o.json", "--csv", "o.csv"], ["o.json", "o.csv"], ["batch=-1"]),
    (["analyze", "bert-base", "--batch", "0", "--json", "o.json"], ["o.json"], ["batch=0", "[1, "]),
    (["analyze", "bert-base", "--device", "no-such-device", "--csv", "o.csv"], ["o.csv"], ["'no-such-device'", "mi100"]),
    (["analyze", "bert-base", "--precision", "fp12", "--json", "o.json"], ["o.json"], ["precision='fp12'", "bf16-mixed"]),
    (["analyze", "bert-base", "--group-by", "nonsense", "--json", "o.json", "--csv", "o.csv", "--plot", "o.png"],
     ["o.json", "o.csv", "o.png"], ["'nonsense'", "nlpfast-op"]),
    (["analyze", "bert-base", "--seq", "1024", "--json", "o.json"], ["o.json"], ["seq=1024", "max_positions=512"]),
    (["analyze", "bert-base", "--mode", "train", "--precision", "bf16-mixed", "--device", "v100", "--json", "o.json",
      "--plot", "o.png"], ["o.json", "o.png"], ["bf16", "v100"]),
    (["analyze", "bert-base", "--mode", "train", "--precision", "int8", "--csv", "o.csv"], ["o.csv"], ["int8"]),
    (["analyze", "bert-base", "--json", "missing-folder/o.json"], [], ["missing-folder"]),
    # a later output failing must not leave an earlier one behind
    (["analyze", "bert-base", "--json", "o.json", "--csv", "missing-folder/o.csv"], ["o.json"], ["missing-folder"]),
    (["analyze", "bert-base", "--json", "o.json", "--plot", "o.bogus"], ["o.json", "o.bogus"], ["bogus"]),
    (["sweep", "bert-base", "--batch", "x,y", "--csv", "s.csv", "--plot", "s.png"], ["s.csv", "s.png"],
     ["--batch='x,y'"]),
    (["sweep", "bert-base", "--batch", "1,2", "--seq", "128,1024", "--csv", "s.csv", "--plot", "s.png"],
     ["s.csv", "s.png"], ["seq=1024"]),
    # the same failure inside a Ray worker must still end as one line
    (["sweep", "bert-base", "--batch", "1,2", "--seq", "128,1024", "--executor", "ray", "--workers", "2", "--csv",
      "s.csv"], ["s.csv"], ["seq=1024"]),
    (["sweep", "bert-base", "--mode", "train", "--precision", "bf16-mixed", "--device", "v100", "--csv", "s.csv",
      "--plot", "s.png"], ["s.csv", "s.png"], ["bf16", "v100"]),
    (["sweep", "bert-base", "--batch", "1", "--heads", "5", "--json", "s.json"], ["s.json"], ["heads=5"]),
    (["sweep", "bert-base", "--batch", "1", "--csv", "s.csv", "--json", "s.csv"], ["s.csv"], ["same file"]),
    (["sweep", "bert-base", "--batch", "1", "--csv", "-", "--json", "-"], [], ["standard output"]),
    (["sweep", "bert-base", "--batch", "1", "--executor", "threads", "--csv", "s.csv"], ["s.csv"], ["'threads'"]),
    (["sweep", "bert-base", "--batch", "1,2", "--csv", "s.csv", "--plot", "s.bogus"], ["s.csv", "s.bogus"], ["bogus"]),
]


@pytest.mark.parametrize(("args", "outputs", "fragments"), BAD_INPUT, ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_is_one_error_line_and_no_output(tmp_path, args, outputs, fragments):
    _write_inputs(tmp_path)
    res = tstack_cli(*args, cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], fragment
    for name in outputs:
        assert not (tmp_path / name).exists(), name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files of the atomic writer either


@pytest.mark.parametrize("args", [["analyze", "bert-base", "--batch", "abc", "--json", "o.json"],
                                  ["analyze", "bert-base", "--kv-len", "1.5", "--csv", "o.csv"],
                                  ["analyze", "bert-base", "--no-such-option", "--json", "o.json"]])
def test_option_type_errors_are_usage_errors(tmp_path, args):
    res = tstack_cli(*args, cwd=tmp_path)
    assert res.returncode == 2  # the usage-error exit code
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tstack analyze --help" in lines[0]
    assert args[2] in lines[0]  # the option is named
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.csv").exists()
