"""Reproduce the accelerator claims of 000 §II and §III from the three presets, untuned.

Each row puts the paper's number next to the model's; the hardware constants come from the preset files as they are
(their sources are listed there), so the gaps are the model's honest error.
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.accel.fusion import PairCost, pair_cost
from tstack.accel.model import Result, run
from tstack.accel.timing import GemmShape
from tstack.hardware.accel import AccelSpec, load_accel
from tstack.models import load_model
from tstack.studies.repro_002 import INCREASE, SHARE, TEXT, Row

PRESETS = ("gemmini-baseline", "gemmini-transformer", "gemmini-ibert")
FIG2_SEQS = (128, 256, 512)


@dataclass(frozen=True)
class Repro:
    """The claim rows and the runs behind the Fig. 2 figure (baseline at 512, I-BERT per sequence length)."""

    rows: tuple[Row, ...]
    fig2: tuple[tuple[str, Result], ...]


def _sign(change: float) -> str:
    return "slower" if change > 0 else "faster" if change < 0 else "no change"


def _physics(hw: AccelSpec, shape: GemmShape, a: PairCost, b: PairCost, paper: float) -> str:
    """What the DMA model says about a fused pair: how often the weight comes from DRAM, how much of the fused matmul
    waits on the DMA, the bytes per mesh cycle the fused tiles need against the DRAM rate, and the DRAM rate at which
    the fused pair would be ``paper`` slower than the non-fused one (the fused matmul DRAM-bound throughout)."""
    weight = shape.K * shape.J * shape.batch
    ft, nt = b.timing, a.timing
    need = ft.load_bytes / ft.mesh_cycles
    rate = hw.dram.bandwidth / hw.clock_hz
    paper_rate = ft.dram_read_bytes / hw.cycles((1 + paper) * a.seconds)
    return (f"DRAM reads {ft.dram_read_bytes / weight:.1f}x the weight's bytes fused (the weight once per row tile: its "
            f"reuse distance exceeds the L2) vs {nt.dram_read_bytes / weight:.1f}x non-fused; "
            f"fused tiles DMA-bound {ft.dma_bound_tiles / ft.tiles:.0%}, "
            f"need {need:.1f} B/cycle vs DRAM {rate:.1f}; the paper's outcome needs <= {paper_rate:.1f} B/cycle")


def _pair_rows(hw: AccelSpec, model: str, seq: int) -> list[Row]:
    """000 §III Fig. 3: fused vs non-fused latency of QKᵀ+Softmax, W_out+LayerNorm and W2+LayerNorm, and for the two
    LayerNorm pairs the sign of the effect with the DMA physics behind it."""
    m = load_model(model)
    pairs = (("QKᵀ + Softmax", GemmShape(seq, seq, m.head_dim, m.heads), "softmax", "improves MHA latency by 78%",
              (-0.78, -0.78), "faster"),
             ("W_out + LayerNorm", GemmShape(seq, m.hidden, m.hidden), "layernorm", "can hurt total latency (sign only)",
              None, "slower"),
             ("W2 + LayerNorm", GemmShape(seq, m.hidden, m.ffn), "layernorm", "hurts total latency by 27%", (0.27, 0.27),
              "slower"))
    rows = []
    for label, shape, name, paper, target, sign in pairs:
        a, b = pair_cost(hw, shape, name, "non-fused"), pair_cost(hw, shape, name, "fused")
        change = b.seconds / a.seconds - 1
        key = f"fusion-{name}-{shape.J}x{shape.K}"
        note = (f"non-fused {a.seconds * 1e6:.0f} µs (matmul {a.gemm_s * 1e6:.0f} + {name} {a.nonlinear_s * 1e6:.0f}), "
                f"fused {b.seconds * 1e6:.0f} µs (matmul {b.gemm_s * 1e6:.0f} + exposed {name} {b.nonlinear_s * 1e6:.0f}); "
                f"fused tiles ti={b.mapping.ti} tj={b.mapping.tj} tk={b.mapping.tk}")
        rows.append(Row(key, f"fusion-optimized vs non-fused, {label} (seq {seq})", paper, change, note, INCREASE, target))
        if name == "softmax":
            share = a.nonlinear_s / a.seconds
            rows.append(Row("softmax-share-pair", f"Softmax share of non-fused QKᵀ+Softmax cycles (seq {seq})", "around 78%",
                            share, "", SHARE, (0.78, 0.78)))
        else:
            rows.append(Row(f"{key}-sign", f"sign of the fusion effect, {label} (seq {seq})", sign, _sign(change),
                            _physics(hw, shape, a, b, target[0] if target else 0.0), TEXT))
    return rows


def _dma(r: Result) -> str:
    """The matmuls' DMA over a whole inference: share of DMA-bound tiles, L2 hit rate, DRAM bytes read."""
    t = sum(x.timing * x.count for x in r.records if x.timing is not None)
    return (f"DMA-bound tiles {t.dma_bound_tiles / t.tiles:.0%}, L2 hit rate {t.hit_rate:.0%}, "
            f"DRAM reads {t.dram_read_bytes / 2**20:.0f} MiB")


