"""Hardware counters, their absence, and the simulated cachestat fallback (tstack.profiler.counters)."""

from __future__ import annotations

import ctypes
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tstack.errors import TstackError, UnknownNameError
from tstack.profiler import cachestat, counters, runop
from tstack.profiler.cachestat import Budget, CacheGeometry
from tstack.profiler.counters import Support
from tstack.profiler.runtime import RuntimeConfig
from tstack.workload import formulas as F
from tstack.workload.op import Op

LABELS = (("part", "test"), ("layer", "-"), ("block", "-"), ("group", "-"), ("nlpfast", "-"), ("pass", "fwd"))
needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None or not counters.simulator_support().available,
                                    reason="the simulated cachestat needs valgrind on Linux x86-64")


def gemm(M: int, N: int, K: int, batch: int = 0) -> Op:
    c = F.gemm(M, N, K, max(batch, 1), 4, 4)
    return Op("bgemm" if batch else "gemm", "test-gemm", c.dims, "fp32", c.flops, c.bytes, LABELS)


def pointwise(name: str, rows: int, cols: int) -> Op:
    c = F.pointwise(name, rows, cols, 4)
    return Op(F.kernel(name).kind, name, c.dims, "fp32", c.flops, c.bytes, LABELS)


# --- support and counting ------------------------------------------------------------------------------
def test_perf_support_says_why_or_counts():
    s = counters.perf_support()
    assert s.reason and "\n" not in s.reason
    if s.available:  # a machine with counters: they must count
        assert counters.count_events(lambda: sum(range(10_000)), ["instructions"], 3)["instructions"] > 0
    else:  # this project's VMs: perf_event_open fails (ENOENT) and the reason names the call
        assert "perf_event_open" in s.reason
    line = counters.describe_support()
    assert line.startswith("hardware counters: ") and "\n" not in line


def test_hardware_events_without_counters_raise_one_line():
    if counters.perf_support().available:
        pytest.skip("this machine has hardware counters")
    with pytest.raises(TstackError) as e:
        counters.count_events(lambda: None, ["instructions", "LLC-load-misses"])
    msg = str(e.value)
    assert "\n" not in msg and "unavailable" in msg and "cachestat" in msg and "simulated" in msg


def test_software_events_count_through_perf_event_open():
    # The kernel's software events need no PMU, so the group open / enable / read path runs here too.
    got = counters.count_events(lambda: sum(range(200_000)), ["task-clock", "page-faults"], repeats=2)
    assert got["task-clock"] > 0 and got["page-faults"] >= 0


def test_between_runs_with_counters_off():
    calls = []
    got = counters.count_events(lambda: calls.append("fn"), ["task-clock"], repeats=3, between=lambda: calls.append("b"))
    assert calls == ["b", "fn"] * 3 and got["task-clock"] >= 0


def test_unknown_event_is_named_with_the_allowed_ones():
    with pytest.raises(UnknownNameError) as e:
        counters.count_events(lambda: None, ["cycles", "LLC-misses"])
    assert "'LLC-misses'" in str(e.value) and "LLC-load-misses" in str(e.value)


def test_event_table_matches_perf():
    # Encodings from linux/perf_event.h (perf list prints the same for these generic names).
    assert (counters.event("instructions").type, counters.event("instructions").config) == (0, 1)
    assert counters.event("LLC-load-misses").config == 0x10002  # LL | READ << 8 | MISS << 16
    assert counters.event("dTLB-load-misses").config == 0x10003
    assert counters.event("task-clock").hardware is False
    assert (counters.event("r01c2").type, counters.event("r01c2").config) == (4, 0x1C2)
    assert "L1-icache-stores" not in counters.EVENTS
    assert ctypes.sizeof(counters._Attr) == 136  # PERF_ATTR_SIZE_VER8


def test_count_op_events_on_a_real_op():
    pytest.importorskip("torch")
    got = counters.count_op_events(pointwise("softmax", 64, 256), RuntimeConfig(threads=1), ["task-clock"], repeats=3)
    assert got["task-clock"] > 0


