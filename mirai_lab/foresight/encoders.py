"""Bidirectional foresight encoders for Mirai-I, trained once in-project and cached.

- `mtm`: masked-token modelling on the same token grid the AR model sees (a BERT/MaskGIT
  style encoder: the in-project analogue of a semantic encoder such as DINOv2);
- `pixel-ae`: a masked autoencoder over the same pixel patches, reconstructing pixels (the
  MAE analogue; the paper finds pixel reconstruction a poor foresight source).
Either may be trained with a block-causal visibility mask: a cell in row r sees rows
<= r + b. Features are the final normed states of every cell, extracted once for every
image and stored in fp16, so Mirai-I reads a table during AR training instead of running
an encoder. The trained weights are cached too (`encoder-<kind>-<key>.pt`), so that the
features and the encoder's own quality (foresight/encoder_quality.py) read one training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mirai_lab.data.tokenizer import to_patches
from mirai_lab.data.types import TokenData
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash
from mirai_lab.files.tensors import load_tensors, save_tensors
from mirai_lab.foresight.dinov2 import FeatureShards, load_dinov2_features
from mirai_lab.model.gpt import GPTShape, RMSNorm, TransformerBlock, rope_2d

IN_PROJECT = ("mtm", "pixel-ae")  # the encoders trained here; dinov2 is read from pre-extracted shards
ENCODER_SETTINGS = {"n_layer": 4, "dim": 128, "n_head": 4, "batch_size": 64, "lr": 1e-3,
                    "mask_min": 0.15, "mask_max": 0.75, "seed": 0, "version": 2}


def visibility_mask(grid: tuple[int, int], visibility: str) -> torch.Tensor:
    """(N, N) bool, True where cell i may attend to cell j: cells up to `visibility` rows below
    its own, or every cell for `full`. Always an explicit mask: the GPT's attention treats a
    missing mask as causal, which would silently make a "bidirectional" encoder causal."""
    h, w = grid
    if visibility == "full":
        return torch.ones(h * w, h * w, dtype=torch.bool)
    rows = torch.arange(h * w) // w
    return rows[None, :] <= rows[:, None] + int(visibility)


class BidirectionalEncoder(nn.Module):
    """Pre-norm transformer over the grid (2D RoPE, no class token), masked-input trained."""

    def __init__(self, kind: str, grid: tuple[int, int], in_dim: int, out_dim: int, mask: torch.Tensor,
                 n_layer: int, dim: int, n_head: int) -> None:
        super().__init__()
        self.kind = kind
        shape = GPTShape(vocab_size=1, num_classes=1, grid=grid, n_layer=n_layer, dim=dim, n_head=n_head,
                         ffn_hidden=4 * dim, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
        # tokens: an embedding table with one extra [MASK] row; pixels: a linear patch embedding
        self.embed = nn.Embedding(in_dim + 1, dim) if kind == "mtm" else nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(TransformerBlock(shape) for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        rope = torch.view_as_complex(rope_2d(grid, dim // n_head, cls_tokens=0))
        self.register_buffer("rope", rope, persistent=False)
        self.register_buffer("attn_mask", mask, persistent=False)

    def features(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x)
        if masked is not None:
            h = torch.where(masked[..., None], self.mask_token.to(h.dtype), h)
        for block in self.blocks:
            h = block(h, self.rope, mask=self.attn_mask)
        return self.norm(h)

    def predict(self, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The training objective's output at every cell: token logits (mtm) or pixels (pixel-ae)."""
        return self.head(self.features(x, masked))


def encoder_inputs(kind: str, data: TokenData, idx: torch.Tensor) -> torch.Tensor:
    """What the encoder of `kind` reads and reconstructs for images `idx`: (B, G) token codes or (B, G, p*p) pixels."""
    if kind == "mtm":
        return data.codes[idx]
    return to_patches(data.images.images[idx], data.tokenizer.patch)


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], idx: torch.Tensor, size: int = 500) -> torch.Tensor:
    """fn over `idx` in slices of `size` images, concatenated: bounds the memory of a pass over a whole split."""
    return torch.cat([fn(idx[i : i + size]) for i in range(0, len(idx), size)])


def encoder_settings(kind: str, visibility: str, data: TokenData, steps: int) -> tuple[dict, str]:
    """The settings an encoder is trained with and their hash, the key of its weights, features and quality."""
    settings = dict(ENCODER_SETTINGS, kind=kind, visibility=visibility, data=data.key, steps=steps)
    return settings, content_hash(settings)