def reproduce_000(model: str = "bert-base", seq: int = 512) -> Repro:
    """Rows of 000 §II-2..4 and §III, and the runs of the Fig. 2 breakdown."""
    hws = {n: load_accel(n) for n in PRESETS}
    base, resized, ibert = (run(model, seq, hws[n]) for n in PRESETS)
    cat = base.by_category()
    nl_share = (cat["softmax"] + cat["layernorm"] + cat["gelu"] + cat["(de)quant"]) / base.seconds
    mm_change = resized.by_category()["matmul"] / cat["matmul"] - 1
    speedup = base.seconds / ibert.seconds
    rows = [
        Row("baseline-utilization", "baseline: MAC utilization over the whole inference", "< 1%", base.utilization,
            "", SHARE, (0.0, 0.01)),
        Row("baseline-matmul-utilization", "baseline: utilization of the matmuls alone", "74%", base.matmul_utilization(),
            "", SHARE, (0.74, 0.74)),
        Row("baseline-nonlinear-share", "baseline: nonlinear ops + (de)quantization share of time", "96%", nl_share,
            f"of which (de)quant {cat['(de)quant'] / base.seconds:.1%}", SHARE, (0.96, 0.96)),
        Row("resplit-matmul", "matmul latency, 64/256 KiB re-split vs 256/64 KiB", "-36%", mm_change,
            f"{cat['matmul'] * 1e3:.1f} ms -> {resized.by_category()['matmul'] * 1e3:.1f} ms; {_dma(base)} -> "
            f"{_dma(resized)}", INCREASE, (-0.36, -0.36)),
        Row("ibert-speedup", "end-to-end speed-up, I-BERT configuration over the baseline", "39.6×", f"{speedup:.1f}×",
            f"{base.seconds * 1e3:.0f} ms -> {ibert.seconds * 1e3:.1f} ms; gap {speedup / 39.6:.2f} of the paper's; "
            f"the baseline's host nonlinear ops and (de)quant are {nl_share:.0%} of its time, so the speed-up is set by "
            f"the host model, not the DMA (matmuls {cat['matmul'] * 1e3:.0f} ms -> "
            f"{ibert.by_category()['matmul'] * 1e3:.0f} ms)", TEXT),
        Row("ibert-matmul-share", "I-BERT configuration: matmul share of time", "dominant (Fig. 2 middle)",
            ibert.by_category()["matmul"] / ibert.seconds, "", SHARE, (0.5, 1.0)),
    ]
    rows += _pair_rows(hws["gemmini-ibert"], model, seq)
    fig2 = [(f"baseline n={seq}", base)] + [(f"I-BERT n={n}", run(model, n, hws["gemmini-ibert"])) for n in FIG2_SEQS]
    return Repro(tuple(rows), tuple(fig2))
