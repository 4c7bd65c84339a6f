"""The request-level DMA model (issue 14): requests per row by alignment, L2 hits and misses, the mesh-bound RTL point."""

from __future__ import annotations

import pytest

from tstack.accel.mapping import best, heuristic
from tstack.accel.timing import GemmShape, Mapping, gemm_timing, line_requests, request_sizes, row_requests, tile_requests
from tstack.hardware.accel import load_accel

BASE = load_accel("gemmini-baseline")
SIZES = request_sizes(BASE)  # (64, 32, 16): beatBytes 16 up to dma_maxbytes 64
CHUNK = BASE.dma.mvin_row_bytes  # a mvin row is at most 64 bytes


def test_request_sizes_are_the_aligned_powers_of_two_from_the_bus_to_the_largest_request():
    assert SIZES == (64, 32, 16)
    assert request_sizes(BASE.changed(dma={"bus_bytes_per_cycle": 8, "request_bytes": 100})) == (64, 32, 16, 8)


# Hand counts. A row is cut into mvin rows of at most 64 bytes from its start; at each address the DMA issues the
# request (16, 32 or 64 B, aligned down to its size) that delivers the most of what is left, the smaller on a tie
# (Gemmini DMA.scala StreamReaderCore, read_packets.reduce): one request per 64-byte block a mvin row touches.
@pytest.mark.parametrize(("offset", "width", "hand"), [
    (0, 16, 1), (16, 16, 1), (32, 16, 1), (48, 16, 1),
    (0, 32, 1), (16, 32, 1), (32, 32, 1), (48, 32, 2),                   # 32@16 = one 64@0; 32@48 = 16@48 + 16@64
    (0, 48, 1), (16, 48, 1), (32, 48, 2), (48, 48, 2),                   # 64@0 over-reads 16; 32+16; 16 + 64@64
    (0, 64, 1), (16, 64, 2), (32, 64, 2), (48, 64, 2),                   # 64; 64@0 (48) + 16; 32+32; 16 + 64@64 (48)
    (0, 80, 2),    # 5 blocks aligned: mvin 64 (one request) + mvin 16 (one)
    (16, 80, 3),   # mvin 64@16: 64@0 (48) + 16@64, mvin 16@80: 16
    (32, 80, 3),   # mvin 64@32: 32+32, mvin 16@96: 16
    (48, 80, 3),   # mvin 64@48: 16@48 + 64@64 (48), mvin 16@112: 16
    (0, 128, 2), (16, 128, 4), (32, 128, 4), (48, 128, 4),               # two mvins of 64 at the same alignment
    (0, 768, 12),  # a BERT row of A: twelve aligned 64-byte mvins
    (48, 816, 26),  # fc2's A row at K tile 1 (51 blocks): 12 mvins of 64 at 48 (2 each) + 48@48 (2)
    (8, 16, 1),    # not 16-aligned: 32@0 delivers all 16 (16@0 only 8), the smaller of 32 and 64
    (0, 8, 1),     # shorter than the smallest request: one request
])
def test_requests_per_row_equal_a_hand_count(offset, width, hand):
    assert row_requests(offset, width, CHUNK, SIZES) == hand


def test_the_tile_offsets_of_an_80_byte_weight_tile_cycle_through_four_alignments():
    """(5,5,48) on a 768-wide weight: B tiles start at 0, 80, 160, 240 bytes = 0, 16, 32, 48 mod 64: 3 of 4 misaligned,
    3 requests a row instead of 2."""
    counts = [tile_requests((j * 80) % 64, 768, 768, 80, CHUNK, SIZES) for j in range(4)]
    assert counts == [768 * 2, 768 * 3, 768 * 3, 768 * 3]


def test_tile_requests_sum_the_rows_of_any_stride():
    """Rows 72 bytes apart start at 0, 8, 16, ... mod 64: the closed form equals the row-by-row sum."""
    rows = 100
    assert tile_requests(0, 72, rows, 48, CHUNK, SIZES) == sum(row_requests((r * 72) % 64, 48, CHUNK, SIZES)
                                                               for r in range(rows))


def test_an_activation_tile_re_read_across_j_hits_the_l2_and_a_streamed_weight_misses():
    """128×3072×768 with (8,8,48): one row tile, so W (768×3072 = 2.25 MiB) is streamed once and misses; the A tile
    (128×768 = 96 KiB) is read once per J tile: the first read misses, the 23 re-reads hit (reuse distance: A panel +
    B panel + C tile = 96 + 96 + 16 KiB < 512 KiB)."""
    shape, m = GemmShape(128, 3072, 768), Mapping(8, 8, 48)
    t = gemm_timing(BASE, shape, m)
    a, w = 128 * 768, 768 * 3072
    assert t.load_bytes == 24 * a + w
    assert t.dram_read_bytes == pytest.approx(a + w)  # the first A read and every W byte
    assert t.l2_read_bytes == pytest.approx(23 * a)
    # requests: A 128 rows × 12, W 768 rows × 2 (128-byte aligned rows) per tile; hits are the 23 A re-reads
    assert t.load_requests == pytest.approx(24 * (128 * 12 + 768 * 2))
    assert t.hit_requests == pytest.approx(23 * 128 * 12)
    # without an L2 every request misses
    assert gemm_timing(BASE.changed(l2={"bytes": 0}), shape, m).hit_rate == 0.0


