"""A tiny stand-in for the scale path's inputs, to check its command lines on a CPU in seconds.

    python -m mirai_lab.foresight.tiny_llamagen DIR

writes into DIR (which must be absent or empty):

- `images/class<c>/img<j>.png`: 12 random RGB images of varied sizes in 3 class folders
  (the ImageFolder layout LlamaGen numbered its codes in);
- `hub/hubconf.py` and `hub/tiny_vit.pth`: a fake DINOv2 hub, a "ViT" with 2-pixel patches,
  16 channels and DINOv2's interface (`patch_size`, `forward_features(x)["x_norm_patchtokens"]`),
  built only with `pretrained=False`, so nothing is ever downloaded;
- `codes/imagenet16_codes/<i>.npy` (1, 10, 16) and `codes/imagenet16_labels/<i>.npy`: a LlamaGen
  code folder of the ten crops at 16 px (a 4 x 4 grid, vocabulary 16), 13 files: the last one
  repeats image 0 as a DistributedSampler's padding does.

The code of a cell is the argmax channel of the fake encoder's feature for that cell and crop
(crops resized with PIL, as `prepare --encoder dinov2 --resize pil` does), so a Mirai-I target
can be matched to its token. docs/scale.md uses it for the tiny form of every command.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from mirai_lab.errors import UserError
from mirai_lab.foresight.dinov2 import IMAGENET_MEAN, IMAGENET_STD, crop_views, load_dinov2
from mirai_lab.messages import one_line, say

GRID, IMAGE_SIZE, N_AUG, N_IMAGES, N_CLASSES = 4, 16, 10, 12, 3  # 16 px crops -> 4x4 tokens, 8 px for the ViT
PATCH, DIM = 2, 16  # the fake ViT's patch side and width: its vocabulary of argmax channels is DIM
MODEL = "tiny_vit"  # the hub entry point (prepare --model)

HUBCONF = '''\
"""A stand-in for facebookresearch/dinov2's hubconf.py (mirai_lab.foresight.tiny_llamagen)."""

import torch
from torch import nn

dependencies = ["torch"]


class TinyViT(nn.Module):
    def __init__(self, patch_size=2, embed_dim=16):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward_features(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return {"x_norm_patchtokens": self.norm(tokens)}


def tiny_vit(pretrained=True, **kwargs):
    assert not pretrained, "a fake hub has no weights to download"
    return TinyViT(**kwargs)
'''


class TinyFolder(NamedTuple):
    """The paths `write_tiny_llamagen` made."""

    images: Path
    weights: Path  # the state dict; its folder is the hub directory (--hub)
    codes: Path  # LlamaGen's --code-path (data.codes_dir)


def write_hub(root: Path) -> Path:
    """The fake DINOv2 hub directory with its state-dict file (seeded: the same bytes every time); returns the file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubconf.py").write_text(HUBCONF)
    spec = importlib.util.spec_from_file_location("tiny_hubconf", root / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    torch.manual_seed(0)
    weights = root / f"{MODEL}.pth"
    torch.save(hubconf.TinyViT(PATCH, DIM).state_dict(), weights)
    return weights


def write_images(root: Path) -> list[tuple[Path, int]]:
    """ImageFolder tree of random RGB images of varied sizes; (path, class) in ImageFolder order."""
    rng = np.random.default_rng(0)
    out = []
    for c in range(N_CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for j in range(N_IMAGES // N_CLASSES):
            h, w = 20 + j, 24 - j
            path = root / f"class{c}" / f"img{j}.png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            out.append((path, c))
    return out


def fake_tokenize(images: list[tuple[Path, int]], weights: Path, code_path: Path, pad: int = 1) -> Path:
    """A LlamaGen code folder whose code of a cell is the argmax channel of the fake encoder's
    feature for that cell and crop; `pad` copies of the first images mimic a DistributedSampler's padding."""
    net = load_dinov2(weights, hub=weights.parent, model=MODEL)
    codes_dir, labels_dir = code_path / "imagenet16_codes", code_path / "imagenet16_labels"
    codes_dir.mkdir(parents=True)
    labels_dir.mkdir()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    side = GRID * PATCH
    for i in range(len(images) + pad):
        path, label = images[i % len(images)]
        with Image.open(path) as img:
            crops = crop_views(img.convert("RGB"), IMAGE_SIZE, N_AUG)
        pixels = torch.stack([torch.from_numpy(np.asarray(c.resize((side, side), Image.BICUBIC), dtype=np.float32))
                              .permute(2, 0, 1) / 255 for c in crops])
        with torch.no_grad():
            feats = net.forward_features((pixels - mean) / std)["x_norm_patchtokens"]
        np.save(codes_dir / f"{i}.npy", feats.half().float().argmax(-1)[None].numpy().astype(np.int64))
        np.save(labels_dir / f"{i}.npy", np.array([label]))
    return code_path


def write_tiny_llamagen(root: Path) -> TinyFolder:
    """Images, the fake hub and the code folder under `root` (absent or empty)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{str(root)!r} exists and is not an empty folder: expected a new folder for the tiny inputs")
    weights = write_hub(root / "hub")
    images = write_images(root / "images")
    return TinyFolder(root / "images", weights, fake_tokenize(images, weights, root / "codes"))


def main(argv: list[str]) -> int:
    """`python -m mirai_lab.foresight.tiny_llamagen DIR`: a bad argument is one `error:` line and exit code 2."""
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        if len(argv) != 1 or argv[0].startswith("-"):
            raise UserError(f"expected one argument, the folder to write into; got {' '.join(argv) or 'none'}")
        folder = write_tiny_llamagen(Path(argv[0]))
    except UserError as exc:
        say(f"error: {one_line(str(exc))}")
        return 2
    say(f"tiny LlamaGen inputs -> images {folder.images}, codes {folder.codes}, DINOv2 hub {folder.weights.parent} "
        f"(weights {folder.weights.name}, --model {MODEL})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
