"""A run config checked against its data: the token grid of its images and the foresight layout on it.

The config (mirai_lab/config.py) checks values on their own; whether the patch divides the
images and every foresight head has targets on the resulting grid depends on the data set,
which lives above the config. `configure` is build_config plus these checks, made from the
image size alone so that they fail before any tokenizer or cache is fitted and written.
"""

from __future__ import annotations

import functools
from typing import Any

from mirai_lab.config import RunConfig, build_config
from mirai_lab.data.images import load_images
from mirai_lab.errors import UserError
from mirai_lab.foresight.layout import build_layout


def grid_of(cfg: RunConfig, image_size: tuple[int, int]) -> tuple[int, int]:
    """Token grid for an image size and the tokenizer's patch."""
    h, w = image_size
    p = cfg.tokenizer.patch
    if h % p or w % p:
        raise UserError(f"tokenizer.patch={p} does not divide the {h}x{w} images of {cfg.data.dataset}")
    return h // p, w // p


@functools.cache
def _image_size(dataset: str) -> tuple[int, int]:
    return load_images(dataset).size


def check_data_fit(cfg: RunConfig) -> None:
    """The checks that need the data's token grid (patch, foresight layout). A code folder's grid
    is known only once it is read; its layout is checked when the run starts."""
    if cfg.data.dataset == "codes":
        return
    grid = grid_of(cfg, _image_size(cfg.data.dataset))
    f = cfg.foresight
    if f.source != "none" or f.injection == "mtp":
        build_layout(f.layout, f.k, grid)


def configure(spec: dict[str, Any] | None, overrides: dict[str, Any] | None = None, budget: str | None = None
              ) -> RunConfig:
    """build_config, then the checks against the data: what every command that trains uses."""
    cfg = build_config(spec, overrides, budget)
    check_data_fit(cfg)
    return cfg