# --- reduced shapes, geometry, parsing -------------------------------------------------------------------
def test_reduce_gemm_keeps_the_reduction_dim():
    op = gemm(4096, 128, 1024)  # BERT-Large FC1 on one 128-token sequence: 1.07 GFLOP
    small, changed, scale = cachestat.reduce_op(op, Budget(gemm_flops=1 << 26))
    # The larger of M and N is cut (the miss rate per FLOP moves least), K and the tokens are kept.
    assert changed == (("M", 4096, 256),) and small.flops <= 1 << 26 and scale == pytest.approx(16)
    assert small.bytes == F.gemm(256, 128, 1024, 1, 4, 4).bytes
    square, changed, _ = cachestat.reduce_op(gemm(4096, 4096, 1024), Budget(gemm_flops=1 << 26))
    assert square.dim("K") == 1024 and square.dim("M") == square.dim("N") < 4096 and square.flops <= 1 << 26
    batched, changed, _ = cachestat.reduce_op(gemm(128, 128, 64, batch=192), Budget(gemm_flops=1 << 22))
    assert changed == (("batch", 192, 2),)  # B·h attention GEMMs: fewer heads, each head unchanged


def test_reduce_rows_keeps_the_row_length_and_small_ops_are_untouched():
    op = pointwise("softmax", 16 * 128 * 128, 128)
    small, changed, _ = cachestat.reduce_op(op, Budget(elements=1 << 16))
    assert small.dim("cols") == 128 and small.dim("rows") * 128 <= 1 << 16 and changed[0][0] == "rows"
    tiny = pointwise("softmax", 4, 128)
    assert cachestat.reduce_op(tiny) == (tiny, (), 1.0)


def test_llc_geometry_for_valgrind():
    host = CacheGeometry(260 << 20, 20, 64)  # this VM's L3: 212,992 sets, not a power of two
    g = host.for_valgrind()
    assert g.valid_for_valgrind() and g.line == 64 and g.size >= host.size and (g.size, g.assoc) == (264 << 20, 33)
    assert CacheGeometry(1 << 20, 16, 64).for_valgrind() == CacheGeometry(1 << 20, 16, 64)


def test_read_callgrind_dump(tmp_path):
    p = tmp_path / "callgrind.out.3"
    p.write_text("# callgrind format\nversion: 1\ndesc: LL cache: 1048576 B, 64 B, 16-way associative\n"
                 "desc: Trigger: Client Request: tstack-op1-warm\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n"
                 "summary: 1000 300 100 5 40 20 0 7\ntotals: 1000 300 100 5 40 20 0 7\n")
    name, values, ll = cachestat._read_dump(str(p))
    assert name == "tstack-op1-warm" and ll == "1 MiB 16-way 64 B lines"
    assert values["Ir"] == 1000 and values["DLmr"] == 7 and values["DLmw"] == 0  # trailing zeros are left out


def test_runop_plain_mode_round_trips_ops(capsys):
    pytest.importorskip("torch")
    op = gemm(32, 16, 8)
    assert runop.op_from_json(json.loads(json.dumps(runop.op_to_json(op)))) == op
    assert runop.main([json.dumps({"mode": "plain", "ops": [runop.op_to_json(op)], "warmup": 1, "runs": 2})]) == 0
    assert json.loads(capsys.readouterr().out)["ops"][0]["dims"] == [list(d) for d in op.dims]
    assert runop.main([json.dumps({"mode": "callgrind", "ops": []})]) == 2  # not under valgrind: one line, status 2
    assert "valgrind" in capsys.readouterr().err


def test_cachestat_without_counters_or_valgrind_is_one_line(monkeypatch):
    monkeypatch.setattr(counters, "perf_support", lambda: Support(False, "perf_event_open(instructions): ENOENT"))
    monkeypatch.setattr(counters, "simulator_support", lambda: Support(False, "valgrind is not installed"))
    with pytest.raises(TstackError, match="ENOENT.*valgrind is not installed"):
        cachestat.cachestat(gemm(8, 8, 8), RuntimeConfig(threads=1))


