"""The domain classifier: the feature space of every `*_domain` metric.

Inception features mean little on 28x28 grayscale silhouettes and need weights from the
network, so the domain metrics use a small CNN trained in-project on the training split.
It trains in seconds on a CPU, is deterministic given the seed, and is cached under a name
that hashes the data and every setting, so a changed data set or setting never reuses a
stale classifier. Its weights hash names the torch-fidelity extractor built on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.digest import content_hash, tensor_hash
from mirai_lab.files.tensors import load_tensors, save_tensors

# Bump when the network or the training procedure changes: it is part of the cache key.
VERSION = 1
DEFAULT_STEPS = 300
BATCH_SIZE = 128
LR = 3e-3
WEIGHT_DECAY = 1e-4
WIDTH = 16


class DomainClassifier(nn.Module):
    """Four conv layers, global average pooling (any H, W), a linear head.

    The globally pooled activations (4 * width dims) are the penultimate features used by
    FID, KID and precision/recall; the logits feed the Inception Score.
    """

    def __init__(self, num_classes: int, image_size: tuple[int, int], width: int = WIDTH) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel, stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        # Downsampling early keeps full-resolution activations (and BatchNorm over them, the
        # main CPU cost) small; the receptive field still spans 24 input pixels.
        self.trunk = nn.Sequential(
            *block(1, 2 * w, 4, 2),
            *block(2 * w, 4 * w, 3, 2),
            *block(4 * w, 4 * w, 3, 1),
            *block(4 * w, 4 * w, 3, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)
        self.num_classes = num_classes
        self.image_size = tuple(image_size)
        self.width = width
        self.val_accuracy = float("nan")
        self.weights_hash = ""

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, 4 * width) of images (N, 1, H, W) in [0, 1]."""
        return self.trunk(x)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Predicted class (N,) int64, in batches so that large sample sets fit in memory."""
        device = next(self.parameters()).device
        out = [self.logits(chunk.to(device)).argmax(1).cpu() for chunk in x.split(batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def freeze(self) -> DomainClassifier:
        """Eval mode, no gradients, and the hash of the weights that now stay fixed."""
        self.eval().requires_grad_(False)
        state = self.state_dict()
        self.weights_hash = tensor_hash(*(state[k].reshape(-1) for k in sorted(state)))
        return self


def check_images(images: Tensor, what: str) -> None:
    """Raise UserError unless `images` follows the (N, 1, H, W) float [0, 1] convention."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UserError(f"{what}: expected images of shape (N, 1, H, W), got {shape}")
    if not images.is_floating_point():
        raise UserError(f"{what}: expected float images in [0, 1], got dtype {images.dtype}")
    if images.numel() and not (images.isfinite().all() and images.min() >= 0 and images.max() <= 1):
        raise UserError(
            f"{what}: pixel values must lie in [0, 1], got {images.min().item():.4g}..{images.max().item():.4g}"
        )


def _check_labels(labels: Tensor, n: int, num_classes: int, what: str) -> None:
    if labels.shape != (n,) or labels.dtype != torch.long:
        raise UserError(f"{what}: expected int64 labels of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{what}: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")


def _new_classifier(num_classes: int, image_size: tuple[int, int], settings: dict) -> DomainClassifier:
    """A seeded fresh network; its init runs on a forked RNG, so that neither fitting nor loading
    the classifier advances the caller's torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        return DomainClassifier(num_classes, image_size, settings["width"])


def _fit(train_images: Tensor, train_labels: Tensor, settings: dict) -> DomainClassifier:
    """AdamW with a one-cycle schedule; no augmentation (it did not help at this length).
    Trained channels-last: the convolutions' backward is about 15% faster on CPU that way."""
    seed, steps, lr = settings["seed"], settings["steps"], settings["lr"]
    model = _new_classifier(settings["num_classes"], tuple(train_images.shape[-2:]), settings)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train().to(memory_format=torch.channels_last)
    for _ in range(steps):
        idx = torch.randint(0, len(train_images), (settings["batch_size"],), generator=gen)
        batch = train_images[idx].contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(batch), train_labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.to(memory_format=torch.contiguous_format)


def _load(path: Path, settings: dict) -> DomainClassifier:
    """Rebuild a cached classifier; a payload that does not fit the settings counts as corrupt."""
    payload = load_tensors(path, checked=True)
    if payload["settings"] != settings:
        raise CorruptFile(f"{path}: its settings differ from the cache key")
    model = _new_classifier(payload["num_classes"], tuple(payload["image_size"]), settings)
    model.load_state_dict(payload["state_dict"])
    model.val_accuracy = float(payload["val_accuracy"])
    return model.freeze()


def train_domain_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    num_classes: int,
    cache_dir: Path,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = BATCH_SIZE,
) -> DomainClassifier:
    """Train (or load from `cache_dir`) the domain classifier; returns it frozen on the CPU.

    The cache file `classifier-<hash>.pt` holds the state dict and metadata (val accuracy,
    image size, number of classes, settings) and loads with weights_only=True; an unreadable
    one is rebuilt.
    """
    check_images(train_images, "classifier training images")
    check_images(val_images, "classifier validation images")
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    if steps < 1 or batch_size < 1:
        raise UserError(f"classifier steps and batch_size must be positive, got {steps} and {batch_size}")
    if len(train_images) == 0 or len(val_images) == 0:
        raise UserError("the classifier needs at least one training and one validation image")
    if train_images.shape[-2:] != val_images.shape[-2:]:
        raise UserError(
            f"training and validation images differ in size: {tuple(train_images.shape[-2:])} "
            f"vs {tuple(val_images.shape[-2:])}"
        )
    _check_labels(train_labels, len(train_images), num_classes, "classifier training labels")
    _check_labels(val_labels, len(val_images), num_classes, "classifier validation labels")

    settings = {
        "version": VERSION,
        "num_classes": num_classes,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "width": WIDTH,
    }
    data = tensor_hash(train_images, train_labels, val_images, val_labels)
    path = Path(cache_dir) / f"classifier-{content_hash({'data': data, **settings})}.pt"

    def build() -> DomainClassifier:
        model = _fit(train_images.detach().float().cpu(), train_labels.cpu(), settings).freeze()
        model.val_accuracy = (model.predict(val_images.detach().float()) == val_labels.cpu()).double().mean().item()
        return model

    def save(path: Path, model: DomainClassifier) -> None:
        save_tensors(path, {"state_dict": model.state_dict(), "val_accuracy": model.val_accuracy,
                            "num_classes": num_classes, "image_size": list(model.image_size), "settings": settings})

    # parallel sweep workers fit it once; the others wait and load it
    return load_or_build(path, lambda p: _load(p, settings), build, save)
