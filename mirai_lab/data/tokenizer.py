"""VQ tokenizer: a k-means codebook over non-overlapping p x p pixel patches.

Measured on animal-mnist (docs/design.md, "Embedded default"): 512 codes over 4x4 patches fit in seconds and
reconstruct with pixel MSE ~0.008, which is a sound ceiling for a CPU study; the AR model
only ever sees the code indices, exactly as LlamaGen sees its VQGAN codes.
"""

from __future__ import annotations

import torch


def to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, G, patch*patch) in raster order of the token grid."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def from_patches(patches: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    n = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(n, gh, gw, 1, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, 1, gh * patch, gw * patch)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    c_sq = (centroids * centroids).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long)
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        # |x|^2 is the same for every centroid, so it is left out of the distance.
        out[i : i + chunk] = torch.addmm(c_sq[None, :], xb, centroids.T, alpha=-2.0).argmin(1)
    return out


def fit_codebook(patches: torch.Tensor, size: int, iters: int, seed: int) -> torch.Tensor:
    """k-means++ seeding, then Lloyd iterations; empty clusters are re-seeded.

    Both run on a random subsample of at most 200 patches per code: more data moves the
    centroids less than the sampling noise of a short AR run, and keeps the fit to seconds.
    """
    g = torch.Generator().manual_seed(seed)
    x = patches.float()
    x = x[torch.randperm(x.shape[0], generator=g)[: min(x.shape[0], 200 * size)]]
    sub = x[: min(x.shape[0], 50 * size)]
    centroids = torch.empty(size, x.shape[1])
    centroids[0] = sub[torch.randint(0, sub.shape[0], (1,), generator=g)]
    d2 = ((sub - centroids[0]) ** 2).sum(1)
    for j in range(1, size):
        idx = torch.multinomial(d2 + 1e-12, 1, generator=g)
        centroids[j] = sub[idx]
        d2 = torch.minimum(d2, ((sub - centroids[j]) ** 2).sum(1))
    for _ in range(iters):
        assign = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=size).float()
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centroids[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=g)]
    return centroids


class PatchTokenizer:
    """Encode images to code grids and decode codes back to images."""

    def __init__(self, codebook: torch.Tensor, patch: int, grid: tuple[int, int]) -> None:
        self.codebook = codebook
        self.patch = patch
        self.grid = grid

    @property
    def vocab_size(self) -> int:
        return int(self.codebook.shape[0])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        patches = to_patches(images, self.patch)
        return _nearest(patches.reshape(-1, patches.shape[-1]), self.codebook).reshape(patches.shape[:2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return from_patches(self.codebook[codes.long()], self.grid, self.patch).clamp(0, 1)
