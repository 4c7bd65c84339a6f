"""Reproduce 002 §6.1 (Fig. 12: kernel and GEMM fusion) and §6.2.1 (near-memory LAMB) with tstack's models.

Fig. 12a compares a kernel's unfused form (one kernel per framework op) with its fused form. tstack's workload
has LayerNorm and the optimizer stages as single kernels already, so the unfused forms are decompositions
written here, kernel by kernel, as the framework runs them (and as ``kernels.fused`` runs them on the CPU):

- LayerNorm op by op (``kernels.fused.LAYERNORM_STEPS``): mean, x − μ, square, mean, + ε, rsqrt, · rstd, · γ, + β;
- Adam as ``torch.optim.Adam(foreach=False)`` runs it per parameter tensor: step += 1, m.lerp_(g), v.mul_(β₂),
  v.addcmul_(g, g), √v, ÷ √(bias correction), + ε, w.addcdiv_(m, denom).

Their fused forms are the registered ``layernorm`` kernel and the multi-tensor Adam of the ``apex`` profile.
Fig. 12b: Q/K/V GEMMs three in series against one with concatenated weights (workload.fusion's GEMM groups),
forward and both backward GEMMs. §6.2.1: LAMB (and the mixed-precision copies) on the near-memory ALUs of
``hbm2-pim`` against 002's optimistic GPU model, over 002's configurations. Nothing here is tuned to the paper.
"""

from __future__ import annotations

import math

from tstack.costmodel.backend import cost_workload
from tstack.costmodel.cost import Cost
from tstack.hardware.device import DeviceSpec, load_device
from tstack.hardware.memory import load_memory
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.studies.nmc_offload import offload
from tstack.studies.repro_002 import INCREASE, RATIO, TEXT, Row
from tstack.workload import formulas as F
from tstack.workload import params as P
from tstack.workload.build import build
from tstack.workload.fusion import fuse_gemm_groups, load_profile, split_total
from tstack.workload.op import Op, OpKind

FP32 = 4
# (name, tensors read, tensors written, row vectors read, row vectors written, column vectors read, FLOPs/element)
# for the op-by-op LayerNorm over R rows × C columns: full tensors (E = R·C elements), per-row statistics (R) and
# the per-column γ, β (C). FLOPs per full-tensor element, or per row for the row-only steps.
LAYERNORM_UNFUSED = (
    ("mean", 1, 0, 0, 1, 0, 1),  # Σx (1 per element) then ÷C per row
    ("sub", 1, 1, 1, 0, 0, 1),
    ("square", 1, 1, 0, 0, 0, 1),
    ("mean", 1, 0, 0, 1, 0, 1),
    ("add-eps", 0, 0, 1, 1, 0, 0),
    ("rsqrt", 0, 0, 1, 1, 0, 0),
    ("mul-rstd", 1, 1, 1, 0, 0, 1),
    ("mul-gamma", 1, 1, 0, 0, 1, 1),
    ("add-beta", 1, 1, 0, 0, 1, 1),
)
# Adam per parameter tensor (torch.optim.Adam foreach=False, no weight decay): (name, tensors read, written, FLOPs
# per element); the step counter is a one-element kernel.
ADAM_UNFUSED = (
    ("lerp-m", 2, 1, 3),  # m += (1 − β₁)(g − m)
    ("mul-v", 1, 1, 1),  # v ·= β₂
    ("addcmul-v", 2, 1, 3),  # v += (1 − β₂)·g·g
    ("sqrt", 1, 1, 1),
    ("div", 1, 1, 1),  # ÷ √(bias correction)
    ("add-eps", 1, 1, 1),
    ("addcdiv-w", 3, 1, 3),  # w −= lr/(bias correction)·m/denom
)


def _op(kind: str, name: str, dims: tuple, flops: int, traffic: int, group: str, count: int = 1) -> Op:
    return Op(kind=kind, name=name, dims=dims, dtype="fp32", flops=flops, bytes=traffic,
              labels=(("part", "fig12"), ("layer", "-"), ("block", "-"), ("group", group), ("nlpfast", "-"),
                      ("pass", "fwd")), count=count)


def layernorm_ops(rows: int, cols: int, b: int = FP32) -> tuple[list[Op], list[Op]]:
    """(unfused, fused) LayerNorm forward over rows × cols at ``b`` bytes per element."""
    E = rows * cols
    unfused = []
    for name, reads, writes, row_r, row_w, col_r, flops in LAYERNORM_UNFUSED:
        traffic = (reads + writes) * E * b + (row_r + row_w) * rows * FP32 + col_r * cols * b
        work = flops * E if reads else rows
        unfused.append(_op(OpKind.ELEMENTWISE, f"ln.{name}", (("rows", rows), ("cols", cols)), work, traffic,
                           "LayerNorm"))
    c = F.pointwise("layernorm", rows, cols, b, b)
    return unfused, [_op(OpKind.REDUCTION, "layernorm", c.dims, c.flops, c.bytes, "LayerNorm")]


