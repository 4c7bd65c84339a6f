"""A weight-sharing Transformer language model whose layers, heads, hidden and FFN sizes are elastic (BigNAS).

The supernet holds the largest subnet's weights. A subnet (``search.nas.Arch``) runs the first ``layers`` blocks
and, in every weight, the leading ``hidden`` (and ``ffn``) rows and columns: its weights are slices (views) of
the supernet's, so every subnet trains the same tensors. Heads split the subnet's hidden width (head size
hidden / heads), as in the ModelSpec the cost models price (``Space.model_spec``).

The model is a pre-norm decoder (GPT-style): learned positions, GELU FFN, causal attention, tied byte
embeddings. ``extract`` gives a subnet as a plain ``TransformerLM`` (ordinary nn.Linear/LayerNorm/Embedding),
sharing the supernet's storage or holding a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tstack.search.nas import Arch, Space


def _attention(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, h = x.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, s, heads, h // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
    return out.transpose(1, 2).reshape(b, s, h)


class Supernet(nn.Module):
    """The largest subnet's weights; ``forward(ids, arch)`` runs any subnet of the space."""

    def __init__(self, space: Space) -> None:
        super().__init__()
        self.space = space
        big = space.largest
        self.embed = nn.Embedding(space.vocab, big.hidden)
        self.pos = nn.Embedding(space.seq, big.hidden)
        self.blocks = nn.ModuleList(_Block(big.hidden, big.ffn) for _ in range(big.layers))
        self.norm = nn.LayerNorm(big.hidden)
        self.apply(_init)

    def forward(self, ids: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Logits (batch, seq, vocab) of subnet ``arch`` on token ids (batch, seq)."""
        h = arch.hidden
        x = self.embed.weight[:, :h][ids] + self.pos.weight[:ids.shape[1], :h]
        for block in self.blocks[:arch.layers]:
            x = block(x, arch)
        x = F.layer_norm(x, (h,), self.norm.weight[:h], self.norm.bias[:h])
        return F.linear(x, self.embed.weight[:, :h])


class _Block(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, a: Arch) -> torch.Tensor:
        h, f = a.hidden, a.ffn
        y = F.layer_norm(x, (h,), self.ln1.weight[:h], self.ln1.bias[:h])
        q, k, v = (F.linear(y, m.weight[:h, :h], m.bias[:h]) for m in (self.q, self.k, self.v))
        x = x + F.linear(_attention(y, q, k, v, a.heads), self.o.weight[:h, :h], self.o.bias[:h])
        y = F.layer_norm(x, (h,), self.ln2.weight[:h], self.ln2.bias[:h])
        y = F.gelu(F.linear(y, self.fc1.weight[:f, :h], self.fc1.bias[:f]))
        return x + F.linear(y, self.fc2.weight[:h, :f], self.fc2.bias[:h])


def _init(m: nn.Module) -> None:
    """GPT-2's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


class TransformerLM(nn.Module):
    """A plain (non-elastic) model of one subnet's shape, written with ordinary layers."""

    def __init__(self, arch: Arch, vocab: int, seq: int) -> None:
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(vocab, arch.hidden)
        self.pos = nn.Embedding(seq, arch.hidden)
        self.blocks = nn.ModuleList(_PlainBlock(arch) for _ in range(arch.layers))
        self.norm = nn.LayerNorm(arch.hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.embed.weight)


class _PlainBlock(nn.Module):
    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.heads = a.heads
        self.ln1, self.ln2 = nn.LayerNorm(a.hidden), nn.LayerNorm(a.hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(a.hidden, a.hidden) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(a.hidden, a.ffn), nn.Linear(a.ffn, a.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.o(_attention(y, self.q(y), self.k(y), self.v(y), self.heads))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def _slice(name: str, t: torch.Tensor, a: Arch) -> torch.Tensor:
    """The part of supernet tensor ``name`` that subnet ``a`` uses."""
    h, f = a.hidden, a.ffn
    if name.startswith(("embed.", "pos.")):
        return t[:, :h]
    if ".fc1." in name:
        return t[:f, :h] if t.dim() == 2 else t[:f]
    if ".fc2." in name:
        return t[:h, :f] if t.dim() == 2 else t[:h]
    return t[:h, :h] if t.dim() == 2 else t[:h]


def extract(net: Supernet, arch: Arch, share: bool = True) -> TransformerLM:
    """Subnet ``arch`` as a plain model: its parameters are views of the supernet's (``share``) or copies."""
    net.space.check(arch)
    model = TransformerLM(arch, net.space.vocab, net.space.seq).to(net.embed.weight.device)
    sources = dict(net.named_parameters())
    for name, _ in list(model.named_parameters()):
        part = _slice(name, sources[name], arch).detach()
        module = model.get_submodule(name.rpartition(".")[0])
        setattr(module, name.rpartition(".")[2], nn.Parameter(part if share else part.clone()))
    return model
