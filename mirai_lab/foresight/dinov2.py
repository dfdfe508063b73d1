"""DINOv2 foresight targets for Mirai-I at scale: extracted once per crop, read as a table.

Loading: only from local files, never a download. `weights` is DINOv2's state-dict file
(e.g. `dinov2_vitb14_pretrain.pth`) or a directory holding exactly one such file; the
architecture comes from a torch.hub directory with `hubconf.py` (a clone of
facebookresearch/dinov2), built with `torch.hub.load(hub, model, source="local",
pretrained=False)`. The hub directory is `hub`, else torch.hub's cache of the dinov2
repository (where `torch.hub.load("facebookresearch/dinov2", ...)` put it). A weights
folder is data: a `hubconf.py` lying beside the weights is never run unless that folder is
named as `hub`, since a downloaded folder would otherwise become code.

Crops (the same pixels the codes came from): image i of the code folder is image
i mod N_images of the ImageFolder-ordered `images` directory (LlamaGen's order; the modulo
covers a DistributedSampler's padding). Each image goes through LlamaGen's pipeline: ADM's
centre crop to `image_size * crop_range` (281 px for 256 at 1.1) and torchvision's TenCrop
to `image_size`, so crop index a is:
    0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, 4 centre,
    5..9 the same five crops of the horizontally mirrored image;
with n_aug = 2 (no --ten-crop): 0 the centre crop at `image_size`, 1 its mirror image.
Each crop is resized (bicubic) to grid * patch_size pixels (224 for a 16x16 grid and
ViT-B/14), so DINOv2 resamples its position embedding to exactly the token grid and patch
(r, c) covers token cell (r, c). By default (`resize="interpolate"`) the resize is the
official Mirai/REPA code's: the normalised float crop through F.interpolate(mode="bicubic"),
without antialiasing; `resize="pil"` resizes the 8-bit crop with PIL's (antialiased) bicubic
filter instead. The choice is recorded in the manifest, so the two never mix in one folder.
The target is the final normed patch token (`forward_features(x)["x_norm_patchtokens"]`),
stored in fp16.

Storage: `out/shard-00000.npy ...`, each (n, n_aug, G, d) fp16 for a contiguous range of
code indices, plus `manifest.json`. Every file is written atomically and a finished shard
is never recomputed, so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.datasets import ImageFolder
from torchvision.transforms import functional as TF

from mirai_lab.data.codes import find_code_dirs, numbered_files
from mirai_lab.data.types import TokenData
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.atomic import atomic_path, read_json, write_json
from mirai_lab.files.tensors import load_tensors
from mirai_lab.foresight.sources import load_checked_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's input normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST = "manifest.json"
RESIZE_MODES = ("interpolate", "pil")
FORMAT_VERSION = 1


def resolve_weights(weights: str | Path) -> Path:
    """The state-dict file named by `weights` (a file, or a directory holding exactly one .pth/.pt)."""
    path = Path(weights)
    if path.is_file():
        return path
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt") and p.is_file())
        if len(files) == 1:
            return files[0]
        raise UserError(f"DINOv2 weights {str(path)!r}: expected one .pth state-dict file in the directory, "
                        f"found {len(files)}")
    raise UserError(f"DINOv2 weights {str(path)!r} do not exist: expected a local state-dict file such as "
                    "dinov2_vitb14_pretrain.pth (nothing is downloaded)")


def _hub_dir(weights_file: Path, hub: str | Path | None) -> Path:
    """The directory whose hubconf.py builds the model: the one the user named, else torch.hub's
    own cache; never the weights' folder by itself (see the module docstring)."""
    candidate = Path(hub) if hub else Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"
    if (candidate / "hubconf.py").is_file():
        return candidate
    beside = " (the hubconf.py beside the weights is not run unless you name its folder)" if (
        weights_file.parent / "hubconf.py").is_file() and not hub else ""
    raise UserError(f"no DINOv2 hub directory with hubconf.py at {str(candidate)!r}{beside}: pass a local clone "
                    "of facebookresearch/dinov2 with --hub DIR")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def load_dinov2(weights: str | Path, hub: str | Path | None = None, model: str = "dinov2_vitb14") -> nn.Module:
    """DINOv2 `model` from the hub directory's hubconf, with the local state dict, in eval mode."""
    weights_file = resolve_weights(weights)
    hub_dir = _hub_dir(weights_file, hub)
    try:
        net = torch.hub.load(str(hub_dir), model, source="local", pretrained=False, verbose=False)
    except (RuntimeError, AttributeError) as exc:
        raise UserError(f"cannot build DINOv2 model {model!r} from {str(hub_dir / 'hubconf.py')!r}: {exc}") from None
    if not (hasattr(net, "forward_features") and hasattr(net, "patch_size")):
        raise UserError(f"hub model {model!r} has no forward_features/patch_size: expected a DINOv2 backbone")
    try:
        state = load_tensors(weights_file)
    except CorruptFile as exc:
        raise UserError(str(exc)) from None
    if not isinstance(state, dict):
        raise UserError(f"{str(weights_file)!r}: expected a plain state dict of {model!r}")
    load_checked_state(net, state, f"{str(weights_file)!r} ({model})")
    return net.eval().requires_grad_(False)


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop, as LlamaGen applies it: halve with a box filter while the short side
    is at least 2x `size`, resize bicubically so the short side is `size`, crop the centre."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def crop_views(image: Image.Image, image_size: int, n_aug: int, crop_range: float = 1.1) -> list[Image.Image]:
    """The n_aug crops LlamaGen's extract_codes_c2i tokenised, in its order (module docstring)."""

    if n_aug == 10:
        return list(TF.ten_crop(center_crop_arr(image, int(image_size * crop_range)), image_size))
    if n_aug in (1, 2):
        center = center_crop_arr(image, image_size)
        return [center, TF.hflip(center)][:n_aug]
    raise UserError(f"codes have n_aug={n_aug} crops per image: expected 10 (--ten-crop), 2 or 1")