def bert_tensor_sizes(m: ModelSpec) -> list[int]:
    """Parameter tensor sizes (elements) of ``bert_tensor_shapes`` for a BERT model."""
    shapes = P.bert_tensor_shapes(m.hidden, m.ffn, m.layers, m.vocab, m.max_positions, m.type_vocab)
    return [math.prod(s) for s in shapes]


def adam_ops(sizes: list[int]) -> tuple[list[Op], list[Op]]:
    """(unfused per tensor, fused multi-tensor) Adam over tensors of ``sizes`` fp32 parameters."""
    unfused = []
    for p in sizes:
        unfused.append(_op(OpKind.ELEMENTWISE, "adam.step", (("params", 1),), 1, 2 * FP32, "Adam"))
        unfused += [_op(OpKind.ELEMENTWISE, f"adam.{name}", (("params", p),), f * p, (r + w) * FP32 * p, "Adam")
                    for name, r, w, f in ADAM_UNFUSED]
    stage = F.OPTIMIZER_STAGES["adam"][0][1]
    total = sum(sizes)
    multi = load_profile("apex").multi_tensor
    launches = multi.launches(sizes, "adam")
    flops, traffic = stage.flops * total, FP32 * total * (stage.reads + stage.writes)
    (per_f, last_f), (per_b, last_b) = split_total(flops, launches), split_total(traffic, launches)
    fused = [_op(OpKind.ELEMENTWISE, "adam.fused", (("params", total),), per_f, per_b, "Adam", launches - 1),
             _op(OpKind.ELEMENTWISE, "adam.fused", (("params", total),), last_f, last_b, "Adam")]
    return unfused, [o for o in fused if o.count]


