"""The VQ tokenizer: exact patch contents, patch round trips, and k-means on known clusters."""

import pytest
import torch

from mirai_lab.data.tokenizer import PatchTokenizer, fit_codebook, from_patches, to_patches


def test_patches_of_a_4x4_image_with_patch_2_in_raster_order():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)  # pixel (r, c) = 4r + c
    assert to_patches(image, 2).tolist() == [[
        [0, 1, 4, 5],  # top-left patch, its pixels row by row
        [2, 3, 6, 7],  # top-right
        [8, 9, 12, 13],  # bottom-left
        [10, 11, 14, 15],  # bottom-right
    ]]


def test_patch_round_trip_on_a_non_square_image():
    images = torch.rand(2, 1, 4, 6)  # a 2x3 token grid: rows and columns cannot be mixed up unnoticed
    patches = to_patches(images, 2)
    assert patches.shape == (2, 6, 4)
    assert torch.equal(patches[1, 2], images[1, 0, 0:2, 4:6].flatten())  # token (0, 2)
    assert torch.equal(patches[1, 3], images[1, 0, 2:4, 0:2].flatten())  # token (1, 0)
    assert torch.equal(from_patches(patches, (2, 3), 2), images)


CENTRES = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
SPREAD = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]])  # mean 0: each cluster's mean is its centre
POINTS = (CENTRES[:, None] + SPREAD[None]).reshape(-1, 2)


def sorted_rows(x: torch.Tensor) -> torch.Tensor:
    return x[torch.argsort(x[:, 0] * 100 + x[:, 1])]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_codebook_converges_to_the_exact_cluster_centres(seed):
    codebook = fit_codebook(POINTS, size=3, iters=5, seed=seed)
    assert torch.equal(sorted_rows(codebook), sorted_rows(CENTRES))  # dyadic values: the means are exact


def test_codebook_is_deterministic_given_the_seed():
    shuffled = POINTS[torch.randperm(len(POINTS), generator=torch.Generator().manual_seed(5))]
    a = fit_codebook(shuffled, size=3, iters=0, seed=11)  # seeding only: the picks depend on the generator
    assert torch.equal(a, fit_codebook(shuffled, size=3, iters=0, seed=11))
    assert all(any(torch.equal(row, p) for p in shuffled) for row in a)  # k-means++ seeds are data points


def test_encode_finds_the_nearest_code_and_decode_inverts_it():
    codebook = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    tok = PatchTokenizer(codebook, patch=2, grid=(1, 3))
    image = torch.tensor([[[[1.0, 1.0, 0.9, 0.1, 0.1, 0.0],
                            [1.0, 1.0, 0.0, 0.8, 0.0, 0.2]]]])
    codes = tok.encode(image)
    assert codes.tolist() == [[1, 2, 0]]
    assert torch.equal(tok.decode(codes), from_patches(codebook[[1, 2, 0]][None], (1, 3), 2))
