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
LIST = {"type": "array"}

RUN_SPEC = {"type": "object", "required": ["mode", "batch", "seq", "tgt_seq", "precision", "optimizer", "checkpoint",
                                           "dropout", "phase", "kv_len", "execution", "attention", "mlm_fraction"],
            "properties": {"mode": STR, "batch": INT, "seq": INT, "tgt_seq": INT, "precision": STR, "optimizer": STR,
                           "checkpoint": STR, "dropout": BOOL, "phase": STR, "kv_len": INT, "execution": STR,
                           "attention": STR, "mlm_fraction": NUM}}

OP_RECORD = {"kind": STR, "name": STR, "part": STR, "layer": STR, "block": STR, "group": STR, "nlpfast": STR,
             "pass": STR, "dtype": STR, "M": INT, "N": INT, "K": INT, "gemm_batch": INT, "count": INT, "flops": NUM,
             "bytes": NUM, "intensity_flop_per_byte": NUM, "seconds": NUM, "bound": STR, "utilization": NUM,
             "joules": NUM}

REPRO_RECORD = {"key": STR, "claim": STR, "paper": STR, "unit": STR, "note": STR,
                "tstack": {"type": ["number", "string", "null"]}, "gap": NUM}

MEASURED_RECORD = {**{k: v for k, v in OP_RECORD.items() if k not in ("intensity_flop_per_byte", "utilization", "joules")},
                   "model": STR, "mode": STR, "batch": INT, "seq": INT, "precision": STR, "bound": OPT_STR}

