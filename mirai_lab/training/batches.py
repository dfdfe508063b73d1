"""Which images and crops a step trains on: pure functions of (seed, step) through keyed streams.

Resume and paired variants of one seed therefore see the same data in the same order.
"""

from __future__ import annotations

import torch

from mirai_lab.rng import stream_generator


def batch_indices(train_idx: torch.Tensor, batch: int, seed: int, step: int) -> torch.Tensor:
    """Epoch-wise shuffling without replacement: the permutation of an epoch comes from the
    `batch_order` stream keyed by (seed, epoch)."""
    per_epoch = max(1, len(train_idx) // batch)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(len(train_idx), generator=stream_generator(seed, epoch, "batch_order"))
    return train_idx[perm[offset * batch : (offset + 1) * batch]]


def crop_indices(batch: int, n_crops: int, seed: int, step: int) -> torch.Tensor | None:
    """A random augmentation crop per sample (code folders), from the `crop` stream keyed by
    (seed, step), so the matching feature crop can be read and a resumed run draws the same crops."""
    if n_crops == 1:
        return None
    return torch.randint(n_crops, (batch,), generator=stream_generator(seed, step, "crop"))
