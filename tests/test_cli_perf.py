"""tstack profile / calibrate / validate as a user runs them (subprocess), on a 2-layer model.

Also: their JSON/CSV output contract, the host probe, and what SIGINT/SIGTERM and a second writer leave behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

TINY = {"name": "tiny", "arch": "encoder", "layers": 2, "hidden": 64, "heads": 4, "ffn": 128, "vocab": 100,
        "type_vocab": 2, "max_positions": 64}
CMD = [sys.executable, "-m", "tstack.cli"]


def tstack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CMD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.yaml").write_text(json.dumps(TINY))
    return tmp_path


def test_profile_writes_rows_json_csv_and_a_trace(tiny):
    p = tstack("profile", "tiny.yaml", "--batch", "1,2", "--seq", "16", "--threads", "1", "--repeats", "3",
               "--out", "rows.csv", "--trace", "t.json", "--json", "p.json", "--csv", "p.csv", cwd=tiny)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((tiny / "rows.csv").open()))
    import tstack as ts

    n_ops = len(ts.build(ts.load_model(tiny / "tiny.yaml"), ts.RunSpec(batch=1, seq=16)))
    assert len(rows) == 2 * n_ops  # every op of both configurations
    assert {r["batch"] for r in rows} == {"1", "2"} and {r["seq"] for r in rows} == {"16"}
    bgemm = [r for r in rows if r["kind"] == "bgemm"]
    assert {r["gemm_batch"] for r in bgemm if r["batch"] == "2"} == {str(2 * TINY["heads"])}  # B·h, not the run's B
    for r in rows:
        assert float(r["seconds"]) > 0
        assert float(r["call_p10_seconds"]) <= float(r["call_seconds"]) <= float(r["call_p90_seconds"])
    trace = json.loads((tiny / "t.json").read_text())
    ops = [e for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") != "user_annotation"]
    assert len(ops) == 2 * n_ops  # and one ProfilerStep#0 annotation per configuration
    assert sum(e.get("name") == "ProfilerStep#0" for e in trace["traceEvents"]) == 2
    doc = json.loads((tiny / "p.json").read_text())
    assert doc["schema_version"] == 1 and doc["command"] == "profile"
    run = doc["run"]
    assert {"threads", "warmup", "repeats", "rounds", "profile_mode", "host"} <= set(run)
    assert run["threads"] == 1 and run["repeats"] == 3 and run["batch"] == [1, 2]
    assert {"mode", "batch", "seq", "tgt_seq", "precision", "optimizer", "checkpoint", "phase", "kv_len"} <= set(
        run["configurations"][0]["spec"])
    assert len(doc["records"]) == 2 * n_ops
    assert all(r["utilization"] is None and r["bound"] is None for r in doc["records"])  # a measurement has neither
    for key in ("before", "after"):
        probe = doc["probe"][key]
        assert probe["reference_seconds"] > 0 and "load_1min" in probe
    assert len(list(csv.DictReader((tiny / "p.csv").open()))) == 2 * n_ops
    assert "kernel measurements" in p.stderr


def test_profile_json_on_stdout_prints_no_table(tiny):
    p = tstack("profile", "tiny.yaml", "--seq", "16", "--threads", "1", "--repeats", "2", "--json", "-", cwd=tiny)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["records"] and all(r["batch"] == 1 and r["seq"] == 16 for r in doc["records"])


def test_measured_tables_show_no_utilization_or_infinities(tiny):
    p = tstack("profile", "tiny.yaml", "--seq", "16", "--threads", "1", "--repeats", "2", "--group-by", "kind", cwd=tiny)
    assert p.returncode == 0, p.stderr
    assert "util" not in p.stdout and not re.search(r"\binf\b|\bnan\b", p.stdout)
    gather = next(line for line in p.stdout.splitlines() if line.strip().startswith("gather"))
    assert " - " in gather  # a gather has no FLOPs: '-' instead of 0 FLOP/s


def test_a_bad_configuration_is_refused_before_any_is_measured(tiny):
    # The second configuration is invalid (seq beyond the model's 64 positions): nothing is measured or written.
    p = tstack("profile", "tiny.yaml", "--seq", "16,128", "--threads", "1", "--repeats", "2", "--out", "rows.csv", cwd=tiny)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error:") and "max_positions" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]


def test_bad_options_give_one_line_naming_the_option(tiny):
    for args, word in ((["--repeats", "0"], "--repeats"), (["--warmup", "-1"], "--warmup"), (["--threads", "0"], "--threads"),
                       (["--out", "rows.txt"], "--out"), (["--json", str(tiny)], "--json"),
                       (["--precision", "fp64"], "--precision"), (["--input-shape", "0x5"], "--input-shape")):
        target = "m.py:build" if word == "--input-shape" else "tiny.yaml"
        p = tstack("profile", target, "--seq", "16", *args, cwd=tiny)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("error:") and word in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]


def test_memory_guard_refuses_before_allocating(tiny):
    # bert-large at B=4096, S=512: one score tensor alone is 4096·16·512·512·4 bytes ≈ 70 TB.
    p = tstack("profile", "bert-large", "--batch", "4096", "--seq", "512", "--out", "rows.csv", cwd=tiny)
    assert p.returncode != 0
    assert "needs about" in p.stderr and "available" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tiny / "rows.csv").exists()


def test_custom_mode_needs_events_and_says_which(tiny):
    p = tstack("profile", "tiny.yaml", "--seq", "16", "--profile-mode", "custom", cwd=tiny)
    assert p.returncode != 0 and "--events" in p.stderr


def test_calibrate_quick_then_validate_with_its_file(tiny):
    p = tstack("calibrate", "--quick", "--threads", "1", "--repeats", "2", "--rounds", "1", "--out", "dev.yaml",
               "--json", "cal.json", cwd=tiny)
    assert p.returncode == 0, p.stderr
    assert "grid points" in p.stderr and "expected" in p.stderr  # the up-front note
    import tstack as ts

    dev = ts.load_device(tiny / "dev.yaml")
    assert dev.calibration is not None and dev.calibration.threads == 1 and dev.calibration.quick
    made = dev.calibration.provenance
    assert made["grid"] == "quick" and made["rounds"] == 1 and made["repeats"] == 2 and made["threads"] == 1
    assert made["probe_before"]["reference_seconds"] > 0 and made["cpu_model"] and made["date"]
    assert {"gemm.fp32", "bgemm.fp32", "softmax", "layernorm-bwd", "lamb-stage1", "gather"} <= set(dev.calibration.tables)
    cal = json.loads((tiny / "cal.json").read_text())
    assert cal["run"]["rounds"] == 1 and cal["run"]["quick"] is True and cal["records"]
    assert cal["summary"]["matrix_fp32_flop_per_second"] > 0
    v = tstack("validate", "tiny.yaml", "--device", "dev.yaml", "--batch", "2", "--seq", "16", "--repeats", "2",
               "--rounds", "2", "--csv", "v.csv", "--json", "v.json", "--plot", "v.png", cwd=tiny)
    assert v.returncode == 0, v.stderr
    assert "end-to-end error" in v.stdout
    assert sum("--quick" in line for line in v.stderr.splitlines()) == 1  # one warning about the quick file
    rows = list(csv.DictReader((tiny / "v.csv").open()))
    assert rows and all(r["batch"] == "2" for r in rows)  # the run's batch, not a GEMM's
    assert {r["gemm_batch"] for r in rows if r["kind"] == "bgemm"} == {str(2 * TINY["heads"])}
    assert all(float(r["measured_seconds"]) > 0 and float(r["predicted_seconds"]) > 0 for r in rows)
    assert all(abs(float(r["relative_error"]) - abs(float(r["predicted_seconds"]) - float(r["measured_seconds"]))
                   / float(r["measured_seconds"])) < 1e-9 for r in rows)
    doc = json.loads((tiny / "v.json").read_text())
    assert doc["run"]["rounds"] == 2 and doc["run"]["calibration"]["grid"] == "quick"
    assert doc["probe"]["calibration"]["reference_seconds"] > 0 and "warning" in doc["probe"]
    assert (tiny / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_refuses_bad_options_before_measuring(tiny):
    for args, word in ((["--out", "missing/dev.yaml"], "does not exist"), (["--out", "dev.txt"], ".yaml"),
                       (["--out", "dev.yaml", "--name", ""], "--name"), (["--out", "dev.yaml", "--rounds", "0"], "--rounds"),
                       (["--out", "dev.yaml", "--json", "dev.yaml"], "same file")):
        t = time.monotonic()
        p = tstack("calibrate", "--quick", *args, cwd=tiny)
        assert p.returncode == 2 and word in p.stderr, (args, p.stderr)
        assert time.monotonic() - t < 30
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]


# ---------------------------------------------------------------------------------------------- interruption

def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*CMD, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_stderr_line(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The first line on stderr (the command's note that work starts)."""
    deadline = time.monotonic() + timeout
    line = proc.stderr.readline()
    assert line and time.monotonic() < deadline, "the command printed nothing before its work"
    return line


