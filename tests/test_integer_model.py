"""Integer encoder layers and models: bit-exact against the oracle, integer-only under the guard, conversion, files, CLI."""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pytest
import torch
import transformers

from tstack.errors import SpecError, TstackError
from tstack.integer import fast, fused, ops, oracle, store
from tstack.integer import layer as il
from tstack.integer import model as im
from tstack.integer.guard import FloatOpError, IntegerOnly
from tstack.models import load_model
from tstack.profiler.hfmodels import build_hf_model


def _tiny(seed: int = 0) -> transformers.BertModel:
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=24, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _batch(seed: int, b: int = 3, s: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, s // 2:] = 0
    return {"input_ids": torch.randint(0, 60, (b, s), generator=g), "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny() -> tuple[transformers.BertModel, im.IntModel]:
    model = _tiny()
    return model, im.convert(model, [_batch(1), _batch(2)], il.QuantConfig(), "tiny")


@pytest.mark.parametrize("seed", [3, 4])
def test_layers_bit_exact_against_oracle(tiny, seed):
    _, q = tiny
    b = _batch(seed)
    x = im.embed(q.embeddings, b["input_ids"], None)
    assert torch.equal(im.embed(q.embeddings, b["input_ids"], None, fused=True), x)
    for p, f in zip(q.layers, q.fused, strict=True):
        vectorized = il.layer_forward(x, ops.mask_bias(b["attention_mask"]), p)
        assert torch.equal(vectorized.to(torch.int64), oracle.layer_forward(x, b["attention_mask"], p))
        assert torch.equal(fast.forward(x, ops.mask_bias(b["attention_mask"]), f), vectorized)
        x = vectorized


def test_fused_kernels_compile_to_integer_instructions_only(tiny):
    _, q = tiny
    b = _batch(6)
    with IntegerOnly() as guard:  # the PyTorch ops around the kernels are integer too
        codes = im.int_forward(q, b["input_ids"], b["attention_mask"])
    assert torch.equal(codes, im.int_forward(q, b["input_ids"], b["attention_mask"], fused=False))
    assert "_int_mm" in guard.ops and "bucketize" not in guard.ops  # the LayerNorm sqrt ran inside a kernel
    for kernel in fused.KERNELS:  # every kernel ran above, with the signatures inspected here
        assert fused.float_instructions(kernel) == [], kernel.__name__

    @numba.njit
    def halve(x):
        return x * 0.5

    halve(np.int64(3))
    assert "fmul" in fused.float_instructions(halve)  # the check sees a float instruction
    with pytest.raises(TstackError, match="has not run"):
        fused.float_instructions(numba.njit(lambda x: x + 1))


def test_fused_path_refuses_wide_softmax_codes():
    q = im.convert(_tiny(), [_batch(1)], il.QuantConfig(softmax_bits=9), "tiny")
    with pytest.raises(TstackError, match="softmax_bits=9"):
        fast.plan(q.layers[0])
    assert q.fused is None  # int_forward then runs the PyTorch kernels
    b = _batch(2)
    x = im.embed(q.embeddings, b["input_ids"], None)
    assert torch.equal(il.layer_forward(x, ops.mask_bias(b["attention_mask"]), q.layers[0]).to(torch.int64),
                       oracle.layer_forward(x, b["attention_mask"], q.layers[0]))


def test_whole_model_passes_the_no_float_guard(tiny):
    _, q = tiny
    b = _batch(5)
    with IntegerOnly() as guard:
        codes = im.int_forward(q, b["input_ids"], b["attention_mask"], fused=False)
    assert codes.dtype == torch.int8
    assert "_int_mm" in guard.ops and "bucketize" in guard.ops  # the GEMMs and the integer sqrt ran under the guard
    with pytest.raises(FloatOpError, match="float"), IntegerOnly():
        im.dequantize(q, codes)  # the dequantizer is outside the integer region, and the guard sees it


def test_integer_model_tracks_the_float_model(tiny):
    model, q = tiny
    b = _batch(6)
    with torch.inference_mode():
        ref = model(**b).last_hidden_state
    got = im.dequantize(q, im.int_forward(q, b["input_ids"], b["attention_mask"]))
    keep = b["attention_mask"].bool()
    cos = torch.nn.functional.cosine_similarity(ref[keep], got[keep], dim=-1)
    assert float(cos.min()) > 0.95  # per-token hidden states of a random 2-layer model, int8 activations


def test_save_load_round_trip(tiny, tmp_path):
    _, q = tiny
    store.save(q, tmp_path / "m.pt")
    back = store.load(tmp_path / "m.pt")
    b = _batch(7)
    assert torch.equal(im.int_forward(back, b["input_ids"], b["attention_mask"]),
                       im.int_forward(q, b["input_ids"], b["attention_mask"]))
    (tmp_path / "bad.pt").write_text("not a model")
    with pytest.raises(TstackError, match="not a tstack integer model"):
        store.load(tmp_path / "bad.pt")


def test_preset_conversion():
    spec = dataclasses.replace(load_model("bert-base"), layers=1)
    model = build_hf_model(spec, seed=0, dropout=False).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, spec.vocab, (2, 16), generator=g),
             "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    q = im.convert(model, [batch], il.QuantConfig(), "bert-base")
    assert len(q.layers) == 1 and q.layers[0].fc1.wt.shape == (768, 3072) and q.layers[0].fc1.wt.dtype == torch.int8
    with torch.inference_mode():
        ref = model(**batch).last_hidden_state
    got = im.dequantize(q, im.int_forward(q, batch["input_ids"], batch["attention_mask"]))
    assert float(torch.nn.functional.cosine_similarity(ref.flatten(1), got.flatten(1)).min()) > 0.98


def test_bad_inputs_name_the_field():
    with pytest.raises(SpecError, match="act_bits=9"):
        il.QuantConfig(act_bits=9)
    with pytest.raises(SpecError, match="percentile=20"):
        il.QuantConfig(percentile=20.0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, hidden_act="relu")
    with pytest.raises(TstackError, match="hidden_act='relu'"):
        im.convert(transformers.BertModel(cfg), [_batch(1)], il.QuantConfig())
    with pytest.raises(TstackError, match="at least one batch"):
        im.convert(_tiny(), [], il.QuantConfig())