def test_a_weight_re_read_within_the_l2_hits():
    """Two row tiles over a 256 KiB weight (512×512): its second pass is within 512 KiB of other traffic and hits."""
    t = gemm_timing(BASE, GemmShape(256, 512, 512), Mapping(8, 4, 32))
    w = 512 * 512
    assert t.dram_read_bytes < t.load_bytes - w  # the second pass over W is not DRAM traffic
    big = gemm_timing(BASE, GemmShape(256, 2048, 512), Mapping(8, 4, 32))  # a 1 MiB weight: both passes miss
    assert big.dram_read_bytes >= 2 * 2048 * 512


def test_the_mesh_bound_rtl_point_is_within_two_percent():
    """FireSim RTL: 128×3072×768 with (8,8,48) runs in 1,190,378 cycles (issue 14). Every tile is mesh-bound; this
    checks the mesh model, no constant was fitted to it."""
    t = gemm_timing(BASE, GemmShape(128, 3072, 768), Mapping(8, 8, 48))
    assert t.dma_bound_tiles == 0 and t.tiles == 24
    assert t.cycles == pytest.approx(1_190_378, rel=0.02)


def test_misaligned_weight_tiles_are_dma_bound():
    """(5,5,48) on 128×768×768, A re-read per J tile (no reuse flag): A 80 rows × 12 requests hitting at 9/10 (79.5
    cycles each): 4,770 cycles; B 768 rows, misses at 120 cycles. Row tile of 80 (mesh 240·80 + 46 = 19,246): aligned
    J tiles (j = 0, 4, 8: 2 requests a row) 11,520 + 4,770 = 16,290, mesh-bound; misaligned ones (j = 1-3, 5-7: 3
    requests a row, one into the line the tile before fetched) 768·(2·120 + 75)/16 = 15,120 + 4,770 = 19,890: DMA-bound
    (6); the 48-column tile at 16 (one request a row, a line hit) is not. Row tile of 48 (mesh 11,566, A 2,862): every
    80-column tile is DMA-bound (9). 15 of 20."""
    t = gemm_timing(BASE, GemmShape(128, 768, 768), Mapping(5, 5, 48))
    assert t.dma_bound_tiles == 15 and t.tiles == 20
    assert t.dram_rate_bound_tiles == 0  # bound by the requests' latency, not by DRAM's byte rate


def test_more_requests_in_flight_or_a_closer_memory_shorten_a_dma_bound_gemm():
    shape, m = GemmShape(128, 768, 768), Mapping(5, 5, 48)
    base = gemm_timing(BASE, shape, m).cycles
    assert gemm_timing(BASE.changed(dma={"requests_in_flight": 32}), shape, m).cycles < base
    assert gemm_timing(BASE.changed(dram={"latency_s": 75e-9}), shape, m).cycles < base


def test_only_the_last_store_is_exposed_with_a_separate_store_engine():
    shape, m = GemmShape(512, 768, 768), Mapping(5, 5, 48)
    apart = gemm_timing(BASE, shape, m, out_bytes=4)
    serial = gemm_timing(BASE.changed(dma={"separate_store": False}), shape, m, out_bytes=4)
    assert apart.cycles < serial.cycles


def test_loop_ws_calls_overlap_the_previous_tile():
    """One 1,000-cycle call per tile: hidden behind long tiles when the host sets up the next call while one runs."""
    shape, m = GemmShape(128, 3072, 768), Mapping(8, 8, 48)
    overlapped = gemm_timing(BASE, shape, m)
    serial = gemm_timing(BASE.changed(overheads={"calls_overlap": False}), shape, m)
    assert serial.cycles == pytest.approx(overlapped.cycles + 23 * BASE.overheads.call_cycles)


def test_energy_splits_l2_and_dram_bytes():
    from tstack.accel.energy import gemm_energy

    t = gemm_timing(BASE, GemmShape(128, 3072, 768), Mapping(8, 8, 48))
    e = gemm_energy(BASE, t)
    assert e.dram == pytest.approx((t.dram_read_bytes + t.store_bytes) * BASE.energy.dram_byte)
    assert e.l2 == pytest.approx((t.load_bytes + t.store_bytes) * BASE.energy.l2_byte)


