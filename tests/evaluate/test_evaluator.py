"""Evaluation: domain classifier and its cache, torch-fidelity metrics, structure score.

Every test here runs with network connections refused: the metrics must work offline.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from mirai_lab.errors import UserError
from mirai_lab.evaluate import classifier as clf_mod
from mirai_lab.evaluate.classifier import DomainClassifier, train_domain_classifier
from mirai_lab.evaluate.fidelity import (
    check_inception_weights,
    class_accuracy,
    domain_extractor_name,
    domain_metrics,
    floors,
)
from mirai_lab.evaluate.structure import structure_map, structure_score
from mirai_lab.files.digest import tensor_hash

METRICS = {"fid_domain", "is_domain", "kid_domain", "precision_domain", "recall_domain"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every outgoing connection, so a download attempt fails loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def stripes(n_per_class: int, seed: int, size: int = 16) -> tuple[Tensor, Tensor]:
    """10 classes of 16x16 stripe and checker patterns with random phase and pixel noise."""
    g = torch.Generator().manual_seed(seed)
    n = 10 * n_per_class
    labels = torch.arange(n) % 10
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dy, dx = torch.randint(0, 8, (2, n, 1, 1), generator=g)
    y, x = yy + dy, xx + dx
    patterns = torch.stack(
        [
            (y // 2) % 2,
            (y // 4) % 2,
            (x // 2) % 2,
            (x // 4) % 2,
            ((x + y) // 2) % 2,
            ((x + y) // 4) % 2,
            ((x - y + 64) // 4) % 2,
            (x // 4 + y // 4) % 2,
            (x // 8) % 2,
            (y // 8) % 2,
        ]
    ).float()  # (10, n, size, size)
    images = patterns[labels, torch.arange(n)] + 0.15 * torch.randn(n, size, size, generator=g)
    return images.clamp(0, 1).unsqueeze(1), labels


@pytest.fixture(scope="module")
def stripes_data() -> dict[str, Tensor]:
    train_x, train_y = stripes(60, seed=0)
    val_x, val_y = stripes(40, seed=1)
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


@pytest.fixture(scope="module")
def trained(stripes_data: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory) -> DomainClassifier:
    d = stripes_data
    cache = tmp_path_factory.mktemp("classifier-cache")
    return train_domain_classifier(d["train_x"], d["train_y"], d["val_x"], d["val_y"], 10, cache, steps=100)


class LinearFeatures(nn.Module):
    """A stand-in classifier whose features are a fixed known linear map of the pixels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.register_buffer("A", torch.randn(dim, dim, generator=g) / dim**0.5)
        self.weights_hash = "linear-" + tensor_hash(self.A)

    def features(self, x: Tensor) -> Tensor:
        return (x.flatten(1) - 0.5) @ self.A.T * 10

    def head(self, features: Tensor) -> Tensor:
        return features[:, :5]


