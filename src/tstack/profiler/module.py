"""Whole-model timing of any nn.Module with torch.profiler, measured kernels mapped back onto tstack's op labels.

One measured step (a forward, or forward + backward + optimizer step) is run ``repeats`` times under
torch.profiler with record_shapes. Forward hooks open a ``record_function`` scope per module call, named after the
module path, so each aten operator the module's Python code calls is attributed to its innermost module; backward
kernels inherit the labels of the forward operator whose autograd node they run (autograd sequence numbers), and
optimizer kernels get the optimizer's. A labeler turns (module scope, its kernels in order) into tstack labels
(see hfmodels.hf_labeler for BERT/GPT-2/LLaMA; ``generic_labels`` for anything else).

A kernel here is a top-level aten call (``aten::linear`` with the ``aten::addmm`` it runs inside): its seconds are
its CPU time including those nested calls (on CUDA: the device time of the GPU kernels it launched). Time in Python,
hooks and the framework between aten calls is not attributed to any op; ModuleProfile reports it.

Shapes, FLOPs and bytes come from the recorded input shapes: a GEMM's M×N×K in 002's convention (A[n, k]·B[k, m] is
M=m, N=n, K=k) and 2·M·N·K FLOPs (a fused SDPA kernel: its two products); other kernels a small per-element table
(formulas.py's counts) or 0, bytes as inputs read once plus one output the size of the largest input (0 for views).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tstack.breakdown import Breakdown
from tstack.costmodel.cost import Cost
from tstack.errors import SpecError, TstackError
from tstack.profiler.events import StepParse, kernel_op, label_kernels, parse_steps, reference_step
from tstack.profiler.scopes import STEP, KernelEvent, Labeler, ModuleProfile, Setup, generic_labels, scope_hooks
from tstack.spec import ModelSpec, RunSpec


def _split_inputs(inputs: Any) -> tuple[tuple, dict[str, Any]]:
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    return tuple(inputs), {}


def _loss(out: Any) -> torch.Tensor:
    """The model's own loss when it returns one (HF with labels), else the mean of its first tensor output."""
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    t = out
    while not isinstance(t, torch.Tensor):
        values = list(t.values()) if isinstance(t, Mapping) else list(t) if isinstance(t, (tuple, list)) else []
        t = next((v for v in values if v is not None), None)
        if t is None:
            raise TstackError(f"training needs a tensor output to differentiate; the module returned {type(out).__name__}")
    return t.float().mean()


def _optimizer(module: torch.nn.Module, run: RunSpec) -> tuple[torch.optim.Optimizer | None, str | None]:
    params = [p for p in module.parameters() if p.requires_grad]
    if run.optimizer == "adam":
        return torch.optim.Adam(params, lr=1e-4), None
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9), None
    return None, (f"torch has no {run.optimizer.upper()} optimizer: the measured training step covers forward + backward "
                  "only (optimizer=adam or sgd adds an optimizer step)")


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision in ("fp16-mixed", "bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16-mixed" else torch.bfloat16)
    raise TstackError(f"precision={precision!r} cannot be measured on a whole nn.Module (fp32, fp16-mixed, bf16-mixed)")


def _step_fn(module: torch.nn.Module, inputs: Any, run: RunSpec, device: torch.device) -> tuple[Callable[[], None], str | None]:
    """One measured step: the forward (no_grad) for inference; forward, backward and optimizer step for training."""
    args, kwargs = _split_inputs(inputs)
    cuda = device.type == "cuda"
    optimizer, note = _optimizer(module, run) if run.training else (None, None)

    def step() -> None:
        with _autocast(run.precision, device), torch.set_grad_enabled(run.training):
            out = module(*args, **kwargs)
        if run.training:
            _loss(out).backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                module.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)

    return step, note


def _first_tensor(inputs: Any) -> torch.Tensor | None:
    args, kwargs = _split_inputs(inputs)
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() >= 1), None)


def _spec_of(module: torch.nn.Module) -> ModelSpec:
    """The module's ModelSpec from its HF config when tstack can read it, else a named placeholder."""
    from tstack.hfconfig import from_hf_config

    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        try:
            return from_hf_config(cfg.to_dict(), type(module).__name__, f"config of {type(module).__name__}")
        except (SpecError, TypeError, ValueError):
            pass
    return ModelSpec(name=type(module).__name__, arch="encoder", layers=1, hidden=1, heads=1, ffn=1, vocab=1, head="none",
                     description="a measured nn.Module; its shape fields are unknown (placeholders)")


