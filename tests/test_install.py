"""The README's first command works on a fresh machine: a new venv with only the declared dependencies.

This is how the first command broke once (an undeclared import that the test extras pulled in), so the test
runs it for real: a copy of the tracked files, a new venv, `pip install -e .` from the package registry, and
the main job. It takes a minute or two (downloads); .ci/run runs the same command before the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_install_commands() -> list[str]:
    return re.findall(r"^python3 -m venv .*$", (ROOT / "README.md").read_text(), flags=re.M)


def test_readme_starts_with_the_two_commands():
    first, second = _readme_install_commands()[:2]
    assert "pip install -e . &&" in first and "tstack analyze" in first and "[test]" not in first
    assert "pip install torch==2.13.0 &&" in second and second.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "grep -m1 '^python3 -m venv' README.md" in ci  # CI runs the same two lines, read from the README


@pytest.mark.skipif(not shutil.which("git"), reason="needs git to list the tracked files")
def test_readme_first_command_in_a_fresh_venv_without_extras(tmp_path):
    first = _readme_install_commands()[0]
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    repo = tmp_path / "repo"
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (repo / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name.decode())
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "/.venv/" not in p + "/")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", first], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bert-large train B=32 S=128 fp32 on mi100" in proc.stdout
    listed = subprocess.run([str(repo / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"], env=env,
                            capture_output=True, text=True, check=True).stdout.lower()
    for extra in ("torch==", "pytest==", "hypothesis==", "ray==", "transformers=="):
        assert extra not in listed, f"{extra} came in without being asked for"
