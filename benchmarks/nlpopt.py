"""NLP-Opt holistic partitioning on this CPU: time ratios, working set and LLC misses per variant (003 Fig. 10, 12, Table III).

    python benchmarks/nlpopt.py [--repeats 5] [--threads 1] [--quick] [--no-llc]

One layer per case (the memory network: all its hops), batch 1, random weights, for the 003 Table IV base configs
and S-4x: BERT (nlpfast-bert: H=1024, h=16, F=4096; S=256 and 1024), the Transformer (nlpfast-transformer: an
encoder and a decoder layer, ReLU; S=256 and 1024) and the memory network (d=64, 3 hops, n_q=32 questions; the
paper's 10^8 memory slots are cut to 2^18 and 2^20, S-4x, to fit 2 cores and the memory of a shared machine).
Every variant is timed round-robin with the others (median of ``--repeats``), and its time is divided by the
reference's (``base``, explicit QKᵀ/softmax/PV) and by the same layer with ``F.scaled_dot_product_attention``.

The allocator is controlled: the modules allocate their intermediates per call, so glibc's policy decides which
allocations are mmap'ed (and page-faulted) on every call. The script re-executes itself once with a fixed policy
(``MALLOC_MMAP_THRESHOLD_`` at glibc's 32 MiB maximum, which turns the dynamic threshold off, and a trim threshold
that keeps freed heap memory), and ``describe()`` prints it with the figures.

LLC misses (``--no-llc`` skips them): hardware counters where they work, else callgrind's cache simulation on a
reduced BERT layer (H=128, h=2, F=512, S=512) with a 1 MiB 16-way LLC: its weights (0.8 MB) fit while the
baseline's scores and probabilities (2 MB each) do not, the regime of Fig. 12 scaled down so that a simulation
(one thread, ~50× slower than native) ends in minutes; it runs fixed small blocks (``LLC_BLOCKS``: 1 head, 128 keys,
4 d_FF blocks), since that layer fits the L2 whole and the L2 rule would not partition it.

Block sizes: ``--chunk``, ``--head-block``, ``--ffn-blocks`` (and ``--memnet-chunk`` for the memory network) as given,
else sized per case from the shapes and the per-core L2 (docs/kernels.md); each case prints what it runs with.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

CASES = (("bert", (256, 1024)), ("transformer", (256, 1024)), ("memnet", (1 << 18, 1 << 20)))
QUICK = (("bert", (256,)), ("transformer", (256,)), ("memnet", (1 << 18,)))
VARIANTS = ["sdpa", "base", "P", "PC", "PCF", "PCF+ZS"]
LLC_BLOCKS = {"chunk": 128, "head_block": 1, "ffn_blocks": 4}


def _ratio(t, ref) -> str:
    return f"{t.median / ref.median:6.2f}" if t is not None and ref is not None else "     -"


def print_rows(rows) -> None:
    from tstack.report import units

    print(f"{'model':12} {'part':22} {'S':>8} {'variant':8} {'median':>9} {'p10':>9} {'p90':>9} {'÷base':>6} {'÷sdpa':>6} "
          f"{'peak':>9} {'attn peak':>9} {'max|err|':>8}")
    refs: dict[tuple, dict] = {}
    for r in rows:
        refs.setdefault((r.model, r.part, r.seq), {})[r.variant] = r.timing
    for r in rows:
        head = f"{r.model:12} {r.part:22} {r.seq:>8} {r.variant:8}"
        if r.timing is None:
            print(f"{head} n/a: {r.note}")
            continue
        ref = refs[(r.model, r.part, r.seq)]
        t = r.timing
        print(f"{head} {units.seconds(t.median):>9} {units.seconds(t.p10):>9} {units.seconds(t.p90):>9} "
              f"{_ratio(t, ref.get('base'))} {_ratio(t, ref.get('sdpa'))} {units.si(r.peak_bytes, 'B'):>9} "
              f"{units.si(r.attention_peak_bytes, 'B'):>9} {r.max_abs_err:8.1e}")


def llc_study(params) -> None:
    from tstack.models import load_model
    from tstack.studies.llc import LLC, llc_stats
    from tstack.studies.nlpopt_bench import build_cases

    spec = load_model("nlpfast-bert").replace(hidden=128, heads=2, ffn=512)
    case = build_cases("bert", 512, spec=spec)[0]
    llc = LLC(1 << 20, 16, 64)
    stats = llc_stats(case, ["base", "P", "PC", "PCF"], replace(params, **LLC_BLOCKS), llc)
    how = "simulated (callgrind, 1 thread)" if stats and stats[0].simulated else "hardware counters"
    print(f"\nLLC misses per variant, BERT layer H=128 h=2 F=512 S=512, {LLC_BLOCKS}, {how}, LLC {llc.size} B "
          f"{llc.ways}-way:")
    base = next((s for s in stats if s.variant == "base"), None)
    for s in stats:
        rel = f"{s.mpki / base.mpki:.2f}" if base and base.mpki else "-"
        print(f"  {s.variant:5} misses {s.llc_misses:>12,.0f}  instructions {s.instructions:>14,.0f}  MPKI {s.mpki:7.3f}  "
              f"MPKI ÷ base {rel}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=None, help="keys per column-based chunk (default: sized from the L2)")
    parser.add_argument("--head-block", type=int, default=None, help="heads per partial-head group (default: sized from the L2)")
    parser.add_argument("--ffn-blocks", type=int, default=None, help="d_FF blocks (default: sized from the L2)")
    parser.add_argument("--memnet-chunk", type=int, default=None, help="memory slots per chunk (default: sized from the L2)")
    parser.add_argument("--quick", action="store_true", help="base configs only (no S-4x)")
    parser.add_argument("--no-llc", action="store_true", help="skip the LLC-miss study")
    args = parser.parse_args()
    from tstack.profiler.runtime import RuntimeConfig, controlled, describe, reexec_with_malloc_policy

    reexec_with_malloc_policy(sys.argv)  # before torch is imported
    from tstack.kernels.api import Params
    from tstack.studies.nlpopt_bench import block_sizes, build_cases, run_case

    cfg = RuntimeConfig(threads=args.threads)
    params = Params(chunk=args.chunk, threads=args.threads, head_block=args.head_block, ffn_blocks=args.ffn_blocks)
    rows = []
    with controlled(cfg):
        print(describe(cfg))
        print("note: these modules allocate their intermediates on every call (the profiler's preallocation does not "
              "apply to them); what is controlled is glibc's policy, shown above")
        print(f"batch 1, one layer per case (memnet: 3 hops, n_q=32), {params}; None: sized from the L2 per case")
        for model, seqs in QUICK if args.quick else CASES:
            for s in seqs:
                chunked = replace(params, chunk=args.memnet_chunk) if model == "memnet" else params
                for case in build_cases(model, s, 1):
                    print(f"{model} {case.part} S={s}: {block_sizes(case, chunked)}")
                    rows += run_case(case, VARIANTS, chunked, cfg, args.repeats)
                    print(f"  done: {model} {case.part} S={s}", file=sys.stderr, flush=True)
        print_rows(rows)
    if not args.no_llc:
        llc_study(params)


if __name__ == "__main__":
    main()