def _interrupt(proc: subprocess.Popen, sig: int, wait_children: bool = False) -> tuple[int, str, set[int]]:
    first = _wait_for_stderr_line(proc)
    time.sleep(2.5)
    children = _descendants(proc.pid)
    if wait_children:
        deadline = time.monotonic() + 120
        while not children and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            children = _descendants(proc.pid)
        time.sleep(1.0)
        children = _descendants(proc.pid)
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=60)
    return proc.returncode, first + rest, children


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_profile_leaves_nothing(tiny, sig, code):
    proc = _start(["profile", "tiny.yaml", "--batch", "1,2,3,4", "--seq", "16,32", "--threads", "1",
                   "--repeats", "5000", "--out", "rows.csv", "--json", "p.json", "--trace", "t.json"], tiny)
    rc, err, children = _interrupt(proc, sig)
    assert rc == code, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("profile:", "warning:"))]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), err
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]  # no rows yet, no lock file, no temporary file
    assert not any(_alive(c) for c in children)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_calibrate_leaves_nothing(tiny, sig, code):
    proc = _start(["calibrate", "--quick", "--threads", "1", "--rounds", "50", "--out", "dev.yaml", "--json", "c.json"],
                  tiny)
    rc, err, children = _interrupt(proc, sig)
    assert rc == code, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("calibrate:", "warning:"))]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), err
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]
    assert not any(_alive(c) for c in children)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="the cachestat simulation needs valgrind")
