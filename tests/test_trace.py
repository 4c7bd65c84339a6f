"""Chrome/Perfetto trace export: one X event per op, end to end per part track, durations in µs, atomic writes."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

import tstack
from tstack import RunSpec, TstackError
from tstack.profiler.trace import KERNELS_PID, OPS_PID, breakdown_trace
from tstack.report.files import write_trace


def x_events(trace: dict, pid: int) -> list[dict]:
    """The op (or kernel) events of a process; the ProfilerStep annotation is not one."""
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == pid and e.get("cat") != "user_annotation"]


@pytest.fixture(scope="module")
def predicted():
    return tstack.analyze("bert-base", RunSpec(mode="train", batch=8, seq=128), "a100")


def test_one_x_event_per_op_with_labels_and_durations(predicted):
    trace = json.loads(json.dumps(breakdown_trace(predicted)))  # loads back as plain JSON
    xs = x_events(trace, OPS_PID)
    assert len(xs) == len(predicted.ops)
    for e, op, cost in zip(xs, predicted.ops, predicted.costs):
        assert e["name"] == op.name and e["dur"] == pytest.approx(cost.seconds * 1e6, abs=1e-3)  # µs, ns rounding
        assert {k: e["args"][k] for k in ("part", "layer", "block", "group", "nlpfast", "pass")} == dict(op.labels)
        assert e["args"]["flops"] == op.flops * op.count and e["args"]["bytes"] == op.bytes * op.count
        assert e["args"]["dims"] == dict(op.dims)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"embedding", "transformer", "output", "optimizer", "iteration"}  # one track per part


def test_iteration_is_marked_as_torch_profiler_marks_it(predicted):
    trace = breakdown_trace(predicted)
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") == "user_annotation"]
    assert [e["name"] for e in steps] == ["ProfilerStep#0"]
    assert steps[0]["ts"] == 0 and steps[0]["dur"] == pytest.approx(predicted.total.seconds * 1e6, abs=1e-2)
    assert trace["distributedInfo"]["rank"] == 0


def test_ops_are_end_to_end_and_non_decreasing_per_track(predicted):
    xs = x_events(breakdown_trace(predicted), OPS_PID)
    by_track = defaultdict(list)
    for e in xs:
        by_track[e["tid"]].append(e["ts"])
    assert all(ts == sorted(ts) for ts in by_track.values())
    end = xs[-1]["ts"] + xs[-1]["dur"]
    assert xs[0]["ts"] == 0 and end == pytest.approx(predicted.total.seconds * 1e6, rel=1e-9, abs=1e-2)
    for a, b in zip(xs, xs[1:]):  # each op starts where the previous one ended (to rounding)
        assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=2e-3)


def test_write_trace_round_trips(predicted, tmp_path):
    path = write_trace(breakdown_trace(predicted), tmp_path / "trace.json")
    data = json.loads(path.read_text())
    assert len(x_events(data, OPS_PID)) == len(predicted.ops) and data["otherData"]["model"] == "bert-base"


def test_write_trace_leaves_nothing_when_serialization_fails(predicted, tmp_path):
    good = tmp_path / "keep.json"
    write_trace(breakdown_trace(predicted), good)
    before = good.read_bytes()
    bad = breakdown_trace(predicted)
    bad["traceEvents"].append({"name": "x", "ph": "X", "args": {"obj": object()}})
    for trace in (bad, {"traceEvents": [{"dur": float("nan")}]}):
        with pytest.raises(TstackError, match="not valid JSON"):
            write_trace(trace, tmp_path / "out.json")
        with pytest.raises(TstackError):
            write_trace(trace, good)  # an existing file is kept as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"] and good.read_bytes() == before
    with pytest.raises(TstackError, match="does not exist"):
        write_trace(breakdown_trace(predicted), tmp_path / "missing" / "t.json")


def test_measured_trace_keeps_raw_kernels_with_labels():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tstack.profiler.module import profile_preset
    from tstack.profiler.trace import profile_trace

    spec = tstack.ModelSpec(name="bert-tiny", arch="encoder", layers=1, hidden=32, heads=2, ffn=64, vocab=50,
                            max_positions=16, type_vocab=2)
    p = profile_preset(spec, RunSpec(batch=1, seq=8), threads=1, warmup=0, repeats=1)
    trace = json.loads(json.dumps(profile_trace(p)))
    assert len(x_events(trace, OPS_PID)) == len(p.breakdown.ops)
    raw = x_events(trace, KERNELS_PID)
    assert len(raw) == len(p.kernels) and [e["name"] for e in raw] == [k.aten for k in p.kernels]
    assert all(set(e["args"]) >= {"part", "layer", "group", "nlpfast", "pass", "module", "op"} for e in raw)
    q = next(e for e in raw if e["args"]["op"] == "attn.q_proj")
    assert q["args"]["module"].endswith("attention.self.query") and q["args"]["nlpfast"] == "Q-Gen"
    ts = [e["ts"] for e in raw]
    assert ts == sorted(ts) and all(e["dur"] >= 0 for e in raw)
    assert trace["otherData"]["wall_s"] == p.wall_s and trace["otherData"]["attributed_s"] == p.attributed_s