# command -> (required fields of `run`, required fields of each record with their types)
COMMANDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "analyze": ({"model": STR, "model_spec": {"type": "object"}, "spec": RUN_SPEC, "device": STR,
                 "options": {"type": "object"}}, OP_RECORD),
    "sweep": ({"model": STR, "spec": RUN_SPEC, "device": STR, "axes": {"type": "object"}, "executor": STR},
              {"model": STR, "device": STR, "mode": STR, "batch": INT, "seq": INT, "layers": INT, "hidden": INT,
               "ffn": INT, "heads": INT, "precision": STR, "group": STR, "seconds": NUM, "share": NUM, "flops": NUM,
               "bytes": NUM, "kernels": INT, "joules": NUM}),
    "presets": ({}, {"type": STR, "name": STR, "description": STR}),
    "repro": ({"paper": STR, "sections": LIST, "device": STR}, {**REPRO_RECORD, "section": STR}),
    "accel run": ({"model": STR, "spec": RUN_SPEC, "seq": INT, "hw": LIST, "accelerators": {"type": "object"},
                   "schedule": LIST, "mapping": STR, "objective": STR},
                  {"hardware": STR, "schedule": STR, "seconds": NUM, "cycles": NUM, "joules": NUM, "joule_seconds": NUM,
                   "utilization": NUM, "matmul_seconds": NUM, "softmax_seconds": NUM, "layernorm_seconds": NUM,
                   "gelu_seconds": NUM, "quant_seconds": NUM, "other_seconds": NUM}),
    "accel gemm": ({"m": INT, "n": INT, "k": INT, "gemm_batch": INT, "hw": LIST, "mapping": LIST, "objective": STR},
                   {"hardware": STR, "mapping": STR, "m": INT, "n": INT, "k": INT, "gemm_batch": INT, "tile_m": INT,
                    "tile_n": INT, "tile_k": INT, "cycles": NUM, "mesh_cycles": NUM, "dma_cycles": NUM,
                    "ideal_cycles": NUM, "load_bytes": NUM, "store_bytes": NUM, "seconds": NUM, "utilization": NUM,
                    "joules": NUM, "joule_seconds": NUM, "tiles": NUM, "dma_bound_tiles": NUM, "dram_rate_bound_tiles": NUM,
                    "load_requests": NUM,
                    "l2_hit_requests": NUM, "l2_hit_rate": NUM, "store_requests": NUM, "l2_read_bytes": NUM,
                    "dram_read_bytes": NUM, "l2_joules": NUM, "dram_joules": NUM}),
    "accel dse": ({"model": STR, "seq": INT, "hw": STR, "sram_total_bytes": INT, "split": {}, "dims": {},
                   "dma_bytes_per_cycle": {}, "objective": {}, "schedule": STR},
                  {"design": STR, "spad_bytes": INT, "acc_bytes": INT, "dim": INT, "dma_bytes_per_cycle": INT,
                   "feasible": BOOL, "reason": OPT_STR, "latency_seconds": NUM, "matmul_seconds": NUM, "joules": NUM,
                   "joule_seconds": NUM, "pareto": BOOL}),
    "accel repro": ({"model": STR, "seq": INT, "paper": STR}, REPRO_RECORD),
    "fpga run": ({"model": STR, "seq": INT, "queries": INT, "fpga": STR, "variants": LIST, "alloc": STR, "skip_rate": NUM,
                  "vgen_skip": NUM},
                 {"variant": STR, "operation": STR, "unit": STR, "lanes": INT, "compute_seconds": NUM,
                  "memory_seconds": NUM, "spill_seconds": NUM, "stall_seconds": NUM, "seconds": NUM, "share": NUM}),
    "fpga allocate": ({"models": LIST, "fpga": STR, "methods": LIST, "variant": STR, "queries": INT, "skip_rate": NUM,
                       "vgen_skip": NUM},
                      {"model": STR, "seq": INT, "method": STR, "seconds": NUM, "speedup_over_uniform": NUM,
                       "rounds": INT, "masked": LIST, "solve_seconds": NUM, "lanes": LIST, "lut_utilization": NUM,
                       "ff_utilization": NUM, "dsp_utilization": NUM, "bram_utilization": NUM}),
    "fpga cross": ({"model": STR, "designed_for": STR, "fpga": STR, "method": STR, "variant": STR},
                   {"model": STR, "designed_for": STR, "method": STR, "own_seconds": NUM, "cross_seconds": NUM,
                    "relative_performance": NUM, "own_lanes": LIST, "design_lanes": LIST}),
    "opt bench": ({"models": {}, "seq": {}, "variants": {}, "batch": INT, "threads": INT, "repeats": INT,
                   "runtime": {}},
                  {"model": STR, "part": STR, "seq": INT, "variant": STR, "median_seconds": NUM, "p10_seconds": NUM,
                   "p90_seconds": NUM, "peak_bytes": NUM, "max_abs_error": NUM}),
    "opt tradeoff": ({"model": STR, "thresholds": {}, "zero_ratios": {}, "texts": STR, "max_length": INT, "batch": INT,
                      "chunk": INT, "threads": INT},
                     {"score_threshold": NUM, "zero_ratio": NUM, "softmax_skipped": NUM, "weighted_sum_skipped": NUM,
                      "vgen_skipped": NUM, "cosine_min": NUM, "cosine_mean": NUM, "element_skipped": NUM}),
    "opt schedule": ({"heads": INT, "chunks": INT, "chunk_keys": INT, "head_dim": INT, "threads": INT,
                      "threshold": NUM, "policies": {}, "repeats": INT, "seed": INT},
                     {"kind": STR, "threshold": NUM, "threads": INT, "policy": STR, "utilization": NUM,
                      "makespan_seconds": NUM}),
    "int convert": ({"source": STR, "out": STR, "act_bits": INT, "softmax_bits": INT, "max_length": INT},
                    {"model": STR, "layers": INT, "calibration_texts": INT, "act_bits": INT, "softmax_bits": INT}),
    "int accuracy": ({"path": STR, "model": STR, "max_length": INT},
                     {"model": STR, "texts": INT, "cosine_mean": NUM, "cosine_min": NUM, "top1_agreement": NUM,
                      "top5_overlap": NUM, "spearman": NUM}),
    "profile": ({"configurations": {"type": "array", "items": {"type": "object", "required": ["model", "spec"],
                                                                "properties": {"spec": RUN_SPEC}}},
                 "threads": INT, "warmup": INT, "repeats": INT, "rounds": INT, "profile_mode": STR, "host": {}},
                {**MEASURED_RECORD, "call_seconds": NUM, "call_p10_seconds": NUM, "call_p90_seconds": NUM}),
    "validate": ({"model": STR, "device": STR, "configurations": {"type": "array"}, "threads": INT, "warmup": INT,
                  "repeats": INT, "rounds": INT, "host": {}},
                 {**{k: v for k, v in MEASURED_RECORD.items() if k not in ("bound", "bytes", "flops", "dtype", "seconds")},
                  "measured_seconds": NUM, "predicted_seconds": NUM, "relative_error": NUM}),
    "import-trace": ({"model": STR, "model_spec": {"type": "object"}, "spec": RUN_SPEC, "trace": STR},
                     {**{k: v for k, v in OP_RECORD.items() if k not in ("intensity_flop_per_byte", "utilization",
                                                                         "joules", "bound")},
                      "aten": STR, "module": STR, "matched": BOOL}),
    "calibrate": ({"out": STR, "name": STR, "threads": INT, "repeats": INT, "rounds": INT, "quick": BOOL, "host": {}},
                  {"table": STR, "points": INT, "min_seconds": NUM, "max_seconds": NUM}),
    "fuse": ({"model": STR, "spec": RUN_SPEC, "device": STR, "profiles": LIST},
             {"profile": STR, "group": STR, "seconds": NUM, "kernels": INT, "flops": NUM, "bytes": NUM,
              "speedup": NUM}),
    "nmc": ({"model": STR, "spec": RUN_SPEC, "device": STR, "memory": STR, "scope": STR, "alus": INT, "banks": INT},
            {"name": STR, "group": STR, "kernels": INT, "bytes": NUM, "gpu_seconds": NUM,
             "gpu_optimistic_seconds": NUM, "nmc_seconds": NUM, "speedup_vs_gpu": NUM, "speedup_vs_optimistic": NUM}),
    "cluster run": ({"model": STR, "model_spec": {"type": "object"}, "spec": RUN_SPEC, "device": STR, "network": STR,
                     "gpus": INT, "layouts": LIST},
                    {"layout": STR, "component": STR, "part": STR, "group": STR, "seconds": NUM, "share": NUM}),
    "cluster search": ({"model": STR, "spec": RUN_SPEC, "device": STR, "network": STR, "gpus": INT, "global_batch": INT,
                        "recompute": LIST, "zero": LIST, "executor": STR},
                       {"rank": INT, "dp": INT, "tp": INT, "pp": INT, "interleave": INT, "micro_batch": INT,
                        "recompute": STR, "seq_parallel": BOOL, "zero": INT, "overlap": STR, "ep": INT,
                        "seconds_per_iteration": NUM, "memory_bytes_per_device": NUM, "pareto": BOOL}),
    "nas train": ({"space": {"type": "object"}, "corpus": STR, "tokenizer": STR, "out": STR, "config": {"type": "object"},
                   "resume": BOOL},
                  {"subnet": STR, "role": STR, "layers": INT, "heads": INT, "hidden": INT, "ffn": INT, "perplexity": NUM}),
    "nas search": ({"checkpoint": STR, "space": {"type": "object"}, "hw": STR, "objective": STR, "algorithms": LIST,
                    "iterations": INT, "population": INT, "mutation": NUM, "budget": INT, "cost": STR,
                    "constraints": {"type": "object"}, "eval_windows": INT, "executor": STR, "seed": INT},
                   {"algorithm": STR, "evaluation": INT, "subnet": STR, "layers": INT, "heads": INT, "hidden": INT,
                    "ffn": INT, "perplexity": NUM, "latency_seconds": NUM, "joules": NUM, "joule_seconds": NUM,
                    "weight_bytes": NUM, "pareto": BOOL}),
    "nas measure": ({"result": STR, "device": STR, "algorithm": STR, "threads": INT, "repeats": INT},
                    {"subnet": STR, "layers": INT, "heads": INT, "hidden": INT, "ffn": INT, "measured_seconds": NUM,
                     "predicted_seconds": NUM, "relative_error": NUM}),
    "nas plot": ({"result": STR, "out": STR},
                 {"algorithm": STR, "metric": STR, "perplexity_delta": NUM, "reduction": NUM, "paper_reduction": NUM,
                  "subnet": OPT_STR, "perplexity": NUM}),
    "int errors": ({"op": {}, "softmax_bits": INT},
                   {"op": STR, "domain": STR, "max_abs_error": NUM, "rms_error": NUM}),
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
