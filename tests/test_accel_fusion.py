"""Fusion-aware scheduling with the DMA model (issue 14): the fused LayerNorm pairs re-stream the weight from DRAM once
per row tile, the L2's reuse-distance cliff, and the repro's sign rows."""

from __future__ import annotations

import pytest

from tstack.accel.fusion import pair_cost
from tstack.accel.timing import GemmShape, Mapping, gemm_timing
from tstack.hardware.accel import load_accel
from tstack.studies.repro_000 import reproduce_000

IBERT = load_accel("gemmini-ibert")
W2 = GemmShape(512, 768, 3072)  # BERT-base FFN W2 at seq 512: C[512×768] = A[512×3072]·W2[3072×768]


def test_fused_w2_streams_the_weight_from_dram_once_per_row_tile():
    """Whole rows in a 256 KiB accumulator: ti = 2 blocks (32 rows), so 16 row tiles, each sweeping all of W2
    (2.25 MiB, beyond the 512 KiB L2): W2 comes from DRAM 16 times, plus A once."""
    fused = pair_cost(IBERT, W2, "layernorm", "fused")
    assert (fused.mapping.ti, fused.mapping.tj) == (2, 48)
    t = fused.timing
    weight, a = 3072 * 768, 512 * 3072
    assert t.dram_read_bytes == pytest.approx(16 * weight + a)
    assert t.dma_bound_tiles == t.tiles  # 24 KiB of W2 per 3,118-cycle tile: 8.2 B/cycle > 7.5 B/cycle of DRAM
    assert t.dram_rate_bound_tiles == t.tiles  # 24,576 B / 7.5 = 3,277 cycles > 416 requests · 120 / 16 = 3,120
    non_fused = pair_cost(IBERT, W2, "layernorm", "non-fused")
    assert non_fused.timing.dram_read_bytes < t.dram_read_bytes / 2
    assert fused.gemm_s > non_fused.gemm_s  # the re-streaming slows the matmul ...
    assert fused.seconds > non_fused.seconds  # ... by more than hiding the LayerNorm gains: fusion hurts (000 Fig. 3)


def test_the_l2_has_an_lru_cliff_at_the_reuse_distance():
    """Fused W2 tiles, order ijk: a W2 block is re-read one row tile later, after all of W2 (K·J), the A panel (ri·K)
    and the C row (ri·J) went by: 2,359,296 + 98,304 + 24,576 = 2,482,176 bytes. An L2 of that size keeps it (15 of 16
    passes hit); one byte less and every pass of W2 misses."""
    m = Mapping(2, 48, 2)
    distance = 3072 * 768 + 32 * 3072 + 32 * 768
    fits = gemm_timing(IBERT.changed(l2={"bytes": distance}), W2, m)
    short = gemm_timing(IBERT.changed(l2={"bytes": distance - 1}), W2, m)
    weight = 3072 * 768
    assert short.dram_read_bytes == pytest.approx(16 * weight + 512 * 3072)
    assert fits.dram_read_bytes == pytest.approx(weight + 512 * 3072)
    # per tile 32 W2 rows of 768 bytes (12 requests each) and 32 A rows of 32 bytes (one each); 15/16 of the W2
    # requests hit, and the A rows of every other K step start at byte 32 of the L2 line the previous K step fetched
    # (a 32-byte tile is half a line), so half the A requests hit too: (15/16 · 384 + 32/2) / 416
    assert fits.hit_rate == pytest.approx((15 / 16 * 384 + 16) / 416)
    assert short.hit_rate == pytest.approx(16 / 416)  # only the A rows into the line the previous K step fetched
    assert fits.cycles < short.cycles


def test_a_fully_reused_tile_hits_and_a_streamed_matrix_misses():
    """32×3072×256 in tiles of 32×32×256: the one A panel (32×256) is read for each of the 96 J tiles, and its 95
    re-reads hit (reuse distance 8 + 8 + 1 KiB); W (256×3072 = 768 KiB, one row tile) is streamed once: all misses."""
    t = gemm_timing(IBERT, GemmShape(32, 3072, 256), Mapping(2, 2, 16))
    a, w = 32 * 256, 256 * 3072
    assert t.dram_read_bytes == pytest.approx(a + w)
    assert t.l2_read_bytes == pytest.approx(95 * a)


def test_repro_reports_the_sign_of_both_layernorm_fusion_effects_with_their_physics():
    rows = {r.key: r for r in reproduce_000("bert-base", 512).rows}
    for key, paper in (("fusion-layernorm-768x768-sign", "slower"), ("fusion-layernorm-768x3072-sign", "slower")):
        row = rows[key]
        assert row.paper == paper and row.tstack in ("slower", "faster")
        assert "DRAM reads" in row.note and "B/cycle" in row.note
    assert rows["fusion-layernorm-768x3072-sign"].tstack == "slower"
