"""Pieces every command uses: consoles, verbosity, output paths and the output contract, progress, option parsers.

- ``console()``: rich markup off (names from files are printed, never interpreted) and, when output is not a
  terminal, a width wide enough that no table is cut.
- ``Outputs``: the ``--json``, ``--csv``, ``--plot`` (and other) output paths of a command, checked before any work
  and written all-or-nothing after it (docs/output.md).
- ``progress()``: a rich bar with ETA in a terminal, plain periodic lines on stderr otherwise, nothing with ``-q``.
- ``parse_ints``, ``parse_floats``, ``parse_names``, ``check_int``, ``check_float``: options checked at the boundary.
"""

from __future__ import annotations

import math
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
from typer.core import TyperGroup

from tstack.errors import SpecError, TstackError
from tstack.hardware.device import DeviceSpec
from tstack.report import files, output
from tstack.spec import RunSpec

STATE = {"verbosity": 0}  # -1 quiet (-q), 0 normal, 1 verbose (-v)
PIPE_WIDTH = 1000  # columns of a console that is not a terminal: tables are never cut when piped
PLAIN_PROGRESS_EVERY_S = 10.0
MAX_INT = 2**31 - 1

JSON_OPT = typer.Option(None, "--json", help="write the results as a JSON document (docs/output.md); '-' for stdout")
CSV_OPT = typer.Option(None, "--csv", help="write the result rows as CSV; '-' for stdout")
PLOT_OPT = typer.Option(None, "--plot", help="write a figure (.png, .svg or .pdf)")
EXECUTION_OPT = typer.Option(None, help="eager (a launch per kernel, framework copies) | graphs (CUDA graphs or "
                                         "compiled; default: eager, graphs on an accelerator)")
ATTENTION_OPT = typer.Option("unfused", help="unfused (score matrix in memory) | sdpa (fused flash attention)")


def console(stderr: bool = False) -> Console:
    """A console that never interprets markup and never cuts a table when piped."""
    c = Console(stderr=stderr, markup=False, highlight=False)
    if not c.is_terminal:
        c = Console(stderr=stderr, markup=False, highlight=False, width=PIPE_WIDTH)
    return c


def quiet() -> bool:
    return STATE["verbosity"] < 0


def note(text: str) -> None:
    """An informational line on stderr (warnings, notes); -q silences it."""
    if not quiet():
        print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- output paths and the output contract

def check_output_paths(paths: Mapping[str, str | Path | None], stdout_ok: Iterable[str] = ("--json", "--csv")) -> None:
    """Refuse unusable outputs before any work: every problem of every path in one SpecError.

    Refused: an empty path; '-' for an output that cannot go to stdout, or two outputs on stdout; a directory,
    a symbolic link, a device node, FIFO or socket at the path; a missing or unwritable folder; one file for two
    outputs (one would be lost).
    """
    stdout_ok = set(stdout_ok)
    problems: list[str] = []
    seen: dict[Path, str] = {}
    on_stdout: list[str] = []
    for option, p in paths.items():
        if p is None:
            continue
        text = str(p)
        if text.strip() == "":
            problems.append(f"{option}={text!r} is empty: give a file path" + (" or '-' for standard output"
                                                                              if option in stdout_ok else ""))
            continue
        if text == "-":
            if option in stdout_ok:
                on_stdout.append(option)
            else:
                problems.append(f"{option}='-': this output cannot go to standard output; give a file path")
            continue
        try:
            key = _check_output_path(option, Path(text), problems)
        except OSError as e:  # a name too long, a loop of links...: the system's own reason
            problems.append(f"{option}={text[:60]!r} cannot be used: {e.strerror or e}")
            continue
        if key in seen:
            problems.append(f"{option}={text[:60]!r} is the same file as {seen[key]}; one of the outputs would be lost")
        seen.setdefault(key, option)
    if len(on_stdout) > 1:
        problems.append(f"{' and '.join(on_stdout)} both write to standard output ('-'); give one of them a file path")
    if problems:
        raise SpecError(problems)


