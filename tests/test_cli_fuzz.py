"""Bad input on every command and every option: one clear line, exit code 2, no traceback, no hang, no file left.

The commands and their options are read from the CLI itself (typer's click tree), so a new option is fuzzed
without editing this file. Each case starts from a small valid command line (BASE) and replaces one option
or argument by a value that is invalid for its kind:

- integers: not a number, a fraction, negative, 2**64;
- floats: NaN, infinity, not a number;
- strings (names, lists, choices): empty, 100,000 characters, rich markup, a NUL byte;
- output paths: empty, a directory, a device node, a symbolic link, a missing folder, the same file twice;
- input paths: empty, a directory, a device node, a missing file, random bytes.

Every case runs in-process through ``tstack.cli.core.run`` under an alarm (a case that outlives it is a hang).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tstack.cli.core import app, run

CASE_LIMIT_S = 60  # first imports of torch/transformers happen inside a case
OUTPUTS = {"json", "csv", "plot", "out", "trace"}

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# A small valid command line per command: required arguments and options that keep a valid run short.
BASE: dict[tuple[str, ...], list[str]] = {
    ("analyze",): ["bert-base", "--seq", "64"],
    ("sweep",): ["bert-base", "--seq", "64", "--executor", "serial"],
    ("presets",): [],
    ("repro",): ["002"],
    ("schema",): ["analyze"],
    ("profile",): ["bert-base", "--seq", "16", "--repeats", "1", "--warmup", "0"],
    ("calibrate",): ["--out", "dev.yaml", "--quick", "--repeats", "1", "--rounds", "1"],
    ("validate",): ["bert-base", "--device", "a100", "--seq", "16", "--repeats", "1", "--warmup", "0"],
    ("opt", "bench"): ["bert", "--seq", "64", "--repeats", "1"],
    ("opt", "tradeoff"): ["minilm", "--thresholds", "1e-3"],
    ("opt", "schedule"): ["--heads", "2", "--chunks", "4", "--repeats", "1"],
    ("int", "convert"): ["minilm", "--out", "m.pt"],
    ("int", "accuracy"): ["m.pt"],
    ("int", "errors"): ["--op", "gelu"],
    ("accel", "run"): ["bert-base", "--seq", "64"],
    ("accel", "gemm"): ["64", "64", "64"],
    ("accel", "dse"): ["bert-base", "--seq", "64", "--executor", "serial"],
    ("accel", "repro"): ["--seq", "64"],
    ("fpga", "run"): ["nlpfast-bert", "--seq", "64"],
    ("fpga", "allocate"): ["nlpfast-bert", "--seq", "64"],
    ("fpga", "cross"): ["nlpfast-bert-f4x", "--designed-for", "nlpfast-bert-h4x"],
    ("fuse",): ["bert-base", "--seq", "64", "--fusion", "none,flash"],
    ("nmc",): ["bert-base", "--seq", "64"],
    ("cluster", "run"): ["bert-base", "--seq", "64"],
    ("cluster", "search"): ["bert-base", "--gpus", "4", "--global-batch", "8", "--seq", "64", "--executor", "serial"],
    ("nas", "train"): ["--out", "s.pt", "--corpus", "shipped", "--steps", "1", "--batch", "1", "--eval-windows", "1"],
    ("nas", "search"): ["s.pt", "--budget", "2", "--population", "2", "--iterations", "1", "--executor", "serial"],
    ("nas", "plot"): ["result.json", "--out", "fig.png"],
    ("nas", "measure"): ["result.json", "--device", "a100", "--repeats", "1"],
    ("import-trace",): [str(EXAMPLES / "bert-tiny-cpu-trace.json"), "--model", str(EXAMPLES / "bert-tiny"), "--batch",
                        "2", "--seq", "16"],
}

# Values that are valid for one option although invalid for its kind elsewhere: (command, option, value).
VALID_EXCEPTIONS = {
    (("opt", "schedule"), "--replay-threads", ""),  # '' means no replay
}


class Hang(BaseException):
    """The alarm went off: the case did not end within CASE_LIMIT_S."""


@functools.lru_cache(maxsize=1)
def _commands():
    """(path, click command) for every leaf command of the tstack CLI."""
    import typer.main

    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        else:
            out.append((path, cmd))

    walk(root, ())
    return out


def _kind(param) -> str:
    name = (param.name or "").lower()
    annotation = param.type_descriptor.annotation
    types = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    if getattr(param, "is_flag", False) or bool in types:
        return "flag"
    flag = param.opts[0].lstrip("-").replace("-", "_") if param.opts else ""
    if name in OUTPUTS or flag in OUTPUTS or name.endswith("_out"):
        return "out"
    if Path in types:
        return "in"
    if int in types:
        return "int"
    if float in types:
        return "float"
    return "str"


BAD = {
    "int": ["abc", "1.5", "-1", str(2**64)],
    "float": ["nan", "inf", "abc"],
    "str": ["", "x" * 100_000, "[/x]", "a\x00b"],
    "out": ["", "<dir>", "/dev/null", "<symlink>", "missing/o.json", "<same>", "n" * 300],
    "in": ["", "<dir>", "/dev/null", "missing.file", "<garbage>"],
}


# Options named like an output that read a file on one command: (command, option).
INPUT_OPTIONS = {(("validate",), "--trace")}


def _kind_at(path, param) -> str:
    return "in" if (path, param.opts[0] if param.opts else None) in INPUT_OPTIONS else _kind(param)


def _outputs(path) -> list[str]:
    cmd = dict(_commands())[path]
    return [p.opts[0] for p in cmd.params if p.opts and p.opts[0].startswith("--") and _kind_at(path, p) == "out"]


def _cases():
    cases = []
    for path, cmd in _commands():
        if path not in BASE:
            cases.append((path, None, None, None))  # reported by test_every_command_has_a_base
            continue
        for param in cmd.params:
            kind = _kind_at(path, param)
            if kind == "flag" or param.name in ("help",):
                continue
            flag = param.opts[0] if param.opts and param.opts[0].startswith("-") else None
            for value in BAD[kind]:
                if (path, flag, value) in VALID_EXCEPTIONS or (value == "<same>" and len(_outputs(path)) < 2):
                    continue
                cases.append((path, flag or param.name, kind, value))
    return cases


CASES = [c for c in _cases() if c[1] is not None]


def test_every_command_has_a_base():
    missing = [" ".join(p) for p, _, _, _ in _cases() if _ is None]
    assert not missing, f"add a small valid command line to BASE for: {missing}"


def _materialize(value: str, kind: str, cwd: Path) -> str:
    if value == "<dir>":
        (cwd / "adir").mkdir(exist_ok=True)
        return str(cwd / "adir")
    if value == "<symlink>":
        target = cwd / "elsewhere.txt"
        target.write_text("keep me\n")
        link = cwd / "link.json"
        if not link.is_symlink():
            link.symlink_to(target)
        return str(link)
    if value == "<garbage>":
        (cwd / "garbage.bin").write_bytes(os.urandom(512))
        return str(cwd / "garbage.bin")
    return value


def _argv(path, option, kind, value, cwd: Path) -> list[str]:
    base = list(BASE[path])
    value = _materialize(value, kind, cwd)
    if option.startswith("-"):
        if value == "<same>":  # the same file for this output and another one
            other = next(o for o in _outputs(path) if o != option)
            base = [a for i, a in enumerate(base) if a != other and (i == 0 or base[i - 1] != other)]
            return [*path, *base, option, "same.out", other, "same.out"]
        if option in base:  # replace the base's value
            i = base.index(option)
            base[i + 1] = value
            return [*path, *base]
        return [*path, *base, option, value]
    # a positional argument: replace the first positional of the base
    if value == "<same>":
        value = "same.out"
    positional = [i for i, a in enumerate(base) if not a.startswith("-") and (i == 0 or not base[i - 1].startswith("-"))]
    if positional:
        base[positional[0]] = value
        return [*path, *base]
    return [*path, value, *base]


def _files(cwd: Path) -> set[str]:
    return {str(p.relative_to(cwd)) for p in cwd.rglob("*")}


def _on_alarm(signum, frame):
    raise Hang()


def run_case(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run one command line in ``cwd``; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(CASE_LIMIT_S)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    except Hang:
        pytest.fail(f"hang: {argv[:6]} ran past {CASE_LIMIT_S} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


def check_bad_input(path, option, kind, value, cwd: Path) -> None:
    argv = _argv(path, option, kind, value, cwd)
    value = _materialize(value, kind, cwd)
    before = _files(cwd)
    code, _, err = run_case(argv, cwd)
    shown = f"{' '.join(a[:40] for a in argv)!r}"
    assert "Traceback" not in err, f"{shown}: {err[-2000:]}"
    assert code == 2, f"{shown}: exit {code}, stderr {err[-500:]!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{shown}: {err[-1000:]!r}"
    assert len(lines[0]) < 2000, f"{shown}: the message repeats the whole value"
    name = option.lstrip("-").replace("_", "-")
    named = name in lines[0].lower().replace("_", "-") or "path" in lines[0].lower() or (value and value in lines[0])
    assert named, \
        f"{shown}: the message does not name {option}: {lines[0][:300]!r}"
    assert _files(cwd) == before, f"{shown}: left files behind: {_files(cwd) ^ before}"
    assert (cwd / "elsewhere.txt").read_text() == "keep me\n" if (cwd / "elsewhere.txt").exists() else True


@pytest.mark.parametrize(("path", "option", "kind", "value"), CASES,
                         ids=[f"{' '.join(p)} {o} {k}:{v[:12]!r}" for p, o, k, v in CASES])
def test_bad_value_ends_in_one_line(path, option, kind, value, tmp_path):
    if path in (("profile",), ("calibrate",), ("validate",), ("opt", "bench"), ("opt", "tradeoff"),
                ("opt", "schedule"), ("int", "convert"), ("int", "accuracy"), ("nas", "train"), ("nas", "search")):
        pytest.importorskip("torch")
    check_bad_input(path, option, kind, value, tmp_path)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(case=st.sampled_from([c for c in CASES if c[0][0] in ("analyze", "sweep", "accel", "fpga", "repro", "presets",
                                                            "cluster")]),
       junk=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30))
def test_random_junk_in_analytic_commands(case, junk, tmp_path_factory):
    """Random text where a number, a name or a path goes: exit 2 with one line, or a clean success."""
    path, option, kind, _ = case
    if kind in ("out", "in"):
        return
    cwd = tmp_path_factory.mktemp("junk")
    argv = _argv(path, option, kind, junk, cwd)
    code, _, err = run_case(argv, cwd)
    assert "Traceback" not in err and "internal error" not in err, f"{argv!r}: {err[-1500:]}"
    assert code in (0, 2), f"{argv!r}: exit {code}"
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv!r}: {err!r}"
