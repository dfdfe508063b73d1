"""Embedded image sets: animal-mnist (the default), sklearn digits, and a synthetic set.

All loaders return the same shape of thing, `ImageSet`: float32 images (N, 1, H, W) in
[0, 1], int64 labels and the number of classes. Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirai_lab.errors import UserError


@dataclass
class ImageSet:
    name: str
    images: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    num_classes: int

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """animal-mnist ships gzip pickles; admit numpy's array reconstruction and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_numpy_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.asarray(_NumpyOnlyUnpickler(fh).load())


def animal_mnist_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("animal-mnist is not installed; run `pip install --no-deps animal-mnist==0.4`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def load_animal_mnist() -> ImageSet:
    """10,000 28x28 silhouettes of 10 animals (MIT licence), read straight from the wheel."""
    folder = animal_mnist_dir()
    data = _read_numpy_pickle(folder / "animal_data_version_3.gz")
    labels = _read_numpy_pickle(folder / "animal_label_version_3.gz")
    images = torch.from_numpy(data.astype(np.float32)).reshape(-1, 1, 28, 28)
    if images.max() > 1.0:
        images = images / 255.0
    return ImageSet("animal-mnist", images.clamp(0, 1), torch.from_numpy(labels.astype(np.int64)), 10)


def load_digits() -> ImageSet:
    """sklearn's 1,797 8x8 digits: tiny, overfits in seconds, for smoke tests."""
    from sklearn.datasets import load_digits as sk_digits  # here: importing sklearn costs ~2 s at start-up

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return ImageSet("digits", images, torch.from_numpy(bunch.target.astype(np.int64)), 10)


def load_synthetic(n: int = 2000, size: int = 16, num_classes: int = 4, seed: int = 0) -> ImageSet:
    """Class-dependent bars and blocks with a little noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.zeros(n, 1, size, size)
    offsets = torch.randint(0, size // 4, (n, 2), generator=g)
    for i in range(n):
        c, (dy, dx) = int(labels[i]), offsets[i].tolist()
        if c % 2 == 0:
            images[i, 0, dy : dy + size // 2, :] = 1.0  # a horizontal band
        else:
            images[i, 0, :, dx : dx + size // 2] = 1.0  # a vertical band
        if c >= 2:
            images[i, 0, size - 4 :, size - 4 :] = 1.0 - images[i, 0, size - 4 :, size - 4 :]
    images = (images + 0.05 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    return ImageSet("synthetic", images, labels, num_classes)


LOADERS = {"animal-mnist": load_animal_mnist, "digits": load_digits, "synthetic": load_synthetic}


def load_images(name: str) -> ImageSet:
    if name not in LOADERS:
        raise UserError(f"data.dataset={name!r}: expected one of {', '.join(LOADERS)}")
    return LOADERS[name]()


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed seeded train/validation split (validation gets round(n * fraction) images)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
