"""Foresight layouts: which grid cells feed the target of each position.

Offsets are fixed per head k, so head k always means the same neighbour ("right",
"below", ...) and its projector can specialise. A target that falls off the grid is masked
out. In `2d` layouts a cell past the last column is off the grid (the official code wraps
it into the next row and assumes a 16-wide grid; we do neither). In `1d` the raster
sequence itself is the layout, so n+1 after the end of a row is the first cell of the next
row, exactly the token the model reads next; only targets past the last token are masked.

Head order in 2D: the cells of the 3x3 block down-right of n come in the official code's
order (flat offsets 0, 1, 16, 17, 2, 18, 34, 33, 32 on its 16-wide grid), so head k here is
head k there and a per-head coefficient list ports as it is; cells beyond the block follow,
nearest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirai_lab.errors import UserError


@dataclass(frozen=True)
class Layout:
    """cells[n, k] is the target cell of base cell n for head k; valid[n, k] masks off-grid."""

    name: str
    offsets: tuple[tuple[int, int], ...]  # (d_row, d_col) per head; 1d uses (0, raster offset)
    cells: torch.Tensor  # (N, K) long, clamped to a valid index where masked
    valid: torch.Tensor  # (N, K) bool


# (d_row, d_col) of the official code's K = 9 heads; its K = 1, 3, 4 are the prefixes of this list
OFFICIAL_BLOCK_ORDER = ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0))


def grid_offsets(k: int, allow_down_left: bool) -> list[tuple[int, int]]:
    """The k nearest cells (Euclidean) among those down-right of (0, 0), self included.

    With `allow_down_left` the candidates are every cell after (0, 0) in raster order that
    is in the same row to the right or in a row below (any column). Which cells: the nearest,
    ties broken right before down (smaller row offset first, then the larger column offset).
    In which head order: cells of the 3x3 down-right block in OFFICIAL_BLOCK_ORDER, then the
    others in that nearest-first order.
    """
    radius = k  # a k-nearest set never reaches further than k cells in either direction
    candidates = [
        (dr, dc)
        for dr in range(radius + 1)
        for dc in range(-radius if allow_down_left else 0, radius + 1)
        if (dr > 0 or dc >= 0)
    ]
    candidates.sort(key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], -o[1]))
    chosen = candidates[:k]
    rank = {o: i for i, o in enumerate(OFFICIAL_BLOCK_ORDER)}
    return sorted(chosen, key=lambda o: (0, rank[o]) if o in rank else (1, chosen.index(o)))


def head_offsets(name: str, k: int) -> tuple[tuple[int, int], ...]:
    """The (d_row, d_col) of each head: what a layout name and K mean, whatever the grid.

    Two configs whose layouts give the same offsets train the same model (spec validation
    warns about such duplicate variants)."""
    if name == "1d":
        return tuple((0, j) for j in range(k))
    if name in ("2d", "2d-wide"):
        return tuple(grid_offsets(k, allow_down_left=name == "2d-wide"))
    raise UserError(f"foresight.layout={name!r}: expected 1d, 2d or 2d-wide")


def build_layout(name: str, k: int, grid: tuple[int, int]) -> Layout:
    h, w = grid
    n = h * w
    if k < 1:
        raise UserError(f"foresight.k={k}: expected >= 1")
    if k > n:
        raise UserError(f"foresight.k={k}: the {h}x{w} grid has only {n} cells")
    rows = torch.arange(n) // w
    cols = torch.arange(n) % w
    offsets = head_offsets(name, k)
    if name == "1d":
        cells = torch.arange(n)[:, None] + torch.arange(k)[None, :]
        valid = cells < n
    else:
        dr = torch.tensor([o[0] for o in offsets])
        dc = torch.tensor([o[1] for o in offsets])
        r = rows[:, None] + dr[None, :]
        c = cols[:, None] + dc[None, :]
        valid = (r < h) & (c >= 0) & (c < w)
        cells = r * w + c
    if not valid.any(dim=0).all():
        raise UserError(f"foresight.k={k} with layout {name}: some head never has a target on the {h}x{w} grid")
    cells = torch.where(valid, cells, torch.zeros_like(cells))
    return Layout(name, offsets, cells.long(), valid)


def student_positions(align_index: str, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which sequence positions of the student are aligned, and the base cell of each.

    The training sequence is [class, x_0 .. x_{N-2}]; position s has read x_0..x_{s-1} and
    predicts x_s. `read` (official code): the state that has read x_n pairs with cell n,
    i.e. positions 1..N-1 -> cells 0..N-2. `predict` (paper's notation): the state that
    predicts x_n pairs with cell n, i.e. positions 0..N-1 -> cells 0..N-1.
    """
    if align_index == "read":
        return torch.arange(1, n_tokens), torch.arange(0, n_tokens - 1)
    if align_index == "predict":
        return torch.arange(0, n_tokens), torch.arange(0, n_tokens)
    raise UserError(f"foresight.align_index={align_index!r}: expected read or predict")
