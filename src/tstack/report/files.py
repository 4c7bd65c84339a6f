"""Atomic file output: a failed or interrupted write leaves no partial file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tstack.errors import SpecError, TstackError

FIGURE_FORMATS = ("png", "svg", "pdf")


@contextmanager
def all_or_nothing(paths: Iterable[str | Path | None]) -> Iterator[dict[Path, Path]]:
    """A temporary path per output (None and '-' skipped); all move into place only if the block succeeds."""
    targets = [Path(p) for p in paths if p is not None and str(p) != "-"]
    for t in targets:
        if not t.parent.exists():
            raise TstackError(f"output folder {str(t.parent)!r} does not exist")
    tmps: dict[Path, Path] = {}
    try:
        for t in targets:
            fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=t.suffix, dir=t.parent)
            os.close(fd)
            tmps[t] = Path(tmp)
        yield tmps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual permissions
        for t, tmp in tmps.items():
            os.chmod(tmp, mode)
            os.replace(tmp, t)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()



def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def check_figure_format(option: str, path: str | Path) -> None:
    """Refuse an unsupported figure file type before anything is computed or written."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise SpecError([f"{option}={str(path)!r} must end in {', '.join('.' + f for f in FIGURE_FORMATS)}"])


def write_trace(trace: Mapping[str, Any], path: str | Path) -> Path:
    """Write the trace JSON to ``path`` atomically: on any failure no partial file is left behind."""
    if str(path) == "-":
        raise TstackError("a trace needs a file path, not '-'")
    target = Path(path)
    with all_or_nothing([target]) as tmps:
        try:
            text = json.dumps(trace, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as e:
            raise TstackError(f"trace {str(target)!r} is not valid JSON data: {' '.join(str(e).split())}") from None
        tmps[target].write_text(text, encoding="utf-8")
    return target