def _new_encoder(kind: str, data: TokenData, visibility: str, s: dict) -> BidirectionalEncoder:
    in_dim = data.vocab_size if kind == "mtm" else data.tokenizer.patch ** 2
    out_dim = data.vocab_size if kind == "mtm" else in_dim
    return BidirectionalEncoder(kind, data.grid, in_dim, out_dim, visibility_mask(data.grid, visibility),
                                s["n_layer"], s["dim"], s["n_head"])


def _train_encoder(kind: str, data: TokenData, visibility: str, s: dict) -> BidirectionalEncoder:
    g = torch.Generator().manual_seed(s["seed"])
    torch.manual_seed(s["seed"])
    enc = _new_encoder(kind, data, visibility, s)
    opt = torch.optim.AdamW(enc.parameters(), lr=s["lr"], weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / s["steps"])))
    train_idx = data.train_idx
    for _ in range(s["steps"]):
        idx = train_idx[torch.randint(len(train_idx), (s["batch_size"],), generator=g)]
        x = encoder_inputs(kind, data, idx)
        ratio = s["mask_min"] + (s["mask_max"] - s["mask_min"]) * torch.rand(x.shape[0], 1, generator=g)
        masked = torch.rand(x.shape[:2], generator=g) < ratio
        out = enc.predict(x, masked)
        if kind == "mtm":
            loss = F.cross_entropy(out[masked], x[masked])
        else:
            loss = F.mse_loss(out[masked], x[masked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return enc.eval()


def trained_encoder(kind: str, visibility: str, data: TokenData, cache: Path, steps: int = 400
                    ) -> BidirectionalEncoder:
    """The encoder of these settings in eval mode, trained once and its weights cached; torch's global RNG
    is left as the caller had it (training seeds it, and building the module to load into draws from it)."""
    settings, key = encoder_settings(kind, visibility, data, steps)

    def load(path: Path) -> BidirectionalEncoder:
        state = load_tensors(path, checked=True)["state_dict"]
        with torch.random.fork_rng(devices=[]):
            enc = _new_encoder(kind, data, visibility, settings)
        enc.load_state_dict(state)  # a state of other shapes raises RuntimeError: rebuilt
        return enc.eval()

    def build() -> BidirectionalEncoder:
        with torch.random.fork_rng(devices=[]):
            return _train_encoder(kind, data, visibility, settings)

    return load_or_build(cache / f"encoder-{kind}-{key}.pt", load, build,
                         lambda path, enc: save_tensors(path, {"state_dict": enc.state_dict()}))


def encoder_features(kind: str, visibility: str, data: TokenData, cache: Path, features_dir: str = "",
                     weights: str = "", steps: int = 400) -> torch.Tensor | FeatureShards:
    """(N_images, N_cells, d) fp16 features of every image, from the cache when present.

    `dinov2` is never run here: its (N_images, n_crops, N_cells, d) table is read from the
    shards that `mirai-lab prepare --encoder dinov2` wrote to `features_dir`, made with `weights`.
    """
    if kind == "dinov2":
        if not features_dir:
            raise UserError("foresight.encoder='dinov2' reads pre-extracted features: run "
                            "`mirai-lab prepare --encoder dinov2 ...` and set data.features_dir")
        return load_dinov2_features(features_dir, data, weights)
    _, key = encoder_settings(kind, visibility, data, steps)

    def load(path: Path) -> torch.Tensor:
        feats = load_tensors(path, checked=True)["features"]
        if feats.ndim != 3 or feats.shape[:2] != (len(data.codes), data.grid[0] * data.grid[1]):
            raise CorruptFile(f"{path}: features of shape {tuple(feats.shape)} do not fit the {len(data.codes)} "
                              f"images of {data.grid[0]}x{data.grid[1]} cells")
        return feats

    def build() -> torch.Tensor:
        enc = trained_encoder(kind, visibility, data, cache, steps)
        with torch.no_grad():
            return in_chunks(lambda idx: enc.features(encoder_inputs(kind, data, idx)).half(),
                             torch.arange(len(data.codes)))

    return load_or_build(cache / f"features-{kind}-{key}.pt", load, build,
                         lambda path, feats: save_tensors(path, {"features": feats}))
