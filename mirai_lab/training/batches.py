"""Which images and crops a step trains on: pure functions of (seed, step).

Resume and paired variants of one seed therefore see the same data in the same order.
"""

from __future__ import annotations

import torch


def batch_indices(train_idx: torch.Tensor, batch: int, seed: int, step: int) -> torch.Tensor:
    """Epoch-wise shuffling without replacement, as a pure function of (seed, step)."""
    per_epoch = max(1, len(train_idx) // batch)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return train_idx[perm[offset * batch : (offset + 1) * batch]]


def crop_indices(batch: int, n_crops: int, seed: int, step: int) -> torch.Tensor | None:
    """A random augmentation crop per sample (code folders), a pure function of (seed, step),
    so the matching feature crop can be read and a resumed run draws the same crops."""
    if n_crops == 1:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
    return torch.randint(n_crops, (batch,), generator=g)
