"""Holistic partitioning: every plan equals the reference (fp32, tight tolerance) over random shapes; working set."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tstack.errors import SpecError
from tstack.kernels import partition as part
from tstack.kernels.api import partition
from tstack.kernels.partition import (
    VARIANTS,
    AttentionWeights,
    Plan,
    blocks,
    ffn_block,
    in_place,
    l2_bytes,
    lazy_softmax_attention,
    mha,
    split_ffn,
)
from tstack.kernels.reference import DecoderLayer, EncoderLayer, SelfAttention, padding_mask
from tstack.studies.workingset import peak_intermediate_bytes

TOL = {"rtol": 1e-5, "atol": 2e-5}
MIB = 1 << 20
SIZE = st.none() | st.integers(1, 9)  # a block size, or None: sized from the L2


@st.composite
def layer_shapes(draw):
    heads = draw(st.integers(1, 4))
    return dict(heads=heads, d=draw(st.integers(1, 8)), ffn=draw(st.integers(1, 40)), batch=draw(st.integers(1, 2)),
                seq=draw(st.integers(1, 19)), plan=Plan.of(draw(st.sampled_from(VARIANTS)), draw(SIZE), draw(SIZE),
                                                           draw(SIZE)),
                pad=draw(st.integers(0, 3)), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(layer_shapes())
def test_every_plan_equals_the_reference_encoder_layer(s):
    torch.manual_seed(s["seed"])
    hidden = s["heads"] * s["d"]
    ref = EncoderLayer(hidden, s["heads"], s["ffn"], "gelu").eval()
    x = torch.randn(s["batch"], s["seq"], hidden)
    keys = torch.ones(s["batch"], s["seq"], dtype=torch.bool)
    keys[-1, max(1, s["seq"] - s["pad"]):] = False  # padding in the last sequence, one real key kept
    mask = padding_mask(keys)
    fast = partition(copy.deepcopy(ref), s["plan"])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, mask), ref(x, mask), **TOL)


@settings(max_examples=20, deadline=None)
@given(layer_shapes())
def test_every_plan_equals_the_reference_decoder_layer(s):
    torch.manual_seed(s["seed"])
    hidden = s["heads"] * s["d"]
    ref = DecoderLayer(hidden, s["heads"], s["ffn"], "relu").eval()
    x, memory = torch.randn(s["batch"], s["seq"], hidden), torch.randn(s["batch"], s["seq"] + s["pad"], hidden)
    fast = partition(copy.deepcopy(ref), s["plan"])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, memory), ref(x, memory), **TOL)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 30), st.integers(1, 40), st.integers(1, 50), st.floats(0.1, 1e4))
def test_lazy_softmax_is_stable_for_any_scale(s_q, s_k, chunk, scale):
    torch.manual_seed(s_q * 100 + s_k)
    q, k, v = torch.randn(2, 1, s_q, 4) * scale, torch.randn(2, 1, s_k, 4), torch.randn(2, 1, s_k, 4)
    got = lazy_softmax_attention(q, lambda a, b: (k[:, :, a:b], v[:, :, a:b]), s_k, chunk)
    expected = torch.softmax(q @ k.transpose(-1, -2), -1) @ v  # torch.softmax subtracts the max: the exact reference
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_without_a_running_max_the_paper_lazy_softmax_overflows():
    """What the running maximum fixes: exp of scores above ~88 is inf in fp32, so e^s·v / Σe^s is nan."""
    s = torch.tensor([[100.0, 90.0]])
    naive = (torch.exp(s) @ torch.ones(2, 1)) / torch.exp(s).sum(-1, keepdim=True)
    assert torch.isnan(naive).all()
    stable = lazy_softmax_attention(s.view(1, 1, 1, 2)[..., :1] * 0 + 1, lambda a, b: (s.view(1, 1, 2, 1)[:, :, a:b],
                                    torch.ones(1, 1, b - a, 1)), 2, 1)
    torch.testing.assert_close(stable, torch.ones(1, 1, 1, 1))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 33), st.integers(1, 9), st.integers(1, 12))
def test_split_ffn_equals_the_ffn_for_any_block_count(ffn, blocks_, rows):
    torch.manual_seed(ffn)
    d1, d2 = torch.nn.Linear(6, ffn), torch.nn.Linear(ffn, 6)
    x = torch.randn(2, rows, 6)
    with torch.no_grad():
        torch.testing.assert_close(split_ffn(x, d1, torch.relu, d2, blocks_), d2(torch.relu(d1(x))), **TOL)


def test_partial_head_attention_fc_reduce_sums_per_group():
    torch.manual_seed(0)
    sa, out = SelfAttention(16, 4).eval(), torch.nn.Linear(16, 16)
    x = torch.randn(1, 5, 16)
    w = AttentionWeights.of(sa, out)
    with torch.no_grad():
        expected = out(sa(x)[0])
        for block in (1, 2, 3, 4):
            torch.testing.assert_close(mha(x, w, None, Plan(partial_head=True, head_block=block)), expected, **TOL)


def test_blocks_cover_the_range():
    assert list(blocks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(blocks(3, 5)) == [(0, 3)]


def test_plan_validation_names_field_and_value():
    with pytest.raises(SpecError, match="variant='PX'"):
        Plan.of("PX")
    with pytest.raises(SpecError, match="chunk=0 must be an integer ≥ 1, or None to size it from the L2 cache"):
        Plan(chunk=0)
    with pytest.raises(SpecError, match="head_block=True must be an integer"):
        Plan(head_block=True)
    with pytest.raises(SpecError, match="partial_head=1 must be true or false"):
        Plan(partial_head=1)
    assert Plan.of("PCF").name == "PCF" and Plan().name == "base"


def test_peak_tracker_counts_live_intermediates_only():
    x = torch.randn(256, 256)  # 256 KiB, allocated before: not counted

    def two_at_once():
        a = x * 2  # +256 KiB
        b = a + 1  # +256 KiB: both alive
        return (b.t() @ a).sum()  # views of tracked storages are no new memory; matmul +256 KiB

    ws = peak_intermediate_bytes(two_at_once)
    assert ws.peak == 3 * 256 * 256 * 4 + 4  # a, b and the product alive at once, then the 4-byte sum
    assert peak_intermediate_bytes(lambda: x.t().contiguous().view(-1)[:10]).peak == 256 * 256 * 4


def test_partitioning_shrinks_the_attention_working_set():
    """003 Table III: S (h·s·s) and P vanish under P (one head's s·s) and C (s·chunk)."""
    torch.manual_seed(0)
    h, d, s = 8, 8, 256
    ref = EncoderLayer(h * d, h, 4 * h * d).eval()
    x = torch.randn(1, s, h * d)
    peaks = {}
    for v in ("base", "P", "PC", "PCF"):
        m = partition(copy.deepcopy(ref), Plan.of(v, head_block=2, chunk=32, ffn_blocks=4)) if v != "base" else ref
        with torch.no_grad():
            m(x)  # packs the head groups' weights (kept, as weights are): the steady state is measured
        peaks[v] = (peak_intermediate_bytes(lambda m=m: m.attention(x)).peak, peak_intermediate_bytes(lambda m=m: m(x)).peak)
    scores = h * s * s * 4
    assert peaks["base"][0] >= 2 * scores  # scores and probabilities of every head at once
    assert peaks["P"][0] < peaks["base"][0] / 2
    assert peaks["PC"][0] < peaks["P"][0]
    assert peaks["PCF"][1] < peaks["PC"][1]  # T1 of one d_FF block instead of s·d_FF


def test_default_blocks_follow_the_l2_rule():
    """A step's score block g·S_q·c fp32 fits the L2: every key while it fits, then 4-head groups (a 768-wide
    Q/K/V-Gen GEMM for d=64) over chunks; explicit sizes win; P never takes all heads in one group."""
    bert = (16, 64)
    assert Plan.of("P").attention_blocks(*bert, 256, 256, 2 * MIB) == (8, 256)  # 8·256·256·4 B = 2 MiB
    assert Plan.of("PC").attention_blocks(*bert, 256, 256, 2 * MIB) == (8, 256)  # one chunk: every key fits
    assert Plan.of("P").attention_blocks(*bert, 1024, 1024, 2 * MIB) == (4, 1024)  # no group fits: the GEMM floor
    assert Plan.of("PC").attention_blocks(*bert, 1024, 1024, 2 * MIB) == (4, 128)  # 4·1024·128·4 B = 2 MiB
    assert Plan.of("PC").attention_blocks(*bert, 4096, 4096, 2 * MIB) == (4, 128)  # at least MIN_CHUNK keys
    assert Plan.of("C").attention_blocks(*bert, 1024, 1024, 2 * MIB) == (16, 128)
    assert Plan.of("PC", head_block=2, chunk=64).attention_blocks(*bert, 1024, 1024) == (2, 64)
    assert Plan.of("PC", head_block=99, chunk=5000).attention_blocks(*bert, 300, 1000) == (16, 1000)
    assert Plan.of("PC").attention_blocks(1, 64, 32, 1 << 18, 2 * MIB) == (1, 16384)  # the memory network
    assert Plan.of("P").attention_blocks(4, 8, 5, 5, 2 * MIB) == (2, 5)  # tiny: at most h/2 heads
    assert Plan.of("base").attention_blocks(*bert, 256, 256) == (16, 256)
    assert ffn_block(None, 256, 4096, 2 * MIB) == 2048 and ffn_block(None, 1024, 4096, 2 * MIB) == 512
    assert ffn_block(None, 8192, 4096, 2 * MIB) == 512 and ffn_block(None, 4, 40, 2 * MIB) == 40
    assert ffn_block(3, 256, 10) == 4
    assert l2_bytes() >= 64 << 10


def test_column_based_walks_every_chunk(monkeypatch):
    """PC consumes K/V a chunk at a time whenever the keys outnumber the chunk, explicit or sized."""
    walked = []

    def spy(q, kv, n_keys, chunk, mask=None, out=None):
        def recorded(start, end):
            walked.append((start, end))
            return kv(start, end)
        return lazy_softmax_attention(q, recorded, n_keys, chunk, mask, out)

    monkeypatch.setattr(part, "lazy_softmax_attention", spy)
    torch.manual_seed(0)
    sa, out = SelfAttention(16, 4).eval(), torch.nn.Linear(16, 16)
    x = torch.randn(1, 19, 16)
    with torch.no_grad():
        got = mha(x, AttentionWeights.of(sa, out), None, Plan.of("PC", head_block=2, chunk=4))
        torch.testing.assert_close(got, out(sa(x)[0]), **TOL)
    assert walked == 2 * [(0, 4), (4, 8), (8, 12), (12, 16), (16, 19)]  # two head groups, five chunks each
    walked.clear()
    long = EncoderLayer(16, 2, 32).eval()
    x = torch.randn(1, 1100, 16)
    (_, chunk) = Plan.of("PC").attention_blocks(2, 8, 1100, 1100)
    with torch.no_grad():
        torch.testing.assert_close(partition(copy.deepcopy(long), Plan.of("PCF"))(x), long(x), **TOL)
    assert chunk < 1100 and walked[:2] == [(0, chunk), (chunk, 2 * chunk)] and walked[-1][1] == 1100


def test_packed_weights_follow_weight_updates():
    """The packed Q/K/V-Gen copy is rebuilt when a weight changes in place or is replaced (load_state_dict)."""
    torch.manual_seed(3)
    ref = EncoderLayer(16, 4, 24).eval()
    fast = partition(copy.deepcopy(ref), Plan.of("PC", chunk=3))
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), **TOL)
        for m in (ref, fast):
            m.attention.self.value.weight.mul_(-2.0)
            m.attention.self.query.bias.add_(0.5)
        torch.testing.assert_close(fast(x), ref(x), **TOL)
        other = EncoderLayer(16, 4, 24).eval()
        ref.load_state_dict(other.state_dict())
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x), other(x), **TOL)