def _check_output_path(option: str, path: Path, problems: list[str]) -> Path:
    """Problems of one output path; its resolved location, to find two outputs on one file."""
    text = str(path)[:60]
    if path.is_symlink():
        problems.append(f"{option}={text!r} is a symbolic link; tstack does not write through links: give the real path")
    elif path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            problems.append(f"{option}={text!r} is a directory; give a file path")
        elif not stat.S_ISREG(mode):
            problems.append(f"{option}={text!r} is not a regular file (a device, FIFO or socket)")
        elif not os.access(path, os.W_OK):
            problems.append(f"{option}={text!r} exists and is not writable")
    parent = path.parent
    if not parent.is_dir():
        problems.append(f"{option}={text!r}: folder {str(parent)[:60]!r} does not exist")
        return path
    if not os.access(parent, os.W_OK | os.X_OK):
        problems.append(f"{option}={text!r}: folder {str(parent)[:60]!r} is not writable")
    if len(path.name.encode()) > 240:  # the temporary file beside it adds a prefix and a suffix
        problems.append(f"{option}={text!r}…: the file name is longer than 240 bytes")
    return parent.resolve() / path.name


class Outputs:
    """A command's result files: checked on construction (before work), written together (all-or-nothing)."""

    def __init__(self, json: Path | None = None, csv: Path | None = None, plot: Path | None = None,
                 **others: Path | None) -> None:
        self.json, self.csv, self.plot = json, csv, plot
        self.others = {f"--{k.replace('_', '-')}": v for k, v in others.items()}
        check_output_paths({"--json": json, "--csv": csv, "--plot": plot, **self.others})
        if plot is not None:
            files.check_figure_format("--plot", plot)

    @property
    def stdout_taken(self) -> bool:
        """True when JSON or CSV goes to stdout: the human tables are then left out."""
        return str(self.json) == "-" or str(self.csv) == "-"

    @property
    def plot_format(self) -> str:
        return Path(self.plot).suffix.lstrip(".").lower() if self.plot else ""

    def write(self, doc: Mapping[str, Any] | None = None, rows: Iterable[Mapping[str, Any]] | None = None,
              figure: Callable[[Path], None] | None = None,
              extra: Mapping[str, Callable[[Path], None]] | None = None) -> None:
        """Write the JSON document, the CSV rows, the figure (``figure(tmp_path)``) and other files, all or none.

        ``rows`` defaults to the document's records; ``extra`` maps an option name of ``others`` to its writer.
        """
        if self.plot is not None and figure is None:
            raise SpecError(["--plot: this command draws no figure"])
        rows = list(rows) if rows is not None else (list(doc["records"]) if doc is not None else [])
        extra = dict(extra or {})
        targets = [self.json, self.csv, self.plot, *(self.others[k] for k in extra)]
        with files.all_or_nothing(targets) as tmp:
            if self.json is not None:
                if doc is None:
                    raise SpecError(["--json: this command has no JSON output"])
                _put(self.json, tmp, output.to_json(doc))
            if self.csv is not None:
                _put(self.csv, tmp, output.to_csv(rows))
            if self.plot is not None and figure is not None:
                figure(tmp[Path(self.plot)])
            for option, writer in extra.items():
                writer(tmp[Path(self.others[option])])


def _put(path: Path, tmp: dict[Path, Path], text: str) -> None:
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        tmp[Path(path)].write_text(text)


# ---------------------------------------------------------------- progress

