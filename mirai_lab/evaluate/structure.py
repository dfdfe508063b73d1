"""2D structure of internal representations: the paper's t-SNE figure, as a number and a map.

The paper argues that foresight makes a raster-order model's hidden states reflect the 2D
layout of the image: cells that touch on the grid get similar states, although the model
reads them far apart in the sequence. `structure_score` measures exactly that, and
`structure_map` draws the per-cell states embedded into colours on the H x W grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import Tensor

from mirai_lab.files.atomic import atomic_path


def _check(hidden: Tensor, H: int, W: int) -> None:
    if hidden.dim() != 3 or hidden.shape[1] != H * W or H * W < 2:
        raise ValueError(f"hidden states must be (B, H*W, d) with H*W >= 2; got {tuple(hidden.shape)}, H={H}, W={W}")


def structure_score(hidden: Tensor, H: int, W: int) -> float:
    """Mean cosine similarity of 4-neighbour cells minus that of all distinct cell pairs.

    `hidden` is (B, N, d) with row n the state at grid cell n in raster order. Neighbours
    are the right and down pairs of each image; the baseline averages over every ordered
    pair of distinct cells of the same image (computed exactly, so no sampling noise).
    Subtracting the baseline removes what all cells share (a common offset, the class):
    a constant field scores 0, and only similarity that follows the grid counts. A state of
    zero norm has similarity 0 to everything.
    """
    _check(hidden, H, W)
    u = F.normalize(hidden.double(), dim=-1)
    grid = u.reshape(len(u), H, W, -1)
    right = (grid[:, :, 1:] * grid[:, :, :-1]).sum(-1).flatten(1)
    down = (grid[:, 1:] * grid[:, :-1]).sum(-1).flatten(1)
    neighbours = torch.cat([right, down], dim=1).mean()
    # sum over i != j of u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2
    n = H * W
    pair_sum = u.sum(1).pow(2).sum(-1) - u.pow(2).sum((1, 2))
    baseline = (pair_sum / (n * (n - 1))).mean()
    return float(neighbours - baseline)


def _embed(states: np.ndarray, seed: int) -> np.ndarray:
    """(N, d) -> (N, 3) in [0, 1]: t-SNE where the grid is large enough, else PCA."""

    n = len(states)
    # t-SNE needs perplexity < n; below ~5 neighbours per point it only shows noise.
    perplexity = min(30.0, (n - 1) / 3)
    if perplexity >= 5:
        # exact: for a grid of tens to hundreds of cells it is several times faster than
        # Barnes-Hut in 3 dimensions
        tsne = TSNE(n_components=3, perplexity=perplexity, init="pca", method="exact", random_state=seed)
        emb = tsne.fit_transform(states)
    else:
        k = min(3, n, states.shape[1])
        emb = np.zeros((n, 3))
        emb[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(states)
    lo, hi = emb.min(0), emb.max(0)
    return (emb - lo) / np.where(hi > lo, hi - lo, 1.0)


def structure_map(hidden: Tensor, H: int, W: int, path: Path, seed: int = 0, image: int | None = None) -> Path:
    """Save a PNG of the per-cell states embedded into RGB and laid out as the H x W grid.

    States are averaged over the batch (or taken from one `image`) and embedded with t-SNE
    (PCA on grids too small for it), so cells with similar states get similar colours: a
    model with 2D structure shows smooth colour regions, one without shows raster stripes.
    """

    _check(hidden, H, W)
    states = hidden.mean(0) if image is None else hidden[image]
    colours = _embed(states.detach().double().cpu().numpy(), seed).reshape(H, W, 3)
    score = structure_score(hidden if image is None else hidden[image : image + 1], H, W)

    fig = Figure(figsize=(4, 4.3))
    ax = fig.add_subplot()
    ax.imshow(colours, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    what = "batch mean" if image is None else f"image {image}"
    ax.set_title(f"hidden states, {what}\nstructure score {score:.3f}", fontsize=9)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)
