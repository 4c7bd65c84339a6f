"""GEMM timing on a Gemmini-style mesh: tile by tile, as the loop unroller runs a tiled matmul.

C[I×J] = A[I×K]·B[K×J]. Per tile of (ri rows, cj cols, dk depth) the mesh and the DMA each have a stage time:

- mesh (WS): the tile's B blocks are preloaded one fold at a time (bj·bk folds) and the ri rows of A stream through
  each fold. With double-buffered PE weights a fold costs max(ri, DIM) and the skew fill/drain (2·DIM + DIM − 2)
  is paid once per tile; without them every fold pays it: 2R + C + T − 2 (the SCALE-Sim closed form, 000 ref. [33]
  compares against the same fold counting). OS swaps the roles: bi·bj folds of dk streamed cycles.
- DMA: the A and B tiles are moved in row by row (requests of at most ``request_bytes``), the C tile out after the
  last K step; time = max(bytes / bus, bytes / DRAM rate, requests · latency / requests in flight) + one latency.
- Double buffering (WS with >= 2 scratchpad banks) overlaps the DMA of one tile with the mesh of another, so a tile
  costs max(mesh, DMA); otherwise their sum. Partial sums of all K steps stay in the accumulator.

Tiles come in at most eight classes (full or remainder along I, J, K); each class is costed once and multiplied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tstack.hardware.accel import AccelSpec


@dataclass(frozen=True)
class GemmShape:
    """One GEMM C[I×J] = A[I×K]·B[K×J], run ``batch`` times (attention heads)."""

    I: int  # noqa: E741 - the paper's and Gemmini's name for the rows of A
    J: int
    K: int
    batch: int = 1

    @property
    def macs(self) -> int:
        return self.I * self.J * self.K * self.batch

    def blocks(self, dim: int) -> tuple[int, int, int]:
        """Padded sizes in DIM blocks (Gemmini's dim_I_padded / DIM and so on)."""
        return -(-self.I // dim), -(-self.J // dim), -(-self.K // dim)


@dataclass(frozen=True)
class Mapping:
    """Tile factors in DIM blocks, outer loop order, and whether a stationary operand tile is kept across the inner loop."""

    ti: int
    tj: int
    tk: int
    order: str = "ijk"
    reuse: bool = False

    def tile_elems(self, dim: int) -> tuple[int, int, int]:
        return self.ti * dim, self.tj * dim, self.tk * dim


@dataclass(frozen=True)
class GemmTiming:
    """Cycles and the access counts energy needs, summed over tiles and batch."""

    cycles: float
    mesh_cycles: float
    dma_cycles: float
    overhead_cycles: float
    load_bytes: float
    store_bytes: float
    macs: int
    array_macs: float
    spad_read_bytes: float
    spad_write_bytes: float
    acc_bytes: float
    ideal_cycles: float
    store_cycles: float
    i_tiles: int

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0


def _classes(n: int, tile: int) -> list[tuple[int, int]]:
    """(elements, count) of the full tiles and the remainder tile along one dimension."""
    full, rem = divmod(n, tile)
    out = [(tile, full)] if full else []
    return out + [(rem, 1)] if rem else out


def transfer_cycles(hw: AccelSpec, rows: float, row_bytes: float) -> float:
    """Cycles to move ``rows`` contiguous runs of ``row_bytes`` each between DRAM and a local memory."""
    nbytes = rows * row_bytes
    if nbytes <= 0:
        return 0.0
    d = hw.dma
    latency = hw.cycles(hw.dram.latency_s)
    requests = rows * math.ceil(row_bytes / d.request_bytes)
    dram_rate = hw.dram.bandwidth / hw.clock_hz
    return max(nbytes / d.bus_bytes_per_cycle, nbytes / dram_rate, requests * latency / d.requests_in_flight) + latency


def mesh_cycles(hw: AccelSpec, streamed: int, folds: int) -> float:
    """Mesh cycles of ``folds`` weight (WS) or output (OS) folds, each streaming ``streamed`` rows (§ module doc)."""
    R = C = hw.dim
    if hw.accumulator.ports == 1:  # read-modify-write of a single-ported accumulator takes two cycles per row
        streamed *= 2
    if hw.mesh.weight_double_buffer:
        return folds * max(streamed, R) + R + (R + C - 2)
    return folds * (2 * R + C + streamed - 2)


def double_buffered(hw: AccelSpec) -> bool:
    """Gemmini double-buffers WS tiles only (tiled_matmul_auto), and needs two banks to read one half while loading the other."""
    return hw.mesh.dataflow == "WS" and hw.scratchpad.banks >= 2


@dataclass(frozen=True)
class _Tile:
    mesh: float
    load: float
    commands: float
    macs: float
    array_macs: float
    spad_read: float
    spad_write: float
    acc: float


def _tile(hw: AccelSpec, ri: int, cj: int, dk: int, amortize: tuple[float, float]) -> _Tile:
    """Mesh cycles, load cycles and access counts of one tile; ``amortize`` scales the A and B loads (reuse)."""
    D = hw.dim
    bi, bj, bk = -(-ri // D), -(-cj // D), -(-dk // D)
    if hw.mesh.dataflow == "WS":
        mesh, array_macs = mesh_cycles(hw, ri, bj * bk), bj * bk * ri * D * D
        spad_read = dk * cj + ri * dk * bj  # each B block preloaded once, A re-read once per J block
        acc = 2 * 4 * ri * cj * bk  # a read-modify-write of int32 partial sums per K block
    else:
        mesh, array_macs = mesh_cycles(hw, dk, bi * bj), bi * bj * dk * D * D
        spad_read = ri * dk * bj + dk * cj * bi
        acc = 2 * 4 * ri * cj  # one accumulate of the PE results per K tile
    a_share, b_share = amortize
    load = a_share * transfer_cycles(hw, ri, dk) + b_share * transfer_cycles(hw, dk, cj)
    commands = bi * bk * a_share + bk * bj * b_share + bj * bk + bi * bj * bk
    return _Tile(mesh, load, commands * hw.overheads.command_cycles, ri * cj * dk, array_macs, spad_read,
                 a_share * ri * dk + b_share * dk * cj, acc)


@dataclass
class _Sums:
    cycles: float = 0.0
    mesh: float = 0.0
    dma: float = 0.0
    load_bytes: float = 0.0
    store_bytes: float = 0.0
    array_macs: float = 0.0
    spad_read: float = 0.0
    spad_write: float = 0.0
    acc: float = 0.0
    store_cycles: float = 0.0
    first_load: float = -1.0


def _add_pair(s: _Sums, hw: AccelSpec, ri: int, cj: int, m: Mapping, shape: GemmShape, n: int, out_bytes: int) -> None:
    """Add the ``n`` (i, j) output tiles of size ri×cj: their K steps, then the store of C after the last one."""
    D, db = hw.dim, double_buffered(hw)
    I0, J0 = -(-shape.I // (m.ti * D)), -(-shape.J // (m.tj * D))
    k_classes = _classes(shape.K, m.tk * D)
    keep = m.reuse and len(k_classes) == 1 and k_classes[0][1] == 1  # K fits one tile: the stationary operand stays
    amortize = ((1 / J0 if keep and m.order == "ijk" else 1.0), (1 / I0 if keep and m.order == "jik" else 1.0))
    store = transfer_cycles(hw, ri, cj * out_bytes)
    tiles = [(_tile(hw, ri, cj, dk, amortize), k) for dk, k in k_classes]
    for t, k in tiles:
        stage = max(t.mesh, t.commands)
        s.cycles += n * k * (max(stage, t.load) if db else stage + t.load)
        s.mesh += n * k * t.mesh
        s.dma += n * k * t.load
        s.array_macs += n * k * t.array_macs
        s.spad_read += n * k * t.spad_read
        s.spad_write += n * k * t.spad_write
        s.acc += n * k * t.acc
        s.load_bytes += n * k * t.spad_write
        if s.first_load < 0:
            s.first_load = t.load
    last = tiles[-1][0]
    stage = max(last.mesh, last.commands)
    with_store = max(stage, last.load + store) - max(stage, last.load) if db else store
    s.cycles += n * with_store
    s.dma += n * store
    s.store_cycles += n * store
    s.store_bytes += n * ri * cj * out_bytes
    s.acc += n * 4 * ri * cj  # mvout reads the finished tile once


def gemm_timing(hw: AccelSpec, shape: GemmShape, m: Mapping, out_bytes: int = 1, resident: bool = False) -> GemmTiming:
    """Cycles of one mapped GEMM (× batch); ``resident`` assumes operands already on chip (no DMA, no overheads)."""
    D = hw.dim
    s = _Sums()
    for ri, ni in _classes(shape.I, m.ti * D):
        for cj, nj in _classes(shape.J, m.tj * D):
            _add_pair(s, hw, ri, cj, m, shape, ni * nj, out_bytes)
    ideal = shape.I * shape.J * shape.K / (D * D)
    I0 = -(-shape.I // (m.ti * D))
    b = shape.batch
    if resident:  # the closed-form case: the mesh alone
        return GemmTiming(b * s.mesh, b * s.mesh, 0.0, 0.0, 0.0, 0.0, shape.macs, b * s.array_macs, b * s.spad_read,
                          0.0, b * s.acc, b * ideal, 0.0, I0)
    prologue = s.first_load if double_buffered(hw) else 0.0  # the first tile's load has nothing to hide behind
    overhead = hw.overheads.call_cycles
    return GemmTiming(b * (s.cycles + prologue + overhead), b * s.mesh, b * s.dma, b * overhead, b * s.load_bytes,
                      b * s.store_bytes, shape.macs, b * s.array_macs, b * s.spad_read, b * s.spad_write, b * s.acc,
                      b * ideal, b * s.store_cycles, I0)
