"""Reproduce the runtime proportions of Demystifying BERT (002) with the analytical model.

Every row puts one proportion the paper reports (as text, the way the paper states it)
next to what ``tstack.analyze`` predicts for the same configuration. Nothing here is tuned
to the paper: the device constants come from the device preset as they are, so the gaps
between the two columns are the model's honest error (see ``note`` per row).

Configuration names follow 002 Fig. 3: ``Ph{1,2}-B{batch}-FP{32,16}``, where Phase 1 is
n = 128, Phase 2 is n = 512, and FP16 means mixed precision (FP16 FWD/BWD, FP32 LAMB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tstack.api import analyze
from tstack.breakdown import Breakdown
from tstack.hardware.device import DeviceSpec, load_device
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.labels import ATTENTION_OPS, ATTN_BGEMM, DR_RC_LN, GELU, LAMB, LINEAR_FC, LINEAR_GEMM, MASTER_COPY
from tstack.workload.op import GEMM_KINDS

# Units of Row.tstack: a fraction of the iteration time, a relative increase, a factor ("6–8×"), or text.
SHARE, INCREASE, RATIO, TEXT = "share", "increase", "ratio", "text"
# The configurations 002 §3.2.1 names in its discussion of Fig. 3: (phase, batch, precision).
FIG3 = ((1, 4, "fp32"), (1, 32, "fp32"), (2, 4, "fp32"), (1, 32, "fp16-mixed"), (2, 4, "fp16-mixed"))
PHASE_SEQ = {1: 128, 2: 512}


@dataclass(frozen=True)
class Row:
    """One reproduced claim of 002.

    ``key`` is a stable identifier (for tests and JSON), ``paper`` the paper's value as it
    states it, ``tstack`` the predicted value (a float in the row's ``unit``, or text),
    ``target`` the paper's value as a numeric (low, high) range when it gives one.
    """

    key: str
    claim: str
    paper: str
    tstack: float | str
    note: str = ""
    unit: str = SHARE
    target: tuple[float, float] | None = None

    @property
    def gap(self) -> float | None:
        """tstack minus the nearest end of the paper's range (0 inside it); None without a numeric target.

        For a factor (unit RATIO) the gap is relative: tstack over the nearest end, minus 1.
        """
        if self.target is None or not isinstance(self.tstack, float):
            return None
        lo, hi = self.target
        end = lo if self.tstack < lo else hi if self.tstack > hi else None
        if end is None:
            return 0.0
        return self.tstack / end - 1 if self.unit == RATIO else self.tstack - end


    def record(self) -> dict[str, object]:
        """The row as a JSON record (the `repro` documents' records; report.schema REPRO_RECORD)."""
        lo, hi = self.target if self.target else (None, None)
        return {"key": self.key, "claim": self.claim, "paper": self.paper, "tstack": self.tstack, "unit": self.unit,
                "target_low": lo, "target_high": hi, "gap": self.gap, "note": self.note}


def config_name(phase: int, batch: int, precision: str) -> str:
    return f"Ph{phase}-B{batch}-FP{32 if precision == 'fp32' else 16}"


def _pct(*values: float) -> tuple[float, float]:
    return (min(values) / 100, max(values) / 100)


class _Runs:
    """Breakdowns of the configurations the rows need, each analyzed once."""

    def __init__(self, device: str | Path | DeviceSpec) -> None:
        self.device = load_device(device)
        self.models: dict[str, ModelSpec] = {}
        self.cache: dict[tuple, Breakdown] = {}

    def get(self, batch: int, seq: int, precision: str = "fp32", model: str = "bert-large",
            checkpoint: str = "none") -> Breakdown:
        key = (model, batch, seq, precision, checkpoint)
        if key not in self.cache:
            spec = self.models.setdefault(model, load_model(model))
            run = RunSpec(mode="train", batch=batch, seq=seq, precision=precision, checkpoint=checkpoint)
            self.cache[key] = analyze(spec, run, self.device)
        return self.cache[key]

    def fig3(self, phase: int, batch: int, precision: str) -> Breakdown:
        return self.get(batch, PHASE_SEQ[phase], precision)


def share_of(b: Breakdown, key: str, values: tuple[str, ...], where: dict[str, str] | None = None) -> float:
    """Fraction of the iteration's time spent in ops whose label ``key`` is one of ``values``."""
    s = b.shares(key, where)
    return sum(s.get(v, 0.0) for v in values)


def update_share(b: Breakdown) -> float:
    """The weight-update phase (002 plots it as LAMB): LAMB kernels plus mixed-precision master copies."""
    return b.shares("part").get("optimizer", 0.0)


def _update_note(b: Breakdown) -> str:
    g = b.shares("group")
    if MASTER_COPY in g:
        return f"update phase = LAMB kernels {g.get(LAMB, 0):.1%} + fp16↔fp32 master copies {g[MASTER_COPY]:.1%}"
    return "update phase = LAMB kernels (global norm, stage 1, stage 2, trust-ratio norms)"


def _fig3_rows(runs: _Runs) -> list[Row]:
    rows = []
    for ph, B, prec in FIG3:
        name, b = config_name(ph, B, prec), runs.fig3(ph, B, prec)
        parts = b.shares("part")
        rows.append(Row(f"transformer.{name.lower()}", f"Transformer layers share, {name}", "68–85% (Fig. 3 range)",
                        parts["transformer"], "FWD+BWD of the 24 encoder layers", SHARE, _pct(68, 85)))
        rows.append(Row(f"output.{name.lower()}", f"Output layer share, {name}", "3–7% (Fig. 3 range)", parts["output"],
                        "pooler, NSP and MLM head (MLM on 15% of tokens) with backward", SHARE, _pct(3, 7)))
    return rows


def _lamb_rows(runs: _Runs) -> list[Row]:
    b4, b32 = runs.fig3(1, 4, "fp32"), runs.fig3(1, 32, "fp32")
    mp1, mp2 = runs.fig3(1, 32, "fp16-mixed"), runs.fig3(2, 4, "fp16-mixed")
    ph2 = runs.fig3(2, 4, "fp32")
    return [
        Row("lamb.ph1-b4-fp32", "LAMB share, Ph1-B4-FP32 (Fig. 3/8)", "25%", update_share(b4), _update_note(b4),
            SHARE, _pct(25, 25)),
        Row("lamb.ph1-b32-fp32", "LAMB share, Ph1-B32-FP32 (Fig. 3/8)", "7% (Takeaway 1: 7–10%)", update_share(b32),
            _update_note(b32), SHARE, _pct(7, 10)),
        Row("lamb.ph2-b4-fp32", "LAMB share, Ph2-B4-FP32 (Fig. 3)", "> Ph1-B32-FP32, within 7–25%", update_share(ph2),
            _update_note(ph2), SHARE, _pct(7, 25)),
        Row("lamb.ph1-b32-fp16", "LAMB share, Ph1-B32-FP16 mixed (Fig. 3)", "16–19%", update_share(mp1), _update_note(mp1),
            SHARE, _pct(16, 19)),
        Row("lamb.ph2-b4-fp16", "LAMB share, Ph2-B4-FP16 mixed (Fig. 3)", "16–19%", update_share(mp2), _update_note(mp2),
            SHARE, _pct(16, 19)),
    ]


def _fig4_rows(runs: _Runs) -> list[Row]:
    rows = []
    paper = {  # (FP32, MP) as 002 §3.2.1–3.2.3 state them, in percent of the whole iteration
        "gemm": (55, 36), "linear_fc": (57, 42), "linear": (22, 19), "attention": (7, 9), "drrcln": (5, 9), "gelu": (13, 15),
    }
    for prec, i in (("fp32", 0), ("fp16-mixed", 1)):
        b = runs.fig3(1, 32, prec)
        tag, suffix = ("FP32", "fp32") if i == 0 else ("MP", "fp16")
        tr = {"part": "transformer"}
        gemm_tr = share_of(b, "kind", GEMM_KINDS, tr)
        rows += [
            Row(f"gemm.{suffix}", f"GEMM share (kinds gemm+bgemm), Ph1-B32-{tag}", f"{paper['gemm'][i]}%",
                share_of(b, "kind", GEMM_KINDS), f"whole iteration incl. output-layer GEMMs; transformer layers only: "
                f"{gemm_tr:.1%}", SHARE, _pct(paper["gemm"][i])),
            Row(f"linear_fc.{suffix}", f"Linear+FC GEMM share, Ph1-B32-{tag}", f"{paper['linear_fc'][i]}%",
                share_of(b, "group", LINEAR_FC), "groups Linear GEMM + FC GEMM (FWD, BWD-act, BWD-weight, bias grads)",
                SHARE, _pct(paper["linear_fc"][i])),
            Row(f"linear.{suffix}", f"Attention Linear GEMM share, Ph1-B32-{tag}", f"{paper['linear'][i]}%",
                share_of(b, "group", (LINEAR_GEMM,)), "Q/K/V projections and output projection", SHARE,
                _pct(paper["linear"][i])),
            Row(f"attention.{suffix}", f"Attention ops share (B-GEMM + Scale+Mask+DR+SM), Ph1-B32-{tag}",
                f"{paper['attention'][i]}%", share_of(b, "group", ATTENTION_OPS),
                f"of which Attn B-GEMM {share_of(b, 'group', (ATTN_BGEMM,)):.1%}", SHARE, _pct(paper["attention"][i])),
            Row(f"drrcln.{suffix}", f"DR+RC+LN share, Ph1-B32-{tag}", f"{paper['drrcln'][i]}%",
                share_of(b, "group", (DR_RC_LN,)), "dropout, residual add, LayerNorm after each sublayer (FWD+BWD)",
                SHARE, _pct(paper["drrcln"][i])),
            Row(f"gelu.{suffix}", f"GeLU share, Ph1-B32-{tag}", f"{paper['gelu'][i]}%", share_of(b, "group", (GELU,)),
                "one fused bias+GeLU kernel forward, gelu-bwd + bias-grad backward", SHARE, _pct(paper["gelu"][i])),
        ]
    return rows


def _fig8_rows(runs: _Runs) -> list[Row]:
    short, long_ = runs.get(16, 128), runs.get(4, 512)
    bg = (ATTN_BGEMM,)
    return [
        Row("attention.n128-b16", "Attention ops share, n=128 B=16 FP32 (Fig. 8)", "7%", share_of(short, "group", ATTENTION_OPS),
            "Attn B-GEMM + Scale+Mask+DR+SM", SHARE, _pct(7)),
        Row("attention.n512-b4", "Attention ops share, n=512 B=4 FP32 (Fig. 8)", "17%", share_of(long_, "group", ATTENTION_OPS),
            "same token count (2048) as n=128 B=16", SHARE, _pct(17)),
        Row("bgemm.n128-b16", "Attn B-GEMM share, n=128 B=16 FP32 (Fig. 8)", "3%", share_of(short, "group", bg), "", SHARE,
            _pct(3)),
        Row("bgemm.n512-b4", "Attn B-GEMM share, n=512 B=4 FP32 (Fig. 8)", "8%", share_of(long_, "group", bg), "", SHARE,
            _pct(8)),
    ]


def _fig9_rows(runs: _Runs) -> list[Row]:
    c3, c2 = runs.get(32, 128, model="bert-c3"), runs.get(32, 128)
    c3_b8 = runs.get(8, 128, model="bert-c3")
    return [
        Row("lamb.c3", "LAMB share, C3 (d_model=2048), B=32 n=128 FP32 (Fig. 9)", "34%", update_share(c3),
            f"002 does not state C3's B; at B=8: {update_share(c3_b8):.1%}; C2 (BERT-Large) at B=32: {update_share(c2):.1%}",
            SHARE, _pct(34)),
        Row("linear_fc.c3", "Linear+FC GEMM share, C3 vs C2 (Fig. 9)", "much higher than C2",
            share_of(c3, "group", LINEAR_FC), f"C2 (BERT-Large): {share_of(c2, 'group', LINEAR_FC):.1%}", SHARE),
    ]


def _checkpoint_rows(runs: _Runs) -> list[Row]:
    base, ck = runs.get(32, 128), runs.get(32, 128, checkpoint="sqrt")
    every6 = runs.get(32, 128, checkpoint="every-6")
    seg = ck.run.segment_size(ck.model.layers)
    kernels = ck.total.kernels / base.total.kernels - 1
    runtime = ck.total.seconds / base.total.seconds - 1
    return [
        Row("checkpoint.kernels", "Checkpointing: kernel count increase, B=32 n=128 FP32 (§4)", "~33%", kernels,
            f"{base.total.kernels} → {ck.total.kernels} kernels; checkpoint='sqrt' gives segments of {seg} layers "
            f"(002: 4 segments of 6; every-6 gives +{every6.total.kernels / base.total.kernels - 1:.1%})",
            INCREASE, _pct(33)),
        Row("checkpoint.runtime", "Checkpointing: runtime increase, B=32 n=128 FP32 (§4)", "~27%", runtime,
            f"every-6: +{every6.total.seconds / base.total.seconds - 1:.1%}", INCREASE, _pct(27)),
        Row("checkpoint.lamb", "LAMB share with checkpointing, B=32 n=128 FP32 (§4)", "drops (LAMB unaffected)",
            update_share(ck), f"without checkpointing: {update_share(base):.1%}", SHARE),
    ]


def reproduce_002(device: str | Path | DeviceSpec = "mi100") -> list[Row]:
    """Rows of 002's reported proportions next to tstack's predictions on ``device`` (002 used an MI100)."""
    runs = _Runs(device)
    return (_fig3_rows(runs) + _lamb_rows(runs) + _fig4_rows(runs) + _fig8_rows(runs) + _fig9_rows(runs)
            + _checkpoint_rows(runs))
