"""ModelSpec / RunSpec: validation at construction, messages naming field and value, derived values, replace()."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tstack
from tstack.spec import MAX_HIDDEN, ModelSpec, RunSpec

# BERT-Base (Devlin et al. 2019): L=12, H=768, A=12, d_ff=4H=3072, WordPiece vocabulary 30522.
BERT_BASE = dict(name="bert-base", arch="encoder", layers=12, hidden=768, heads=12, ffn=3072, vocab=30522,
                 type_vocab=2)


def model(**changes) -> ModelSpec:
    return ModelSpec(**{**BERT_BASE, **changes})


def spec_error(build) -> str:
    with pytest.raises(tstack.SpecError) as info:
        build()
    return str(info.value)


# (field changes, field named in the error, bad value, a fragment of what is allowed)
BAD_MODELS = [
    ({"heads": 5}, "heads", 5, "divide hidden=768"),  # 768 = 2^8·3 has no factor 5
    ({"heads": 7}, "heads", 7, "divide hidden=768"),
    ({"kv_heads": 5}, "kv_heads", 5, "divide heads=12"),
    ({"heads": 16, "hidden": 1024, "kv_heads": 3}, "kv_heads", 3, "divide heads=16"),
    ({"layers": 0}, "layers", 0, "[1, 10000]"),
    ({"layers": -12}, "layers", -12, "[1, 10000]"),
    ({"layers": 10**12}, "layers", 10**12, "[1, 10000]"),
    ({"hidden": 2**30}, "hidden", 2**30, f"[1, {MAX_HIDDEN}]"),
    ({"hidden": -768}, "hidden", -768, f"[1, {MAX_HIDDEN}]"),
    ({"heads": 0}, "heads", 0, "[1, "),
    ({"ffn": 0}, "ffn", 0, "[1, "),
    ({"ffn": -3072}, "ffn", -3072, "[1, "),
    ({"vocab": 0}, "vocab", 0, "[1, "),
    ({"vocab": 2**40}, "vocab", 2**40, "[1, "),
    ({"max_positions": 0}, "max_positions", 0, "[1, "),
    ({"type_vocab": -1}, "type_vocab", -1, "[0, "),
    ({"default_seq": 0}, "default_seq", 0, "[1, "),
    # bool is a subclass of int in Python; a YAML `layers: true` must not become one layer.
    ({"layers": True}, "layers", True, "integer"),
    ({"heads": False}, "heads", False, "integer"),
    ({"hidden": 768.0}, "hidden", 768.0, "integer"),
    ({"vocab": "30522"}, "vocab", "30522", "integer"),
    ({"ffn": None}, "ffn", None, "integer"),
    ({"arch": "rnn"}, "arch", "rnn", "encoder, decoder, enc-dec, memnet"),
    ({"activation": "swish"}, "activation", "swish", "gelu"),
    ({"norm": "batchnorm"}, "norm", "batchnorm", "layernorm, rmsnorm"),
    ({"norm_position": "middle"}, "norm_position", "middle", "post, pre"),
    ({"position": "alibi"}, "position", "alibi", "rotary"),
    ({"head": "cls"}, "head", "cls", "bert-pretrain"),
    ({"gated_ffn": "yes"}, "gated_ffn", "yes", "true or false"),
    ({"bias": 1}, "bias", 1, "true or false"),
    ({"decoder_layers": 6}, "decoder_layers", 6, "enc-dec"),
    ({"hops": 3}, "hops", 3, "memnet"),
    # an encoder-decoder needs a decoder stack
    ({"arch": "enc-dec", "decoder_layers": 0}, "decoder_layers", 0, "[1, 10000]"),
    ({"arch": "memnet", "hops": 0}, "hops", 0, "[1, 10000]"),
]


@pytest.mark.parametrize(("changes", "field", "value", "allowed"), BAD_MODELS,
                         ids=[f"{f}={v!r}" for _, f, v, _ in BAD_MODELS])
def test_bad_model_field_names_field_value_and_range(changes, field, value, allowed):
    msg = spec_error(lambda: model(**changes))
    assert f"{field}={value!r}" in msg
    assert allowed in msg
    assert "\n" not in msg


def test_model_error_collects_every_problem_in_one_message():
    msg = spec_error(lambda: model(layers=0, vocab=-5, activation="tanh"))
    assert "layers=0" in msg and "vocab=-5" in msg and "activation='tanh'" in msg
    assert "bert-base" in msg  # names the model


def test_spec_error_is_a_tstack_error_and_a_value_error():
    with pytest.raises(tstack.TstackError):
        model(heads=5)
    with pytest.raises(ValueError):
        model(heads=5)


BAD_RUNS = [
    ({"mode": "training"}, "mode", "training", "infer, train"),
    ({"precision": "fp8"}, "precision", "fp8", "fp32, tf32, fp16-mixed, bf16-mixed, int8"),
    ({"precision": "FP32"}, "precision", "FP32", "fp32"),
    ({"optimizer": "adagrad"}, "optimizer", "adagrad", "lamb, adam, sgd"),
    ({"checkpoint": "every-0"}, "checkpoint", "every-0", "none, sqrt, every-K"),
    ({"checkpoint": "sqrt2"}, "checkpoint", "sqrt2", "none, sqrt, every-K"),
    ({"checkpoint": "every-"}, "checkpoint", "every-", "none, sqrt, every-K"),
    ({"checkpoint": 4}, "checkpoint", 4, "none, sqrt, every-K"),
    ({"phase": "generate"}, "phase", "generate", "prefill, decode"),
    ({"batch": 0}, "batch", 0, "[1, "),
    ({"batch": -1}, "batch", -1, "[1, "),
    ({"batch": True}, "batch", True, "integer"),
    ({"batch": 2.5}, "batch", 2.5, "integer"),
    ({"seq": 0}, "seq", 0, "[1, "),
    ({"seq": 2**40}, "seq", 2**40, "[1, "),
    ({"seq": "128"}, "seq", "128", "integer"),
    ({"tgt_seq": -3}, "tgt_seq", -3, "[1, "),
    ({"kv_len": -1}, "kv_len", -1, "[0, "),
    ({"dropout": "no"}, "dropout", "no", "true or false"),
    ({"mode": "train", "precision": "int8"}, "precision", "int8", "fp32, tf32, fp16-mixed, bf16-mixed"),
    ({"mode": "train", "phase": "decode", "kv_len": 10}, "phase", "decode", "prefill"),
    ({"phase": "decode", "kv_len": 0}, "kv_len", 0, "≥ 1"),
]


@pytest.mark.parametrize(("changes", "field", "value", "allowed"), BAD_RUNS,
                         ids=[f"{f}={v!r}-{len(c)}" for c, f, v, _ in BAD_RUNS])
def test_bad_run_field_names_field_value_and_allowed(changes, field, value, allowed):
    msg = spec_error(lambda: RunSpec(**changes))
    assert f"{field}={value!r}" in msg
    assert allowed in msg
    assert "\n" not in msg


def test_valid_runs_construct():
    assert RunSpec(mode="train", precision="bf16-mixed", checkpoint="every-3").training
    decode = RunSpec(phase="decode", kv_len=127, seq=1)
    assert (decode.phase, decode.kv_len, decode.training) == ("decode", 127, False)


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        model().hidden = 1024  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunSpec().batch = 2  # type: ignore[misc]


def test_kv_heads_default_to_heads_and_head_dim():
    m = model()
    assert m.kv_heads == 12  # 0 means "no grouped-query attention": one K/V head per query head
    assert m.head_dim == 64  # 768 / 12
    assert m.kv_hidden == 768


def test_grouped_query_attention_kv_hidden():
    # TinyLlama-1.1B: H=2048, 32 query heads of 64, 4 K/V heads -> K and V projections are 4·64 = 256 wide.
    m = ModelSpec(name="tinyllama", arch="decoder", layers=22, hidden=2048, heads=32, kv_heads=4, ffn=5632,
                  vocab=32000, gated_ffn=True, norm="rmsnorm", position="rotary", head="lm", activation="silu")
    assert (m.head_dim, m.kv_hidden) == (64, 256)


# --- checkpoint segments ----------------------------------------------------------------------------------

def test_segment_size_sqrt_on_bert_large():
    # 002 §4: BERT-Large (N=24) with activation checkpointing "checkpoints activations at four (√N) different
    # points and recomputes activations after backprop of every six Transformer layers": 24 / 4 = 6.
    assert RunSpec(mode="train", checkpoint="sqrt").segment_size(24) == 6


def test_segment_size_every_k_and_none():
    assert RunSpec(mode="train", checkpoint="every-4").segment_size(24) == 4
    assert RunSpec(mode="train", checkpoint="none").segment_size(24) == 0


@given(k=st.integers(1, 10_000), layers=st.integers(1, 10_000))
def test_segment_size_every_k_is_k(k, layers):
    assert RunSpec(checkpoint=f"every-{k}").segment_size(layers) == k


@given(layers=st.integers(1, 10_000))
def test_segment_size_sqrt_covers_the_stack_in_about_sqrt_n_segments(layers):
    seg = RunSpec(checkpoint="sqrt").segment_size(layers)
    assert seg == -(-layers // math.isqrt(layers))  # ceil(N / ⌊√N⌋) whole layers per segment
    segments = -(-layers // seg)  # ceil
    # √N segments (002 §4), allowing rounding of √N either way by one
    assert abs(segments - layers ** 0.5) <= 1.5


# --- replace ----------------------------------------------------------------------------------------------

def test_replace_kv_heads_follow_heads_without_gqa():
    m = model().replace(heads=8)
    assert (m.heads, m.kv_heads, m.head_dim) == (8, 8, 96)  # 768 / 8


def test_replace_keeps_explicit_gqa_kv_heads():
    m = ModelSpec(name="gqa", arch="decoder", layers=2, hidden=2048, heads=32, kv_heads=4, ffn=5632, vocab=32000,
                  head="lm")
    assert m.replace(heads=16).kv_heads == 4
    assert m.replace(heads=16, kv_heads=2).kv_heads == 2


def test_replace_validates_again():
    msg = spec_error(lambda: model().replace(hidden=2**30))
    assert "hidden=1073741824" in msg
    msg = spec_error(lambda: model().replace(heads=5))
    assert "heads=5" in msg


def test_replace_tgt_seq_follows_seq():
    r = RunSpec(seq=128)
    assert r.tgt_seq == 128
    r2 = r.replace(seq=512)
    assert (r2.seq, r2.tgt_seq) == (512, 512)


def test_replace_keeps_explicit_tgt_seq():
    r = RunSpec(seq=128, tgt_seq=64)
    r2 = r.replace(seq=256)
    assert (r2.seq, r2.tgt_seq) == (256, 64)
    assert r.replace(seq=256, tgt_seq=32).tgt_seq == 32


def test_replace_does_not_change_the_original():
    m = model()
    m.replace(layers=24)
    assert m.layers == 12


# --- properties -------------------------------------------------------------------------------------------

@st.composite
def valid_models(draw):
    head_dim = draw(st.integers(1, 256))
    heads = draw(st.integers(1, 128))
    divisors = [d for d in range(1, heads + 1) if heads % d == 0]
    kv_heads = draw(st.sampled_from(divisors))
    arch = draw(st.sampled_from(tstack.spec.ARCHS))
    return ModelSpec(
        name=draw(st.text(max_size=10)), arch=arch, layers=draw(st.integers(1, 10_000)), hidden=head_dim * heads,
        heads=heads, kv_heads=kv_heads, ffn=draw(st.integers(1, 1 << 22)), vocab=draw(st.integers(1, 1 << 24)),
        max_positions=draw(st.integers(1, 1 << 31)), activation=draw(st.sampled_from(tstack.spec.ACTIVATIONS)),
        gated_ffn=draw(st.booleans()), norm=draw(st.sampled_from(tstack.spec.NORMS)),
        position=draw(st.sampled_from(tstack.spec.POSITIONS)), head=draw(st.sampled_from(tstack.spec.HEADS)),
        decoder_layers=draw(st.integers(1, 100)) if arch == "enc-dec" else 0,
        hops=draw(st.integers(1, 10)) if arch == "memnet" else 0,
    )


@given(valid_models())
def test_valid_model_head_dim_times_heads_is_hidden(m):
    assert m.head_dim * m.heads == m.hidden
    assert m.kv_hidden * (m.heads // m.kv_heads) == m.hidden
    assert m.heads % m.kv_heads == 0


@given(hidden=st.integers(1, 8192), heads=st.integers(1, 256))
def test_heads_must_divide_hidden_exactly_when_construction_succeeds(hidden, heads):
    try:
        m = model(hidden=hidden, heads=heads, kv_heads=0)
    except tstack.SpecError as e:
        assert hidden % heads != 0
        assert f"heads={heads} must divide hidden={hidden}" in str(e)
    else:
        assert hidden % heads == 0 and m.head_dim * heads == hidden


@given(value=st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=5), st.none()))
def test_layers_accepts_exactly_integers_in_range(value):
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000
    try:
        m = model(layers=value)
    except tstack.SpecError as e:
        assert not ok
        assert f"layers={value!r}" in str(e)
    else:
        assert ok and m.layers == value


# --- strict types: booleans are not integers, a zero-like value never means "default" ----------------------

STRICT_MODELS = [
    ({"kv_heads": False}, "kv_heads=False"),  # False == 0 must not mean "same as heads"
    ({"kv_heads": 0.0}, "kv_heads=0.0"),
    ({"decoder_layers": False}, "decoder_layers=False"),
    ({"hops": "0"}, "hops='0'"),
    ({"name": 5}, "name=5 must be a string"),
    ({"description": ["x"]}, "description=['x'] must be a string"),
    ({"arch": ["encoder"]}, "arch=['encoder'] is not one of"),
    ({"hidden": 1 << 20_000}, "hidden=<20001-bit integer>"),  # repr would exceed Python's int-to-str limit
]


@pytest.mark.parametrize(("changes", "named"), STRICT_MODELS, ids=[n for _, n in STRICT_MODELS])
def test_model_fields_are_strictly_typed(changes, named):
    msg = spec_error(lambda: model(**changes))
    assert named in msg and "\n" not in msg and len(msg) < 500


STRICT_RUNS = [
    ({"tgt_seq": False}, "tgt_seq=False"),
    ({"tgt_seq": 0.0}, "tgt_seq=0.0"),
    ({"checkpoint": "every-3\n"}, "checkpoint='every-3\\n'"),
    ({"mode": ["train"]}, "mode=['train']"),
    ({"seq": "x" * 10_000}, "(10000 characters)"),
]


@pytest.mark.parametrize(("changes", "named"), STRICT_RUNS, ids=[n for _, n in STRICT_RUNS])
def test_run_fields_are_strictly_typed(changes, named):
    msg = spec_error(lambda: RunSpec(**changes))
    assert named in msg and "\n" not in msg and len(msg) < 500
