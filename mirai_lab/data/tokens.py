"""The tokenized data set a run trains on, built once per (data, tokenizer) and cached.

The cache key hashes the image contents and every tokenizer setting, so a changed data set
or codebook size can never be served stale codes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mirai_lab.config import DataConfig, TokenizerConfig
from mirai_lab.data.codes import load_code_folder
from mirai_lab.data.images import load_images, split_indices
from mirai_lab.data.tokenizer import PatchTokenizer, fit_codebook, to_patches
from mirai_lab.data.types import TokenData
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash, tensor_hash
from mirai_lab.files.tensors import load_tensors, save_tensors


def prepare_tokens(data: DataConfig, tok: TokenizerConfig, cache: Path) -> TokenData:
    if data.dataset == "codes":  # LlamaGen code folder: already tokenized, no pixels (see codes.py)
        return load_code_folder(data.codes_dir, tok.codebook_size, data.val_fraction, data.split_seed, cache)
    images = load_images(data.dataset)
    h, w = images.size
    if h % tok.patch or w % tok.patch:
        raise UserError(f"tokenizer.patch={tok.patch} does not divide the {h}x{w} images of {data.dataset}")
    grid = (h // tok.patch, w // tok.patch)
    train_idx, val_idx = split_indices(len(images.labels), data.val_fraction, data.split_seed)
    settings = {"data": data.dataset, "val_fraction": data.val_fraction, "split_seed": data.split_seed,
                "patch": tok.patch, "codebook_size": tok.codebook_size, "iters": tok.iters, "seed": tok.seed,
                "images": tensor_hash(images.images, images.labels), "version": 1}
    key = content_hash(settings)

    def load(path: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
        blob = load_tensors(path, checked=True)
        codebook, codes = blob["codebook"], blob["codes"]
        n_cells = grid[0] * grid[1]
        if codebook.shape != (tok.codebook_size, tok.patch**2) or codes.shape != (len(images.labels), n_cells):
            raise CorruptFile(f"{path}: codebook {tuple(codebook.shape)} and codes {tuple(codes.shape)} do not fit "
                              "these settings")
        return codebook, codes, float(blob["recon_mse"])

    def build() -> tuple[torch.Tensor, torch.Tensor, float]:
        train_patches = to_patches(images.images[train_idx], tok.patch)
        codebook = fit_codebook(train_patches.reshape(-1, train_patches.shape[-1]), tok.codebook_size, tok.iters,
                                tok.seed)
        tokenizer = PatchTokenizer(codebook, tok.patch, grid)
        codes = tokenizer.encode(images.images)
        recon_mse = float(((tokenizer.decode(codes[val_idx]) - images.images[val_idx]) ** 2).mean())
        return codebook, codes, recon_mse

    def save(path: Path, value: tuple[torch.Tensor, torch.Tensor, float]) -> None:
        codebook, codes, recon_mse = value
        save_tensors(path, {"codebook": codebook, "codes": codes, "recon_mse": torch.tensor(recon_mse)})

    # sweep workers starting together fit the tokenizer once
    codebook, codes, recon_mse = load_or_build(cache / f"tokens-{key}.pt", load, build, save)
    tokenizer = PatchTokenizer(codebook, tok.patch, grid)
    return TokenData(key=key, codes=codes, labels=images.labels, num_classes=images.num_classes, grid=grid,
                     vocab_size=tokenizer.vocab_size, train_idx=train_idx, val_idx=val_idx, images=images,
                     tokenizer=tokenizer, recon_mse=recon_mse)
