"""JSON Schema (draft 2020-12) of every command's JSON document: the envelope and each command's records.

`tstack schema COMMAND` prints one; docs/output.md explains the conventions. A record schema lists the fields
every record carries (more may follow: a schema is open, so adding a field is not a breaking change; renaming
or removing one raises SCHEMA_VERSION).
"""

from __future__ import annotations

from typing import Any

from tstack.report.output import SCHEMA, SCHEMA_VERSION

NUM = {"type": ["number", "null"]}  # null: a value that does not apply or is not finite
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
OPT_STR = {"type": ["string", "null"]}

RUN_SPEC = {"type": "object", "required": ["mode", "batch", "seq", "tgt_seq", "precision", "optimizer", "checkpoint",
                                           "dropout", "phase", "kv_len"],
            "properties": {"mode": STR, "batch": INT, "seq": INT, "tgt_seq": INT, "precision": STR, "optimizer": STR,
                           "checkpoint": STR, "dropout": BOOL, "phase": STR, "kv_len": INT}}

OP_RECORD = {"kind": STR, "name": STR, "part": STR, "layer": STR, "block": STR, "group": STR, "nlpfast": STR,
             "pass": STR, "dtype": STR, "M": INT, "N": INT, "K": INT, "gemm_batch": INT, "count": INT, "flops": NUM,
             "bytes": NUM, "intensity_flop_per_byte": NUM, "seconds": NUM, "bound": STR, "utilization": NUM}

# command -> (required fields of `run`, required fields of each record with their types)
COMMANDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "analyze": ({"model": STR, "model_spec": {"type": "object"}, "spec": RUN_SPEC, "device": STR,
                 "options": {"type": "object"}}, OP_RECORD),
    "sweep": ({"model": STR, "spec": RUN_SPEC, "device": STR, "axes": {"type": "object"}, "executor": STR},
              {"model": STR, "device": STR, "mode": STR, "batch": INT, "seq": INT, "layers": INT, "hidden": INT,
               "ffn": INT, "heads": INT, "precision": STR, "group": STR, "seconds": NUM, "share": NUM, "flops": NUM,
               "bytes": NUM, "kernels": INT}),
    "presets": ({}, {"type": STR, "name": STR, "description": STR}),
    "repro": ({"paper": STR, "device": STR}, {"key": STR, "claim": STR, "paper": STR, "unit": STR, "note": STR,
                                               "tstack": {"type": ["number", "string", "null"]}, "gap": NUM}),
}


def schema(command: str) -> dict[str, Any]:
    """The JSON Schema of ``command``'s document (a command without record fields gets the envelope only)."""
    run, record = COMMANDS.get(command, ({}, {}))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"tstack {command} output",
        "type": "object",
        "required": ["schema", "schema_version", "tstack_version", "command", "run", "summary", "records"],
        "properties": {
            "schema": {"const": SCHEMA},
            "schema_version": {"const": SCHEMA_VERSION},
            "tstack_version": STR,
            "command": {"const": command},
            "run": {"type": "object", "required": sorted(run), "properties": run},
            "summary": {"type": ["object", "null"]},
            "records": {"type": "array",
                        "items": {"type": "object", "required": sorted(record), "properties": record}},
        },
    }
