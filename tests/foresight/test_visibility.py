"""The block-causal visibility of Mirai-I encoders: a cell in row r sees rows <= r + b."""

import pytest
import torch

from mirai_lab.foresight.encoders import BidirectionalEncoder, visibility_mask


def blocks(*rows: str) -> list[list[bool]]:
    """One string per query row of 3x3-grid blocks: '1' = the 3 cells of that key row are visible."""
    return [[c == "1" for c in row for _ in range(3)] for row in rows for _ in range(3)]


def test_exact_masks_on_a_3x3_grid():
    # query cell i (rows of the matrix) may attend key cell j (columns): True = visible
    assert visibility_mask((3, 3), "0").tolist() == blocks("100", "110", "111")  # own row and above
    assert visibility_mask((3, 3), "1").tolist() == blocks("110", "111", "111")  # and one row below
    assert visibility_mask((3, 3), "2").tolist() == blocks("111", "111", "111")
    assert visibility_mask((3, 3), "full").tolist() == blocks("111", "111", "111")  # an explicit all-visible mask


def test_mask_rows_follow_the_grid_width():
    mask = visibility_mask((2, 3), "0")  # cells 0-2 are row 0, 3-5 row 1
    assert mask[2].tolist() == [True, True, True, False, False, False]
    assert mask[3].tolist() == [True] * 6


def cells_blind_to(visibility: str, changed: slice) -> list[int]:
    """Cells of a one-layer encoder whose features do not move when the `changed` cells change."""
    torch.manual_seed(0)
    enc = BidirectionalEncoder("mtm", (3, 3), 5, 5, visibility_mask((3, 3), visibility), n_layer=1, dim=16,
                               n_head=2).eval()
    x = torch.randint(0, 5, (2, 9))
    x2 = x.clone()
    x2[:, changed] = (x2[:, changed] + 1) % 5
    moved = (enc.features(x2) - enc.features(x)).abs().amax(-1).amax(0) > 1e-6  # (9,)
    return [cell for cell in range(9) if not moved[cell]]


@pytest.mark.parametrize(("visibility", "blind"), [("0", [0, 1, 2, 3, 4, 5]), ("1", [0, 1, 2]), ("2", [])])
def test_encoder_features_ignore_the_rows_the_mask_hides(visibility, blind):
    assert cells_blind_to(visibility, slice(6, 9)) == blind  # the last row changes


def test_a_masked_encoder_sees_its_own_row_in_both_directions():
    assert cells_blind_to("0", slice(5, 6)) == [0, 1, 2]  # cells 3 and 4 notice cell 5, unlike a causal model


def test_full_visibility_sees_every_cell():
    assert cells_blind_to("full", slice(8, 9)) == []  # the last cell changes: every cell notices
