"""benchmarks/gpu_session.py, the prepared GPU run of issue 15, runs end to end on the CPU at toy sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tstack import RunSpec, analyze  # noqa: E402
from tstack.errors import TstackError  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.py"


def test_cpu_smoke_run_writes_every_figure(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = mod.main(["--device", "cpu", "--out", str(tmp_path), "--repeats", "1"])
    assert set(doc["steps"]) == {"trace", "llama"}  # tests and calibration need CUDA
    assert json.loads((tmp_path / "gpu_session.json").read_text())["steps"].keys() == doc["steps"].keys()
    trace = doc["steps"]["trace"]["result"]
    # examples/bert-tiny: 2 layers × (Q, K, V, QKᵀ, P·V, out, FC-1, FC-2) + the pooler = 17 GEMMs, all matched
    assert (trace["matched"], trace["unmatched"], trace["missing"]) == (17, 0, 0) and trace["step"] == "ProfilerStep#2"
    assert all(g["predicted_seconds"] > 0 and g["measured_seconds"] > 0 for g in trace["gemms"])
    assert (tmp_path / "bert-tiny-trace.json").stat().st_size > 0
    rows = doc["steps"]["llama"]["result"]
    assert [r["case"] for r in rows] == ["prefill-16", "prefill-64", "decode-kv8"]
    spec = mod._llama(2, toy=True)
    decode = RunSpec(batch=1, seq=1, phase="decode", kv_len=8 + (3 + 1) // 2, precision="bf16-mixed", attention="sdpa")
    assert rows[2]["predicted_seconds"] == analyze(spec, decode, "h100").total.seconds  # the mode that was timed
    assert all(r["measured_seconds"] > 0 for r in rows)
    assert "decode-kv8" in capsys.readouterr().out
    # a bad preset is refused before any step runs
    with pytest.raises(TstackError, match="nope"):
        mod.main(["--device", "cpu", "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert not (tmp_path / "x").exists()
