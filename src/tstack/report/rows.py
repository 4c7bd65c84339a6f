"""Rows appended as they finish, so an interrupted sweep keeps every finished configuration."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tstack.errors import SpecError, TstackError
from tstack.report.files import all_or_nothing

SUFFIXES = (".csv", ".json", ".jsonl")


class RowWriter:
    """Appends rows to .csv or .jsonl (one flush per batch of rows); .json is rewritten atomically each time.

    The file starts empty at the first append; a batch is either all there or not at all
    for .json, and whole lines for .csv/.jsonl (a crash mid-line can cut only the last line).
    """

    def __init__(self, path: Path) -> None:
        if path.suffix not in SUFFIXES:
            raise SpecError([f"--out={str(path)!r} must end in {', '.join(SUFFIXES)}"])
        if not path.parent.exists():
            raise TstackError(f"output folder {str(path.parent)!r} does not exist")
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] | None = None

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
