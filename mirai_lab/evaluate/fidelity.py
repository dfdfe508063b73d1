"""FID, IS, KID and precision/recall through torch-fidelity, offline.

The domain metrics (`fid_domain`, ...) run torch-fidelity's own computations on the
features of the in-project domain classifier, registered as a torch-fidelity feature
extractor named after the classifier's weights hash: torch-fidelity keys its caches and
registry by name only, so a retrained classifier must never share a name (we also pass
cache=False). They are not comparable with ImageNet FID. The Inception path serves only
where the user has placed torch-fidelity's weights file; nothing here touches the network.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

import threadpoolctl
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.evaluate.classifier import DomainClassifier, check_images
from mirai_lab.files.tensors import load_tensors

FEATURES = "penultimate"
LOGITS = "logits"
# torch-fidelity's precision/recall takes the distance to the 3rd neighbour within a set,
# so a set needs at least 4 samples; KID and IS need fewer.
MIN_SAMPLES = DEFAULTS["prc_neighborhood"] + 1
# IS estimates the class marginal within each split: keep at least this many samples in one.
ISC_SPLIT_MIN = 50
# Result names and torch-fidelity's keys for them.
METRIC_KEYS = {
    "fid": {"fid": torch_fidelity.KEY_METRIC_FID},
    "isc": {"is": torch_fidelity.KEY_METRIC_ISC_MEAN},
    "kid": {"kid": torch_fidelity.KEY_METRIC_KID_MEAN},
    "prc": {"precision": torch_fidelity.KEY_METRIC_PRECISION, "recall": torch_fidelity.KEY_METRIC_RECALL},
}


class FeatureModel(Protocol):
    """What the domain extractor needs from a classifier (DomainClassifier fits).

    Logits are `head(features(x))`, so one pass gives both.
    """

    weights_hash: str

    def features(self, x: Tensor) -> Tensor: ...

    def head(self, features: Tensor) -> Tensor: ...


class _Images(Dataset):
    """A fixed tensor of images as the Dataset input torch-fidelity accepts."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def domain_extractor_name(classifier: FeatureModel) -> str:
    """Register (once per weights hash) and return the torch-fidelity name of `classifier`.

    torch-fidelity instantiates extractors from a class, so the class carries the model;
    each instance works on a deep copy because torch-fidelity moves it to the GPU and
    switches off its gradients. The domain extractor takes the project's own image
    convention, (B, 1, H, W) float in [0, 1]: quantising to uint8 would only add error.
    """
    if not classifier.weights_hash:
        raise ValueError("the classifier has no weights hash; freeze it before evaluation")
    name = f"mirai-domain-{classifier.weights_hash}"
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name

    class DomainExtractor(FeatureExtractorBase):
        def __init__(self, name: str, features_list: list[str], **_: Any) -> None:
            super().__init__(name, features_list)
            self.model = copy.deepcopy(classifier)

        @staticmethod
        def get_provided_features_list() -> tuple[str, str]:
            return FEATURES, LOGITS

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return LOGITS if metric == "isc" else FEATURES

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            feats = self.model.features(x)
            out = {FEATURES: feats, LOGITS: self.model.head(feats) if LOGITS in self.features_list else None}
            return tuple(out[name].float() for name in self.features_list)

    torch_fidelity.register_feature_extractor(name, DomainExtractor)
    return name


