"""An in-project encoder's own quality: the linear probe, the mask score, and their one cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info, threadpool_limits

from mirai_lab.config import build_config
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.errors import UserError
from mirai_lab.foresight import encoders
from mirai_lab.foresight.encoder_quality import QUALITY_SETTINGS, encoder_quality, fixed_mask, linear_probe
from mirai_lab.foresight.encoders import encoder_features, encoder_inputs, in_chunks, trained_encoder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("quality")


@pytest.fixture(scope="module")
def data(cache):
    """The synthetic smoke set: 2,000 16x16 images of 4 classes, 4x4 grid, 32 codes (1,800 train, 200 val)."""
    cfg = build_config(None, TINY)
    return prepare_tokens(cfg.data, cfg.tokenizer, cache)


def labelled(n: int, classes: int, seed: int) -> torch.Tensor:
    """Balanced labels in a seeded random order."""
    return (torch.arange(n) % classes)[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def test_probe_reads_the_class_from_features_that_encode_it():
    # one-hot of the label in 16 dims plus N(0, 0.1^2) noise: two classes differ by sqrt(2) along
    # e_a - e_b, where the noise has sd 0.1 * sqrt(2), so a val point crosses the midpoint at
    # 5 sd (p ~ 3e-7; ~1e-4 for all 400) and the fixed seeds make the draw the same on every run
    g = torch.Generator().manual_seed(0)
    train_y, val_y = labelled(800, 4, 1), labelled(400, 4, 2)
    train_x = F.one_hot(train_y, 16).double() + 0.1 * torch.randn(800, 16, generator=g, dtype=torch.float64)
    val_x = F.one_hot(val_y, 16).double() + 0.1 * torch.randn(400, 16, generator=g, dtype=torch.float64)
    assert linear_probe(train_x, train_y, val_x, val_y) == 1.0


def test_probe_on_pure_noise_stays_at_chance():
    # val features carry nothing of the balanced val labels, so each val prediction is right with
    # probability exactly 1/4 whatever the fit: accuracy has mean 0.25 and sd sqrt(0.25 * 0.75 / 1000)
    # = 0.0137; the bound is 4 sd (a probe that saw the val labels would sit far above it)
    g = torch.Generator().manual_seed(0)
    train_y, val_y = labelled(2000, 4, 1), labelled(1000, 4, 2)
    acc = linear_probe(torch.randn(2000, 32, generator=g), train_y, torch.randn(1000, 32, generator=g), val_y)
    assert abs(acc - 0.25) < 4 * 0.0137


def test_the_probe_fits_on_one_blas_thread_whatever_the_caller_allows(monkeypatch):
    # OpenBLAS's sums change with its thread count and lbfgs carries that to another optimum (the
    # pixel autoencoder's probe read 0.819 on one thread, 0.817 on two): the fit must not inherit
    # the caller's thread count, here set to 2 around the call
    seen = []
    fit = LogisticRegression.fit

    def spying_fit(self, *args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spying_fit)
    g = torch.Generator().manual_seed(0)
    with threadpool_limits(2):
        linear_probe(torch.randn(200, 8, generator=g), labelled(200, 4, 1), torch.randn(100, 8, generator=g),
                     labelled(100, 4, 2))
    assert seen and set(seen) == {1}


def test_the_fixed_mask_hides_half_the_cells_of_every_image_the_same_way():
    mask = fixed_mask(6, 49, 0.5, seed=0)
    assert mask.sum(1).tolist() == [24] * 6
    assert torch.equal(mask, fixed_mask(6, 49, 0.5, seed=0)) and not torch.equal(mask, fixed_mask(6, 49, 0.5, 1))


def test_a_trained_mtm_predicts_masked_tokens_better_than_the_most_common_token(data, cache):
    q = encoder_quality("mtm", "full", data, cache, steps=40)
    assert set(q) == {"encoder_mask_acc", "encoder_mask_acc_majority", "encoder_probe_acc", "encoder_probe_chance"}
    # the floor, recomputed here: the train split's most common token, scored on the masked val cells
    val = data.codes[data.val_idx]
    masked = fixed_mask(*val.shape, QUALITY_SETTINGS["mask_ratio"], QUALITY_SETTINGS["mask_seed"])
    majority = torch.mode(data.codes[data.train_idx].reshape(-1)).values
    assert q["encoder_mask_acc_majority"] == pytest.approx(float((val[masked] == majority).double().mean()), abs=1e-12)
    assert q["encoder_mask_acc"] > q["encoder_mask_acc_majority"]
    assert q["encoder_probe_chance"] == 0.25  # 4 classes


def test_a_trained_pixel_ae_reconstructs_masked_patches_better_than_the_mean_patch(data, cache):
    q = encoder_quality("pixel-ae", "full", data, cache, steps=40)
    assert set(q) == {"encoder_mask_mse", "encoder_mask_mse_mean", "encoder_probe_acc", "encoder_probe_chance"}
    assert q["encoder_mask_mse"] < q["encoder_mask_mse_mean"]


def test_the_feature_table_is_the_cached_encoders_own(data, cache):
    feats = encoder_features("mtm", "full", data, cache, steps=40)
    before = torch.get_rng_state()
    enc = trained_encoder("mtm", "full", data, cache, steps=40)  # loaded: built with the table above
    assert torch.equal(torch.get_rng_state(), before)
    with torch.no_grad():
        again = in_chunks(lambda idx: enc.features(encoder_inputs("mtm", data, idx)).half(), torch.arange(len(feats)))
    assert torch.equal(again, feats)


def test_quality_is_measured_once_and_a_corrupt_file_is_remeasured_from_the_cached_weights(data, tmp_path,
                                                                                              monkeypatch, capsys):
    trainings = []
    real = encoders._train_encoder

    def spy(*args, **kwargs):
        trainings.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(encoders, "_train_encoder", spy)
    first = encoder_quality("mtm", "full", data, tmp_path, steps=2)
    assert encoder_quality("mtm", "full", data, tmp_path, steps=2) == first
    encoder_features("mtm", "full", data, tmp_path, steps=2)  # the table the probe read: cached as well
    assert trainings == ["mtm"]
    (path,) = tmp_path.glob("quality-mtm-*.json")
    path.write_text('{"encoder_mask_acc": 0.5')
    capsys.readouterr()
    assert encoder_quality("mtm", "full", data, tmp_path, steps=2) == first
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: cache ") and path.name in err[0], err
    assert trainings == ["mtm"] and not list(tmp_path.glob("*.lock"))


def test_dinov2_quality_is_refused_in_one_line(data, cache):
    with pytest.raises(UserError, match="encoder 'dinov2': expected one of mtm, pixel-ae"):
        encoder_quality("dinov2", "full", data, cache)