class _CropSet(torch.utils.data.Dataset):
    """Code index -> (index, label in the code folder, ImageFolder class, normalised crops).

    The pixels are prepared in numpy: torch's per-op threading costs more than the work on
    these small arrays when the loader runs in the main process (measured 60x slower).
    """

    def __init__(self, samples: list[tuple[str, int]], labels_dir: Path, indices: range, image_size: int, n_aug: int,
                 crop_range: float, input_size: int, resize: str = "interpolate") -> None:
        self.samples, self.labels_dir, self.indices = samples, labels_dir, indices
        self.image_size, self.n_aug, self.crop_range, self.input_size = image_size, n_aug, crop_range, input_size
        self.resize = resize  # "pil" resizes here; "interpolate" leaves it to the batch (resize_crops)
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, int, int, torch.Tensor]:
        i = self.indices[k]
        path, target = self.samples[i % len(self.samples)]
        with Image.open(path) as img:
            crops = crop_views(img.convert("RGB"), self.image_size, self.n_aug, self.crop_range)
        size = (self.input_size, self.input_size)
        if self.resize == "pil":
            crops = [c.resize(size, resample=Image.BICUBIC) for c in crops]
        pixels = np.stack([np.asarray(c, dtype=np.float32) for c in crops]) / 255
        normed = ((pixels - self.mean) / self.std).transpose(0, 3, 1, 2)  # (n_aug, 3, S, S)
        label = int(np.load(self.labels_dir / f"{i}.npy").reshape(()))
        return i, label, target, torch.from_numpy(np.ascontiguousarray(normed))


def _image_samples(images: str | Path) -> list[tuple[str, int]]:
    """(path, class index) in torchvision ImageFolder order: the order LlamaGen numbered its codes in."""

    if not Path(images).is_dir():
        raise UserError(f"images folder {str(images)!r} does not exist: expected the ImageFolder tree "
                        "(one sub-folder per class) that the codes were extracted from")
    try:
        return ImageFolder(str(images)).samples
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"images folder {str(images)!r}: {exc}") from None


def loader_workers(requested: int) -> int:
    """DataLoader worker processes: at most one per core (more only compete for them, and torch warns)."""
    return min(requested, os.cpu_count() or 1)