def qkv_ops(model: ModelSpec, tokens: int, precision: str = "fp32") -> tuple[list[Op], list[Op]]:
    """(three serial, one fused) Q/K/V GEMMs, forward and both backward GEMMs, of one layer at ``tokens`` tokens
    (sequences of 128)."""
    m = model.replace(layers=1, bias=False)
    ops = build(m, RunSpec(mode="train", batch=max(1, tokens // 128), seq=min(tokens, 128), precision=precision,
                           optimizer="sgd"))
    names = ("attn.q_proj", "attn.k_proj", "attn.v_proj")
    serial = [o for o in ops if o.name in names and o.label("layer") == "L0"]
    fused = list(fuse_gemm_groups(tuple(serial), (names,)))
    return serial, fused


def totals(ops: list[Op], device: DeviceSpec) -> Cost:
    return Cost.total(cost_workload(tuple(ops), device)[1])


def _ratio_row(key: str, claim: str, paper: str, value: float, lo: float, hi: float, note: str) -> Row:
    return Row(key, claim, paper, float(value), note, RATIO, (lo, hi))


def fig12a_rows(device: DeviceSpec) -> list[Row]:
    bert = load_model("bert-large")
    rows = []
    unf, fus = layernorm_ops(32 * 128, bert.hidden)
    u, f = totals(unf, device), totals(fus, device)
    for what, a, b in (("kernels", u.kernels, f.kernels), ("runtime", u.seconds, f.seconds), ("traffic", u.bytes, f.bytes)):
        rows.append(_ratio_row(f"fig12.layernorm.{what}", f"LayerNorm fusion: {what} reduction (Fig. 12a)", "6–8×",
                               a / b, 6, 8, f"BERT-Large LN forward, 4096×1024 fp32: op by op "
                               f"({len(LAYERNORM_UNFUSED)} kernels) vs one; {device.name}"))
    sizes = bert_tensor_sizes(bert)
    unf, fus = adam_ops(sizes)
    u, f = totals(unf, device), totals(fus, device)
    rows.append(_ratio_row("fig12.adam.kernels", "Adam fusion: kernel reduction (Fig. 12a)", "≈250×", u.kernels / f.kernels,
                           250, 250, f"{len(sizes)} tensors × {len(ADAM_UNFUSED) + 1} kernels = {u.kernels} vs "
                           f"{f.kernels} multi-tensor launches (apex: 65,536-element chunks, 320 chunks and 36 tensors "
                           "per launch)"))
    for what, a, b in (("runtime", u.seconds, f.seconds), ("traffic", u.bytes, f.bytes)):
        rows.append(_ratio_row(f"fig12.adam.{what}", f"Adam fusion: {what} reduction (Fig. 12a)", "6–8×", a / b, 6, 8,
                               f"unfused: {u.bytes / u.kernels / 1e6:.1f} MB and {device.launch_overhead * 1e6:.0f} µs "
                               f"launch per kernel on {device.name}; fused reads w, g, m, v and writes w, m, v once"))
    return rows


QKV_TOKENS = (128, 512, 2048, 4096, 16384)


def fig12b_rows(device: DeviceSpec) -> list[Row]:
    speed = {}
    for name in ("bert-base", "bert-large"):
        model = load_model(name)
        for t in QKV_TOKENS:
            serial, fused = qkv_ops(model, t)
            speed[(name, t)] = totals(serial, device).seconds / totals(fused, device).seconds - 1
    best = max(speed, key=speed.__getitem__)
    small, large = speed[("bert-base", QKV_TOKENS[0])], speed[("bert-large", QKV_TOKENS[-1])]
    table = ", ".join(f"{n.split('-')[1]} T={t}: {v:+.0%}" for (n, t), v in speed.items())
    return [
        Row("fig12.qkv.max", "Fused Q/K/V GEMMs (3F) vs three serial (3S), FWD+BWD: largest speed-up (Fig. 12b)",
            "up to 62% faster", speed[best], f"largest at {best[0]} T={best[1]}; {table}; fp32, {device.name}",
            INCREASE, (0.62, 0.62)),
        Row("fig12.qkv.small", "Fused Q/K/V: speed-up is higher for small inputs (§6.1.2)", "higher when small",
            "yes" if small > large else "no",
            f"bert-base T={QKV_TOKENS[0]}: {small:+.1%}; bert-large T={QKV_TOKENS[-1]}: {large:+.1%}", TEXT),
    ]


def reproduce_fusion(device: DeviceSpec | str = "mi100") -> list[Row]:
    """002 Fig. 12 and §6.1.2 next to tstack's fusion pass on ``device``."""
    dev = load_device(device)
    return fig12a_rows(dev) + fig12b_rows(dev)


# 002's configurations (Fig. 3): phase (n), B, precision, and C3 (d_model = 2048) at Phase 1.
NMC_CONFIGS = (("bert-large", 4, 128, "fp32"), ("bert-large", 32, 128, "fp32"), ("bert-large", 4, 512, "fp32"),
               ("bert-large", 32, 128, "fp16-mixed"), ("bert-large", 4, 512, "fp16-mixed"),
               ("bert-c3", 32, 128, "fp32"), ("bert-c3", 8, 128, "fp16-mixed"))


def reproduce_nmc(device: DeviceSpec | str = "mi100", memory: str = "hbm2-pim") -> list[Row]:
    """002 §6.2.1: LAMB on bank-level near-memory ALUs against the optimistic GPU, and BERT training end to end."""
    dev, mem = load_device(device), load_memory(memory)
    lamb, e2e = {}, {}
    for name, B, n, prec in NMC_CONFIGS:
        r = offload(load_model(name), RunSpec(mode="train", batch=B, seq=n, precision=prec), dev, mem)
        lamb_rows = [row for row in r.rows if row.group == "LAMB"]
        key = f"{name} B={B} n={n} {'FP32' if prec == 'fp32' else 'MP'}"
        lamb[key] = sum(x.optimistic_seconds for x in lamb_rows) / sum(x.nmc_seconds for x in lamb_rows)
        e2e[key] = r.summary()["end_to_end_speedup"] - 1
    lo, hi = min(e2e, key=e2e.__getitem__), max(e2e, key=e2e.__getitem__)
    each = "; ".join(f"{k}: {v:+.1%}" for k, v in e2e.items())
    speed = next(iter(lamb.values()))
    return [
        _ratio_row("nmc.lamb", "LAMB on NMC vs optimistic GPU (§6.2.1)", "3.8×", speed, 3.8, 3.8,
                   f"{mem.name}: {mem.alus} ALUs at {mem.banks} banks; LAMB kernels (global norm, stages 1/2, trust-ratio "
                   f"norms) against reading and writing their data once at {dev.memory_bandwidth / 1e12:.2f} TB/s; "
                   "the same for every configuration (LAMB depends on the parameters only)"),
        Row("nmc.e2e.min", "BERT training speed-up with LAMB on NMC, smallest (§6.2.1)", "5% (range 5–22%)", e2e[lo],
            f"at {lo}; the GPU iteration is tstack's roofline on {dev.name}, mixed-precision master copies offloaded "
            "too", INCREASE, (0.05, 0.22)),
        Row("nmc.e2e.max", "BERT training speed-up with LAMB on NMC, largest (§6.2.1)", "22% (range 5–22%)", e2e[hi],
            f"at {hi}; all: {each}", INCREASE, (0.05, 0.22)),
    ]
