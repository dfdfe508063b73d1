"""A class-conditional GPT over raster VQ tokens, shaped like LlamaGen's c2i model.

Same blocks (pre-norm RMSNorm, SwiGLU, bias-free linears, 2D RoPE), same class-token
handling and the same state-dict names and shapes, so a LlamaGen checkpoint loads as is.
Two LlamaGen conventions are kept on purpose because checkpoints depend on them:
- the class token occupies sequence position 0 and its rotary factors are zero, which
  zeroes its query and key (it still contributes its value to every position);
- the class table has one extra row, the null class used for class dropout and CFG (a
  checkpoint trained without class dropout has none; `drop_null_class` loads it).
Foresight needs the residual stream after any block, so `forward` can return it and stop
early (a teacher that only needs block l_t never runs the blocks above it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTShape:
    vocab_size: int
    num_classes: int
    grid: tuple[int, int]
    n_layer: int
    dim: int
    n_head: int
    ffn_hidden: int
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    class_dropout: float = 0.1

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_2d(grid: tuple[int, int], head_dim: int, base: float = 10000.0, cls_tokens: int = 1) -> torch.Tensor:
    """(cls_tokens + H*W, head_dim/2, 2) cos/sin table: first half of the pairs encodes the
    row, second half the column; class positions get zeros (LlamaGen's convention)."""
    quarter = head_dim // 4
    freqs = 1.0 / (base ** (torch.arange(0, 2 * quarter, 2)[:quarter].float() / (head_dim // 2)))
    h, w = grid
    rows = torch.arange(h, dtype=torch.float32)[:, None, None] * freqs  # (H, 1, q)
    cols = torch.arange(w, dtype=torch.float32)[None, :, None] * freqs  # (1, W, q)
    angles = torch.cat([rows.expand(h, w, quarter), cols.expand(h, w, quarter)], dim=-1).reshape(h * w, -1)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([torch.zeros(cls_tokens, head_dim // 2, 2), table])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x: (B, T, ..., D); rope: (T, D/2) complex unit factors (`rope_2d` viewed as complex).

    Rotates adjacent channel pairs as one complex product in fp32: four times cheaper on
    CPU than splitting the pairs and stacking four real products, and bit-identical."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    factors = rope.view(rope.shape[0], *(1,) * (x.dim() - 3), -1)
    return torch.view_as_real(xc * factors).flatten(-2).type_as(x)


class Dropout(nn.Module):
    """Inverted dropout with a cheaper mask: each 64-bit word from the generator gives four
    16-bit draws. On CPU, `bernoulli_` masks cost a sixth of the training step; this is
    about 4x cheaper (benchmarks/ops). The rate is quantised to 1/65536 (0.1 -> 0.100006)
    and the scale uses the quantised rate, so the output stays unbiased. Draws come from
    `generator` when the trainer set one (its keyed dropout stream, rng.py), else
    from torch's default generator."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop_count = round(p * 65536)
        self.p = self.drop_count / 65536  # the rate actually applied
        self.threshold = self.drop_count - 32768
        self.scale = 65536 / (65536 - self.drop_count) if self.drop_count < 65536 else 0.0
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_count == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None,
                                                                                     generator=self.generator)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * (keep * self.scale).to(x.dtype)


class KVCache:
    """Keys and values of every layer for incremental decoding."""

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0


class Attention(nn.Module):
    def __init__(self, s: GPTShape) -> None:
        super().__init__()
        self.n_head = s.n_head
        self.head_dim = s.dim // s.n_head
        self.wqkv = nn.Linear(s.dim, 3 * s.dim, bias=False)
        self.wo = nn.Linear(s.dim, s.dim, bias=False)
        self.resid_dropout = Dropout(s.resid_dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal unless `mask` (bool, True = may attend) is given, as bidirectional encoders do."""
        b, t, d = x.shape
        qkv = self.wqkv(x).view(b, t, 3, self.n_head, self.head_dim)
        qk = apply_rope(qkv[:, :, :2], rope)  # queries and keys rotated together
        q, k = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            cache.k[layer][:, :, start : start + t] = k
            cache.v[layer][:, :, start : start + t] = v
            keys, values = cache.k[layer][:, :, : start + t], cache.v[layer][:, :, : start + t]
            mask = None
            if t > 1:  # a multi-token chunk is causal within itself and sees the whole prefix
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(b, t, d)))


class FeedForward(nn.Module):
    def __init__(self, s: GPTShape) -> None:
        super().__init__()
        self.w1 = nn.Linear(s.dim, s.ffn_hidden, bias=False)
        self.w3 = nn.Linear(s.dim, s.ffn_hidden, bias=False)
        self.w2 = nn.Linear(s.ffn_hidden, s.dim, bias=False)
        self.ffn_dropout = Dropout(s.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, s: GPTShape) -> None:
        super().__init__()
        self.attention = Attention(s)
        self.feed_forward = FeedForward(s)
        self.attention_norm = RMSNorm(s.dim)
        self.ffn_norm = RMSNorm(s.dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, layer, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class table with a trailing null row; class dropout replaces labels by the null row,
    drawn from `generator` when the trainer set one (else torch's default generator).

    A LlamaGen model trained with class_dropout_prob=0 has no null row (`null_row=False`):
    it never drops a class and cannot be guided (sampling refuses CFG for it)."""

    def __init__(self, num_classes: int, dim: int, dropout: float, null_row: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.null_row = null_row
        self.embedding_table = nn.Embedding(num_classes + int(null_row), dim)
        self.generator: torch.Generator | None = None

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout > 0 and self.null_row:
            drop = torch.rand(labels.shape[0], device=labels.device, generator=self.generator) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class GPT(nn.Module):
    def __init__(self, s: GPTShape) -> None:
        super().__init__()
        self.shape = s
        self.tok_embeddings = nn.Embedding(s.vocab_size, s.dim)
        self.cls_embedding = LabelEmbedder(s.num_classes, s.dim, s.class_dropout)
        self.tok_dropout = Dropout(s.token_dropout)
        self.layers = nn.ModuleList(TransformerBlock(s) for _ in range(s.n_layer))
        self.norm = RMSNorm(s.dim)
        self.output = nn.Linear(s.dim, s.vocab_size, bias=False)
        self.register_buffer("rope", torch.view_as_complex(rope_2d(s.grid, s.dim // s.n_head)), persistent=False)
        self.apply(self._init)
        nn.init.zeros_(self.output.weight)  # LlamaGen starts from uniform logits

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        hidden_blocks: Sequence[int] = (),
        stop_after: int | None = None,
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """Sequence = [class, tokens...]; position i predicts token i.

        tokens: (B, T) with T <= N (training passes x[:, :-1], a teacher passes all N).
        Returns logits (B, 1+T, V) unless `stop_after` cuts the stack, and the residual
        stream after each requested 1-based block (before the final norm).
        """
        x = torch.cat([self.cls_embedding(labels, self.training)[:, None], self.tok_embeddings(tokens)], dim=1)
        x = self.tok_dropout(x)
        rope = self.rope[: x.shape[1]]
        hidden: dict[int, torch.Tensor] = {}
        last = stop_after if stop_after is not None else len(self.layers)
        for i, layer in enumerate(self.layers[:last], start=1):
            x = layer(x, rope)
            if i in hidden_blocks:
                hidden[i] = x
        if stop_after is not None:
            return None, hidden
        return self.output(self.norm(x)).float(), hidden

    def step_logits(self, x_new: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run new embeddings through the stack with the cache; logits of the last position."""
        start = cache.length
        end = start + x_new.shape[1]
        rope = self.rope[start:end]
        x = x_new
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i)
        cache.length += x_new.shape[1]
        return self.output(self.norm(x[:, -1])).float()

    def new_cache(self, batch: int) -> KVCache:
        s = self.shape
        p = self.tok_embeddings.weight
        return KVCache(s.n_layer, batch, s.n_head, s.dim // s.n_head, 1 + s.n_tokens, p.dtype, p.device)

    def use_generators(self, dropout: torch.Generator, class_dropout: torch.Generator) -> None:
        """Draw every dropout mask and the class dropout from these generators (the trainer's keyed
        streams), so that no other user of torch's default generator can shift them."""
        for module in self.modules():
            if isinstance(module, Dropout):
                module.generator = dropout
        self.cls_embedding.generator = class_dropout

    def drop_null_class(self) -> None:
        """Rebuild the class table without the null row, to load a checkpoint trained without one."""
        old = self.cls_embedding
        table = old.embedding_table.weight
        self.cls_embedding = LabelEmbedder(old.num_classes, table.shape[1], old.dropout, null_row=False).to(
            device=table.device, dtype=table.dtype)
        self.cls_embedding.generator = old.generator

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
