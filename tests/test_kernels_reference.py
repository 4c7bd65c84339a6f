"""Reference models: HF-compatible names and outputs, causal masking, encoder-decoder attention without K/V-Gen, memnet."""

import pytest
import torch
from torch.nn import functional as F

from tstack.errors import SpecError
from tstack.kernels.reference import (
    DecoderLayer,
    EncoderLayer,
    MemoryNetwork,
    SelfAttention,
    causal_mask,
    dot_attention,
    padding_mask,
)
from tstack.models import load_model

transformers = pytest.importorskip("transformers")


def _hf_layer(hidden=64, heads=4, ffn=96, act="gelu"):
    cfg = transformers.BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn, hidden_act=act,
                                  num_hidden_layers=1, attn_implementation="eager", hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.models.bert.modeling_bert.BertLayer(cfg).eval()


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_encoder_layer_loads_a_hf_bert_layer_and_matches_it(act):
    hf = _hf_layer(act=act)
    ref = EncoderLayer.from_hf(hf)
    assert set(ref.state_dict()) == set(hf.state_dict())  # same names: checkpoints load strictly
    x = torch.randn(2, 9, 64)
    keys = torch.ones(2, 9, dtype=torch.bool)
    keys[1, 6:] = False
    mask = padding_mask(keys)
    with torch.no_grad():
        expected = hf(x, mask.expand(2, 1, 9, 9))
        got = ref(x, mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sdpa_core_equals_the_explicit_one():
    attn = SelfAttention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        explicit, probs = attn(x)
        attn.sdpa = True
        fused, none = attn(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)
    assert probs.shape == (2, 4, 7, 7) and none is None
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7))


def test_decoder_is_causal_and_cross_attention_has_no_kv_gen():
    spec = load_model("nlpfast-transformer").replace(hidden=32, heads=4, ffn=48)
    dec = DecoderLayer.from_spec(spec)
    names = dict(dec.named_parameters())
    assert "crossattention.self.query.weight" in names
    assert not any(n.startswith("crossattention.self.key") or n.startswith("crossattention.self.value") for n in names)
    x, memory = torch.randn(1, 6, 32), torch.randn(1, 5, 32)
    with torch.no_grad():
        y = dec(x, memory)
        x2 = x.clone()
        x2[:, 4:] += 1.0  # change the future
        y2 = dec(x2, memory)
    torch.testing.assert_close(y2[:, :4], y[:, :4])
    assert not torch.allclose(y2[:, 4:], y[:, 4:])


def test_cross_attention_uses_the_memory_split_into_heads():
    attn = SelfAttention(8, 2, kv_gen=False).eval()
    x, memory = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    with torch.no_grad():
        got, _ = attn(x, encoder_hidden_states=memory)
        q = attn.query(x).view(1, 3, 2, 4).transpose(1, 2) / 2.0  # 1/sqrt(d), d = 4
        kv = memory.view(1, 4, 2, 4).transpose(1, 2)
        expected = (torch.softmax(q @ kv.transpose(-1, -2), -1) @ kv).transpose(1, 2).reshape(1, 3, 8)
    torch.testing.assert_close(got, expected)
    with pytest.raises(SpecError, match="encoder_hidden_states"):
        attn(x)


def test_memory_network_hops_follow_sukhbaatar():
    net = MemoryNetwork(16, 2, 10).eval()
    u, m_in, m_out = torch.randn(1, 3, 16), torch.randn(1, 20, 16), torch.randn(1, 20, 16)
    with torch.no_grad():
        expected = u
        for _ in range(2):
            expected = net.H(expected) + F.softmax(expected @ m_in.transpose(1, 2), -1) @ m_out
        torch.testing.assert_close(net(u, m_in, m_out), net.answer(expected))


def test_causal_mask_and_dot_attention_shapes():
    m = causal_mask(4)
    assert m.shape == (1, 1, 4, 4) and m[0, 0, 0, 1] < -1e30 and m[0, 0, 1, 0] == 0
    a, p = dot_attention(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8), m[0])
    assert a.shape == (2, 4, 8) and torch.all(p[:, 0, 1:] == 0)


def test_bad_shapes_name_the_field():
    with pytest.raises(SpecError, match="heads=5 must divide hidden=32"):
        SelfAttention(32, 5)
    with pytest.raises(SpecError, match="activation='tanh'"):
        EncoderLayer(32, 4, 64, activation="tanh")
    with pytest.raises(SpecError, match="arch='encoder'"):
        MemoryNetwork.from_spec("bert-base")
    assert MemoryNetwork.from_spec("memnet").hops == 3
