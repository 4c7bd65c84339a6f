"""Rows appended as they finish, so an interrupted sweep keeps every finished configuration."""

from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from tstack.errors import SpecError, TstackError
from tstack.report.files import all_or_nothing

SUFFIXES = (".csv", ".json", ".jsonl")


class RowWriter:
    """Appends rows to .csv or .jsonl (one flush per batch of rows); .json is rewritten atomically each time.

    The file starts empty at the first append; a batch is either all there or not at all
    for .json, and whole lines for .csv/.jsonl (a crash mid-line can cut only the last line).
    One writer per file: the writer holds an exclusive lock on a hidden ``.NAME.lock`` beside the file from
    construction to ``close()``, and a second writer (another process) is refused at once.
    """

    def __init__(self, path: Path, option: str = "--out") -> None:
        if path.suffix not in SUFFIXES:
            raise SpecError([f"{option}={str(path)!r} must end in {', '.join(SUFFIXES)}"])
        if not path.parent.exists():
            raise TstackError(f"output folder {str(path.parent)!r} does not exist")
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] | None = None
        self.lock_path = path.parent / f".{path.name}.lock"
        self._lock = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise TstackError(f"{option}={str(path)!r} is being written by another tstack run; give another file") from None

    def close(self) -> None:
        """Release the lock (and remove its file)."""
        if self._lock is not None:
            self.lock_path.unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.path.suffix == ".json":
            self.rows += rows
            with all_or_nothing([self.path]) as tmp:
                tmp[self.path].write_text(json.dumps(self.rows, indent=1))
            return
        first = self.columns is None
        if first:
            self.columns = list(rows[0])
        with self.path.open("w" if first else "a", newline="") as f:
            if self.path.suffix == ".jsonl":
                f.writelines(json.dumps(r) + "\n" for r in rows)
            else:
                w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                if first:
                    w.writeheader()
                w.writerows(rows)
