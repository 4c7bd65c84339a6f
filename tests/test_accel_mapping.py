"""GEMM mapping and timing: Gemmini's heuristic, capacity legality, SCALE-Sim agreement, the best mapper's optimality."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tstack.accel import mapping as mp
from tstack.accel.timing import GemmShape, Mapping, gemm_timing
from tstack.hardware.accel import AccelSpec, KiB, load_accel

BASE = load_accel("gemmini-baseline")
TRANSFORMER = load_accel("gemmini-transformer")


def test_heuristic_matches_tiled_matmul_auto_by_hand():
    # Baseline: 16384 spad rows, 1024 acc rows; double-buffered halves 8192 / 512.
    # Start: tile_I = tile_J = isqrt(512/16 = 32) = 5, tile_K = (16384/2/2/16 = 256) // 5 = 51 -> min(48 blocks) = 48.
    # Growing J: (5·48 + 48·6)·16 = 8448 > 8192, I likewise, K is at 48 blocks: stays (5, 5, 48).
    assert mp.heuristic(BASE, GemmShape(512, 768, 768)) == Mapping(5, 5, 48)
    # Re-split: 4096 / 4096 rows, halves 2048 / 2048: isqrt(128) = 11, K = (1024/16 = 64) // 11 = 5.
    # J+1: acc 11·12·16 = 2112 > 2048; K+1: (11·6 + 6·11)·16 = 2112 > 2048: stays (11, 11, 5).
    assert mp.heuristic(TRANSFORMER, GemmShape(512, 768, 768)) == Mapping(11, 11, 5)


def test_fused_heuristic_keeps_whole_rows():
    m = mp.heuristic(TRANSFORMER, GemmShape(512, 768, 3072), full_rows=True)
    assert m.tj == 768 // 16  # the full row of 768 outputs
    # from tile_I = 1: I grows while 48·16·I <= 2048 acc rows -> I = 2; K while (2K + 48K)·16 <= 2048 -> K = 2
    assert (m.ti, m.tk) == (2, 2)
    with pytest.raises(mp.Infeasible, match="accumulator rows"):
        mp.heuristic(BASE, GemmShape(512, 768, 3072), full_rows=True)  # 768 rows needed, 512 per buffer


@settings(max_examples=60)
@given(I=st.integers(1, 700), J=st.integers(1, 700), K=st.integers(1, 700), dim=st.sampled_from([4, 8, 16, 32]),
       tj=st.integers(1, 50), tk=st.integers(1, 50), batch=st.integers(1, 3))
def test_resident_single_buffered_timing_is_the_scalesim_closed_form(I, J, K, dim, tj, tk, batch):  # noqa: E741
    """SCALE-Sim WS: folds = ceil(K/R)·ceil(J/C), each 2R + C + T − 2 cycles with T = I rows streamed."""
    hw = AccelSpec(name="ss").changed(mesh={"rows": dim, "cols": dim, "weight_double_buffer": False},
                                      scratchpad={"bytes": 64 * KiB}, accumulator={"bytes": 64 * KiB})
    shape = GemmShape(I, J, K, batch)
    bI, bJ, bK = shape.blocks(dim)
    t = gemm_timing(hw, shape, Mapping(bI, min(tj, bJ), min(tk, bK)), resident=True)
    assert t.cycles == batch * math.ceil(K / dim) * math.ceil(J / dim) * (2 * dim + dim + I - 2)


configs = st.builds(lambda spad, acc, dim, df: AccelSpec(name="r").changed(
    mesh={"rows": dim, "cols": dim, "dataflow": df}, scratchpad={"bytes": spad * KiB}, accumulator={"bytes": acc * KiB}),
    st.sampled_from([16, 32, 64, 128, 256]), st.sampled_from([16, 32, 64, 128, 256]), st.sampled_from([8, 16, 32]),
    st.sampled_from(["WS", "OS"]))
shapes = st.builds(GemmShape, st.integers(1, 2048), st.integers(1, 2048), st.integers(1, 2048), st.integers(1, 4))


def _assert_legal(hw: AccelSpec, shape: GemmShape, m: Mapping) -> None:
    half = 2 if hw.mesh.dataflow == "WS" else 1
    D = hw.dim
    assert (m.ti * m.tk + m.tk * m.tj) * D <= hw.spad_rows // half
    assert m.ti * m.tj * D <= hw.acc_rows // half
    assert all(1 <= t <= n for t, n in zip((m.ti, m.tj, m.tk), shape.blocks(D)))


SMALL_SPAD = AccelSpec(name="r").changed(mesh={"rows": 32, "cols": 32, "dataflow": "WS"}, scratchpad={"bytes": 16 * KiB},
                                         accumulator={"bytes": 256 * KiB})


@given(hw=configs, shape=shapes, full_rows=st.booleans())
# 16 KiB scratchpad (256 double-buffered rows of 32) under a 256 KiB accumulator: the square start 4×5 blocks with
# tk=1 needs (4 + 5)·32 = 288 rows, so the start must shrink (found by hypothesis).
@example(hw=SMALL_SPAD, shape=GemmShape(97, 129, 1, 1), full_rows=False)
def test_heuristic_mappings_are_legal(hw, shape, full_rows):
    try:
        m = mp.heuristic(hw, shape, full_rows)
    except mp.Infeasible:
        assert full_rows  # only the whole-row start can fail to fit
        return
    _assert_legal(hw, shape, m)
    assert gemm_timing(hw, shape, m).cycles >= gemm_timing(hw, shape, m).ideal_cycles


small_shapes = st.builds(GemmShape, st.integers(1, 600), st.integers(1, 600), st.integers(1, 600), st.integers(1, 2))


@settings(max_examples=25)
@given(hw=configs, shape=small_shapes, objective=st.sampled_from(mp.OBJECTIVES))
def test_best_is_legal_and_never_worse_than_the_heuristic(hw, shape, objective):
    m, t = mp.best(hw, shape, objective)
    _assert_legal(hw, shape, m)
    h = mp.heuristic(hw, shape)
    assert mp.score(hw, t, objective) <= mp.score(hw, gemm_timing(hw, shape, h), objective)


def test_illegal_candidates_raise_infeasible():
    with pytest.raises(mp.Infeasible, match="scratchpad rows"):
        mp.check(BASE, GemmShape(512, 768, 768), Mapping(8, 8, 48))  # (8·48 + 48·8)·16 = 12288 > 8192
    with pytest.raises(mp.Infeasible, match=r"ti=40 must be in \[1, 32\]"):
        mp.check(BASE, GemmShape(512, 768, 768), Mapping(40, 1, 1))


def test_timing_accounts_for_every_byte_and_mac():
    shape = GemmShape(512, 768, 768)
    m = mp.heuristic(BASE, shape)
    t = gemm_timing(BASE, shape, m)
    assert t.macs == 512 * 768 * 768
    assert t.store_bytes == 512 * 768  # each int8 output written once
    # no reuse: A is loaded once per J tile (ceil(768/80) = 10), B once per I tile (ceil(512/80) = 7)
    assert t.load_bytes == 512 * 768 * 10 + 768 * 768 * 7
    assert t.ideal_cycles == 512 * 768 * 768 / 256
    assert t.cycles > t.mesh_cycles  # prologue, fill/drain and call overhead are never free


# ---------------------------------------------------------------- the bounded best-mapping search


def _fold_sizes(n: int) -> list[int]:
    """Every distinct tile count's even tile: ceil(n/q) for q = 1..n (the search tstack had before the grid)."""
    return sorted({-(-n // q) for q in range(1, n + 1)})


def _exhaustive(hw: AccelSpec, shape: GemmShape, full_rows: bool = False) -> dict[str, float]:
    """The reference: the best score per objective over every tile count of every dimension, both loop orders. It is
    found with ``mp.search`` (branch and bound), which gives what timing every candidate gives (tested below)."""
    bI, bJ, bK = shape.blocks(hw.dim)
    try:
        pool = [mp.heuristic(hw, shape, full_rows)]
    except mp.Infeasible:
        pool = []
    pool += [Mapping(ti, tj, tk, order, reuse=tk == bK) for ti in _fold_sizes(bI)
             for tj in ([bJ] if full_rows else _fold_sizes(bJ)) for tk in _fold_sizes(bK) for order in mp.ORDERS]
    best = dict.fromkeys(mp.OBJECTIVES, math.inf)
    for o in mp.OBJECTIVES:
        found = mp.search(hw, shape, pool, o)
        if found is not None:
            best[o] = mp.score(hw, found[1], o)
    return best


def _bert_gemm_shapes() -> list[GemmShape]:
    from tstack.accel.model import gemm_shape
    from tstack.models import load_model
    from tstack.spec import RunSpec
    from tstack.workload import build

    shapes = set()
    for model in ("bert-base", "bert-large"):
        for seq in (128, 512):
            ops = build(load_model(model), RunSpec(mode="infer", precision="int8", batch=1, seq=seq), collapse=True)
            shapes |= {gemm_shape(op) for op in ops if op.kind in ("gemm", "bgemm")}
    return sorted(shapes, key=lambda s: (s.I, s.J, s.K, s.batch))


@pytest.mark.parametrize("preset", ["gemmini-baseline", "gemmini-transformer", "gemmini-ibert"])
def test_bounded_search_matches_the_exhaustive_search_on_bert(preset):
    """On every BERT-base/large GEMM the grid search is within 0.1% of every-tile-count search, on each objective."""
    hw = load_accel(preset)
    shapes = _bert_gemm_shapes()
    assert len(shapes) >= 15
    for shape in shapes:
        ref = _exhaustive(hw, shape)
        for objective in mp.OBJECTIVES:
            _, t = mp.best(hw, shape, objective)
            assert mp.score(hw, t, objective) <= 1.001 * ref[objective], (shape, objective)
    # the fused pairs' whole-row tiles (000 §III), where they fit
    for shape in (GemmShape(512, 512, 64, 12), GemmShape(128, 768, 3072), GemmShape(512, 1024, 4096)):
        ref = _exhaustive(hw, shape, full_rows=True)
        if math.isinf(ref["latency"]):
            with pytest.raises(mp.Infeasible):
                mp.best(hw, shape, "latency", full_rows=True)
            continue
        _, t = mp.best(hw, shape, "latency", full_rows=True)
        assert t.cycles <= 1.001 * ref["latency"]


HUGE_SRAM = AccelSpec(name="huge").changed(mesh={"rows": 1, "cols": 1}, scratchpad={"bytes": 1 << 30},
                                           accumulator={"bytes": 1 << 30})


@pytest.mark.parametrize("hw", [BASE, TRANSFORMER, load_accel("gemmini-ibert"), HUGE_SRAM], ids=lambda h: h.name)
@pytest.mark.parametrize("shape", [GemmShape(10**12, 64, 64), GemmShape(64, 10**12, 64), GemmShape(64, 64, 10**12),
                                   GemmShape(2**40, 2**40, 2**40, 2**40), GemmShape(3001, 5003, 7001)],
                         ids=lambda s: f"{s.I}x{s.J}x{s.K}")
def test_best_times_a_bounded_number_of_candidates_for_any_shape(hw, shape, monkeypatch):
    """The search's cost is the timings it makes: counted, not clocked, and bounded whatever the shape."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return gemm_timing(*args, **kwargs)

    monkeypatch.setattr(mp, "gemm_timing", counting)
    m, t = mp.best(hw, shape, "edp")
    _assert_legal(hw, shape, m)
    assert 0 < len(calls) <= 2 * mp.SEARCH_BUDGET + 1 <= 5000
    assert len(mp.candidates(hw, shape)) <= 2 * mp.SEARCH_BUDGET


def _heuristic_unit_steps(hw: AccelSpec, shape: GemmShape, full_rows: bool) -> Mapping:
    """tiled_matmul_auto's growth one block at a time (the reference for the jumping loop in mapping.heuristic)."""
    D = hw.dim
    bI, bJ, bK = shape.blocks(D)
    spad, acc = mp.limits(hw)
    partition_rows = hw.spad_rows // 2 // (2 if mp.double_buffered(hw) else 1)
    ij = max(1, math.isqrt(acc // D))
    ti, tj, tk = (1, bJ, 1) if full_rows else (min(bI, ij), min(bJ, ij), min(bK, max(1, (partition_rows // D) // ij)))

    def fits(i, j, k):
        return (i * k + k * j) * D <= spad and i * j * D <= acc

    while not full_rows and not fits(ti, tj, tk) and max(ti, tj) > 1:
        ti, tj = (ti - 1, tj) if ti >= tj else (ti, tj - 1)
    while True:
        grown = False
        if tj + 1 <= bJ and fits(ti, tj + 1, tk):
            tj, grown = tj + 1, True
        if ti + 1 <= bI and fits(ti + 1, tj, tk):
            ti, grown = ti + 1, True
        if tk + 1 <= bK and fits(ti, tj, tk + 1):
            tk, grown = tk + 1, True
        if not grown:
            return Mapping(ti, tj, tk)


@settings(max_examples=80)
@given(hw=configs, shape=shapes, full_rows=st.booleans())
def test_heuristic_jumps_to_the_same_tiles_as_growing_one_block_at_a_time(hw, shape, full_rows):
    try:
        m = mp.heuristic(hw, shape, full_rows)
    except mp.Infeasible:
        return
    ref = _heuristic_unit_steps(hw, shape, full_rows)
    assert (m.ti, m.tj, m.tk, m.order) == (ref.ti, ref.tj, ref.tk, ref.order)


@given(n=st.integers(1, 10**13), cap=st.integers(1, 10**6))
def test_tile_sizes_are_even_tiles_within_the_cap(n, cap):
    sizes = mp.tile_sizes(n, cap)
    top = min(n, cap)
    assert sizes == sorted(set(sizes)) and 1 <= sizes[0] and sizes[-1] <= top
    assert all(-(-n // -(-n // t)) == t for t in sizes)  # each the smallest tile of its tile count
    assert -(-n // -(-n // top)) in sizes  # the largest tiles that fit are always tried
    assert len(sizes) <= 400


# ---------------------------------------------------------------- branch and bound: same answer, fewer timings

search_configs = st.builds(lambda spad, acc, dim, df, ports, overlap, l2: AccelSpec(name="r").changed(
    mesh={"rows": dim, "cols": dim, "dataflow": df}, scratchpad={"bytes": spad * KiB},
    accumulator={"bytes": acc * KiB, "ports": ports}, overheads={"calls_overlap": overlap}, l2={"bytes": l2 * KiB}),
    st.sampled_from([16, 64, 256]), st.sampled_from([16, 64, 256]), st.sampled_from([8, 16]),
    st.sampled_from(["WS", "OS"]), st.sampled_from([1, 2]), st.booleans(), st.sampled_from([0, 64, 512]))


@settings(max_examples=40, deadline=None)
@given(hw=search_configs, shape=small_shapes, out_bytes=st.sampled_from([1, 4]), data=st.data())
def test_search_bounds_never_exceed_the_timing(hw, shape, out_bytes, data):
    """The bound of every candidate is at most its cycles and its energy (what makes skipping it safe)."""
    pool = mp.candidates(hw, shape)
    picked = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=20)) if pool else []
    if not picked:
        return
    for objective in mp.OBJECTIVES:
        bound = mp.lower_bounds(hw, shape, picked, objective, out_bytes)
        for m, b in zip(picked, bound):
            assert b <= mp.score(hw, gemm_timing(hw, shape, m, out_bytes), objective)


def _scan(hw: AccelSpec, shape: GemmShape, pool: list[Mapping], objective: str, out_bytes: int):
    """The search without bounds: time every legal candidate, keep the first with the lowest score."""
    found = None
    for m in pool:
        try:
            mp.check(hw, shape, m)
        except mp.Infeasible:
            continue
        t = gemm_timing(hw, shape, m, out_bytes)
        if found is None or mp.score(hw, t, objective) < found[0]:
            found = (mp.score(hw, t, objective), m, t)
    return found


def _grid_pool(hw: AccelSpec, shape: GemmShape, full_rows: bool) -> list[Mapping]:
    try:
        pool = [mp.heuristic(hw, shape, full_rows)]
    except mp.Infeasible:
        pool = []
    return pool + mp.candidates(hw, shape, full_rows)


@settings(max_examples=30, deadline=None)
@given(hw=search_configs, shape=st.builds(GemmShape, st.integers(1, 400), st.integers(1, 400), st.integers(1, 400),
                                          st.integers(1, 2)),
       objective=st.sampled_from(mp.OBJECTIVES), full_rows=st.booleans(), out_bytes=st.sampled_from([1, 4]))
def test_branch_and_bound_finds_what_timing_every_candidate_finds(hw, shape, objective, full_rows, out_bytes):
    ref = _scan(hw, shape, _grid_pool(hw, shape, full_rows), objective, out_bytes)
    if ref is None:
        with pytest.raises(mp.Infeasible):
            mp.best(hw, shape, objective, full_rows, out_bytes)
        return
    m, t = mp.best(hw, shape, objective, full_rows, out_bytes)
    assert (m, t) == (ref[1], ref[2])


@settings(max_examples=15, deadline=None)
@given(hw=search_configs, shape=st.builds(GemmShape, st.integers(1, 160), st.integers(1, 160), st.integers(1, 160)),
       objective=st.sampled_from(mp.OBJECTIVES))
def test_branch_and_bound_over_every_tile_count_is_the_exhaustive_search(hw, shape, objective):
    """Small shapes, every tile count of every dimension (legal or not), both orders, with and without the inner
    operand kept (gemmini.h's b_reuse): the same mapping and timing."""
    bI, bJ, bK = shape.blocks(hw.dim)
    pool = [Mapping(ti, tj, tk, order, reuse=tk == bK, reuse_inner=inner) for ti in _fold_sizes(bI)
            for tj in _fold_sizes(bJ) for tk in _fold_sizes(bK) for order in mp.ORDERS for inner in (False, True)]
    ref = _scan(hw, shape, pool, objective, 1)
    found = mp.search(hw, shape, pool, objective)
    assert found == (None if ref is None else (ref[1], ref[2]))


@pytest.mark.parametrize("preset", ["gemmini-baseline", "gemmini-ibert"])
def test_branch_and_bound_times_few_candidates_on_bert(preset, monkeypatch):
    """The bounds prune: on the BERT-base FFN GEMM the search times under a tenth of its candidates, same answer."""
    hw, shape = load_accel(preset), GemmShape(512, 768, 3072)
    ref = _scan(hw, shape, _grid_pool(hw, shape, False), "latency", 1)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return gemm_timing(*args, **kwargs)

    monkeypatch.setattr(mp, "gemm_timing", counting)
    assert mp.best(hw, shape)[0] == ref[1]
    assert len(calls) < len(mp.candidates(hw, shape)) / 10


@settings(max_examples=40, deadline=None)
@given(hw=search_configs, shape=small_shapes, out_bytes=st.sampled_from([1, 4]), data=st.data())
def test_search_bounds_count_the_bytes_and_macs_the_timing_counts(hw, shape, out_bytes, data):
    """``timing.bounds`` restates the L2 hits and the per-tile counts vectorized: they must equal gemm_timing's."""
    from tstack.accel.timing import bounds

    pool = mp.candidates(hw, shape)
    if not pool:
        return
    picked = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))
    b = bounds(hw, shape, picked, out_bytes)
    for i, m in enumerate(picked):
        t = gemm_timing(hw, shape, m, out_bytes)
        for name in ("array_macs", "spad_read_bytes", "spad_write_bytes", "acc_bytes", "load_bytes", "store_bytes",
                     "dram_read_bytes"):
            assert getattr(b, name)[i] == pytest.approx(getattr(t, name), rel=1e-12), name