# ---------------------------------------------------------------- where the DMA is hidden, GEMV, output-stationary

HIDDEN = BASE.changed(mesh={"weight_double_buffer": False}, accumulator={"bytes": 1024 * 1024},
                      dma={"bus_bytes_per_cycle": 4096, "requests_in_flight": 4096}, l2={"latency_s": 0.0},
                      dram={"latency_s": 0.0, "bandwidth": 1e13}, overheads={"call_cycles": 0.0, "command_cycles": 0.0})


@pytest.mark.parametrize(("I", "J", "K", "tj", "tk"), [(128, 768, 768, 8, 16), (100, 300, 200, 3, 5),
                                                       (512, 64, 1000, 4, 8), (17, 1000, 33, 7, 3)])
def test_scalesim_fold_count_holds_where_the_dma_is_hidden(I, J, K, tj, tk):  # noqa: E741
    """The full DMA path (not the resident shortcut) with memories fast enough to hide it: SCALE-Sim's WS fold count,
    ceil(K/R)·ceil(J/C) folds of 2R + C + I − 2 cycles with all I rows in one tile, within 0.1% (the rest is the first
    load and the last store, a few cycles at 4 KiB per cycle)."""
    shape = GemmShape(I, J, K)
    bI, bJ, bK = shape.blocks(16)
    t = gemm_timing(HIDDEN, shape, Mapping(bI, min(tj, bJ), min(tk, bK)))
    assert t.dma_bound_tiles == 0
    assert t.cycles == pytest.approx(-(-K // 16) * -(-J // 16) * (2 * 16 + 16 + I - 2), rel=1e-3)


def test_a_decode_gemv_streams_its_weight_at_the_dram_rate():
    """I = 1 (decode): each 16×16 weight block is preloaded for one row of A, so the mesh needs DIM cycles per block
    (J·K/DIM in all) and the weight (3072·768 bytes, read once: nothing re-reads it) must come from DRAM. The best
    mapping is DRAM-bound on every tile and within 2% of weight bytes / 7.5 B/cycle."""
    shape = GemmShape(1, 3072, 768)
    _, t = best(BASE, shape)
    weight = 3072 * 768
    assert t.mesh_cycles >= weight / 16
    assert t.dma_bound_tiles == t.tiles
    assert t.dram_read_bytes >= weight
    floor = weight / (BASE.dram.bandwidth / BASE.clock_hz)
    assert floor <= t.cycles <= 1.02 * floor
    # tiled_matmul_auto's 144-byte weight rows (9 blocks) start at 0, 16, 32, 48 past a line and cost 3, 5, 5, 5
    # requests, one of them (not at 0) into the line the previous J tile fetched (an L2 hit). 21 full tiles of 768 rows,
    # 16 in flight: j = 0 and the five at 0: 3·120·48 = 17,280 each; fifteen at 16/32/48: (4·120 + 75)·48 = 26,640
    # each; the 48-column tile (one request a row, a hit) is set by its 36,864 bytes at 7.5 B/cycle: 4,915.
    # 508,195 cycles: request-bound, 1.6 times the DRAM-rate floor (315k) the best mapping reaches
    auto = gemm_timing(BASE, shape, Mapping(1, 9, 48))
    assert auto.dram_rate_bound_tiles == 1
    assert auto.cycles == pytest.approx(508_195, rel=0.01)
    assert auto.cycles > 1.5 * t.cycles
    assert auto.load_requests == 6 * 768 * 3 + 15 * 768 * 5 + 768 + 22 * 12  # B as above; A one 768-byte row a tile


def test_output_stationary_tiles_do_not_overlap_their_loads():
    """OS is single-buffered in tiled_matmul_auto: each tile's loads and mesh run one after the other, so the total is
    at least the mesh time plus the load time; the same tiles on WS overlap them."""
    os_hw = BASE.changed(mesh={"dataflow": "OS"})
    shape, m = GemmShape(128, 768, 768), Mapping(8, 8, 48)
    t = gemm_timing(os_hw, shape, m)
    loads = t.dma_cycles - t.store_cycles
    assert t.cycles >= t.mesh_cycles + loads
    ws = gemm_timing(BASE.changed(accumulator={"bytes": 128 * 1024}), shape, Mapping(8, 8, 24))
    assert ws.cycles < ws.mesh_cycles + ws.dma_cycles - ws.store_cycles


# ---------------------------------------------------------------- the mechanisms of the second pass (issue 14)


@pytest.mark.parametrize("width", [16, 32, 80, 144])
def test_requests_into_the_first_l2_line_by_hand(width):
    """A row starting inside a 64-byte line: its requests before the next line boundary. The first request at 16, 32
    or 48 delivers the rest of that 64-byte block (64@0, 32@32, 16@48; 16@16 when only 16 bytes are wanted), so one;
    at 0 the row shares no line with its neighbour: none."""
    sizes = request_sizes(BASE)
    assert tuple(line_requests(off, width, 64, sizes, 64) for off in (0, 16, 32, 48)) == (0, 1, 1, 1)


def test_a_misaligned_weight_tile_hits_the_line_its_neighbour_fetched():
    """16×160×64 in tiles of 16×80×64 (ijk, one row tile: B is read once, nothing re-reads it). B's rows are 160 B
    apart, so they start at 0 and 32 past a line in turn. J tile 0: A 16 rows of 64 B (16 requests), B 64 rows of 80 B
    at 0 / 32 (2 / 3 requests: 160), no line shared with a tile read before. J tile 1: A again (16; the two A reads hit
    at 1/2: 16 hits), B at 80 / 240 = 16 / 48 past a line (3 / 3 requests: 192), the first of each (64@64, 16@240)
    into the line J tile 0 fetched: 64 hits. 384 requests, 80 hits; with no room in the L2, none."""
    shape, m = GemmShape(16, 160, 64), Mapping(1, 5, 4)
    t = gemm_timing(BASE, shape, m)
    assert t.load_requests == 384
    assert t.hit_requests == pytest.approx(16 + 64)
    tiny = gemm_timing(BASE.changed(l2={"bytes": 1024}), shape, m)  # one tile's operands (11 KiB) do not fit
    assert tiny.load_requests == 384 and tiny.hit_requests == 0
    assert tiny.dram_read_bytes == t.dram_read_bytes + 16 * 64  # line hits move no DRAM bytes; A's re-read does


def test_tiled_matmul_auto_keeps_an_operand_with_at_most_two_tiles_when_asked():
    """dma.operand_reuse (gemmini.h a_reuse = I0·K0 <= 2, b_reuse = J0·K0 <= 2, WS). 128×768×768 in (5,5,48): I0 = 2,
    J0 = 10, K0 = 1, so A is kept: loaded once (128·768 B), B once per row tile (2·768·768 B). 128×128×64 in (5,6,4):
    I0 = J0 = 2: both loaded once (8 KiB each). 512×768×768: I0 = 7, nothing kept; OS never keeps. The presets follow
    issue 14 (A re-read by every call): 10 A tiles per row tile, 20 loads of 80 or 48 rows."""
    reuse = BASE.changed(dma={"operand_reuse": True})
    h = heuristic(reuse, GemmShape(128, 768, 768))
    assert (h.ti, h.tj, h.tk, h.reuse, h.reuse_inner) == (5, 5, 48, True, False)
    assert gemm_timing(reuse, GemmShape(128, 768, 768), h).load_bytes == 128 * 768 + 2 * 768 * 768
    h = heuristic(reuse, GemmShape(128, 128, 64))
    assert (h.ti, h.tj, h.tk, h.reuse, h.reuse_inner) == (5, 6, 4, True, True)
    assert gemm_timing(reuse, GemmShape(128, 128, 64), h).load_bytes == 2 * 128 * 64
    h = heuristic(reuse, GemmShape(512, 768, 768))
    assert (h.reuse, h.reuse_inner) == (False, False)
    assert not heuristic(reuse.changed(mesh={"dataflow": "OS"}), GemmShape(128, 128, 64)).reuse
    h = heuristic(BASE, GemmShape(128, 768, 768))
    assert (h.reuse, h.reuse_inner) == (False, False)
    assert gemm_timing(BASE, GemmShape(128, 768, 768), h).load_bytes == 10 * 128 * 768 + 2 * 768 * 768


def test_the_first_compute_waits_only_for_its_first_mvins():
    """128×3072×768 in (8,8,48), the RTL point of issue 14 (1,190,378 cycles). The execute loop is k-outer and LdA
    moves A a 64-byte column chunk of every row at a time, so the first compute needs A's first chunk (128 rows · 64 B:
    128 requests) and B's first mvin (16 rows · 64 B: 16): 9,216 B from DRAM, max(144·120/16 = 1,080, 9,216/7.5 =
    1,228.8) + 120 = 1,348.8 cycles. Every tile is mesh-bound (384 folds · 128 + 16 + 30 = 49,198); plus the first
    call (1,000) and the last store (128 rows of 2 requests: 256·75/16 = 1,200, + 75)."""
    t = gemm_timing(BASE, GemmShape(128, 3072, 768), Mapping(8, 8, 48))
    assert t.dma_bound_tiles == 0
    assert t.cycles == pytest.approx(24 * 49_198 + 1_348.8 + 1_000 + 1_275)
    assert abs(t.cycles / 1_190_378 - 1) < 0.02
