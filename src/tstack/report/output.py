"""The one output contract: every command's JSON document and CSV rows (docs/output.md).

A JSON document is an envelope around a command's records:

    {"schema": "tstack.output", "schema_version": 1, "tstack_version": "...", "command": "analyze",
     "run": {...everything that describes the run: model, RunSpec fields, device, the command's options...},
     "summary": {...} | null, "records": [{...}, ...], ...command-specific sections...}

Values are SI (seconds, bytes, joules, FLOP, hertz); a field that carries a unit names it
(``seconds``, ``bytes``, ``joules``, ``flop_per_second``...). Non-finite numbers become null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any

SCHEMA = "tstack.output"
SCHEMA_VERSION = 1


def tstack_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tstack")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def plain(value: Any) -> Any:
    """JSON-ready: dataclasses and mappings to dicts, numpy scalars to Python, inf/NaN to None, tuples to lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name) for f in fields(value)})
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def document(command: str, run: Mapping[str, Any], records: Iterable[Mapping[str, Any]],
             summary: Mapping[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """The envelope of one command's results."""
    doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tstack_version": tstack_version(), "command": command,
           "run": plain(dict(run)), "summary": plain(dict(summary)) if summary is not None else None,
           "records": [plain(dict(r)) for r in records]}
    doc.update({k: plain(v) for k, v in sections.items()})
    return doc


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def to_csv(records: Iterable[Mapping[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame.from_records([plain(dict(r)) for r in records]).to_csv(index=False)


def run_description(model: Any = None, run: Any = None, **more: Any) -> dict[str, Any]:
    """The ``run`` section: the model's name and spec, every RunSpec field, and the command's own options."""
    out: dict[str, Any] = {}
    if model is not None:
        out["model"] = model.name
        out["model_spec"] = asdict(model) if is_dataclass(model) else model
    if run is not None:
        out["spec"] = asdict(run) if is_dataclass(run) else dict(run)
    out.update(more)
    return out


def breakdown_document(command: str, b: Any, **options: Any) -> dict[str, Any]:
    """A Breakdown (predicted or measured) as a document: one record per op, the totals as the summary."""
    return document(command, run_description(b.model, b.run, device=b.device, options=options), b.records(),
                    summary=b.summary())
