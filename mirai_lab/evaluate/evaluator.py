"""What a run measures during and after training, on the EMA weights.

In training (every eval interval): validation NLL always; with `eval.metrics` (and
`eval.metrics_in_training`) the domain metrics and class accuracy of `eval.n_samples` CFG
samples. At the end: the same at
`eval.n_samples_final`, the 2D-structure score, and the floors at that sample count, so a
reader of final.json can tell signal from noise. Sampling noise comes from a generator keyed
by (train.seed, step) (rng.py): the variants of one seed draw the same noise at the
same step, so they differ by their models only, and no evaluation touches a training stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from mirai_lab.config import RunConfig
from mirai_lab.data.types import TokenData
from mirai_lab.errors import CorruptFile
from mirai_lab.evaluate.classifier import train_domain_classifier
from mirai_lab.evaluate.fidelity import class_accuracy, domain_metrics, floors, inception_metrics
from mirai_lab.evaluate.structure import structure_map, structure_score
from mirai_lab.files.atomic import atomic_path, read_json, write_json
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash
from mirai_lab.foresight.encoder_quality import QUALITY_KEYS, encoder_quality
from mirai_lab.foresight.encoders import IN_PROJECT
from mirai_lab.metrics import FID, VAL_NLL
from mirai_lab.model.gpt import GPT
from mirai_lab.model.sample import sample_tokens
from mirai_lab.results_dir import SAMPLES, STRUCTURE
from mirai_lab.rng import stream_generator

SAMPLE_CHUNK = 500
# final.json entries that are not sample metrics: settings, counts, references, or logged on the curve already
NOT_ON_CURVE = {VAL_NLL, "structure_block", "structure_score", "tokenizer_mse", "n_samples_final",
                "classifier_val_acc", "steps", "params", "wall_s", *QUALITY_KEYS}


class Evaluator:
    def __init__(self, cfg: RunConfig, data: TokenData, cache: Path) -> None:
        self.cfg = cfg
        self.data = data
        self.cache = cache
        self._classifier = None
        self._reference: dict[int, torch.Tensor] = {}
        # code folders without a decoder have no pixels: only NLL and structure are measured
        self.has_pixels = data.tokenizer is not None and data.images is not None

    @property
    def classifier(self) -> Any:
        if self._classifier is None:
            d = self.data
            imgs, labels = d.images.images, d.labels
            self._classifier = train_domain_classifier(imgs[d.train_idx], labels[d.train_idx], imgs[d.val_idx],
                                                       labels[d.val_idx], d.num_classes, self.cache)
        return self._classifier

    def reference(self, n: int) -> torch.Tensor:
        """n real training-split images (a fixed seeded subset): the FID reference set."""
        if n not in self._reference:
            idx = self.data.train_idx
            pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:n]
            self._reference[n] = self.data.images.images[idx[pick]]
        return self._reference[n]

    @torch.no_grad()
    def val_nll(self, model: GPT) -> float:
        model.eval()
        idx = self.data.val_idx
        total, count = 0.0, 0
        dev = _device(model)
        for i in range(0, len(idx), SAMPLE_CHUNK):
            b = idx[i : i + SAMPLE_CHUNK]
            x, y = self.data.tokens(b).to(dev), self.data.labels[b].to(dev)
            logits, _ = model(x[:, :-1], y)
            total += float(F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="sum"))
            count += x.numel()
        return total / count

    @torch.no_grad()
    def samples(self, model: GPT, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n CFG samples, classes in turn; the noise is keyed by (seed, step), shared by the variants of a seed."""
        e = self.cfg.eval
        dev = _device(model)
        labels = torch.arange(n) % self.data.num_classes
        g = stream_generator(self.cfg.train.seed, step, "sampling", device=dev)
        codes = torch.cat([sample_tokens(model, labels[i : i + SAMPLE_CHUNK].to(dev), e.cfg_scale, e.temperature,
                                         e.top_k, e.top_p, generator=g).cpu() for i in range(0, n, SAMPLE_CHUNK)])
        return self.data.tokenizer.decode(codes), labels

    def sample_metrics(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        n = len(images)
        if self.cfg.eval.extractor == "inception-v3-compat":
            out = inception_metrics(images, self.reference(n))
        else:
            out = domain_metrics(images, self.reference(n), self.classifier)
        out["class_acc"] = class_accuracy(images, labels, self.classifier)
        return out

    def in_training(self, model: GPT, step: int, samples: bool = True) -> dict[str, float]:
        """val_nll (dense points); with `samples`, also the sample metrics at eval.n_samples and their count."""
        row = {VAL_NLL: self.val_nll(model)}
        if samples and self.cfg.eval.metrics and self.cfg.eval.metrics_in_training and self.has_pixels:
            n = self.cfg.eval.n_samples
            row.update(self.sample_metrics(*self.samples(model, n, step)), n_samples=n)
        return row

    def floors(self, n: int) -> dict[str, Any]:
        """real-vs-real, tokenizer ceiling and real-vs-noise at n samples, cached per data + classifier."""
        key = content_hash({"data": self.data.key, "classifier": self.classifier.weights_hash, "n": n})

        def load(path: Path) -> dict[str, Any]:
            out = read_json(path)
            if not all(isinstance(out[name], dict) for name in ("real_vs_real", "real_vs_noise")):
                raise CorruptFile(f"{path} does not hold the floors")
            return out

        def build() -> dict[str, Any]:
            d = self.data
            val = d.images.images[d.val_idx]  # floors() draws n at random: a slice would be class-sorted
            decoded = d.tokenizer.decode(d.tokens(d.val_idx))
            return floors(d.images.images[d.train_idx], val, decoded, self.classifier, min(n, len(val)))

        return load_or_build(self.cache / f"floors-{key}.json", load, build, write_json)

    @torch.no_grad()
    def structure(self, model: GPT, block: int, path: Path) -> float:
        """2D-structure score of block `block` on validation images (cell-indexed read states)."""
        model.eval()
        b = self.data.val_idx[:256]
        dev = _device(model)
        _, hidden = model(self.data.tokens(b).to(dev), self.data.labels[b].to(dev), hidden_blocks=(block,),
                          stop_after=block)
        states = hidden[block][:, 1:].float().cpu()
        h, w = self.data.grid
        structure_map(states, h, w, path, block=block)
        return structure_score(states, h, w)

    def final(self, model: GPT, run_dir: Path, step: int, val_nll: float | None = None) -> dict[str, Any]:
        """The final evaluation of `model` at `step`; `val_nll`, when the caller scored this model
        already (the trainer's last curve point), is taken as is instead of computed again."""
        n = self.cfg.eval.n_samples_final
        f = self.cfg.foresight
        block = f.student_block or max(1, round(2 * model.shape.n_layer / 3))
        out: dict[str, Any] = {VAL_NLL: self.val_nll(model) if val_nll is None else val_nll}
        if not self.has_pixels:
            out["metrics_note"] = "no pixel decoder for these codes: validation NLL and structure only"
        else:
            images, labels = self.samples(model, n, step)  # drawn once: the grid and the metrics see the same samples
            write_sample_grid(images, labels, self.data.num_classes, run_dir / SAMPLES)
            if self.cfg.eval.metrics:
                out.update(self.sample_metrics(images, labels))
                out["floors"] = self.floors(n)
                out["classifier_val_acc"] = self.classifier.val_accuracy
        if f.source == "bidirectional" and f.encoder in IN_PROJECT:  # the Mirai-I source's own quality (cached)
            out.update(encoder_quality(f.encoder, f.visibility, self.data, self.cache, f.encoder_steps))
        out["structure_block"] = block
        out["structure_score"] = self.structure(model, block, run_dir / STRUCTURE)
        out["tokenizer_mse"] = self.data.recon_mse
        out["n_samples_final"] = n
        return out


def final_curve_row(final: dict[str, Any]) -> dict[str, float]:
    """The curve's last point: the final evaluation's sample metrics and their count (`n_samples`),
    so that the curve ends at what final.json says. val_nll is logged at that step already."""
    if FID not in final and "fid_inception" not in final:
        return {}
    row = {k: float(v) for k, v in final.items() if k not in NOT_ON_CURVE and isinstance(v, int | float)
           and not isinstance(v, bool)}
    row["n_samples"] = float(final["n_samples_final"])
    return row


def _device(model: GPT) -> torch.device:
    return next(model.parameters()).device


def write_sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, path: Path,
                      per_class: int = 8, scale: int = 3) -> None:
    """A row per class, the first `per_class` samples of each, upscaled for viewing."""
    rows = [images[labels == c][:per_class] for c in range(num_classes)]
    picked = torch.cat([r for r in rows if len(r)])
    grid = make_grid(picked, nrow=per_class, padding=1, pad_value=0.5)
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    array = (grid[0].clamp(0, 1) * 255).round().byte().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
