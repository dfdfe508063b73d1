"""2D structure of internal representations: the paper's t-SNE figure, as a number and a map.

The paper argues that foresight makes a raster-order model's hidden states reflect the 2D
layout of the image: cells that touch on the grid get similar states, although the model
reads them far apart in the sequence. `structure_score` measures exactly that,
`local_structure` gives its share per cell, and `structure_map` draws both on the H x W grid:
the per-cell states embedded into colours, and each cell's similarity to its neighbours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import Tensor

from mirai_lab.files.atomic import atomic_path


def _check(hidden: Tensor, H: int, W: int) -> None:
    if hidden.dim() != 3 or hidden.shape[1] != H * W or H * W < 2:
        raise ValueError(f"hidden states must be (B, H*W, d) with H*W >= 2; got {tuple(hidden.shape)}, H={H}, W={W}")


def _degree(H: int, W: int) -> Tensor:
    """(H, W): how many 4-neighbours each cell of an H x W grid has (2 in a corner, 4 inside)."""
    deg = torch.full((H, W), 4.0, dtype=torch.float64)
    deg[0] -= 1
    deg[-1] -= 1
    deg[:, 0] -= 1
    deg[:, -1] -= 1
    return deg


def local_structure(hidden: Tensor, H: int, W: int) -> Tensor:
    """(B, H, W): each cell's mean cosine similarity to its 4-neighbours minus the image's mean
    over every ordered pair of distinct cells (the baseline of `structure_score`).

    Positive where a cell resembles the cells that touch it on the grid more than a random cell
    of the same image; a state of zero norm has similarity 0 to everything.
    """
    _check(hidden, H, W)
    u = F.normalize(hidden.double(), dim=-1)
    grid = u.reshape(len(u), H, W, -1)
    right = (grid[:, :, 1:] * grid[:, :, :-1]).sum(-1)  # (B, H, W-1): cell (r, c) with (r, c+1)
    down = (grid[:, 1:] * grid[:, :-1]).sum(-1)  # (B, H-1, W): cell (r, c) with (r+1, c)
    total = torch.zeros(len(u), H, W, dtype=torch.float64)
    total[:, :, 1:] += right
    total[:, :, :-1] += right
    total[:, 1:] += down
    total[:, :-1] += down
    # sum over i != j of u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2
    n = H * W
    pair_sum = u.sum(1).pow(2).sum(-1) - u.pow(2).sum((1, 2))
    baseline = pair_sum / (n * (n - 1))
    return total / _degree(H, W) - baseline[:, None, None]


def structure_score(hidden: Tensor, H: int, W: int) -> float:
    """Mean cosine similarity of 4-neighbour cells minus that of all distinct cell pairs.

    `hidden` is (B, N, d) with row n the state at grid cell n in raster order. Neighbours
    are the right and down pairs of each image; the baseline averages over every ordered
    pair of distinct cells of the same image (computed exactly, so no sampling noise).
    Subtracting the baseline removes what all cells share (a common offset, the class):
    a constant field scores 0, and only similarity that follows the grid counts. A state of
    zero norm has similarity 0 to everything. It is the mean of `local_structure` weighted by
    each cell's neighbour count (every neighbour pair is counted once from each end).
    """
    deg = _degree(H, W)
    per_image = (local_structure(hidden, H, W) * deg).sum((1, 2)) / deg.sum()
    return float(per_image.mean())


def _embed(states: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(N, d) -> (N, 3) in [0, 1] and the method's name: t-SNE where the grid is large enough, else PCA."""

    n = len(states)
    # t-SNE needs perplexity < n; below ~5 neighbours per point it only shows noise.
    perplexity = min(30.0, (n - 1) / 3)
    if perplexity >= 5:
        # exact: for a grid of tens to hundreds of cells it is several times faster than
        # Barnes-Hut in 3 dimensions
        tsne = TSNE(n_components=3, perplexity=perplexity, init="pca", method="exact", random_state=seed)
        emb, method = tsne.fit_transform(states), "t-SNE"
    else:
        k = min(3, n, states.shape[1])
        emb = np.zeros((n, 3))
        emb[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(states)
        method = "PCA"
    lo, hi = emb.min(0), emb.max(0)
    return (emb - lo) / np.where(hi > lo, hi - lo, 1.0), method


# structure.png: two panels and a colour bar, drawn at this size and resolution so that its text stays
# sharp when the PNG is shown at its own size (1,200 x 660 pixels)
FIGSIZE, DPI = (8.0, 4.4), 150
STEPS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # colour bar ranges: the first that holds every cell


def colour_range(values: np.ndarray) -> float:
    """The symmetric colour range of the similarity panel: the smallest of STEPS that holds every |value|.

    Per figure, so that the small differences of a weakly structured model stay visible; a round
    number, so that two maps side by side are easy to compare on their colour bars."""
    top = float(np.abs(values).max()) if values.size else 0.0
    return next((step for step in STEPS if top <= step), STEPS[-1])


def structure_map(hidden: Tensor, H: int, W: int, path: Path, seed: int = 0, image: int | None = None,
                  block: int | None = None) -> Path:
    """Save a PNG of the per-cell states on the H x W grid: as colours, and as similarity to their neighbours.

    Left: the states, averaged over the batch (or taken from one `image`), embedded into RGB with
    t-SNE (PCA on grids too small for it), so cells with similar states get similar colours: a
    model with 2D structure shows smooth colour regions, one without shows raster stripes.
    Right: `local_structure` (averaged over the batch, or of that image) with its colour bar (`colour_range`); its
    neighbour-weighted mean is the structure score in the title. `block` names the
    transformer block the states come from.
    """

    _check(hidden, H, W)
    chosen = hidden if image is None else hidden[image : image + 1]
    states = chosen.mean(0)
    colours, method = _embed(states.detach().double().cpu().numpy(), seed)
    local = local_structure(chosen.detach().cpu(), H, W).mean(0).numpy()
    score = structure_score(chosen.detach().cpu(), H, W)

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(colours.reshape(H, W, 3), interpolation="nearest")
    left.set_title(f"cell states as colours ({method} to RGB)\nsimilar colour = similar state", fontsize=10)
    scale = colour_range(local)
    shown = right.imshow(local, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    right.set_title("similarity to the neighbouring cells\nminus the mean over all pairs of cells", fontsize=10)
    bar = fig.colorbar(shown, ax=right, shrink=0.85)
    bar.set_label("difference of cosine similarities", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    for ax in (left, right):
        ax.set_xlabel("token column", fontsize=9)
        ax.set_ylabel("token row", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    where = f" of block {block}" if block is not None else ""
    what = f"mean over {len(hidden)} images" if image is None else f"image {image}"
    fig.suptitle(f"2D structure of the hidden states{where} on the {H} x {W} token grid ({what})\n"
                 f"structure score {score:.3f}: similarity of neighbouring cells minus that of all pairs",
                 fontsize=11)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)
