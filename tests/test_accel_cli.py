"""`tstack accel` as a subprocess: the issue's command lines, files written, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def accel(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tstack.cli", "accel", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def test_model_as_first_argument_runs_every_hardware(tmp_path):
    res = accel("bert-base", "--seq", "128", "--hw", "gemmini-baseline,gemmini-ibert", "--figure", "f.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "gemmini-baseline" in res.stdout and "gemmini-ibert" in res.stdout and "speed-up" in res.stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_gemm_explain_and_bad_input(tmp_path):
    res = accel("gemm", "512", "768", "768", "--hw", "gemmini-baseline", "--mapping", "auto,best", "--explain", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "5×5×48" in res.stdout and "scratchpad rows 7680/8192" in res.stdout
    bad = accel("gemm", "0", "768", "768", cwd=tmp_path)
    assert bad.returncode == 2 and "M=0 must be >= 1" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = accel("bert-base", "--hw", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown accelerator 'nope'" in bad.stderr
    bad = accel("bert-base", "--schedule", "fused", cwd=tmp_path)
    assert bad.returncode == 2 and "needs the nonlinear ops on the accelerator" in bad.stderr
