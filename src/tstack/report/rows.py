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
from tstack.report.output import plain

SUFFIXES = (".csv", ".json", ".jsonl")


class RowWriter:
    """Appends rows to .csv or .jsonl (one flush per batch of rows); .json is rewritten atomically each time.

    The file starts empty at the first append; a batch is either all there or not at all
    for .json, and whole lines for .csv/.jsonl (a crash mid-line can cut only the last line).
    Values are JSON-ready (report.output.plain: non-finite numbers are null). A CSV batch that brings new
    columns rewrites the file (all-or-nothing) with every column, so no value is dropped.
    One writer per file: the writer holds an exclusive lock on a hidden ``.NAME.lock`` beside the file from
    construction to ``close()``, and a second writer (another process) is refused at once. The lock is taken on
    the file the path names at that moment (a lock file removed by a writer that just closed is taken again).
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
        self._lock: int | None = None
        for _ in range(10):
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TstackError(f"{option}={str(path)!r} is being written by another tstack run; give another "
                                  "file") from None
            if _same_file(fd, self.lock_path):
                self._lock = fd
                break
            os.close(fd)  # the lock file was removed between open and lock: take the new one
        else:
            raise TstackError(f"{option}={str(path)!r}: could not lock {str(self.lock_path)!r}")

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
        rows = [plain(dict(r)) for r in rows]
        if self.path.suffix == ".json":
            self.rows += rows
            with all_or_nothing([self.path]) as tmp:
                tmp[self.path].write_text(json.dumps(self.rows, indent=1, allow_nan=False))
            return
        if self.path.suffix == ".jsonl":
            with self.path.open("w" if self.columns is None else "a") as f:
                f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in rows)
            self.columns = []
            return
        first = self.columns is None
        columns = list(self.columns or [])
        new = [k for r in rows for k in r if k not in columns]
        columns += list(dict.fromkeys(new))
        self.rows += rows
        if not first and new:  # every column, every row so far: rewrite the file whole
            with all_or_nothing([self.path]) as tmp, tmp[self.path].open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(self.rows)
        else:
            with self.path.open("w" if first else "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                if first:
                    w.writeheader()
                w.writerows(rows)
        self.columns = columns


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