def test_terminated_cachestat_profile_kills_the_simulator(tiny):
    before = set(Path("/tmp").glob("tstack-cachestat-*"))
    proc = _start(["profile", "tiny.yaml", "--seq", "16", "--threads", "1", "--repeats", "2",
                   "--profile-mode", "cachestat"], tiny)
    rc, err, children = _interrupt(proc, signal.SIGTERM, wait_children=True)
    if rc == 0:
        pytest.skip("this machine has hardware counters: no simulator process to stop")
    assert rc == 143, err
    assert children, "the simulator never started"
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(c) for c in children)
    assert set(Path("/tmp").glob("tstack-cachestat-*")) <= before
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]


def test_a_second_profile_on_the_same_rows_file_is_refused(tiny):
    first = _start(["profile", "tiny.yaml", "--batch", "1,2,3,4", "--seq", "16,32", "--threads", "1", "--repeats", "5000",
                    "--out", "same.csv"], tiny)
    try:
        _wait_for_stderr_line(first)  # the rows file's lock is held from here
        second = tstack("profile", "tiny.yaml", "--seq", "16", "--threads", "1", "--repeats", "2", "--out", "same.csv",
                        cwd=tiny)
        assert second.returncode == 2
        assert "being written by another tstack run" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143
    assert sorted(os.listdir(tiny)) == ["tiny.yaml"]