def prepare_dinov2(weights: str, images: str, codes: str, out: str, grid: int | None = None, *,
                   hub: str | None = None, model: str = "dinov2_vitb14", image_size: int | None = None,
                   crop_range: float = 1.1, shard_size: int = 4096, batch_size: int = 32, workers: int = 8,
                   device: str | None = None, resize: str = "interpolate") -> dict[str, Any]:
    """Extract DINOv2 patch features of every crop of every code-folder image into `out`.

    `grid` is the token grid side (default: the square root of the codes' length);
    `image_size` the crop size the codes were made at (default grid * 16, LlamaGen's VQ-16
    downsampling); `crop_range` LlamaGen's --crop-range. Resumable: finished shards are kept.
    Returns a summary (counts, shapes, seconds) for the CLI to print.
    """
    if resize not in RESIZE_MODES:
        raise UserError(f"resize={resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    t0 = time.perf_counter()
    codes_dir, labels_dir = find_code_dirs(codes)
    n_codes = len(numbered_files(codes_dir))
    first = np.load(codes_dir / "0.npy", mmap_mode="r")
    if first.ndim != 3 or first.shape[0] != 1:
        raise UserError(f"{str(codes_dir / '0.npy')!r} has shape {first.shape}: expected (1, n_aug, H*W)")
    n_aug, g = int(first.shape[1]), int(first.shape[2])
    side = grid or math.isqrt(g)
    if side * side != g:
        raise UserError(f"grid={side}: the codes have {g} tokens per image; expected grid * grid = {g}")
    samples = _image_samples(images)
    if not len(samples) <= n_codes < 2 * len(samples):
        raise UserError(f"{str(images)!r} holds {len(samples)} images but {str(codes_dir)!r} {n_codes} codes: "
                        "expected the folder the codes were extracted from")
    net = load_dinov2(weights, hub, model)
    patch = int(net.patch_size)
    size = image_size or side * 16
    weights_file = resolve_weights(weights)
    settings = {"version": FORMAT_VERSION, "encoder": "dinov2", "model": model, "weights": str(weights_file),
                "weights_sha256": file_sha256(weights_file), "codes": str(codes_dir), "n_images": n_codes,
                "n_aug": n_aug, "grid": [side, side], "image_size": size, "crop_range": crop_range,
                "input_size": side * patch, "shard_size": shard_size, "resize": resize}
    out_dir = Path(out)
    manifest_path = out_dir / MANIFEST
    shards = [(start, min(n_codes, start + shard_size)) for start in range(0, n_codes, shard_size)]
    if manifest_path.exists():
        old = read_json(manifest_path)
        # the paths are informational: a moved folder with the same content resumes
        changed = sorted(k for k in settings if k not in ("weights", "codes") and old.get(k) != settings[k])
        if changed:
            raise UserError(f"{str(out_dir)!r} holds features made with other settings ({', '.join(changed)}): "
                            "expected an empty or matching output folder")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev)
    names = [f"shard-{k:05d}.npy" for k in range(len(shards))]
    todo = [k for k, name in enumerate(names) if not (out_dir / name).exists()]
    write_json(manifest_path, {**settings, "complete": False})  # before any shard: shards never lack settings
    for k in todo:
        start, stop = shards[k]
        dataset = _CropSet(samples, labels_dir, range(start, stop), size, n_aug, crop_range, side * patch, resize)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=loader_workers(workers))
        with atomic_path(out_dir / names[k]) as tmp:  # written in place on disk: a shard can exceed the RAM
            table = None
            for batch in loader:
                feats = _batch_features(net, batch, samples, labels_dir, g, dev, side * patch)
                if table is None:
                    table = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                      shape=(stop - start, *feats.shape[1:]))
                table[batch[0].numpy() - start] = feats
            table.flush()
            del table
    dim = int(np.load(out_dir / names[0], mmap_mode="r").shape[-1])
    write_json(manifest_path, {**settings, "dim": dim, "complete": True, "shards": names})
    return {"out": str(out_dir), "images": n_codes, "n_aug": n_aug, "grid": [side, side], "dim": dim,
            "shards": len(shards), "written": len(todo), "skipped": len(shards) - len(todo),
            "seconds": round(time.perf_counter() - t0, 2)}


def resize_crops(pixels: torch.Tensor, input_size: int) -> torch.Tensor:
    """(B, 3, S, S) normalised crops -> input_size, as the official code does it: float bicubic
    F.interpolate, no antialiasing. Crops already at input_size (the PIL path) pass unchanged."""
    if pixels.shape[-1] == input_size and pixels.shape[-2] == input_size:
        return pixels
    return F.interpolate(pixels, size=(input_size, input_size), mode="bicubic", align_corners=False, antialias=False)