def test_cachestat_with_counters_plumbing(monkeypatch):
    # No PMU here: fake the counters to check the protocol (LLC store event fallback, eviction before cold runs).
    pytest.importorskip("torch")
    seen = []

    def fake_count(fn, events, repeats=1, between=None):
        if "LLC-store-misses" in events:
            raise TstackError("perf_event_open(LLC-store-misses): ENOENT")
        fn()
        seen.append((tuple(events), between is not None))
        return {e: (1000.0 if e == "instructions" else 50.0 if between else 5.0) for e in events}

    monkeypatch.setattr(counters, "perf_support", lambda: Support(True, "fake"))
    monkeypatch.setattr(counters, "count_events", fake_count)
    monkeypatch.setattr(cachestat, "host_llc", lambda: CacheGeometry(1 << 20, 16, 64))
    s = cachestat.cachestat(pointwise("softmax", 8, 64), RuntimeConfig(threads=1))
    assert not s.simulated and "cache-misses" in s.method
    assert (s.llc_misses, s.warm_llc_misses, s.mpki) == (50.0, 5.0, 50.0)
    assert seen == [(("cache-misses", "instructions"), True), (("cache-misses", "instructions"), False)]


# --- the simulated cachestat (valgrind) -----------------------------------------------------------------
# One simulated LL of 512 KiB for every op, so that a working set can exceed it at test speed.
SMALL_LL = CacheGeometry(512 << 10, 8, 64)
SIM_OPS = {
    "gemm": gemm(64, 32, 64),
    "softmax": pointwise("softmax", 16, 256),
    "fits": pointwise("softmax", 16, 1024),  # 64 KiB in + 64 KiB out: fits the 512 KiB LL
    "exceeds": pointwise("softmax", 128, 1024),  # 512 KiB in + 512 KiB out: twice the LL
}


@pytest.fixture(scope="module")
def simulated():
    pytest.importorskip("torch")
    if not counters.simulator_support().available:
        pytest.skip(counters.simulator_support().reason)
    cfg = RuntimeConfig(threads=1)
    # Two independent valgrind processes (side by side) on the same ops: determinism is across processes.
    with ThreadPoolExecutor(2) as ex:
        a, b = ex.map(lambda _: cachestat.cachestat_many(list(SIM_OPS.values()), cfg, method="simulate", llc=SMALL_LL),
                      range(2))
    return dict(zip(SIM_OPS, a)), dict(zip(SIM_OPS, b))


@needs_valgrind
@pytest.mark.parametrize("name", ["gemm", "softmax"])
def test_simulated_cachestat_is_labelled_positive_and_deterministic(simulated, name):
    first, second = simulated
    s = first[name]
    assert s.simulated and s.instructions > 0 and s.llc_misses > 0 and s.mpki > 0
    assert "callgrind" in s.method and "LL 512 KiB 8-way" in s.note
    assert s == second[name]  # same numbers from a second process


@needs_valgrind
def test_simulated_mpki_grows_when_the_working_set_exceeds_the_llc(simulated):
    s = simulated[0]
    # Capacity: when an op runs again, what it touched last time is still cached if its working set
    # (inputs + outputs) fits in the LLC, so the warm run misses almost nothing; a working set twice
    # the LLC's size is swept cyclically and LRU has evicted every line before it is touched again,
    # so the warm run misses about once per line. The instructions per element are the same (same
    # kernel, same row length), so the MPKI is higher for the larger working set.
    fits, exceeds = s["fits"], s["exceeds"]
    assert exceeds.warm_mpki > 10 * max(fits.warm_mpki, 0.1)
    assert exceeds.warm_llc_misses > 0.9 * exceeds.llc_misses


@needs_valgrind
def test_simulated_cold_misses_are_the_compulsory_traffic(simulated):
    # A cold run misses once per 64-byte line of every buffer it reads or writes (Op.bytes / 64: the
    # cost model's compulsory traffic) plus a few hundred lines of the op's own Python and PyTorch
    # objects, whatever the LLC's size.
    for name in ("softmax", "fits", "exceeds"):
        lines = SIM_OPS[name].bytes / 64
        assert lines <= simulated[0][name].llc_misses <= 1.05 * lines + 500
