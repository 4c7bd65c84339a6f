"""Pieces both halves of the CLI use: comma-separated integer options and the progress bar."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from tstack.errors import SpecError


def parse_ints(option: str, text: str) -> list[int]:
    """'4,8,16' -> [4, 8, 16]; ranges are checked where the values land (RunSpec, ModelSpec)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError([f"{option}={text!r} must be a comma-separated list of integers"]) from None
    if not values:
        raise SpecError([f"{option}={text!r} has no values"])
    return values


def progress_bar() -> Progress:
    """A transient bar on stderr, so stdout keeps only results."""
    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)
