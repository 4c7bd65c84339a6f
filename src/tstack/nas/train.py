"""Training the supernet (BigNAS: sandwich rule, in-place distillation), checkpoints, resume, perplexity.

Each step draws one batch of ``space.seq``-token windows from the training text and trains, on it, the largest
subnet (cross-entropy on the next byte), the smallest and ``random_subnets`` uniformly drawn subnets (KL
divergence to the largest subnet's detached predictions: in-place distillation); their gradients add up and one
AdamW step follows. The learning rate rises linearly over the first ``warmup`` steps and falls linearly to zero
at the last (the paper's linear schedule). A checkpoint (supernet, optimizer, schedule, step, random states,
space) is written every ``checkpoint_every`` steps and at the end, atomically; ``resume`` continues from one.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tstack.errors import TstackError
from tstack.nas.corpus import Corpus
from tstack.nas.corpus import load as load_corpus
from tstack.nas.supernet import Supernet
from tstack.search.nas import Arch, Space, space_from_dict

CHECKPOINT_FORMAT = "tstack.nas.supernet/1"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    random_subnets: int = 0
    checkpoint_every: int = 500
    seed: int = 0
    corpus: str = "web"
    max_bytes: int | None = None


@dataclass
class TrainLog:
    """What a run did: per step the subnets trained and their losses; wall seconds of this process; the step and
    the total training seconds (all runs) its last checkpoint holds."""

    trained: list[list[Arch]] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    step: int = 0
    train_seconds: float = 0.0


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then linear decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def batch_at(tokens: np.ndarray, seq: int, batch: int, rng: np.random.Generator, dev: torch.device) -> torch.Tensor:
    """``batch`` windows of ``seq + 1`` tokens at random offsets (inputs are [:, :-1], targets [:, 1:])."""
    if len(tokens) <= seq + 1:
        raise TstackError(f"the training text has {len(tokens)} tokens; it needs more than seq+1 = {seq + 1}")
    starts = rng.integers(0, len(tokens) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([tokens[s:s + seq + 1] for s in starts]).astype(np.int64)).to(dev)


def sandwich_step(net: Supernet, ids: torch.Tensor, rng: random.Random, random_subnets: int) -> list[tuple[Arch, float]]:
    """One sandwich-rule pass (gradients accumulated, no optimizer step): the largest subnet on the labels, then
    the smallest and ``random_subnets`` random ones distilled from the largest. Returns (subnet, loss) in order."""
    space = net.space
    x, y = ids[:, :-1], ids[:, 1:]
    logits = net(x, space.largest)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss.backward()
    teacher = F.softmax(logits.detach(), dim=-1).flatten(0, 1)
    done = [(space.largest, loss.item())]
    for arch in [space.smallest] + [space.sample(rng) for _ in range(random_subnets)]:
        student = F.log_softmax(net(x, arch), dim=-1).flatten(0, 1)
        kd = F.kl_div(student, teacher, reduction="batchmean")
        kd.backward()
        done.append((arch, kd.item()))
    return done


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TstackError(f"supernet checkpoint {str(path)[:200]!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a file that is not a torch checkpoint: one line, not the unpickler's traceback
        raise TstackError(f"{str(path)[:200]!r} is not a tstack supernet checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TstackError(f"{str(path)[:200]!r} is not a tstack supernet checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def load_supernet(path: str | Path, dev: torch.device | None = None) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet of a checkpoint (in eval mode) and the checkpoint's metadata."""
    dev = dev or device()
    state = load_checkpoint(path, dev)
    net = Supernet(space_from_dict(state["space"])).to(dev)
    net.load_state_dict(state["model"])
    net.eval()
    return net, state


