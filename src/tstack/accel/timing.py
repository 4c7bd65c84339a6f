"""GEMM timing on a Gemmini-style mesh: tile by tile, as the loop unroller runs a tiled matmul.

C[I×J] = A[I×K]·B[K×J]. Per tile of (ri rows, cj cols, dk depth) the mesh and the DMA each have a stage time:

- mesh (WS): the tile's B blocks are preloaded one fold at a time (bj·bk folds) and the ri rows of A stream through
  each fold. With double-buffered PE weights a fold costs max(ri, DIM) and the skew fill/drain (2·DIM + DIM − 2)
  is paid once per tile; without them every fold pays it: 2R + C + T − 2 (the SCALE-Sim closed form, 000 ref. [33]
  compares against the same fold counting). OS swaps the roles: bi·bj folds of dk streamed cycles.
- DMA (issue 14): the A and B tiles move in as mvin rows of at most ``dma.mvin_row_bytes``, each cut into aligned
  16/32/64-byte requests as Gemmini's StreamReaderCore picks them (``_request_at``: the one delivering the most bytes);
  a re-read whose reuse distance fits the L2 hits it (``_hits``), and so does a request into the 64-byte L2 line the
  neighbouring tile just fetched (``line_requests``); others miss to DRAM; load = max(Σ requests · latency / requests
  in flight, bytes / bus, missed bytes / DRAM rate). C moves out after the last K step on a separate store engine: only
  the last tile's store is exposed.
- Double buffering (WS with >= 2 scratchpad banks) overlaps the DMA of one tile with the mesh of another, so a tile
  costs max(mesh, DMA); otherwise their sum. One loop_ws call per tile costs the host ``overheads.call_cycles``,
  overlapping the previous tile when ``calls_overlap``. Partial sums of all K steps stay in the accumulator. The first
  compute waits only for its own operands (A's first 64-byte column chunk of each row, B's first mvin): the execute
  loop is k-outer, LdA moves A column chunk by column chunk, and the reservation station releases each compute as the
  mvins it reads complete.

Tiles come in at most eight classes (full or remainder along I, J, K); each class is costed once and multiplied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tstack.hardware.accel import AccelSpec
from tstack.records import Addable


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
    """Tile factors in DIM blocks, outer loop order, and which operand tiles stay in the scratchpad.

    ``reuse``: the outer loop's operand tile (A in ijk, B in jik) is kept across the inner loop when K fits one tile.
    ``reuse_inner``: the inner loop's operand (B in ijk) has at most two tiles and each is loaded once: gemmini.h's
    ``b_reuse = J0·K0 <= 2`` (with ``a_reuse = I0·K0 <= 2`` it gives every such tile its own a_spad_id/b_spad_id, 1 or
    2, and LoopMatmul skips the mvins of a tile already in its slot)."""

    ti: int
    tj: int
    tk: int
    order: str = "ijk"
    reuse: bool = False
    reuse_inner: bool = False


@dataclass(frozen=True)
class GemmTiming(Addable):
    """Cycles and the access counts energy needs, summed over tiles and batch; ``a + b`` adds every field."""

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
    load_requests: float = 0.0
    hit_requests: float = 0.0
    store_requests: float = 0.0
    dram_read_bytes: float = 0.0  # loaded bytes that missed the L2; the rest of load_bytes hit it
    tiles: float = 0.0
    dma_bound_tiles: float = 0.0  # tiles whose loads take longer than their mesh stage
    dram_rate_bound_tiles: float = 0.0  # of those, the tiles whose load is set by DRAM's byte rate (the rest: requests)

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    @property
    def hit_rate(self) -> float:
        """Share of load requests served by the L2."""
        return self.hit_requests / self.load_requests if self.load_requests else 0.0

    @property
    def l2_read_bytes(self) -> float:
        return self.load_bytes - self.dram_read_bytes


def _classes(n: int, tile: int) -> list[tuple[int, int]]:
    """(elements, count) of the full tiles and the remainder tile along one dimension."""
    full, rem = divmod(n, tile)
    out = [(tile, full)] if full else []
    return out + [(rem, 1)] if rem else out


# ---------------------------------------------------------------- DMA requests (Gemmini DMA.scala, gemmini.h)

def request_sizes(hw: AccelSpec) -> tuple[int, ...]:
    """Request sizes the DMA issues, largest first: aligned powers of two from the bus width up to request_bytes
    (Gemmini: beatBytes = dma_buswidth/8 = 16 up to dma_maxbytes = 64, i.e. 64, 32, 16)."""
    top = 1 << (hw.dma.request_bytes.bit_length() - 1)
    low = min(top, 1 << (hw.dma.bus_bytes_per_cycle.bit_length() - 1))
    out, s = [], top
    while s >= low:
        out.append(s)
        s //= 2
    return tuple(out)


def _request_at(a: int, end: int, sizes: tuple[int, ...]) -> int:
    """The bytes the DMA's next request at address ``a`` delivers before ``end``.

    Gemmini DMA.scala, StreamReaderCore: for each request size s (beatBytes up to maxBytes, ascending) a packet aligned
    down to s delivers min(s − a mod s, bytes left); ``read_packets.reduce(Mux(p.bytes_read > acc.bytes_read, p,
    acc))`` takes the packet that delivers the most, the smallest on a tie. So a request may over-read before ``a``
    and past ``end``: 48 bytes at 16 are one 64-byte request, not 16 + 32.
    """
    best = 0
    for s in reversed(sizes):  # ascending, so a tie keeps the smaller request
        best = max(best, min(s - a % s, end - a))
    return best


def _run_requests(offset: int, nbytes: int, sizes: tuple[int, ...]) -> int:
    """Requests for one contiguous run of ``nbytes`` > 0 starting ``offset`` bytes past a largest-request boundary.

    At each address the DMA takes the request that delivers the most bytes (``_request_at``); the largest request
    reaches the next largest-request boundary or the run's end, and no request crosses that boundary (the sizes are
    powers of two dividing the largest), so that is one request per largest-request block the run touches. 80 bytes
    at 0: 64 + 16, two requests; 64 bytes at 16: 64@0 (48 useful) + 16@64, two.
    """
    top = sizes[0]
    return -(-(offset % top + nbytes) // top)


@lru_cache(maxsize=1 << 14)
def row_requests(offset: int, width: int, chunk: int, sizes: tuple[int, ...]) -> int:
    """Requests for one row of ``width`` bytes at ``offset``: mvin rows of at most ``chunk`` bytes from the row's start
    (Gemmini moves a tile row as mvins of at most dma_maxbytes), each split into aligned requests."""
    if width <= 0:
        return 0
    top = sizes[0]
    n_full, tail = divmod(width, chunk)
    period = top // math.gcd(chunk % top or top, top)
    per_class = [_run_requests((offset + c * chunk) % top, chunk, sizes) for c in range(min(period, n_full))]
    total = sum(per_class[c] * ((n_full - c + period - 1) // period) for c in range(len(per_class)))
    if tail:
        total += _run_requests((offset + n_full * chunk) % top, tail, sizes)
    return total


@lru_cache(maxsize=1 << 14)
def tile_requests(offset: int, stride: int, rows: int, width: int, chunk: int, sizes: tuple[int, ...]) -> int:
    """Requests for ``rows`` rows of ``width`` bytes, ``stride`` bytes apart, the first at ``offset`` (closed form over
    the period of the row offsets modulo the largest request)."""
    top = sizes[0]
    period = top // math.gcd(stride % top or top, top)
    return sum(row_requests((offset + r * stride) % top, width, chunk, sizes) * ((rows - r + period - 1) // period)
               for r in range(min(period, rows)))


@lru_cache(maxsize=1 << 14)
def line_requests(offset: int, width: int, chunk: int, sizes: tuple[int, ...], line: int) -> int:
    """Requests of a row of ``width`` bytes at ``offset`` (modulo a multiple of ``line``) that fall in the row's first L2
    line when the row starts inside one; 0 when it starts on a line boundary.

    The L2 holds whole lines (64 B in Chipyard) and fills a line on the first miss to it, so when the neighbouring tile
    read the other part of that line just before, these requests hit. 80 bytes at 16: the requests 16@16 and 32@32 lie
    in line 0 (2); at 32: 32@32 (1); at 48: 16@48 (1).
    """
    into = offset % line
    if width <= 0 or into == 0:
        return 0
    stop, row_end = offset - into + line, offset + width
    n, start = 0, offset
    while start < min(row_end, stop):  # mvin chunks from the row's start, as row_requests cuts them
        end = min(start + chunk, row_end)
        a = start
        while a < min(end, stop):
            a, n = a + _request_at(a, end, sizes), n + 1
        start = end
    return n


@lru_cache(maxsize=1 << 14)
def tile_line_requests(offset: int, stride: int, rows: int, width: int, chunk: int, sizes: tuple[int, ...],
                       line: int) -> int:
    """``line_requests`` summed over ``rows`` rows ``stride`` bytes apart (closed form over the period modulo ``line``)."""
    top = max(line, sizes[0])
    period = top // math.gcd(stride % top or top, top)
    return sum(line_requests((offset + r * stride) % top, width, chunk, sizes, line) * ((rows - r + period - 1) // period)
               for r in range(min(period, rows)))


def _positions(n: int, step: int, first: int, top: int) -> list[tuple[int, int]]:
    """(offset modulo ``top``, count) of ``n`` tiles ``step`` bytes apart starting at tile index ``first``."""
    period = top // math.gcd(step % top or top, top)
    return [(((first + c) * step) % top, (n - c + period - 1) // period) for c in range(min(period, n))]


def transfer_cycles(hw: AccelSpec, rows: float, row_bytes: float, hit: bool = False) -> float:
    """Cycles to move ``rows`` contiguous rows of ``row_bytes`` each (aligned) between the L2/DRAM and a local memory:
    requests · latency / in flight, at least bytes / bus and (misses) bytes / DRAM rate, plus one latency."""
    nbytes = rows * row_bytes
    if nbytes <= 0:
        return 0.0
    d = hw.dma
    sizes = request_sizes(hw)
    width = int(math.ceil(row_bytes))
    requests = rows * row_requests(0, width, d.mvin_row_bytes, sizes)
    latency = hw.cycles(hw.l2.latency_s if hit else hw.dram.latency_s)
    floor = nbytes / d.bus_bytes_per_cycle if hit else max(nbytes / d.bus_bytes_per_cycle, nbytes / _dram_rate(hw))
    return max(floor, requests * latency / d.requests_in_flight) + latency


def _dram_rate(hw: AccelSpec) -> float:
    return hw.dram.bandwidth / hw.clock_hz


def mesh_cycles(hw: AccelSpec, streamed: float | np.ndarray, folds: float | np.ndarray) -> float | np.ndarray:
    """Mesh cycles of ``folds`` weight (WS) or output (OS) folds, each streaming ``streamed`` rows (§ module doc)."""
    R = C = hw.dim
    if hw.accumulator.ports == 1:  # read-modify-write of a single-ported accumulator takes two cycles per row
        streamed = streamed * 2  # not in place: an array argument is the caller's
    if hw.mesh.weight_double_buffer:
        return folds * np.maximum(streamed, R) + R + (R + C - 2)  # numpy: also per candidate in ``bounds``
    return folds * (2 * R + C + streamed - 2)


def double_buffered(hw: AccelSpec) -> bool:
    """Gemmini double-buffers WS tiles only (tiled_matmul_auto), and needs two banks to read one half while loading the other."""
    return hw.mesh.dataflow == "WS" and hw.scratchpad.banks >= 2


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
    requests: float = 0.0
    hit_requests: float = 0.0
    store_requests: float = 0.0
    dram_read_bytes: float = 0.0
    tiles: float = 0.0
    dma_bound: float = 0.0
    dram_rate_bound: float = 0.0
    first_load: float = -1.0
    last_store: float = 0.0


@dataclass(frozen=True)
class _Ctx:
    """What every tile of one mapped GEMM shares: sizes, hit rates, latencies."""

    sizes: tuple[int, ...]
    chunk: int
    top: int
    lat_l2: float
    lat_dram: float
    inflight: int
    bus: float
    dram_rate: float
    db: bool
    call: float
    overlap: bool
    hit_a: float
    hit_b: float
    share_a: float
    share_b: float
    line: int
    line_a: bool
    line_b: bool


def _hits(hw: AccelSpec, shape: GemmShape, m: Mapping, out_bytes: int) -> tuple[float, float, float, float, bool, bool]:
    """(A hit rate, B hit rate, A load share, B load share, A line shared, B line shared) from the loop order, the
    reuse distances and the operand tiles kept (module doc). "Line shared": the neighbouring tile along the row (the
    previous K step for A; the previous J tile for B) was read recently enough that the L2 line it shares with this tile
    is still there, so this tile's requests into that line hit (``line_requests``)."""
    D, l2 = hw.dim, hw.l2.bytes
    I, J, K = shape.I, shape.J, shape.K  # noqa: E741 - Gemmini's names
    ri, cj, dk = min(I, m.ti * D), min(J, m.tj * D), min(K, m.tk * D)
    I0, J0 = -(-I // (m.ti * D)), -(-J // (m.tj * D))
    whole_k = K <= m.tk * D  # K fits one tile: a kept operand tile is loaded once
    keep, keep_inner = m.reuse and whole_k, m.reuse_inner and whole_k
    line_a = ri * dk + dk * cj <= l2  # A's neighbour is the previous K step's tile, in both orders
    if m.order == "jik":  # for j0, for i0: B re-read across consecutive i0, A across the whole of A
        near, far = K * cj + ri * K + ri * cj * out_bytes, I * K + K * cj + I * cj * out_bytes
        hit_b = 0.0 if keep else (I0 - 1) / I0 if near <= l2 else 0.0
        hit_a = 0.0 if keep_inner else (J0 - 1) / J0 if far <= l2 else 0.0
        return hit_a, hit_b, 1 / J0 if keep_inner else 1.0, 1 / I0 if keep else 1.0, line_a, far <= l2
    near, far = ri * K + K * cj + ri * cj * out_bytes, K * J + ri * K + ri * J * out_bytes
    hit_a = 0.0 if keep else (J0 - 1) / J0 if near <= l2 else 0.0
    hit_b = 0.0 if keep_inner else (I0 - 1) / I0 if far <= l2 else 0.0
    return hit_a, hit_b, 1 / J0 if keep else 1.0, 1 / I0 if keep_inner else 1.0, line_a, near <= l2


def _mesh_part(hw: AccelSpec, ri, cj, dk) -> tuple:
    """(mesh cycles, commands, array MACs, scratchpad reads, accumulator bytes) of one tile: ints or numpy scalars for
    int sizes (``gemm_timing``), arrays for arrays of sizes (one per candidate in ``bounds``)."""
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
    commands = (bi * bk + bk * bj + bj * bk + bi * bj * bk) * hw.overheads.command_cycles
    return mesh, commands, array_macs, spad_read, acc


def _load(c: _Ctx, req_a: float, req_b: float, bytes_a: float, bytes_b: float, line_a: float,
          line_b: float) -> tuple[float, float, float, bool]:
    """(cycles, hit requests, DRAM bytes, whether DRAM's byte rate sets the cycles) of one tile's loads: Little's law
    over the in-flight slots, at least the bus time and, for the misses, the DRAM time. ``line_a``/``line_b``: the
    requests into a first line the neighbouring tile shares; they hit where the tile re-read would miss. DRAM bytes
    stay the tile's own bytes: the L2 fetches whole lines, and the neighbour's share of a line is counted with it."""
    ra, rb, ba, bb = req_a * c.share_a, req_b * c.share_b, bytes_a * c.share_a, bytes_b * c.share_b
    la = line_a * c.share_a if c.line_a else 0.0
    lb = line_b * c.share_b if c.line_b else 0.0
    hits = ra * c.hit_a + la * (1 - c.hit_a) + rb * c.hit_b + lb * (1 - c.hit_b)
    misses = ra + rb - hits
    dram = ba * (1 - c.hit_a) + bb * (1 - c.hit_b)
    by_rate = dram / c.dram_rate
    cycles = max((hits * c.lat_l2 + misses * c.lat_dram) / c.inflight, (ba + bb) / c.bus, by_rate)
    return cycles, hits, dram, cycles == by_rate > 0


def _store(c: _Ctx, requests: float, nbytes: float) -> float:
    """Cycles of one output tile's mvouts into the L2 (write-back): Little's law, at least the bus time."""
    return max(requests * c.lat_l2 / c.inflight, nbytes / c.bus)


def _add_pair(s: _Sums, hw: AccelSpec, c: _Ctx, ri: int, cj: int, j_offset: int, m: Mapping, shape: GemmShape,
              n: float, out_bytes: int, first_j: bool) -> None:
    """Add the ``n`` (i, j) output tiles of size ri×cj whose columns start ``j_offset`` bytes past a request boundary:
    their K steps (A's alignment averaged over the K positions), then the store of C after the last one. The first
    tile along a row (``first_j`` for B, k0 = 0 for A) shares no line with a tile read before it: the other part of its
    first line is the previous row's end, which the last tile along the row reads later (that hit is not counted)."""
    D, K, J = hw.dim, shape.K, shape.J
    group = 0.0
    last_stage = last_load = 0.0
    for dk, nk, k_first in _k_classes(shape.K, m.tk * D):
        mesh, commands, array_macs, spad_read, acc = _mesh_part(hw, ri, cj, dk)
        mesh = float(mesh)
        # A: ri rows of dk bytes, K bytes apart, at column k0·tk·DIM; averaged over the K positions of this class
        pos_a = _positions(nk, m.tk * D, k_first, c.top)
        req_a = sum(cnt * tile_requests(off, K, ri, dk, c.chunk, c.sizes) for off, cnt in pos_a) / nk
        line_a = sum(cnt * tile_line_requests(off, K, ri, dk, c.chunk, c.sizes, c.line) for off, cnt in pos_a)
        if k_first == 0:  # k0 = 0 (offset 0) is among them, and shares nothing
            line_a -= tile_line_requests(0, K, ri, dk, c.chunk, c.sizes, c.line)
        line_a /= nk
        req_b = tile_requests(j_offset, J, dk, cj, c.chunk, c.sizes)  # B: dk rows of cj bytes, J bytes apart
        line_b = 0 if first_j else tile_line_requests(j_offset, J, dk, cj, c.chunk, c.sizes, c.line)
        load, hits, dram, by_rate = _load(c, req_a, req_b, ri * dk, dk * cj, line_a, line_b)
        stage = max(mesh, commands)
        if c.db:
            tile = max(stage, load)
        else:
            tile = stage + load
        tile = max(tile, c.call) if c.overlap else tile + c.call
        group += nk * tile
        k = n * nk
        s.mesh += k * mesh
        s.dma += k * load
        s.array_macs += k * array_macs
        s.spad_read += k * spad_read
        spad_write = c.share_a * ri * dk + c.share_b * dk * cj
        s.spad_write += k * spad_write
        s.load_bytes += k * spad_write
        s.acc += k * acc
        s.requests += k * (req_a * c.share_a + req_b * c.share_b)
        s.hit_requests += k * hits
        s.dram_read_bytes += k * dram
        s.tiles += k
        if load > stage:
            s.dma_bound += k
            s.dram_rate_bound += k if by_rate else 0.0
        if s.first_load < 0:  # what the first compute waits for: A's first mvin chunk of every row, B's first mvin
            wa, rb, wb = min(dk, c.chunk), min(dk, D), min(cj, c.chunk)
            first = tile_requests(0, K, ri, wa, c.chunk, c.sizes) + tile_requests(0, J, rb, wb, c.chunk, c.sizes)
            nbytes = ri * wa + rb * wb
            s.first_load = max(first * c.lat_dram / c.inflight, nbytes / c.dram_rate, nbytes / c.bus) + c.lat_dram
        last_stage, last_load = stage, load
    req_c = tile_requests(j_offset * out_bytes, J * out_bytes, ri, cj * out_bytes, c.chunk, c.sizes)
    store = _store(c, req_c, ri * cj * out_bytes)
    if hw.dma.separate_store:  # the store engine writes this tile out while the next one computes
        s.cycles += n * max(group, store)
    else:
        s.cycles += n * (group + store)
    del last_stage, last_load
    s.dma += n * store
    s.store_cycles += n * store
    s.store_requests += n * req_c
    s.store_bytes += n * ri * cj * out_bytes
    s.acc += n * 4 * ri * cj  # mvout reads the finished tile once
    s.last_store = store + c.lat_l2


def _k_classes(K: int, tile: int) -> list[tuple[int, int, int]]:
    """(depth, count, index of the first) of the full K tiles and the remainder."""
    full, rem = divmod(K, tile)
    out = [(tile, full, 0)] if full else []
    return out + [(rem, 1, full)] if rem else out


def _j_groups(J: int, tile: int, top: int, out_bytes: int) -> list[tuple[int, int, int, bool]]:
    """(columns, B offset modulo ``top``, count, whether it is the first J tile) of the J tiles, grouped by alignment;
    more than four offset classes (tiny meshes) are merged into the first, with the count of all. The first J tile is
    its own group: its rows share their first L2 line with the previous row's last tile, read after it."""
    out = []
    for cj, nj in _classes(J, tile):
        first = 0 if cj == tile else J // tile
        if first == 0:
            out.append((cj, 0, 1, True))
            first, nj = 1, nj - 1
            if nj == 0:
                continue
        pos = _positions(nj, tile, first, top)
        if len(pos) > 4:
            pos = [(pos[0][0], nj)]
        out.extend((cj, off, cnt, False) for off, cnt in pos)
    return out


def gemm_timing(hw: AccelSpec, shape: GemmShape, m: Mapping, out_bytes: int = 1, resident: bool = False) -> GemmTiming:
    """Cycles of one mapped GEMM (× batch); ``resident`` assumes operands already on chip (no DMA, no overheads)."""
    D = hw.dim
    ideal = shape.I * shape.J * shape.K / (D * D)
    I0 = -(-shape.I // (m.ti * D))
    b = shape.batch
    if resident:  # the closed-form case: the mesh alone
        mesh = array_macs = spad_read = acc = 0.0
        for ri, ni in _classes(shape.I, m.ti * D):
            for cj, nj in _classes(shape.J, m.tj * D):
                for dk, nk in _classes(shape.K, m.tk * D):
                    t = _mesh_part(hw, ri, cj, dk)
                    k = ni * nj * nk
                    mesh, array_macs, spad_read, acc = (mesh + k * float(t[0]), array_macs + k * t[2],
                                                        spad_read + k * t[3], acc + k * t[4])
                acc += ni * nj * 4 * ri * cj
        return GemmTiming(b * mesh, b * mesh, 0.0, 0.0, 0.0, 0.0, shape.macs, b * array_macs, b * spad_read,
                          0.0, b * acc, b * ideal, 0.0, I0)
    sizes = request_sizes(hw)
    hit_a, hit_b, share_a, share_b, line_a, line_b = _hits(hw, shape, m, out_bytes)
    ov, line = hw.overheads, hw.l2.line_bytes
    c = _Ctx(sizes, hw.dma.mvin_row_bytes, max(sizes[0], line), hw.cycles(hw.l2.latency_s),
             hw.cycles(hw.dram.latency_s), hw.dma.requests_in_flight, hw.dma.bus_bytes_per_cycle, _dram_rate(hw),
             double_buffered(hw), ov.call_cycles, ov.calls_overlap, hit_a, hit_b, share_a, share_b, line, line_a,
             line_b)
    s = _Sums()
    j_groups = _j_groups(shape.J, m.tj * D, c.top, out_bytes)
    for ri, ni in _classes(shape.I, m.ti * D):
        for cj, off, nj, first_j in j_groups:
            _add_pair(s, hw, c, ri, cj, off, m, shape, ni * nj, out_bytes, first_j)
    prologue = s.first_load if c.db else 0.0  # the first compute's operands have nothing to hide behind
    overhead = ov.call_cycles if ov.calls_overlap else ov.call_cycles * s.tiles  # the first call, or every call
    exposed = overhead if ov.calls_overlap else 0.0  # per-call costs are inside the tile stages otherwise
    total = s.cycles + prologue + exposed + s.last_store
    return GemmTiming(b * total, b * s.mesh, b * s.dma, b * overhead, b * s.load_bytes, b * s.store_bytes, shape.macs,
                      b * s.array_macs, b * s.spad_read, b * s.spad_write, b * s.acc, b * ideal, b * s.store_cycles,
                      I0, b * s.requests, b * s.hit_requests, b * s.store_requests, b * s.dram_read_bytes,
                      b * s.tiles, b * s.dma_bound, b * s.dram_rate_bound)


# ---------------------------------------------------------------- bounds for the best-mapping search


@dataclass(frozen=True)
class Bounds:
    """Per mapping (numpy arrays): a lower bound on ``gemm_timing``'s cycles and the exact access counts its energy
    needs (the GemmTiming field names, so ``energy.gemm_energy`` takes it as it is)."""

    cycles: np.ndarray
    array_macs: np.ndarray
    spad_read_bytes: np.ndarray
    spad_write_bytes: np.ndarray
    acc_bytes: np.ndarray
    load_bytes: np.ndarray
    store_bytes: np.ndarray
    dram_read_bytes: np.ndarray


def _class_arrays(n: int, tile):
    """(size, count) arrays of the full tiles and the remainder tile along ``n`` for each tile size (count 0: none)."""
    full, rem = np.divmod(n, tile)
    return ((tile, full), (np.where(rem > 0, rem, 1.0), (rem > 0).astype(float)))


def _first(classes):
    """The size of the first tile class present: the full tiles, or the remainder when there are none."""
    (full, n_full), (rem, _) = classes
    return np.where(n_full > 0, full, rem)


def _last(classes):
    """The size of the last tile class present: the remainder, or the full tiles when there is none."""
    (full, _), (rem, n_rem) = classes
    return np.where(n_rem > 0, rem, full)


def bounds(hw: AccelSpec, shape: GemmShape, ms: list[Mapping], out_bytes: int = 1) -> Bounds:
    """The search's bound for each mapping, vectorized: every term of ``gemm_timing`` in closed form, except that a row
    of w bytes is taken at its fewest requests (each mvin chunk of L bytes needs at least ceil(L / largest request))
    and the stores but the last one are left out. So ``cycles`` <= gemm_timing(...).cycles; the byte and MAC counts
    are the ones gemm_timing sums, tile class by tile class (_hits and _mesh_part per candidate; tests/
    test_accel_mapping.py checks both against gemm_timing on random mappings)."""
    D, I, J, K = hw.dim, shape.I, shape.J, shape.K  # noqa: E741 - Gemmini's names
    # floats throughout: sizes stay exact below 2^53, and products such as MACs would overflow int64 on huge shapes
    ti = np.array([m.ti for m in ms], dtype=float) * D
    tj = np.array([m.tj for m in ms], dtype=float) * D
    tk = np.array([m.tk for m in ms], dtype=float) * D
    jik = np.array([m.order == "jik" for m in ms])
    keep = np.array([m.reuse for m in ms]) & (K <= tk)
    keep_inner = np.array([m.reuse_inner for m in ms]) & (K <= tk)
    # _hits, vectorized
    ri0, cj0 = np.minimum(I, ti), np.minimum(J, tj)
    I0, J0 = -(-I // ti), -(-J // tj)
    near = ri0 * K + K * cj0 + ri0 * cj0 * out_bytes
    far = np.where(jik, I * K + K * cj0 + I * cj0 * out_bytes, K * J + ri0 * K + ri0 * J * out_bytes)
    reuse_i, reuse_j = (I0 - 1) / I0, (J0 - 1) / J0
    l2 = hw.l2.bytes
    hit_a = np.where(jik, np.where(far <= l2, reuse_j, 0.0), np.where(near <= l2, reuse_j, 0.0))
    hit_b = np.where(jik, np.where(near <= l2, reuse_i, 0.0), np.where(far <= l2, reuse_i, 0.0))
    share_a, share_b = np.ones(len(ms)), np.ones(len(ms))
    hit_a = np.where(keep & ~jik, 0.0, hit_a)
    share_a = np.where(keep & ~jik, 1 / J0, share_a)
    hit_b = np.where(keep & jik, 0.0, hit_b)
    share_b = np.where(keep & jik, 1 / I0, share_b)
    hit_b = np.where(keep_inner & ~jik, 0.0, hit_b)
    share_b = np.where(keep_inner & ~jik, 1 / I0, share_b)
    hit_a = np.where(keep_inner & jik, 0.0, hit_a)
    share_a = np.where(keep_inner & jik, 1 / J0, share_a)

    d, ov = hw.dma, hw.overheads
    top = request_sizes(hw)[0]
    chunk_req = -(-d.mvin_row_bytes // top)

    def fewest(w):
        whole, tail = np.divmod(w, d.mvin_row_bytes)
        return whole * chunk_req + -(-tail // top)

    line = hw.l2.line_bytes

    def row_latency(w, lat):
        """Fewest latency of a row of w bytes: the requests into a first line shared with the neighbouring tile may
        hit the L2; the ones past that line (at least ceil((w - line) / largest request)) take ``lat``."""
        past = -(-np.maximum(w - line, 0) // top)
        return past * lat + (fewest(w) - past) * np.minimum(lat_l2, lat)

    lat_l2, lat_dram = hw.cycles(hw.l2.latency_s), hw.cycles(hw.dram.latency_s)
    lat_a = hit_a * lat_l2 + (1 - hit_a) * lat_dram
    lat_b = hit_b * lat_l2 + (1 - hit_b) * lat_dram
    db = double_buffered(hw)
    z = np.zeros(len(ms))
    cycles, array_macs, spad_read, spad_write, acc, dram = z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy()
    for ri, ni in _class_arrays(I, ti):
        for cj, nj in _class_arrays(J, tj):
            acc += ni * nj * 4 * ri * cj  # mvout reads each finished tile once
            for dk, nk in _class_arrays(K, tk):
                n = ni * nj * nk
                mesh, commands, tile_macs, tile_reads, tile_acc = _mesh_part(hw, ri, cj, dk)
                stage = np.maximum(mesh, commands)
                ba, bb = share_a * ri * dk, share_b * dk * cj
                lat = (share_a * ri * row_latency(dk, lat_a) + share_b * dk * row_latency(cj, lat_b)) / d.requests_in_flight
                missed = ba * (1 - hit_a) + bb * (1 - hit_b)
                load = np.maximum(np.maximum(lat, (ba + bb) / d.bus_bytes_per_cycle), missed / _dram_rate(hw))
                tile = np.maximum(stage, load) if db else stage + load
                tile = np.maximum(tile, ov.call_cycles) if ov.calls_overlap else tile + ov.call_cycles
                cycles += n * tile
                array_macs += n * tile_macs
                spad_read += n * tile_reads
                acc += n * tile_acc
                spad_write += n * (ba + bb)
                dram += n * missed
    if ov.calls_overlap:
        cycles += ov.call_cycles  # the first call is exposed
    ri, cj, dk = (_first(_class_arrays(n, t)) for n, t in ((I, ti), (J, tj), (K, tk)))
    if db:  # the prologue: the first compute's operands (A's first mvin chunk of each row, B's first mvin), from DRAM
        wa, rb, wb = np.minimum(dk, d.mvin_row_bytes), np.minimum(dk, D), np.minimum(cj, d.mvin_row_bytes)
        first = ri * wa + rb * wb
        cycles += np.maximum(np.maximum((ri * fewest(wa) + rb * fewest(wb)) * lat_dram / d.requests_in_flight,
                                        first / _dram_rate(hw)), first / d.bus_bytes_per_cycle) + lat_dram
    ri, cj = (_last(_class_arrays(n, t)) for n, t in ((I, ti), (J, tj)))
    out = cj * out_bytes  # the last store, into the L2
    cycles += np.maximum(ri * fewest(out) * lat_l2 / d.requests_in_flight, ri * out / d.bus_bytes_per_cycle) + lat_l2
    b = shape.batch
    store = np.full(len(ms), float(I) * J * out_bytes * b)
    return Bounds(b * cycles, b * array_macs, b * spad_read, b * spad_write, b * acc, b * spad_write, store, b * dram)
