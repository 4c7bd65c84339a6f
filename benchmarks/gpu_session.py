"""The GPU checks of issue 15 (part 5) as one prepared run, sized for a lent GPU's 15-minute budget.

    PYTHONPATH=src python benchmarks/gpu_session.py --out DIR [--preset h100]

Each step is timed and its results go to DIR/gpu_session.json (with the torch version and the GPU's name):

1. ``tests``: ``pytest tests/test_cuda.py`` (ops prepared, run and checked on the GPU), log in DIR/pytest-cuda.log.
2. ``calibrate``: ``tstack calibrate --device cuda --quick`` → DIR/calibrated.yaml.
3. ``trace``: three forward passes of examples/bert-tiny (batch 2, seq 16) under torch.profiler, marked
   ``ProfilerStep#0``–``#2`` → DIR/bert-tiny-trace.json (test data for ``import-trace`` on CUDA), imported and
   compared with the preset's prediction per GEMM and for the step.
4. ``llama``: a Llama-2-7B-shaped stack of ``--layers`` layers (random weights in bf16, SDPA attention, batch 1):
   prefill of 128 and 2048 tokens and eager decode steps after 100 cached tokens, each the median of
   ``--repeats`` timed calls after warm-up (CUDA events), next to ``tstack.analyze`` of the same model and mode on
   the preset (eager execution, ``--attention sdpa``, bf16-mixed).

``--device cpu`` runs steps 3 and 4 at toy sizes on the CPU (tests/test_gpu_session.py does, so the script stays
runnable where no GPU is); the figures are then only a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _median(fn, device: str, repeats: int) -> float:
    """Median seconds of one call of ``fn`` over ``repeats`` samples after 2 warm-up calls (CUDA events on a GPU),
    one call per sample: 3 + repeats calls in all (the sizing call included)."""
    from tstack.profiler.runtime import RuntimeConfig
    from tstack.profiler.timing import time_callable

    return time_callable(fn, RuntimeConfig(device=device), warmup=2, repeats=repeats, min_sample_s=0.0).median


def step_tests(out: Path) -> dict[str, Any]:
    log = out / "pytest-cuda.log"
    with log.open("w") as f:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                             cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    return {"returncode": rc, "summary": log.read_text().strip().splitlines()[-1:]}


def step_calibrate(out: Path) -> dict[str, Any]:
    from tstack.cli.core import run

    path = out / "calibrated.yaml"
    rc = run(["-q", "calibrate", "--device", "cuda", "--quick", "--out", str(path), "--name", "lent-gpu"])
    return {"returncode": rc, "file": path.name}


def step_trace(out: Path, device: str, preset: str) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from tstack import RunSpec, analyze, load_model
    from tstack.profiler.chrome import import_trace
    from tstack.profiler.hfmodels import build_hf_model

    spec, run = load_model(str(ROOT / "examples" / "bert-tiny")), RunSpec(batch=2, seq=16)
    model = build_hf_model(spec).to(device).eval()
    ids = torch.randint(2, spec.vocab, (run.batch, run.seq), device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.no_grad():
        model(input_ids=ids)  # warm-up outside the trace
        with profile(activities=activities, record_shapes=True, with_modules=True) as prof:
            for i in range(3):
                with record_function(f"ProfilerStep#{i}"):
                    model(input_ids=ids)
                    if device == "cuda":
                        torch.cuda.synchronize()
    path = out / "bert-tiny-trace.json"
    prof.export_chrome_trace(str(path))
    imp = import_trace(path, spec, run)
    predicted = analyze(spec, run, preset)
    by_name = {(op.name, op.label("layer"), op.label("pass")): c.seconds for op, c in zip(predicted.ops, predicted.costs)}
    gemms = [{"name": op.name, "layer": op.label("layer"), "M": g.M, "N": g.N, "K": g.K, "gemm_batch": g.batch,
              "measured_seconds": g.seconds,
              "predicted_seconds": by_name.get((op.name, op.label("layer"), op.label("pass")))}
             for g, op in imp.matched]
    return {"trace": path.name, "step": imp.step, "cuda": imp.cuda, "matched": len(imp.matched),
            "unmatched": len(imp.unmatched), "missing": len(imp.missing), "step_seconds": imp.step_seconds,
            "predicted_step_seconds": predicted.total.seconds, "gemms": gemms}


def _llama(layers: int, toy: bool):
    from tstack import load_model

    spec = load_model("llama2-7b").replace(layers=layers)
    if toy:
        spec = spec.replace(hidden=64, heads=4, kv_heads=4, ffn=128, vocab=256)
    return spec


def step_llama(device: str, preset: str, layers: int, repeats: int, toy: bool) -> list[dict[str, Any]]:
    import torch
    import transformers

    from tstack import RunSpec, analyze
    from tstack.profiler.hfmodels import accepts, build_hf_model

    spec = _llama(layers, toy)
    model = build_hf_model(spec).to(device=device, dtype=torch.bfloat16).eval()
    model.config._attn_implementation = "sdpa"
    prefills, kv = ((16, 64), 8) if toy else ((128, 2048), 100)
    rows = []
    with torch.no_grad():
        for seq in prefills:
            ids = torch.randint(0, spec.vocab, (1, seq), device=device)
            measured = _median(lambda ids=ids: model(input_ids=ids, use_cache=False, logits_to_keep=1), device,
                               repeats)
            run = RunSpec(batch=1, seq=seq, precision="bf16-mixed", attention="sdpa")
            rows.append({"case": f"prefill-{seq}", "measured_seconds": measured,
                         "predicted_seconds": analyze(spec, run, preset).total.seconds})
        prompt = torch.randint(0, spec.vocab, (1, kv), device=device)
        cache = {("cache" if accepts(model, "cache") else "past_key_values"): transformers.DynamicCache()}
        model(input_ids=prompt, use_cache=True, logits_to_keep=1, **cache)
        held = next(iter(cache.values())).get_seq_length()
        if held != kv:  # the keyword was not consumed: the steps would run without the cache
            raise RuntimeError(f"the KV cache holds {held} tokens after a {kv}-token prompt")
        token = prompt[:, -1:]
        steps = 3 + repeats  # the cache grows one token per call: kv … kv + steps − 1 keys
        measured = _median(lambda: model(input_ids=token, use_cache=True, **cache), device, repeats)
        run = RunSpec(batch=1, seq=1, phase="decode", kv_len=kv + steps // 2, precision="bf16-mixed",
                      attention="sdpa", execution="eager")
        rows.append({"case": f"decode-kv{kv}", "measured_seconds": measured,
                     "predicted_seconds": analyze(spec, run, preset).total.seconds})
    for r in rows:
        r["ratio"] = r["predicted_seconds"] / r["measured_seconds"]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--preset", default="h100", help="the device preset predictions use (h100, h200, a100-80gb, …)")
    p.add_argument("--layers", type=int, default=2, help="layers of the Llama-2-7B-shaped stack")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip", default="", help="steps to skip, comma-separated (tests, calibrate, trace, llama)")
    a = p.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is false (use --device cpu for a smoke run)")
    from tstack.costmodel.backend import load_target

    load_target(a.preset)  # a bad preset fails here, before any step spends device time
    a.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, a.skip.split(",")))
    if a.device == "cpu":
        skip |= {"tests", "calibrate"}
    doc: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": a.device,
                           "gpu": torch.cuda.get_device_name() if a.device == "cuda" else platform.machine(),
                           "preset": a.preset, "steps": {}}
    steps = {"tests": lambda: step_tests(a.out), "calibrate": lambda: step_calibrate(a.out),
             "trace": lambda: step_trace(a.out, a.device, a.preset),
             "llama": lambda: step_llama(a.device, a.preset, a.layers, a.repeats, a.device == "cpu")}
    for name, fn in steps.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            doc["steps"][name] = {"result": fn()}
        except Exception as e:  # one failed step must not cost the others their device time
            doc["steps"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        doc["steps"][name]["wall_seconds"] = time.perf_counter() - t0
        (a.out / "gpu_session.json").write_text(json.dumps(doc, indent=1, default=str))
        print(f"[{name}] {doc['steps'][name]['wall_seconds']:.1f} s {doc['steps'][name].get('error', 'ok')}",
              flush=True)
    for r in doc["steps"].get("llama", {}).get("result", []):
        print(f"{r['case']:14} measured {r['measured_seconds'] * 1e3:9.3f} ms  predicted "
              f"{r['predicted_seconds'] * 1e3:9.3f} ms  ratio {r['ratio']:.2f}")
    tr = doc["steps"].get("trace", {}).get("result")
    if tr:
        print(f"trace: {tr['matched']} GEMMs matched, {tr['unmatched']} unmatched, {tr['missing']} missing; step "
              f"{tr['step_seconds'] * 1e3:.3f} ms measured, {tr['predicted_step_seconds'] * 1e3:.3f} ms predicted")
    print(f"{doc['gpu']} · torch {doc['torch']} · preset {a.preset}")
    return doc


if __name__ == "__main__":
    main()