def train(space: Space, corpus: Corpus, config: TrainConfig, out: Path, resume: dict[str, Any] | None = None,
          stop_after: int | None = None,
          progress: Callable[[int, float], None] | None = None) -> tuple[Supernet, TrainLog]:
    """Train (or continue training from ``resume``, the checkpoint ``load_checkpoint(out)`` read) the supernet;
    checkpoints go to ``out``.

    ``stop_after`` ends this run after that many steps, with a checkpoint (to resume later; the schedule still
    spans ``config.steps``).
    ``progress(steps_done, last_largest_loss)`` is called after every step.
    """
    dev = device()
    torch.manual_seed(config.seed)
    net = Supernet(space).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config.warmup, config.steps))
    np_rng, py_rng = np.random.default_rng(config.seed), random.Random(config.seed)
    start = 0
    if resume is not None:
        if resume["space"] != space.to_dict() or resume["config"] != asdict(config):
            raise TstackError(f"{str(out)[:200]!r} was trained with another space or configuration; resume needs the "
                              "same --space, --corpus, --steps and options")
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        np_rng.bit_generator.state = resume["numpy_rng"]
        py_rng.setstate(_py_state(resume["python_rng"]))
        start = resume["step"]
    begin = time.perf_counter()
    seconds_before = resume.get("train_seconds", 0.0) if resume is not None else 0.0
    log = TrainLog(step=start, train_seconds=seconds_before)

    def checkpoint(step: int) -> None:
        log.step, log.train_seconds = step, seconds_before + time.perf_counter() - begin
        _save(out, {"format": CHECKPOINT_FORMAT, "space": space.to_dict(), "config": asdict(config), "step": step,
                    "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "numpy_rng": np_rng.bit_generator.state, "python_rng": _plain_state(py_rng.getstate()),
                    "train_seconds": log.train_seconds})

    net.train()
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    for step in range(start, end):
        ids = batch_at(corpus.train, space.seq, config.batch, np_rng, dev)
        opt.zero_grad(set_to_none=True)
        done = sandwich_step(net, ids, py_rng, config.random_subnets)
        if not all(math.isfinite(loss) for _, loss in done):
            raise TstackError(f"training diverged at step {step} (a loss is not finite); lower --lr")
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        log.trained.append([a for a, _ in done])
        log.losses.append([loss for _, loss in done])
        if progress:
            progress(1, done[0][1])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
            checkpoint(step + 1)
    log.seconds = time.perf_counter() - begin
    net.eval()
    return net, log


def _plain_state(state: tuple) -> list:
    """random.Random's state as lists (torch.load's weights_only reader takes no tuples of tuples)."""
    return [state[0], list(state[1]), state[2]]


def _py_state(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


@torch.no_grad()
def perplexity(net: Supernet, arch: Arch, tokens: np.ndarray, max_windows: int | None = None, batch: int = 16) -> float:
    """exp(mean next-byte cross-entropy) of subnet ``arch`` over non-overlapping ``seq``-token windows of
    ``tokens`` (at most ``max_windows`` of them, from the start)."""
    seq = net.space.seq
    windows = (len(tokens) - 1) // seq
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise TstackError(f"the validation text has {len(tokens)} tokens; perplexity needs more than seq = {seq}")
    dev = net.embed.weight.device
    data = torch.from_numpy(tokens[:windows * seq + 1].astype(np.int64))
    total, count = 0.0, 0
    for i in range(0, windows, batch):
        n = min(batch, windows - i)
        idx = torch.arange(i * seq, (i + n) * seq).view(n, seq)
        x, y = data[idx].to(dev), data[idx + 1].to(dev)
        total += F.cross_entropy(net(x, arch).flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return math.exp(total / count)


_LOADED: dict[str, tuple[Supernet, np.ndarray]] = {}  # checkpoint -> (supernet, validation tokens), per process


@dataclass(frozen=True)
class PerplexityEvaluator:
    """A picklable ``arch -> perplexity`` over a checkpoint's supernet and the first ``windows`` validation windows
    of its corpus (``search.nas.Evaluator`` maps it over worker processes; each loads the supernet once, on the
    CPU with ``threads`` threads)."""

    checkpoint: str
    windows: int = 16
    threads: int = 1

    def __call__(self, arch: Arch) -> float:
        if self.checkpoint not in _LOADED:
            torch.set_num_threads(self.threads)
            net, state = load_supernet(self.checkpoint, torch.device("cpu"))
            config = state["config"]
            _LOADED[self.checkpoint] = (net, load_corpus(config["corpus"], config["max_bytes"]).validation)
        net, tokens = _LOADED[self.checkpoint]
        return perplexity(net, arch, tokens, self.windows)