def gaussian_images(n: int, shift: float, seed: int) -> Tensor:
    """(n, 1, 4, 4) images whose 16 pixels are Gaussian (well inside [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 + shift * torch.linspace(-1, 1, 16)
    scale = 0.04 * (1 + torch.arange(16) / 16)
    return (mean + scale * torch.randn(n, 16, generator=g)).clamp(0, 1).reshape(n, 1, 4, 4)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_fid_through_torch_fidelity_matches_frechet_formula() -> None:
    model = LinearFeatures(16)
    fake, real = gaussian_images(300, 0.05, seed=1), gaussian_images(250, 0.0, seed=2)
    out = domain_metrics(fake, real, model, isc=False, kid=False, prc=False)
    assert set(out) == {"fid_domain"}
    expected = frechet(model.features(fake).double().numpy(), model.features(real).double().numpy())
    assert expected > 1.0
    assert out["fid_domain"] == pytest.approx(expected, abs=1e-3)


def test_tiny_run_gives_every_metric_finite() -> None:
    model = LinearFeatures(16)
    out = domain_metrics(gaussian_images(6, 0.05, seed=3), gaussian_images(5, 0.0, seed=4), model)
    assert set(out) == METRICS
    assert all(np.isfinite(v) for v in out.values())
    assert 1.0 <= out["is_domain"] <= 5.0
    assert 0.0 <= out["precision_domain"] <= 1.0 and 0.0 <= out["recall_domain"] <= 1.0


def test_metric_inputs_are_validated() -> None:
    model = LinearFeatures(16)
    real = gaussian_images(20, 0.0, seed=5)
    with pytest.raises(UserError, match="at least 4 images"):
        domain_metrics(real[:3], real, model)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        domain_metrics(real * 255, real, model)
    with pytest.raises(UserError, match="dtype"):
        domain_metrics((real * 255).to(torch.uint8), real, model)
    with pytest.raises(UserError, match="no metric"):
        domain_metrics(real, real, model, isc=False, fid=False, kid=False, prc=False)
    with pytest.raises(UserError, match="true or false"):
        domain_metrics(real, real, model, fid="yes")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="differ in shape"):
        domain_metrics(torch.rand(8, 1, 8, 8), real, model)


def test_extractor_is_named_by_weights_and_registered_once() -> None:
    model = LinearFeatures(16)
    name = domain_extractor_name(model)
    assert model.weights_hash in name
    assert domain_extractor_name(model) == name
    other = LinearFeatures(16)
    other.A.mul_(2)
    other.weights_hash = "linear-" + tensor_hash(other.A)
    assert domain_extractor_name(other) != name


def test_classifier_learns_and_fits_any_size(trained: DomainClassifier, stripes_data: dict[str, Tensor]) -> None:
    assert trained.val_accuracy > 0.9
    assert not any(p.requires_grad for p in trained.parameters())
    for size in (8, 16, 28):
        x = torch.rand(3, 1, size, size)
        assert trained.features(x).shape == (3, 64)
        assert trained.logits(x).shape == (3, 10)
        assert trained.predict(x).shape == (3,)
    d = stripes_data
    assert class_accuracy(d["val_x"], d["val_y"], trained) == pytest.approx(trained.val_accuracy)
    assert class_accuracy(d["val_x"], (d["val_y"] + 1) % 10, trained) < 0.2


def test_classifier_cache_loads_and_rebuilds_corrupt_file(
    stripes_data: dict[str, Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = stripes_data
    args = (d["train_x"][:200], d["train_y"][:200], d["val_x"][:50], d["val_y"][:50], 10, tmp_path)
    first = train_domain_classifier(*args, steps=10)
    (path,) = tmp_path.glob("classifier-*.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["val_accuracy"] == first.val_accuracy and 0.0 <= first.val_accuracy <= 1.0
    assert payload["num_classes"] == 10 and payload["image_size"] == [16, 16]

    real_fit = clf_mod._fit

    def no_fit(*a: object, **k: object) -> None:
        raise AssertionError("retrained although the cache was valid")

    monkeypatch.setattr(clf_mod, "_fit", no_fit)
    cached = train_domain_classifier(*args, steps=10)
    assert cached.weights_hash == first.weights_hash
    assert cached.val_accuracy == first.val_accuracy

    monkeypatch.setattr(clf_mod, "_fit", real_fit)
    for damage in (path.read_bytes()[:1000], b"not a checkpoint"):  # truncated; not a tensor file
        path.write_bytes(damage)
        rebuilt = train_domain_classifier(*args, steps=10)
        assert rebuilt.weights_hash == first.weights_hash  # deterministic given the seed
        assert torch.load(path, weights_only=True)["val_accuracy"] == first.val_accuracy

    train_domain_classifier(*args, steps=11)
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 2  # settings are part of the key


def test_classifier_rejects_bad_labels(stripes_data: dict[str, Tensor], tmp_path: Path) -> None:
    d = stripes_data
    with pytest.raises(UserError, match="labels"):
        train_domain_classifier(d["train_x"], d["train_y"] + 5, d["val_x"], d["val_y"], 10, tmp_path, steps=1)


def test_real_vs_real_floor_is_far_below_noise(trained: DomainClassifier, stripes_data: dict[str, Tensor]) -> None:
    d = stripes_data
    decoded = d["val_x"] + 0.05 * torch.randn(d["val_x"].shape, generator=torch.Generator().manual_seed(0))
    out = floors(d["train_x"], d["val_x"], decoded.clamp(0, 1), trained, n=400)
    assert set(out) == {"real_vs_real", "tokenizer_ceiling", "real_vs_noise"}
    assert all(set(m) == METRICS for m in out.values())
    rr, noise = out["real_vs_real"], out["real_vs_noise"]
    assert rr["fid_domain"] * 100 < noise["fid_domain"]
    assert out["tokenizer_ceiling"]["fid_domain"] * 10 < noise["fid_domain"]
    assert abs(rr["kid_domain"]) * 10 < noise["kid_domain"]
    assert rr["precision_domain"] > 0.5 and noise["precision_domain"] < 0.1
    assert rr["is_domain"] > 5 * noise["is_domain"]
    with pytest.raises(UserError, match="n=999"):
        floors(d["train_x"], d["val_x"], None, trained, n=999)


def test_structure_score_exact_values() -> None:
    e1, e2 = torch.eye(2)
    rows = torch.stack([e1, e1, e2, e2])[None]  # 2x2: each row one state, rows orthogonal
    # neighbours: 2 right pairs (cos 1) + 2 down pairs (cos 0) -> 1/2; distinct pairs: 4 of 12 -> 1/3
    assert structure_score(rows, 2, 2) == pytest.approx(1 / 2 - 1 / 3)
    checker = torch.stack([e1, -e1, -e1, e1])[None]
    # neighbours all -1; distinct pairs: 4 of 12 same sign -> (4 - 8) / 12
    assert structure_score(checker, 2, 2) == pytest.approx(-1 - (-1 / 3))
    constant = torch.randn(1, 1, 8).expand(3, 12, 8)
    assert structure_score(constant, 3, 4) == pytest.approx(0.0, abs=1e-12)
    # transposing a row-structured field gives column structure: same score
    cols = rows.reshape(1, 2, 2, 2).transpose(1, 2).reshape(1, 4, 2)
    assert structure_score(cols, 2, 2) == pytest.approx(1 / 6)


def test_structure_score_separates_smooth_from_shuffled() -> None:
    g = torch.Generator().manual_seed(0)
    H, W = 7, 7
    yy, xx = torch.meshgrid(torch.arange(H) / H, torch.arange(W) / W, indexing="ij")
    smooth = torch.stack([torch.cos(3 * yy), torch.sin(3 * yy), torch.cos(3 * xx), torch.sin(3 * xx)], -1)
    smooth = smooth.reshape(1, H * W, 4) + 0.05 * torch.randn(4, H * W, 4, generator=g)
    shuffled = smooth[:, torch.randperm(H * W, generator=g)]
    assert structure_score(smooth, H, W) > 0.2
    assert abs(structure_score(shuffled, H, W)) < 0.1
    with pytest.raises(ValueError):
        structure_score(smooth, 6, 7)


@pytest.mark.parametrize("H, W, image", [(7, 7, None), (2, 3, 1)])  # t-SNE; PCA on a tiny grid
def test_structure_map_writes_png(tmp_path: Path, H: int, W: int, image: int | None) -> None:
    hidden = torch.randn(2, H * W, 8, generator=torch.Generator().manual_seed(0))
    path = structure_map(hidden, H, W, tmp_path / "structure.png", image=image)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["structure.png"]


def test_inception_weights_missing_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(UserError) as info:
        check_inception_weights()
    assert str(expected) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_inception_metrics_run_offline_from_placed_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a weights file where torch-fidelity looks (random weights here), no download is tried."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    from mirai_lab.evaluate.fidelity import inception_metrics

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with monkeypatch.context() as m:  # build the network once without weights, to get a state dict
        m.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        state = inception.FeatureExtractorInceptionV3("random", ["2048"]).state_dict()
    path = tmp_path / "hub" / "checkpoints" / Path(inception.URL_INCEPTION_V3).name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    assert check_inception_weights() == path

    images = stripes(1, seed=2)[0]
    out = inception_metrics(images[:4], images[4:8])
    assert set(out) == {m.replace("domain", "inception") for m in METRICS}
    assert all(np.isfinite(v) for v in out.values())
