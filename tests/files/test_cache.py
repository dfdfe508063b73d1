"""Every cache is read and made by files/cache.py: a corrupt file is reported in one line, deleted and rebuilt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirai_lab.config import build_config
from mirai_lab.data.codes import load_code_folder
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.evaluate.classifier import train_domain_classifier
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.files import cache as cache_module
from mirai_lab.files.cache import load_or_build
from mirai_lab.files.tensors import save_tensors
from mirai_lab.foresight.encoders import encoder_features


@pytest.fixture
def built(monkeypatch):
    """Counts the builds that go through the helper, per cache file name prefix."""
    counts: dict[str, int] = {}
    real = cache_module.load_or_build

    def counting(path, load, build, save):
        def counted():
            kind = path.name.split("-")[0]
            counts[kind] = counts.get(kind, 0) + 1
            return build()

        return real(path, load, counted, save)

    for module in ("mirai_lab.data.tokens", "mirai_lab.data.codes", "mirai_lab.foresight.encoders",
                   "mirai_lab.evaluate.classifier", "mirai_lab.evaluate.evaluator"):
        monkeypatch.setattr(f"{module}.load_or_build", counting)
    return counts


def flip_byte(path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


def assert_one_warning(capsys, needle: str) -> None:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: cache ") and needle in err[0], err


def no_lock_files(folder) -> bool:
    return not list(folder.rglob("*.lock"))


def test_token_cache_with_a_flipped_byte_is_rebuilt(tmp_path, tiny_overrides, built, capsys):
    cfg = build_config(None, tiny_overrides)
    data = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    (path,) = tmp_path.glob("tokens-*.pt")
    flip_byte(path)
    again = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    assert_one_warning(capsys, path.name)
    assert built == {"tokens": 2}
    assert torch.equal(again.codes, data.codes) and torch.equal(again.tokenizer.codebook, data.tokenizer.codebook)
    prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)  # now whole again: loaded, not rebuilt
    assert built == {"tokens": 2} and no_lock_files(tmp_path)


def test_token_cache_of_the_wrong_shape_is_rebuilt(tmp_path, tiny_overrides, built, capsys):
    cfg = build_config(None, tiny_overrides)
    data = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    (path,) = tmp_path.glob("tokens-*.pt")
    save_tensors(path, {"codebook": torch.zeros(3, 3), "codes": data.codes, "recon_mse": torch.tensor(0.0)})
    assert torch.equal(prepare_tokens(cfg.data, cfg.tokenizer, tmp_path).codes, data.codes)
    assert_one_warning(capsys, "do not fit these settings")
    assert built == {"tokens": 2}


def test_encoder_feature_cache_replaced_by_text_is_rebuilt(tmp_path, tiny_overrides, built, capsys):
    cfg = build_config(None, tiny_overrides)
    data = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    feats = encoder_features("mtm", "full", data, tmp_path, steps=2)
    (path,) = tmp_path.glob("features-mtm-*.pt")
    path.write_text("not a tensor file")
    again = encoder_features("mtm", "full", data, tmp_path, steps=2)
    assert_one_warning(capsys, "unreadable or truncated")
    assert built == {"tokens": 1, "encoder": 1, "features": 2} and torch.equal(again, feats)  # weights reused


def small_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 1, 8, 8, generator=g) * 0.3 + labels[:, None, None, None] * 0.6).clamp(0, 1)
    return images, labels


def test_classifier_cache_with_a_pickled_payload_is_replaced_not_run(tmp_path, built, capsys):
    (train, train_y), (val, val_y) = small_images(32, 0), small_images(16, 1)
    first = train_domain_classifier(train, train_y, val, val_y, 2, tmp_path, steps=3, batch_size=8)
    (path,) = tmp_path.glob("classifier-*.pt")

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"state_dict": Payload()}, path)
    again = train_domain_classifier(train, train_y, val, val_y, 2, tmp_path, steps=3, batch_size=8)
    assert_one_warning(capsys, "refusing to load")
    assert built == {"classifier": 2} and again.weights_hash == first.weights_hash


def test_classifier_load_leaves_the_global_rng_untouched(tmp_path):
    (train, train_y), (val, val_y) = small_images(32, 0), small_images(16, 1)
    train_domain_classifier(train, train_y, val, val_y, 2, tmp_path, steps=3, batch_size=8)  # fitted
    before = torch.get_rng_state()
    train_domain_classifier(train, train_y, val, val_y, 2, tmp_path, steps=3, batch_size=8)  # loaded
    assert torch.equal(torch.get_rng_state(), before)


def test_floors_cache_with_garbage_json_is_rebuilt(tmp_path, tiny_overrides, built, capsys):
    cfg = build_config(None, tiny_overrides)
    data = prepare_tokens(cfg.data, cfg.tokenizer, tmp_path)
    ev = Evaluator(cfg, data, tmp_path)
    imgs, labels = data.images.images, data.labels
    ev._classifier = train_domain_classifier(imgs[data.train_idx], labels[data.train_idx], imgs[data.val_idx],
                                             labels[data.val_idx], data.num_classes, tmp_path, steps=2)
    floors = ev.floors(20)
    (path,) = tmp_path.glob("floors-*.json")
    path.write_text('{"real_vs_real": 3')
    assert ev.floors(20) == floors
    assert_one_warning(capsys, path.name)
    assert built["floors"] == 2


def write_code_folder(root, n: int = 6) -> None:
    codes, labels = root / "x256_codes", root / "x256_labels"
    codes.mkdir(parents=True)
    labels.mkdir()
    for i in range(n):
        np.save(codes / f"{i}.npy", np.full((1, 2, 4), i % 5, dtype=np.int64))
        np.save(labels / f"{i}.npy", np.array([i % 3]))


def test_code_folder_cache_with_a_flipped_byte_is_repacked(tmp_path, built, capsys):
    write_code_folder(tmp_path / "codes")
    cache = tmp_path / "cache"
    data = load_code_folder(str(tmp_path / "codes"), 8, 0.5, 0, cache)
    (meta,) = cache.glob("codes-*.pt")
    flip_byte(meta, at=0.7)
    again = load_code_folder(str(tmp_path / "codes"), 8, 0.5, 0, cache)
    assert_one_warning(capsys, meta.name)
    assert built == {"codes": 2}
    assert torch.equal(again.codes, data.codes) and torch.equal(again.labels, data.labels)
    assert no_lock_files(cache)


def test_a_build_that_rejects_its_input_leaves_no_lock_and_no_file(tmp_path):
    def build():
        raise UserError("bad input")

    with pytest.raises(UserError, match="bad input"):
        load_or_build(tmp_path / "x.pt", lambda p: 1, build, lambda p, v: None)
    assert list(tmp_path.iterdir()) == []


def test_a_loader_that_finds_an_inconsistent_payload_triggers_one_rebuild(tmp_path, capsys):
    path = tmp_path / "x.pt"
    save_tensors(path, {"v": torch.tensor(1)})

    def load(p):
        raise CorruptFile(f"{p}: not what it should be")

    value = load_or_build(path, load, lambda: 7, lambda p, v: save_tensors(p, {"v": torch.tensor(v)}))
    assert value == 7
    assert_one_warning(capsys, "not what it should be")
