"""Integer-only (I-BERT) MiniLM vs fp32, per encoder layer and whole model, in one controlled run.

Prints medians (and p10-p90) of the fp32 HF BertModel, tstack's integer model (fused numba kernels, the default, and
the vectorized PyTorch kernels) and, when transformers provides it,
HF's IBertModel (quant_mode=True, same shapes, random weights: its speed does not depend on the values), plus the
int8 GEMM options on the layer's shapes. Ratios are against fp32 measured in the same run. The machine is shared:
read the spread before trusting a ratio.

    nice -n 19 python benchmarks/ibert.py [--seq 128] [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import ctypes

import torch

from tstack.data import sentences
from tstack.integer import fast
from tstack.integer import layer as il
from tstack.integer.model import convert, embed, int_forward
from tstack.minilm import encode, load_minilm
from tstack.profiler.runtime import RuntimeConfig, controlled, describe
from tstack.profiler.timing import Timing, time_callable
from tstack.report import units

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
HEAP_BYTES = 256 * 2**20


def _pin_allocator() -> str:
    """Keep freed blocks in the heap (no mmap, no trim up to 256 MiB), so that both models, which allocate their
    outputs on every call, reuse warm pages instead of faulting in fresh ones; returns what was set."""
    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, HEAP_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, HEAP_BYTES)
    return f"mallopt mmap/trim threshold {HEAP_BYTES // 2**20} MiB" if ok else "mallopt refused: glibc defaults"


def _hf_ibert(model: torch.nn.Module) -> torch.nn.Module | None:
    """HF's IBertModel of the same shapes in quant mode, or None if this transformers has none."""
    import transformers

    if not hasattr(transformers, "IBertModel"):
        return None
    c = model.config
    cfg = transformers.IBertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                                   num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                                   max_position_embeddings=c.max_position_embeddings + 2, quant_mode=True)
    return transformers.IBertModel(cfg, add_pooling_layer=False).eval()


def _row(name: str, t: Timing, ref: Timing | None) -> str:
    ratio = f"{ref.median / t.median:6.2f}x vs fp32" if ref is not None else ""
    return f"  {name:34s} {units.seconds(t.median):>10s}  (p10-p90 {units.seconds(t.p10)}-" \
           f"{units.seconds(t.p90)})  {ratio}"


def _gemms(hidden: int, ffn: int, s: int, cfg: RuntimeConfig, repeats: int) -> list[str]:
    """fp32 GEMM vs torch._int_mm (int8 x int8 -> int32) vs fp32 on int8 values, on the layer's three GEMM shapes."""
    lines = []
    for k, n in ((hidden, hidden), (hidden, ffn), (ffn, hidden)):
        a = torch.randint(-127, 128, (s, k), dtype=torch.int8)
        w = torch.randint(-127, 128, (k, n), dtype=torch.int8)
        af, wf = torch.randn(s, k), torch.randn(k, n)
        f32 = time_callable(lambda af=af, wf=wf: af @ wf, cfg, 3, repeats)
        i8 = time_callable(lambda a=a, w=w: torch._int_mm(a, w), cfg, 3, repeats)
        fi = time_callable(lambda a=a, w=w: (a.float() @ w.float()).to(torch.int32), cfg, 3, repeats)
        lines += [_row(f"GEMM {s}x{k}x{n} fp32", f32, None), _row(f"GEMM {s}x{k}x{n} torch._int_mm", i8, f32),
                  _row(f"GEMM {s}x{k}x{n} fp32 on int8 values", fi, f32)]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    cfg = RuntimeConfig(threads=args.threads)
    allocator = _pin_allocator()
    model, tok = load_minilm()
    texts = sentences()
    imodel = convert(model, [encode(tok, texts[0::2], 128)], il.QuantConfig(), "minilm")
    ids = encode(tok, [" ".join(texts)], args.seq)["input_ids"]  # one real sequence of exactly S tokens
    s = ids.shape[1]
    with torch.inference_mode(), controlled(cfg):
        print(describe(cfg))
        print(f"allocator for these runs: {allocator} (both models allocate outputs per call; warm-up runs first)")
        print(f"MiniLM (6 layers, H=384, h=12, F=1536), batch 1, S={s}")
        hidden = model.embeddings(input_ids=ids)
        x8 = embed(imodel.embeddings, ids, None)
        int_forward(imodel, ids)  # compiles the fused kernels (or loads them from numba's cache) before timing
        f_layer = time_callable(lambda: model.encoder.layer[0](hidden), cfg, 3, args.repeats)
        i_layer = time_callable(lambda: fast.forward(x8, None, imodel.fused[0]), cfg, 3, args.repeats)
        v_layer = time_callable(lambda: il.layer_forward(x8, None, imodel.layers[0]), cfg, 3, args.repeats)
        f_model = time_callable(lambda: model(input_ids=ids), cfg, 3, args.repeats)
        i_model = time_callable(lambda: int_forward(imodel, ids), cfg, 3, args.repeats)
        v_model = time_callable(lambda: int_forward(imodel, ids, fused=False), cfg, 3, args.repeats)
        print("per encoder layer:")
        print(_row("fp32 HF BertLayer", f_layer, None))
        print(_row("integer (tstack, fused kernels)", i_layer, f_layer))
        print(_row("integer (tstack, PyTorch kernels)", v_layer, f_layer))
        print("whole model (embeddings + 6 layers):")
        print(_row("fp32 HF BertModel", f_model, None))
        print(_row("integer (tstack, fused kernels)", i_model, f_model))
        print(_row("integer (tstack, PyTorch kernels)", v_model, f_model))
        ref = _hf_ibert(model)
        if ref is None:
            print("  HF IBertModel: not in this transformers")
        else:
            r_model = time_callable(lambda: ref(input_ids=ids), cfg, 3, args.repeats)
            print(_row("HF IBertModel (quant_mode=True)", r_model, f_model))
            print(f"  tstack integer vs HF IBertModel: {r_model.median / i_model.median:.1f}x faster")
        print("int8 GEMM options on this layer's shapes:")
        for line in _gemms(384, 1536, s, cfg, args.repeats):
            print(line)


if __name__ == "__main__":
    main()
