"""Layouts on 7x7 and 16x16 grids: exact target sets, masks, and no wrapping."""

import pytest
import torch

from mirai_lab.errors import UserError
from mirai_lab.foresight.layout import build_layout, grid_offsets, head_offsets, student_positions


def targets(layout, cell):
    return [int(c) for c, v in zip(layout.cells[cell], layout.valid[cell], strict=True) if v]


def test_16x16_k9_interior_is_the_3x3_block():
    lay = build_layout("2d", 9, (16, 16))
    base = 5 * 16 + 5
    assert sorted(c - base for c in targets(lay, base)) == [0, 1, 2, 16, 17, 18, 32, 33, 34]


def test_2d_offsets_order():
    assert grid_offsets(1, False) == [(0, 0)]
    assert grid_offsets(3, False) == [(0, 0), (0, 1), (1, 0)]  # self, right, below
    assert grid_offsets(4, False) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert grid_offsets(9, False) == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0)]
    assert grid_offsets(7, False) == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2), (2, 0)]  # block order
    assert grid_offsets(10, False) == [*grid_offsets(9, False), (0, 3)]  # beyond the block: nearest first
    assert grid_offsets(4, True) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert grid_offsets(5, True) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, -1)]


# (grid, layout, K, cell) -> expected target cells (in head order, valid only)
CASES = [
    # 7x7, 2d
    ((7, 7), "2d", 1, 8, [8]),
    ((7, 7), "2d", 3, 8, [8, 9, 15]),
    ((7, 7), "2d", 4, 8, [8, 9, 15, 16]),
    ((7, 7), "2d", 9, 8, [8, 9, 15, 16, 10, 17, 24, 23, 22]),
    ((7, 7), "2d", 3, 13, [13, 20]),  # last column: no right
    ((7, 7), "2d", 4, 13, [13, 20]),
    ((7, 7), "2d", 9, 13, [13, 20, 27]),
    ((7, 7), "2d", 3, 43, [43, 44]),  # last row: no below
    ((7, 7), "2d", 9, 43, [43, 44, 45]),
    ((7, 7), "2d", 9, 48, [48]),  # last cell
    ((7, 7), "2d", 4, 48, [48]),
    # 7x7, 1d: the raster sequence; only targets past the last token are masked
    ((7, 7), "1d", 1, 8, [8]),
    ((7, 7), "1d", 3, 8, [8, 9, 10]),
    ((7, 7), "1d", 4, 13, [13, 14, 15, 16]),
    ((7, 7), "1d", 9, 43, [43, 44, 45, 46, 47, 48]),
    ((7, 7), "1d", 3, 48, [48]),
    # 16x16
    ((16, 16), "2d", 3, 17, [17, 18, 33]),
    ((16, 16), "2d", 4, 31, [31, 47]),  # last column
    ((16, 16), "2d", 9, 30, [30, 31, 46, 47, 63, 62]),  # second-last column
    ((16, 16), "2d", 9, 241, [241, 242, 243]),  # last row
    ((16, 16), "2d", 9, 255, [255]),
    ((16, 16), "1d", 4, 17, [17, 18, 19, 20]),
    ((16, 16), "1d", 9, 250, [250, 251, 252, 253, 254, 255]),
    ((16, 16), "1d", 1, 255, [255]),
    # 2d-wide admits down-left
    ((7, 7), "2d-wide", 5, 8, [8, 9, 15, 16, 14]),
    ((7, 7), "2d-wide", 5, 7, [7, 8, 14, 15]),  # first column: no down-left
]


@pytest.mark.parametrize("grid, name, k, cell, expected", CASES)
def test_exact_targets(grid, name, k, cell, expected):
    assert targets(build_layout(name, k, grid), cell) == expected


@pytest.mark.parametrize("grid", [(7, 7), (16, 16), (3, 5), (5, 3)])
@pytest.mark.parametrize("k", [1, 3, 4, 9])
@pytest.mark.parametrize("name", ["2d", "2d-wide"])
def test_2d_never_wraps(grid, k, name):
    h, w = grid
    lay = build_layout(name, k, grid)
    for n in range(h * w):
        r, c = divmod(n, w)
        for (dr, dc), cell, valid in zip(lay.offsets, lay.cells[n], lay.valid[n], strict=True):
            expect_valid = 0 <= r + dr < h and 0 <= c + dc < w
            assert bool(valid) == expect_valid
            if valid:
                assert divmod(int(cell), w) == (r + dr, c + dc)


# The official code's K = 9 heads as flat offsets on its 16-wide grid (its --proj-coeffs order).
OFFICIAL_K9_FLAT = [0, 1, 16, 17, 2, 18, 34, 33, 32]


def test_k9_heads_follow_the_official_offset_order():
    lay = build_layout("2d", 9, (16, 16))
    assert [dr * 16 + dc for dr, dc in lay.offsets] == OFFICIAL_K9_FLAT
    base = 5 * 16 + 5  # an interior cell: every head valid, targets in head order
    assert [c - base for c in targets(lay, base)] == OFFICIAL_K9_FLAT
    for k in (1, 3, 4):  # the official K = 1, 3, 4 are prefixes of the same list
        assert [dr * 16 + dc for dr, dc in build_layout("2d", k, (16, 16)).offsets] == OFFICIAL_K9_FLAT[:k]


def test_head_offsets_name_what_a_layout_means():
    assert head_offsets("2d", 3) == head_offsets("2d-wide", 3) == ((0, 0), (0, 1), (1, 0))
    assert head_offsets("2d", 5) != head_offsets("2d-wide", 5)
    assert head_offsets("1d", 3) == ((0, 0), (0, 1), (0, 2))
    with pytest.raises(UserError, match="foresight.layout='3d': expected 1d, 2d or 2d-wide"):
        head_offsets("3d", 3)


def test_k_larger_than_grid_is_rejected():
    with pytest.raises(UserError, match="only 4 cells"):
        build_layout("2d", 5, (2, 2))


def test_student_positions():
    pos, base = student_positions("read", 49)
    assert pos[0] == 1 and base[0] == 0 and len(pos) == 48 and pos[-1] == 48 and base[-1] == 47
    pos, base = student_positions("predict", 49)
    assert torch.equal(pos, base) and len(pos) == 49