def _batch_features(net: nn.Module, batch: list, samples: list[tuple[str, int]], labels_dir: Path, g: int,
                    dev: torch.device, input_size: int) -> np.ndarray:
    """(B, n_aug, G, d) fp16 features of one loader batch, after checking its labels against the classes."""
    index, label, target, pixels = batch
    bad = (label != target).nonzero()
    if len(bad):
        j = int(bad[0, 0])
        i = int(index[j])
        raise UserError(f"code {i}: label {int(label[j])} in {str(labels_dir)!r} but class {int(target[j])} for "
                        f"{samples[i % len(samples)][0]!r}: expected the images the codes were extracted from")
    b, n_aug = pixels.shape[:2]
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        feats = net.forward_features(resize_crops(pixels.flatten(0, 1).to(dev), input_size))["x_norm_patchtokens"]
    if feats.shape[1] != g:
        raise UserError(f"DINOv2 gave {feats.shape[1]} patches per {pixels.shape[-1]}px crop: expected {g} "
                        f"(the token grid); check grid and the model's patch size")
    return feats.float().cpu().reshape(b, n_aug, g, -1).half().numpy()


class FeatureShards:
    """A read-only (N_images, n_aug, G, d) fp16 table over memory-mapped shard files.

    ImageNet at ten crops is terabytes, so nothing is loaded: `table[index, crop]` reads the
    rows of one batch (the only indexing `FeatureTableSource` does), and every process on a
    node shares the page cache.
    """

    ndim = 4

    def __init__(self, files: list[Path], shard_size: int, shape: tuple[int, int, int, int]) -> None:
        self.arrays = [np.load(f, mmap_mode="r") for f in files]
        self.shard_size = shard_size
        self.shape = torch.Size(shape)

    def __getitem__(self, key: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        index, crop = key
        out = torch.empty((len(index), *self.shape[2:]), dtype=torch.float16)
        shard = index // self.shard_size
        for s in shard.unique().tolist():
            rows = (shard == s).nonzero().squeeze(1)
            local = (index[rows] - s * self.shard_size).numpy()
            out[rows] = torch.from_numpy(np.ascontiguousarray(self.arrays[s][local, crop[rows].numpy()]))
        return out


def load_dinov2_features(features_dir: str, data: TokenData, weights: str = "") -> FeatureShards:
    """The feature table of `data` (a code folder) from `features_dir`, checked against it.

    Checks: extraction finished; same number of images, crops and grid as the codes; and,
    when `weights` (foresight.encoder_weights) exists here, the same DINOv2 checkpoint.
    """
    folder = Path(features_dir)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"data.features_dir={features_dir!r} holds no DINOv2 features ({MANIFEST} missing): create "
                        "them with `mirai-lab prepare --encoder dinov2 --weights W --images DIR --codes DIR --out DIR`")
    m = read_json(folder / MANIFEST)
    if not m.get("complete"):
        raise UserError(f"data.features_dir={features_dir!r}: the extraction did not finish; run the same "
                        "`mirai-lab prepare --encoder dinov2 ...` command again to complete it")
    if data.codes.ndim != 3:
        raise UserError("foresight.encoder='dinov2' needs data.dataset='codes' (a LlamaGen code folder)")
    for key, value in (("n_images", len(data.codes)), ("n_aug", data.n_crops), ("grid", list(data.grid))):
        if m[key] != value:
            raise UserError(f"data.features_dir={features_dir!r}: {key}={m[key]} but data.codes_dir has {value}: "
                            "expected features extracted from the same code folder")
    if weights and Path(weights).exists() and file_sha256(resolve_weights(weights)) != m["weights_sha256"]:
        raise UserError(f"foresight.encoder_weights={weights!r} is not the checkpoint the features in "
                        f"{features_dir!r} were made with ({m['weights']})")
    shape = (m["n_images"], m["n_aug"], m["grid"][0] * m["grid"][1], m["dim"])
    return FeatureShards([folder / name for name in m["shards"]], m["shard_size"], shape)
