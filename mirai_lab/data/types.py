"""The token data set a run trains on, as a value (no I/O), shared by the embedded sets and LlamaGen code folders."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirai_lab.data.images import ImageSet
from mirai_lab.data.tokenizer import PatchTokenizer


@dataclass
class TokenData:
    """Everything a run needs from the data side, in memory.

    `codes` is (N, G) for the embedded sets, or (N, n_aug, G) for LlamaGen code folders
    (one row per augmentation crop). `images` and `tokenizer` (the decoder) exist only for
    data sets that have pixels; without them evaluation falls back to validation NLL.
    """

    key: str  # cache hash: identifies data + split + tokenizer
    codes: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    grid: tuple[int, int]
    vocab_size: int
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    images: ImageSet | None = None
    tokenizer: PatchTokenizer | None = None
    recon_mse: float | None = None  # validation pixel MSE of decode(encode(x)): the tokenizer ceiling

    @property
    def n_crops(self) -> int:
        return int(self.codes.shape[1]) if self.codes.ndim == 3 else 1

    def tokens(self, idx: torch.Tensor, crop: torch.Tensor | None = None) -> torch.Tensor:
        """(B, G) token grids of images `idx` (crop 0 unless given, for multi-crop codes)."""
        if self.codes.ndim == 2:
            return self.codes[idx]
        return self.codes[idx, crop if crop is not None else torch.zeros_like(idx)]