def _device(module: torch.nn.Module) -> torch.device:
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def profile_module(module: torch.nn.Module, inputs: Any, threads: int | None = None, warmup: int = 2, repeats: int = 5,
                   setup: Setup | None = None) -> ModuleProfile:
    """Time one step of ``module`` on ``inputs`` (kwargs mapping, args tuple or one tensor) and attribute its kernels.

    Steps: warm-up; ``repeats`` timed steps without the profiler (wall time); ``repeats`` steps under torch.profiler
    with module scopes; kernels of each step parsed and labelled; per-kernel medians become the Breakdown's ops.
    Training (``setup.run.mode == 'train'``) updates the module's weights.
    """
    if repeats < 1 or warmup < 0:
        raise TstackError(f"repeats={repeats} must be ≥ 1 and warmup={warmup} ≥ 0")
    setup = setup or Setup()
    first = _first_tensor(inputs)
    shape = tuple(first.shape) if first is not None else (1, 1)
    run = setup.run or RunSpec(batch=max(1, shape[0]), seq=max(1, shape[1] if len(shape) > 1 else 1))
    model = setup.model or _spec_of(module)
    labeler = setup.labeler
    if labeler is None:
        from tstack.profiler.hfmodels import hf_labeler

        labeler = hf_labeler(module) or generic_labels
    device = _device(module)
    old_threads, was_training = torch.get_num_threads(), module.training
    try:
        if threads:
            torch.set_num_threads(threads)
        module.train(run.training)
        step, note = _step_fn(module, inputs, run, device)
        runs = _timed(step, warmup, repeats)
        parses = _profiled(module, step, repeats, device)
        name = f"cpu-{torch.get_num_threads()}t"  # as RuntimeConfig.short_name names devices
        if device.type == "cuda":
            name = "cuda-" + "-".join(torch.cuda.get_device_name(device).lower().replace("nvidia ", "").split())
    finally:
        torch.set_num_threads(old_threads)
        module.train(was_training)
    return _result(parses, labeler, (model, run, name), tuple(runs), note)


def _timed(step: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` steps after ``warmup`` untimed ones; a step that raises ends in one line."""
    runs = []
    try:
        for _ in range(warmup):
            step()
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            runs.append(time.perf_counter() - t0)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise TstackError(f"the measured step failed: {type(e).__name__}: {' '.join(str(e).split())}") from e
    return runs


def _profiled(module: torch.nn.Module, step: Callable[[], None], repeats: int, device: torch.device) -> list[StepParse]:
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with scope_hooks(module) as scopes:
        step()  # a first step with hooks, outside the profile
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(repeats):
                with record_function(STEP):
                    step()
    parses = parse_steps(prof.events(), scopes, cuda)
    if not parses:
        raise TstackError("the profiler recorded no step (is another profiler active?)")
    return parses


def _result(parses: list[StepParse], labeler: Labeler, what: tuple[ModelSpec, RunSpec, str], runs: tuple[float, ...],
            note: str | None) -> ModuleProfile:
    ref, seconds, mismatch = reference_step(parses)
    labelled = label_kernels(ref, labeler)
    ops, costs, events = [], [], []
    for k, s, (attrs, pass_, width) in zip(ref.kernels, seconds, labelled):
        for a in attrs:
            op = kernel_op(k, a, pass_, width)
            ops.append(op)
            costs.append(Cost(seconds=s / a.split, flops=op.flops, bytes=op.bytes, kernels=1))
        first = kernel_op(k, attrs[0], pass_, width)
        events.append(KernelEvent(aten=k.aten, module=k.path if k.path is not None else "-", start_s=k.start_s,
                                  seconds=k.seconds, thread=k.thread, op=first.name, labels=first.labels, shapes=k.shapes))
    spans = [p.span_s for p in parses]
    model, run, device = what
    return ModuleProfile(breakdown=Breakdown(model=model, run=run, device=device, ops=tuple(ops), costs=tuple(costs)),
                         wall_s=statistics.median(runs), wall_runs=runs, profiled_s=statistics.median(spans),
                         kernels=tuple(events), notes=tuple(n for n in (note, mismatch) if n))


def profile_preset(spec: ModelSpec, run: RunSpec, threads: int | None = None, warmup: int = 2, repeats: int = 5,
                   seed: int = 0, device: str = "cpu") -> ModuleProfile:
    """Build the HF model of ``spec`` (random weights) and profile one ``run`` step on random token ids in range.

    Inference runs the forward (decoders score the last token only, as tstack's LM head does; BERT gets an attention
    mask with one padded position, so the mask kernel runs); training runs forward, backward (HF loss: MLM + NSP, or LM) and the
    optimizer step (Adam or SGD; LAMB is not in torch: forward + backward only, said in the notes).
    """
    from tstack.profiler.hfmodels import accepts, build_hf_model, hf_labeler
    from tstack.workload.build import check_pair

    check_pair(spec, run)
    if run.phase == "decode":
        raise TstackError("phase=decode cannot be profiled on a whole model yet; profile phase=prefill")
    if run.checkpoint not in ("none", "every-1"):
        raise TstackError(f"checkpoint={run.checkpoint!r}: HF models checkpoint every layer; use checkpoint=every-1 or none")
    model = build_hf_model(spec, seed, training=run.training, dropout=run.dropout).to(device)
    if run.checkpoint == "every-1":
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab, (run.batch, run.seq), generator=g).to(device)
    kwargs: dict[str, Any] = {"input_ids": ids}
    if spec.arch == "encoder":  # one padded position, as in padded pretraining batches: HF skips an all-ones mask
        mask = torch.ones_like(ids)
        mask[-1, -1] = 0 if run.seq > 1 else 1
        kwargs["attention_mask"] = mask
    if accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if run.training and accepts(model, "next_sentence_label"):
        kwargs.update(labels=ids, next_sentence_label=torch.zeros(run.batch, dtype=torch.long, device=ids.device))
    elif run.training and accepts(model, "labels"):
        kwargs["labels"] = ids
    elif not run.training:
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if accepts(model, k)), None)
        if keep:
            kwargs[keep] = 1
    return profile_module(model, kwargs, threads, warmup, repeats, Setup(spec, run, hf_labeler(model)))