def _calculate(fake: Tensor, real: Tensor, extractor: str, suffix: str, flags: dict[str, bool], **options: Any) -> dict:
    """One torch-fidelity call with sample-count-safe settings; keys renamed `<metric>_<suffix>`."""
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise UserError(f"metric switch {flag} must be true or false, got {value!r}")
    if not any(flags.values()):
        raise UserError("no metric requested: set at least one of isc, fid, kid, prc")
    if fake.shape[1:] != real.shape[1:]:
        raise UserError(f"generated and real images differ in shape: {tuple(fake.shape)} vs {tuple(real.shape)}")
    n_fake, n_real = len(fake), len(real)
    if min(n_fake, n_real) < MIN_SAMPLES:
        raise UserError(f"metrics need at least {MIN_SAMPLES} images per set, got {n_fake} and {n_real}")
    kid_subset = min(DEFAULTS["kid_subset_size"], n_fake, n_real)
    # When a subset is all of both sets, every subset gives the same (order-free) estimate.
    kid_subsets = 1 if n_fake == n_real == kid_subset else DEFAULTS["kid_subsets"]
    kwargs = {
        # torch-fidelity moves batches to the GPU itself (and pins CPU memory on the way)
        "input1": _Images(fake.detach().cpu()),
        "input2": _Images(real.detach().cpu()),
        "feature_extractor": extractor,
        "cuda": torch.cuda.is_available(),
        "batch_size": 256,
        "verbose": False,
        "cache": False,
        # no DataLoader worker processes: the inputs are already in memory
        "save_cpu_ram": True,
        "isc_splits": min(DEFAULTS["isc_splits"], max(1, n_fake // ISC_SPLIT_MIN)),
        "kid_subset_size": kid_subset,
        "kid_subsets": kid_subsets,
        **flags,
        **options,
    }
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:  # torch-fidelity ignores unknown options silently
        raise ValueError(f"torch-fidelity does not know the options {unknown}")
    # BLAS threads follow torch's setting: KID's many small products on more threads than
    # the cores left free (parallel workers, busy machine) ran 15x slower than on one.
    with threadpoolctl.threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        raw = torch_fidelity.calculate_metrics(**kwargs)
    return {
        f"{name}_{suffix}": float(raw[key])
        for flag, keys in METRIC_KEYS.items()
        if flags[flag]
        for name, key in keys.items()
    }


def domain_metrics(
    fake: Tensor,
    real: Tensor,
    classifier: FeatureModel,
    *,
    isc: bool = True,
    fid: bool = True,
    kid: bool = True,
    prc: bool = True,
) -> dict[str, float]:
    """fid_domain, is_domain, kid_domain, precision_domain, recall_domain of `fake` vs `real`.

    Images are (N, 1, H, W) float in [0, 1]; precision is the share of generated samples
    inside the real manifold, recall the converse. IS uses the generated samples only.
    """
    check_images(fake, "generated images")
    check_images(real, "real images")
    flags = {"isc": isc, "fid": fid, "kid": kid, "prc": prc}
    return _calculate(fake, real, domain_extractor_name(classifier), "domain", flags)


def class_accuracy(images: Tensor, labels: Tensor, classifier: DomainClassifier) -> float:
    """Fraction of class-conditional samples that the classifier assigns to their class."""
    check_images(images, "generated images")
    if labels.shape != (len(images),):
        raise UserError(f"expected one label per image ({len(images)}), got shape {tuple(labels.shape)}")
    if len(images) == 0:
        raise UserError("class accuracy needs at least one image")
    return (classifier.predict(images) == labels.cpu()).double().mean().item()


def floors(
    train_images: Tensor,
    val_images: Tensor,
    decoded_val_images: Tensor | None,
    classifier: FeatureModel,
    n: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The reference points a generated set must be read against, at the same sample count n.

    `real_vs_real`: n validation vs n training images (the floor: what sampling noise alone
    gives); `tokenizer_ceiling`: the same n validation images decoded by the tokenizer vs
    the training images (the best a model over tokens can reach); `real_vs_noise`: uniform
    noise vs the training images (the scale's other end). The choice of images is seeded.
    """
    check_images(train_images, "training images")
    check_images(val_images, "validation images")
    if decoded_val_images is not None and decoded_val_images.shape != val_images.shape:
        raise UserError(
            f"decoded validation images must match the validation images one to one: "
            f"{tuple(decoded_val_images.shape)} vs {tuple(val_images.shape)}"
        )
    if not MIN_SAMPLES <= n <= min(len(train_images), len(val_images)):
        raise UserError(
            f"floor sample count n={n} must lie in [{MIN_SAMPLES}, {min(len(train_images), len(val_images))}] "
            f"(the smaller of the training and validation set sizes)"
        )
    gen = torch.Generator().manual_seed(seed)
    train = train_images[torch.randperm(len(train_images), generator=gen)[:n]]
    val_idx = torch.randperm(len(val_images), generator=gen)[:n]
    noise = torch.rand((n, *train.shape[1:]), generator=gen)
    out = {"real_vs_real": domain_metrics(val_images[val_idx], train, classifier)}
    if decoded_val_images is not None:
        out["tokenizer_ceiling"] = domain_metrics(decoded_val_images[val_idx], train, classifier)
    out["real_vs_noise"] = domain_metrics(noise, train, classifier)
    return out


def check_inception_weights() -> Path:
    """Path of torch-fidelity's Inception weights where it would download them; else UserError.

    The file must load with weights_only=True, so that torch-fidelity's own (unrestricted)
    load of it cannot run pickled code.
    """
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if not path.is_file():
        raise UserError(
            f"Inception weights not found: download {URL_INCEPTION_V3} on a machine with network "
            f"access and place it at {path} (set TORCH_HOME to choose another root)"
        )
    try:
        load_tensors(path)
    except CorruptFile as exc:
        raise UserError(f"Inception weights at {path} are unreadable; replace the file ({exc})") from exc
    return path


def inception_metrics(
    fake: Tensor,
    real: Tensor,
    *,
    isc: bool = True,
    fid: bool = True,
    kid: bool = True,
    prc: bool = True,
) -> dict[str, float]:
    """The standard Inception-v3 metrics (`fid_inception`, ...) from local weights only.

    Images are (N, 1, H, W) float in [0, 1]; they are handed over as the 3-channel uint8
    images torch-fidelity's Inception expects, which resizes them to 299x299 itself.
    """
    check_images(fake, "generated images")
    check_images(real, "real images")
    weights = check_inception_weights()

    def rgb8(images: Tensor) -> Tensor:
        return images.mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1)

    flags = {"isc": isc, "fid": fid, "kid": kid, "prc": prc}
    return _calculate(
        rgb8(fake),
        rgb8(real),
        "inception-v3-compat",
        "inception",
        flags,
        feature_extractor_weights_path=str(weights),
    )
