"""`python -m mirai_lab.foresight.tiny_llamagen DIR`: the tiny inputs of docs/scale.md, and its bad-input contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mirai_lab.foresight.dinov2 import load_dinov2
from mirai_lab.foresight.tiny_llamagen import GRID, MODEL, N_AUG, N_CLASSES, N_IMAGES, main, write_hub


def test_it_writes_images_codes_and_a_hub_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    root = tmp_path / "tiny"
    assert main([str(root)]) == 0
    assert capsys.readouterr().err.startswith("tiny LlamaGen inputs -> images ")
    assert sorted(p.relative_to(root).as_posix() for p in (root / "images").rglob("*.png"))[:2] == \
        ["images/class0/img0.png", "images/class0/img1.png"]
    assert len(list((root / "images").rglob("*.png"))) == N_IMAGES
    codes = [np.load(root / "codes" / "imagenet16_codes" / f"{i}.npy") for i in range(N_IMAGES + 1)]
    labels = [int(np.load(root / "codes" / "imagenet16_labels" / f"{i}.npy")[0]) for i in range(N_IMAGES + 1)]
    assert {c.shape for c in codes} == {(1, N_AUG, GRID * GRID)} and max(int(c.max()) for c in codes) < 16
    assert labels == [c for c in range(N_CLASSES) for _ in range(N_IMAGES // N_CLASSES)] + [0]  # padded with image 0
    assert np.array_equal(codes[-1], codes[0])
    net = load_dinov2(root / "hub" / f"{MODEL}.pth", hub=root / "hub", model=MODEL)
    assert net.patch_size == 2 and not any(p.requires_grad for p in net.parameters())
    again = torch.load(write_hub(tmp_path / "again"), weights_only=True)  # seeded: the same weights every time
    for name, tensor in torch.load(root / "hub" / f"{MODEL}.pth", weights_only=True).items():
        assert torch.equal(again[name], tensor), name


@pytest.mark.parametrize("args", [[], ["a", "b"], ["--tiny"], ["FILE"], ["FULL"]])
def test_a_bad_argument_is_one_error_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              args: list[str]):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "kept").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    argv = [str(tmp_path / a) if a in ("FILE", "FULL") else a for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before
