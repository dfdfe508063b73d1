"""LlamaGen token-code folders (ImageNet at scale) as a `TokenData`.

LlamaGen's `autoregressive/train/extract_codes_c2i.py` writes, under its `--code-path`,
`<dataset><size>_codes/<i>.npy` of shape (1, n_aug, H*W) int64 (n_aug = 10 with
`--ten-crop`: five crops of the image and five of its mirror image, in torchvision's
TenCrop order; 2 without: the centre crop and its mirror) and `<dataset><size>_labels/<i>.npy`
of shape (1,), where i is the image's index in torchvision's ImageFolder order. The number
of files is discovered (a DistributedSampler may have padded the folder with a few
duplicates of the first images; they are kept, as LlamaGen keeps them).

Reading a million small files is slow, so the folder is packed once into one int64 `.npy`
in the results cache, keyed by the file list with sizes and mtimes, and memory-mapped:
every DDP rank on a node shares the same pages instead of holding its own copy.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mirai_lab.data.images import split_indices
from mirai_lab.data.types import TokenData
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.atomic import atomic_path
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash
from mirai_lab.files.tensors import load_tensors, save_tensors

READ_THREADS = 8  # file reads overlap on network file systems; parsing stays on the calling thread
READ_BLOCK = 4096


def find_code_dirs(codes_dir: str | Path) -> tuple[Path, Path]:
    """(codes folder, labels folder): `codes_dir` is LlamaGen's --code-path or its `*_codes` folder."""
    root = Path(codes_dir)
    if not root.is_dir():
        raise UserError(f"codes folder {str(root)!r} does not exist: expected LlamaGen's --code-path "
                        "(holding <dataset><size>_codes/ and <dataset><size>_labels/)")
    if root.name.endswith("_codes"):
        codes = root
    else:
        found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith("_codes"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise UserError(f"codes folder {str(root)!r}: expected exactly one *_codes/ folder inside, found {names}")
        codes = found[0]
    labels = codes.with_name(codes.name.removesuffix("_codes") + "_labels")
    if not labels.is_dir():
        raise UserError(f"codes folder {str(codes)!r} has no labels folder beside it: expected {str(labels)!r}")
    return codes, labels


def numbered_files(folder: Path) -> list[tuple[int, int]]:
    """(size, mtime_ns) of `0.npy .. N-1.npy` in index order; any gap or stray name is an error."""
    stats: dict[int, tuple[int, int]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if not dot or ext != "npy":
                continue
            if not stem.isdigit():
                raise UserError(f"{str(folder)!r}: unexpected file {entry.name!r}; expected <index>.npy")
            st = entry.stat()
            stats[int(stem)] = (st.st_size, st.st_mtime_ns)
    if not stats:
        raise UserError(f"{str(folder)!r} holds no .npy files: expected LlamaGen's 0.npy, 1.npy, ...")
    if len(stats) != max(stats) + 1:
        missing = next(i for i in range(len(stats)) if i not in stats)
        raise UserError(f"{str(folder)!r} has {len(stats)} files but no {missing}.npy: expected 0.npy .. "
                        f"{len(stats) - 1}.npy")
    return [stats[i] for i in range(len(stats))]


def folder_fingerprint(codes: Path, labels: Path) -> tuple[str, int]:
    """(hash of names, sizes and mtimes of both folders, number of images); checks they pair up."""
    code_stats, label_stats = numbered_files(codes), numbered_files(labels)
    if len(code_stats) != len(label_stats):
        raise UserError(f"{str(codes)!r} has {len(code_stats)} files but {str(labels)!r} has {len(label_stats)}: "
                        "expected one label per image")
    h = hashlib.sha256()
    for stats in (code_stats, label_stats):
        h.update(np.asarray(stats, dtype=np.int64).tobytes())
    return h.hexdigest()[:12], len(code_stats)


def _read_block(folder: Path, start: int, stop: int, pool: ThreadPoolExecutor) -> list[np.ndarray]:
    """Files `start..stop-1` of `folder` as arrays: the threads only read bytes, and the arrays are
    parsed here, on one thread, because np.load parses each header with `ast.literal_eval`, whose
    compiler state CPython 3.11 shares between threads: parsing in the pool failed at random with
    "SystemError: AST constructor recursion depth mismatch" (https://github.com/python/cpython/issues/106905)."""
    raw = pool.map(lambda i: (folder / f"{i}.npy").read_bytes(), range(start, stop))
    return [np.load(io.BytesIO(data)) for data in raw]


def _pack(codes: Path, labels: Path, n: int, target: Path) -> tuple[torch.Tensor, int]:
    """Copy every code file into one (N, n_aug, G) int64 .npy at `target` (atomically); returns
    the labels and the largest code, checking every file's shape against the first one."""
    first = np.load(codes / "0.npy")
    if first.ndim != 3 or first.shape[0] != 1 or not np.issubdtype(first.dtype, np.integer):
        raise UserError(f"{str(codes / '0.npy')!r} has shape {first.shape} ({first.dtype}): expected LlamaGen's "
                        "(1, n_aug, H*W) integer codes")
    shape = first.shape
    out_labels = np.empty(n, dtype=np.int64)
    max_code = 0
    with atomic_path(target) as tmp, ThreadPoolExecutor(READ_THREADS) as pool:
        packed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(n, *shape[1:]))
        for start in range(0, n, READ_BLOCK):
            stop = min(n, start + READ_BLOCK)
            for i, (code, label) in enumerate(zip(_read_block(codes, start, stop, pool),
                                                  _read_block(labels, start, stop, pool), strict=True), start):
                if code.shape != shape:
                    raise UserError(f"{str(codes / f'{i}.npy')!r} has shape {code.shape}: expected {shape} "
                                    "like 0.npy")
                if label.size != 1:
                    raise UserError(f"{str(labels / f'{i}.npy')!r} has shape {label.shape}: expected one label")
                packed[i] = code[0]
                out_labels[i] = int(label.reshape(()))
            max_code = max(max_code, int(packed[start:stop].max()))
            if int(packed[start:stop].min()) < 0 or int(out_labels[start:stop].min()) < 0:
                raise UserError(f"{str(codes)!r}: negative codes or labels in files {start}..{stop - 1}")
        packed.flush()
        del packed
    return torch.from_numpy(out_labels), max_code


def load_code_folder(codes_dir: str, codebook_size: int, val_fraction: float, split_seed: int,
                     cache: Path) -> TokenData:
    """A LlamaGen code folder as `TokenData`: codes (N, n_aug, G) memory-mapped, a fixed seeded
    train/val split, no pixels and no decoder (evaluation then reports validation NLL only).

    `num_classes` is the largest label + 1 (1000 for ImageNet, matching LlamaGen's class table
    of 1000 + 1 null rows); the grid is the square root of G; the vocabulary is
    `tokenizer.codebook_size` (16384 for LlamaGen's VQ-16), checked against the largest code.
    """
    codes, labels = find_code_dirs(codes_dir)
    fingerprint, n = folder_fingerprint(codes, labels)
    key = content_hash({"codes": fingerprint, "version": 1})
    packed = cache / f"codes-{key}.npy"

    def load(meta: Path) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        blob = load_tensors(meta, checked=True)
        array = np.load(packed, mmap_mode="c")  # copy-on-write: writable for torch, shared pages
        if array.ndim != 3 or array.shape[0] != n or tuple(blob["labels"].shape) != (n,):
            raise CorruptFile(f"{packed}: shape {array.shape} does not fit the {n} images of {str(codes)!r}")
        return blob, array

    def build() -> tuple[dict[str, torch.Tensor], np.ndarray]:
        label_tensor, max_code = _pack(codes, labels, n, packed)
        return {"labels": label_tensor, "max_code": torch.tensor(max_code)}, np.load(packed, mmap_mode="c")

    def save(meta: Path, value: tuple[dict[str, torch.Tensor], np.ndarray]) -> None:
        save_tensors(meta, value[0])  # written last: its presence says the packed codes are complete

    # sweep workers starting together pack the folder once
    blob, array = load_or_build(cache / f"codes-{key}.pt", load, build, save)
    max_code = int(blob["max_code"])
    if max_code >= codebook_size:
        raise UserError(f"tokenizer.codebook_size={codebook_size}: the codes in {str(codes)!r} go up to {max_code}; "
                        f"expected a value > {max_code} (LlamaGen's VQ-16: 16384)")
    g = array.shape[-1]
    side = math.isqrt(g)
    if side * side != g:
        raise UserError(f"{str(codes)!r}: {g} tokens per image is not a square grid: expected H*W with H = W")
    train_idx, val_idx = split_indices(n, val_fraction, split_seed)
    label_tensor = blob["labels"]
    data_key = content_hash({"codes": key, "val_fraction": val_fraction, "split_seed": split_seed,
                             "codebook_size": codebook_size})
    return TokenData(key=data_key, codes=torch.from_numpy(array), labels=label_tensor,
                     num_classes=int(label_tensor.max()) + 1, grid=(side, side), vocab_size=codebook_size,
                     train_idx=train_idx, val_idx=val_idx)
