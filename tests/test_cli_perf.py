"""tstack profile / calibrate / validate as a user runs them (subprocess), on a 2-layer model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

TINY = {"name": "tiny", "arch": "encoder", "layers": 2, "hidden": 64, "heads": 4, "ffn": 128, "vocab": 100,
        "type_vocab": 2, "max_positions": 64}


def tstack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tstack.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.yaml").write_text(json.dumps(TINY))
    return tmp_path


def test_profile_writes_rows_per_op_and_configuration_and_a_trace(tiny):
    p = tstack("profile", "tiny.yaml", "--batch", "1,2", "--seq", "16", "--threads", "1", "--repeats", "3",
               "--out", "rows.csv", "--trace", "t.json", cwd=tiny)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((tiny / "rows.csv").open()))
    import tstack as ts

    n_ops = len(ts.build(ts.load_model(tiny / "tiny.yaml"), ts.RunSpec(batch=1, seq=16)))
    assert len(rows) == 2 * n_ops  # every op of both configurations
    assert {r["B"] for r in rows} == {"1", "2"}
    assert all(float(r["seconds"]) > 0 for r in rows)
    trace = json.loads((tiny / "t.json").read_text())
    assert sum(e["ph"] == "X" for e in trace["traceEvents"]) == 2 * n_ops


def test_an_interrupted_profile_sweep_keeps_the_finished_configurations(tiny):
    # The second configuration fails (seq beyond the model's 64 positions) after the first finished.
    p = tstack("profile", "tiny.yaml", "--seq", "16,128", "--threads", "1", "--repeats", "2", "--out", "rows.csv", cwd=tiny)
    assert p.returncode != 0
    assert p.stderr.strip().startswith("error:") and "max_positions" in p.stderr
    rows = list(csv.DictReader((tiny / "rows.csv").open()))
    assert rows and {r["S"] for r in rows} == {"16"}


def test_memory_guard_refuses_before_allocating(tiny):
    # bert-large at B=4096, S=512: one score tensor alone is 4096·16·512·512·4 bytes ≈ 70 TB.
    p = tstack("profile", "bert-large", "--batch", "4096", "--seq", "512", "--out", "rows.csv", cwd=tiny)
    assert p.returncode != 0
    assert "needs about" in p.stderr and "available" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tiny / "rows.csv").exists() or (tiny / "rows.csv").stat().st_size == 0


def test_custom_mode_needs_events_and_says_which(tiny):
    p = tstack("profile", "tiny.yaml", "--seq", "16", "--profile-mode", "custom", cwd=tiny)
    assert p.returncode != 0 and "--events" in p.stderr


def test_calibrate_quick_then_validate_with_its_file(tiny):
    p = tstack("calibrate", "--quick", "--threads", "1", "--repeats", "2", "--rounds", "1", "--out", "dev.yaml", cwd=tiny)
    assert p.returncode == 0, p.stderr
    import tstack as ts

    dev = ts.load_device(tiny / "dev.yaml")
    assert dev.calibration is not None and dev.calibration.threads == 1
    assert {"gemm.fp32", "bgemm.fp32", "softmax", "layernorm-bwd", "lamb-stage1", "gather"} <= set(dev.calibration.tables)
    v = tstack("validate", "tiny.yaml", "--device", "dev.yaml", "--seq", "16", "--repeats", "2", "--rounds", "2",
               "--out", "v.csv", "--plot", "v.png", cwd=tiny)
    assert v.returncode == 0, v.stderr
    assert "end-to-end error" in v.stdout
    rows = list(csv.DictReader((tiny / "v.csv").open()))
    assert rows and all(float(r["measured_s"]) > 0 and float(r["predicted_s"]) > 0 for r in rows)
    assert all(abs(float(r["error"]) - abs(float(r["predicted_s"]) - float(r["measured_s"])) / float(r["measured_s"])) < 1e-9
               for r in rows)
    assert (tiny / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_refuses_a_bad_output_path_before_measuring(tiny):
    p = tstack("calibrate", "--quick", "--out", "missing/dev.yaml", cwd=tiny)
    assert p.returncode != 0 and "does not exist" in p.stderr
    p = tstack("calibrate", "--quick", "--out", "dev.txt", cwd=tiny)
    assert p.returncode != 0 and ".yaml" in p.stderr
