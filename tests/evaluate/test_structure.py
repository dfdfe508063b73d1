"""The per-cell 2D structure, its weighted mean (the structure score) and structure.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirai_lab.evaluate.structure import DPI, FIGSIZE, colour_range, local_structure, structure_map, structure_score

E1, E2 = torch.eye(2)
# a 2 x 3 grid of two orthogonal states:   e1 e1 e2
#                                          e1 e2 e2
HALVES = torch.stack([E1, E1, E2, E1, E2, E2])[None]


def test_local_structure_by_hand():
    # neighbour similarities per cell (1 between equal states, 0 between orthogonal ones):
    # (0,0): right 1, down 1 -> 1     (0,1): 1, 0, 0 -> 1/3     (0,2): 0, 1 -> 1/2
    # (1,0): up 1, right 0 -> 1/2    (1,1): 0, 1, 0 -> 1/3     (1,2): 1, 1 -> 1
    # all ordered pairs of distinct cells: 12 of 30 equal -> 2/5, subtracted from every cell
    expected = torch.tensor([[1, 1 / 3, 1 / 2], [1 / 2, 1 / 3, 1]], dtype=torch.float64) - 2 / 5
    torch.testing.assert_close(local_structure(HALVES, 2, 3), expected[None], atol=1e-12, rtol=0)


def test_the_score_is_the_neighbour_weighted_mean_of_the_map():
    # 7 neighbour pairs, 4 of them equal: 4/7 - 2/5; the map weighted by neighbour counts (2 3 2 / 2 3 2)
    assert structure_score(HALVES, 2, 3) == pytest.approx(4 / 7 - 2 / 5, abs=1e-12)
    hidden = torch.randn(3, 20, 5, generator=torch.Generator().manual_seed(0))
    degree = torch.tensor([[2, 3, 3, 3, 2], [3, 4, 4, 4, 3], [3, 4, 4, 4, 3], [2, 3, 3, 3, 2]], dtype=torch.float64)
    weighted = (local_structure(hidden, 4, 5) * degree).sum((1, 2)) / degree.sum()
    assert structure_score(hidden, 4, 5) == pytest.approx(float(weighted.mean()), abs=1e-12)


def test_the_colour_range_is_the_first_round_step_that_holds_every_cell():
    assert [colour_range(np.array(v)) for v in ([0.01, -0.02], [0.03], [-0.15, 0.1], [0.7], [5.0], [])] == \
        [0.02, 0.05, 0.2, 1.0, 2.0, 0.02]


@pytest.mark.parametrize("H, W, image", [(7, 7, None), (2, 3, 1)])  # t-SNE; PCA on a tiny grid
def test_structure_png_has_its_fixed_size(tmp_path: Path, H: int, W: int, image: int | None):
    hidden = torch.randn(2, H * W, 8, generator=torch.Generator().manual_seed(0))
    path = structure_map(hidden, H, W, tmp_path / "structure.png", image=image, block=3)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGBA"
        assert png.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)) == (1200, 660)
        pixels = np.asarray(png.convert("RGB"))
    # the similarity panel's diverging colours (red and blue cells, the colour bar) are drawn
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 100)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    assert red[:, 600:].any() and blue[:, 600:].any()
    assert [p.name for p in tmp_path.iterdir()] == ["structure.png"]