def test_in_place_activations_equal_the_modules():
    t = torch.randn(5, 7)
    acts = [torch.nn.ReLU(), torch.nn.GELU(), torch.nn.GELU("tanh"), torch.nn.SiLU()]
    transformers = pytest.importorskip("transformers")
    acts.append(transformers.activations.GELUActivation())
    for act in acts:
        buf = t.clone()
        got = in_place(act)(buf)
        assert got.data_ptr() == buf.data_ptr(), type(act).__name__
        torch.testing.assert_close(got, act(t), rtol=0, atol=0)
    unknown = torch.nn.Tanh()
    assert in_place(unknown) is unknown


def test_residual_starts_the_reduce_sums():
    """mha/split_ffn add the residual as the reduce-sum's start, with and without biases."""
    torch.manual_seed(4)
    x = torch.randn(2, 6, 16)
    for bias in (True, False):
        sa, out = SelfAttention(16, 4).eval(), torch.nn.Linear(16, 16, bias=bias)
        d1, d2 = torch.nn.Linear(16, 24, bias=bias), torch.nn.Linear(24, 16, bias=bias)
        w, plan = AttentionWeights.of(sa, out), Plan.of("PC", head_block=3, chunk=4)
        with torch.no_grad():
            torch.testing.assert_close(mha(x, w, None, plan, residual=x), out(sa(x)[0]) + x, **TOL)
            torch.testing.assert_close(mha(x, w, None, plan), out(sa(x)[0]), **TOL)
            torch.testing.assert_close(split_ffn(x, d1, torch.relu, d2, 3, residual=x), d2(torch.relu(d1(x))) + x, **TOL)


def test_llc_geometry_and_callgrind_dump_parsing(tmp_path):
    from tstack.studies.llc import LLC, LLCStat, _read_dump

    assert LLC().size == 32768 * 12 * 64  # 24 MiB: 2^15 sets × 12 ways × 64 B
    with pytest.raises(SpecError, match="power-of-two set count"):
        LLC(24_750_000, 11, 64)
    dump = tmp_path / "callgrind.out.3"
    dump.write_text("version: 1\ndesc: Trigger: Client Request: tstack-variant-PC\nevents: Ir Dr Dw DLmr DLmw\n"
                    "fn=(1) x\n1 5 2 1\ntotals: 1000 400 100 30 12\n")
    name, counts = _read_dump(str(dump))
    assert name == "tstack-variant-PC" and counts == {"Ir": 1000, "Dr": 400, "Dw": 100, "DLmr": 30, "DLmw": 12}
    assert LLCStat("PC", 42, 1000, True).mpki == 42.0