def duration(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _PlainProgress:
    """Lines like 'calibrate: 120/13494 points (0.9%), 30 s elapsed, about 55 min left' every few seconds.

    Work that ends within the first ``first_s`` seconds prints nothing; longer work prints a line at the first
    item after that, then every ``every_s`` seconds, and a last line when it ends.
    """

    def __init__(self, description: str, total: int, unit: str, every_s: float, first_s: float) -> None:
        self.description, self.total, self.unit, self.every_s = description, total, unit, every_s
        self.done = 0
        self.start = time.monotonic()
        self.last = self.start - every_s + first_s
        self.printed = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.printed = True
            self.last = now
            elapsed = now - self.start
            left = elapsed * (self.total - self.done) / self.done if self.done else math.inf
            eta = f", about {duration(left)} left" if math.isfinite(left) else ""
            print(f"{self.description}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.1f}%), "
                  f"{duration(elapsed)} elapsed{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.printed:
            elapsed = duration(time.monotonic() - self.start)
            print(f"{self.description}: {self.done}/{self.total} {self.unit} in {elapsed}", file=sys.stderr, flush=True)


@contextmanager
def progress(description: str, total: int, unit: str = "items", every_s: float = PLAIN_PROGRESS_EVERY_S,
             first_s: float = 2.0) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for ``total`` items of work: a bar with ETA in a terminal, plain lines otherwise, none with -q."""
    total = max(1, int(total))
    if quiet():
        yield lambda n=1: None
        return
    err = Console(stderr=True, markup=False, highlight=False)
    if err.is_terminal:
        bar = Progress(f"{description}", BarColumn(), MofNCompleteColumn(), f"{unit}", TimeElapsedColumn(),
                       "ETA", TimeRemainingColumn(), console=err, transient=True)
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    plain = _PlainProgress(description, total, unit, every_s, first_s)
    yield plain.advance
    plain.close()


# ---------------------------------------------------------------- option parsers

def check_int(option: str, value: int | None, lo: int = 1, hi: int = MAX_INT) -> int | None:
    """``value`` in [lo, hi] (None passes through for optional options)."""
    if value is not None and not lo <= value <= hi:
        raise SpecError([f"{option}={value} must be an integer in [{lo}, {hi}]"])
    return value


def check_float(option: str, value: float, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite ``value`` in [lo, hi]."""
    if not math.isfinite(value) or not lo <= value <= hi:
        raise SpecError([f"{option}={value!r} must be a finite number in [{lo:g}, {hi:g}]"])
    return value


def parse_ints(option: str, text: str, lo: int = 1, hi: int = MAX_INT) -> list[int]:
    """'4,8,16' -> [4, 8, 16]; each value in [lo, hi]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError([f"{option}={text[:60]!r} must be a comma-separated list of integers"]) from None
    if not values:
        raise SpecError([f"{option}={text[:60]!r} has no values"])
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise SpecError([f"{option}={text[:60]!r}: {', '.join(map(str, bad[:5]))} not in [{lo}, {hi}]"])
    return values


def parse_floats(option: str, text: str, lo: float = -math.inf, hi: float = math.inf) -> list[float]:
    """'1e-4,1e-3' -> [1e-4, 1e-3]; each finite and in [lo, hi]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError([f"{option}={text[:60]!r} must be comma-separated numbers"]) from None
    if not values:
        raise SpecError([f"{option}={text[:60]!r} has no values"])
    bad = [v for v in values if not (math.isfinite(v) and lo <= v <= hi)]
    if bad:
        raise SpecError([f"{option}={text[:60]!r}: {', '.join(map(repr, bad[:5]))} must be finite numbers in "
                         f"[{lo:g}, {hi:g}]"])
    return values


def check_choice(option: str, value: str, allowed: Iterable[str]) -> str:
    """One value, one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise SpecError([f"{option}={value[:40]!r} is not one of {', '.join(allowed)}"])
    return value


def parse_names(option: str, text: str, allowed: Iterable[str] | None = None) -> list[str]:
    """'a,b' -> ['a', 'b']; each one of ``allowed`` when given."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise SpecError([f"{option}={text[:60]!r} has no values"])
    if allowed is not None:
        allowed = tuple(allowed)
        bad = [v for v in names if v not in allowed]
        if bad:
            raise SpecError([f"{option}={text[:60]!r}: {', '.join(repr(b[:40]) for b in bad[:5])} not in "
                             f"{', '.join(allowed)}"])
    return names


def need_torch() -> None:
    """One line, before any work, when a command that runs PyTorch finds it missing."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise TstackError("this command runs PyTorch, which is not installed: pip install torch==2.13.0 "
                          "(CPU build; see the README for GPUs)")


def worker_count(option: str, workers: int | None) -> int:
    """Worker processes: at least 1, at most the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers is None:
        return cores
    if not 1 <= workers <= cores:
        raise SpecError([f"{option}={workers} must be in [1, {cores}] (the cores available to this process)"])
    return workers


class DefaultRunGroup(TyperGroup):
    """A command group whose unknown first word is the model of its `run` command: `tstack accel bert-base` is
    `tstack accel run bert-base` (accel, fpga, cluster)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


def check_mode_on(target: Any, mode: str) -> None:
    """An accelerator target is modelled for inference only: refuse another --mode in one line."""
    if not isinstance(target, DeviceSpec) and mode != "infer":
        raise SpecError([f"--mode={mode[:40]!r}: {target.name} is an accelerator, modelled for inference only "
                         "(--mode infer)"])


def run_spec(default_seq: int, seq: int | None, **fields: Any) -> RunSpec:
    """The run of the options; without --seq a decode step has 1 new token and a prefill the model's default length."""
    return RunSpec(seq=(1 if fields.get("phase") == "decode" else default_seq) if seq is None else seq, **fields)
