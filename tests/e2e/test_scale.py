"""The scale path on CPU: torchrun/DDP equals one process, LlamaGen code folders, DINOv2 feature
shards (from the fake hub of mirai_lab/foresight/tiny_llamagen.py), Mirai-I on codes, LlamaGen
checkpoints as model and static teacher."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirai_lab.config import build_config
from mirai_lab.data.codes import load_code_folder
from mirai_lab.errors import UserError
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.files.tensors import load_tensors, save_tensors
from mirai_lab.foresight.dinov2 import center_crop_arr, crop_views, load_dinov2, prepare_dinov2
from mirai_lab.foresight.sources import FeatureTableSource, load_gpt_weights
from mirai_lab.foresight.tiny_llamagen import (
    GRID,
    IMAGE_SIZE,
    N_AUG,
    N_CLASSES,
    N_IMAGES,
    write_tiny_llamagen,
)
from mirai_lab.model.gpt import GPT
from mirai_lab.runs.identity import run_id_of
from mirai_lab.training.build import model_shape
from mirai_lab.training.trainer import Trainer

NO_DROPOUT = {"model.token_dropout": 0.0, "model.resid_dropout": 0.0, "model.ffn_dropout": 0.0,
              "model.class_dropout": 0.0}
DDP_ATOL = 1e-6  # fp32, 4 AdamW steps: measured max difference 1.5e-8 (summation order of the gradient mean)


def curve_values(path: Path, metric: str) -> list[float]:
    with open(path) as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == metric]


# --- torchrun / DDP ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_ranks_with_grad_accum_equal_one_process(tmp_path, tiny_overrides):
    """2 gloo ranks x 2 micro-batches of 4 == one process with the global batch of 16 (dropout off, fp32),
    under another run id: with dropout on, the ranks' own streams make it another computation."""
    # the train command refuses fields the run does not read (the Mirai-I encoder's steps on an ema run)
    tiny = {k: v for k, v in tiny_overrides.items() if k != "foresight.encoder_steps"}
    overrides = {**tiny, **NO_DROPOUT, "train.steps": 4, "train.eval_every": 2,
                 "foresight.source": "ema", "foresight.k": 3, "foresight.student_block": 2}
    single = Trainer(build_config(None, overrides), tmp_path / "single")
    single.run()
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "cache").symlink_to(tmp_path / "single" / "cache")  # same token cache, no refit
    sets = [a for k, v in {**overrides, "train.grad_accum": 2}.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mirai_lab", "train", *sets, "--results-dir", str(tmp_path / "ddp"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank draws its own dropout streams, so the world size is part of the id (grad_accum is not):
    # with dropout off, as here, the two ids hold the same numbers to float reassociation
    ddp_id = run_id_of(build_config(None, overrides), world=2)
    assert ddp_id != single.run_id
    assert sorted(p.name for p in (tmp_path / "ddp" / "runs").iterdir()) == [ddp_id]
    run = tmp_path / "ddp" / "runs" / ddp_id
    a, b = load_tensors(single.dir / "checkpoint.pt"), load_tensors(run / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema", "foresight"):
        for name, tensor in a[part].items():
            torch.testing.assert_close(b[part][name], tensor, atol=DDP_ATOL, rtol=0, msg=f"{part}.{name}")
    # the curve logs the mean over ranks, i.e. the loss of the global batch
    ntp_single, ntp_ddp = curve_values(single.dir / "curve.csv", "train_ntp"), curve_values(run / "curve.csv",
                                                                                            "train_ntp")
    assert ntp_ddp == pytest.approx(ntp_single, abs=1e-5)


def test_bad_grad_accum_and_torchrun_environment_are_refused(tmp_path, tiny_overrides, monkeypatch):
    with pytest.raises(UserError, match="train.grad_accum=3: expected >= 1 and a divisor"):
        build_config(None, {**tiny_overrides, "train.grad_accum": 3})
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UserError, match="RANK=5: expected 0..2"):
        Trainer(build_config(None, tiny_overrides), tmp_path).setup()


def test_grad_accum_in_one_process_matches_the_full_batch(tmp_path, tiny_overrides):
    base = {**tiny_overrides, **NO_DROPOUT, "train.steps": 3, "train.eval_every": 3}
    full = Trainer(build_config(None, base), tmp_path / "a")
    full.run()
    micro = Trainer(build_config(None, {**base, "train.grad_accum": 4}), tmp_path / "b")
    micro.run()
    a, b = load_tensors(full.dir / "checkpoint.pt"), load_tensors(micro.dir / "checkpoint.pt")
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, atol=DDP_ATOL, rtol=0)


def test_paper_budget_is_llamagens_recipe_for_80_epochs():
    cfg = build_config(None, {"data.codes_dir": "/codes"}, "paper")
    m, t = cfg.model, cfg.train
    assert (m.n_layer, m.dim, m.n_head, m.ffn_hidden) == (12, 768, 12, 2048)
    assert (m.token_dropout, m.resid_dropout, m.ffn_dropout, m.class_dropout) == (0.1, 0.1, 0.1, 0.1)
    assert (t.lr, t.lr_schedule, t.warmup_steps, t.beta1, t.beta2, t.weight_decay, t.grad_clip) == \
        (1e-4, "constant", 0, 0.9, 0.95, 0.05, 1.0)
    assert (t.batch_size, t.precision, t.ema_decay) == (256, "bf16", 0.9999)
    assert t.steps == 80 * (1_281_167 // 256) and t.eval_every == 1_281_167 // 256  # LlamaGen's drop_last epoch
    assert (cfg.data.dataset, cfg.tokenizer.codebook_size) == ("codes", 16384)
    with pytest.raises(UserError, match="needs data.codes_dir"):
        build_config(None, {}, "paper")


# --- LlamaGen code folders ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llamagen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamagen")
    folder = write_tiny_llamagen(root)
    return {"root": root, "weights": folder.weights, "images": folder.images, "codes": folder.codes}


def test_crop_order_is_torchvision_ten_crop_of_the_adm_centre_crop():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (30, 36, 3), dtype=np.uint8))  # H 30, W 36
    # ADM: short side 30 -> 22 (bicubic, 36 -> 26 wide), then the centre 22 columns
    expected_centre = np.asarray(image.resize((26, 22), Image.BICUBIC))[:, 2:24]
    assert np.array_equal(np.asarray(center_crop_arr(image, 22)), expected_centre)
    assert center_crop_arr(Image.new("RGB", (300, 200)), 22).size == (22, 22)  # box-halved first, then resized
    size, o = 20, 1  # TenCrop(20) of the 22 px centre crop (crop_range 1.1); the centre crop starts at 1
    views = [np.asarray(v) for v in crop_views(image, size, 10, crop_range=1.1)]
    for offset, img in ((0, expected_centre), (5, expected_centre[:, ::-1])):
        expected = [img[:size, :size], img[:size, -size:], img[-size:, :size], img[-size:, -size:],
                    img[o : o + size, o : o + size]]
        for k, e in enumerate(expected):
            assert np.array_equal(views[offset + k], e), f"crop {offset + k}"
    two = crop_views(image, size, 2)
    assert np.array_equal(np.asarray(two[1]), np.asarray(two[0])[:, ::-1])


def test_code_folder_loads_as_token_data_and_is_cached(tmp_path, llamagen):
    data = load_code_folder(str(llamagen["codes"]), 16, 0.25, 0, tmp_path)
    assert data.codes.shape == (N_IMAGES + 1, N_AUG, GRID * GRID) and data.n_crops == N_AUG
    assert data.grid == (GRID, GRID) and data.num_classes == N_CLASSES and data.vocab_size == 16
    assert data.images is None and data.tokenizer is None
    assert len(data.train_idx) + len(data.val_idx) == N_IMAGES + 1
    assert np.array_equal(data.codes[5, 3].numpy(), np.load(llamagen["codes"] / "imagenet16_codes" / "5.npy")[0, 3])
    again = load_code_folder(str(llamagen["codes"] / "imagenet16_codes"), 16, 0.25, 0, tmp_path)
    assert again.key == data.key and len(list(tmp_path.glob("codes-*.npy"))) == 1


@pytest.mark.parametrize("damage, needle", [
    ("missing", "does not exist"),
    ("empty", "holds no .npy files"),
    ("shape", "has shape (1, 10, 9): expected (1, 10, 16) like 0.npy"),
    ("labels", "has 13 files but"),
    ("gap", "has 12 files but no 4.npy"),
    ("vocab", "tokenizer.codebook_size=4: the codes in"),
])
def test_code_folder_errors_name_the_problem(tmp_path, llamagen, damage, needle):
    import shutil

    folder = tmp_path / "codes"
    shutil.copytree(llamagen["codes"], folder)
    codes, labels = folder / "imagenet16_codes", folder / "imagenet16_labels"
    vocab = 4 if damage == "vocab" else 16
    if damage == "missing":
        shutil.rmtree(folder)
    elif damage == "empty":
        for f in codes.iterdir():
            f.unlink()
    elif damage == "shape":
        np.save(codes / "7.npy", np.zeros((1, N_AUG, 9), dtype=np.int64))
    elif damage == "labels":
        (labels / "12.npy").unlink()
    elif damage == "gap":
        (codes / "4.npy").unlink()
        (labels / "4.npy").unlink()
    with pytest.raises(UserError, match="^[^\n]*$") as info:
        load_code_folder(str(folder), vocab, 0.25, 0, tmp_path / "cache")
    assert needle in str(info.value)


# --- DINOv2 features -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def features(llamagen) -> Path:
    out = llamagen["root"] / "features"
    info = prepare_dinov2(str(llamagen["weights"]), str(llamagen["images"]), str(llamagen["codes"]), str(out),
                          hub=str(llamagen["weights"].parent), model="tiny_vit", image_size=IMAGE_SIZE, shard_size=5,
                          batch_size=4, workers=0, resize="pil")  # fake_tokenize resizes with PIL too
    assert info["shards"] == 3 and info["written"] == 3 and info["dim"] == 16 and info["images"] == N_IMAGES + 1
    return out


def test_extraction_resumes_skips_finished_shards_and_refuses_other_settings(tmp_path, llamagen, features):
    import shutil

    out = tmp_path / "features"
    shutil.copytree(features, out)
    kept = (out / "shard-00000.npy").stat().st_mtime_ns
    reference = np.load(out / "shard-00001.npy")
    (out / "shard-00001.npy").unlink()  # as if killed while writing it
    args = (str(llamagen["weights"]), str(llamagen["images"]), str(llamagen["codes"]))
    hub = str(llamagen["weights"].parent)
    info = prepare_dinov2(*args, str(out), hub=hub, model="tiny_vit", image_size=IMAGE_SIZE, shard_size=5, workers=0,
                          resize="pil")
    assert (info["written"], info["skipped"]) == (1, 2)
    assert (out / "shard-00000.npy").stat().st_mtime_ns == kept
    assert np.array_equal(np.load(out / "shard-00001.npy"), reference)
    with pytest.raises(UserError, match="other settings \\(crop_range\\)"):
        prepare_dinov2(*args, str(out), hub=hub, model="tiny_vit", image_size=IMAGE_SIZE, shard_size=5, workers=0,
                       resize="pil", crop_range=1.2)
    with pytest.raises(UserError, match="DINOv2 weights '/nope.pth' do not exist"):
        prepare_dinov2("/nope.pth", *args[1:], str(tmp_path / "x"), model="tiny_vit")


def test_mismatched_dinov2_weights_name_the_key(tmp_path, llamagen):
    import shutil

    hub = tmp_path / "hub"
    shutil.copytree(llamagen["weights"].parent, hub)
    state = torch.load(hub / "tiny_vit.pth", weights_only=True)
    state["norm.weight"] = torch.ones(5)
    torch.save(state, hub / "tiny_vit.pth")
    with pytest.raises(UserError, match="key 'norm.weight' has shape \\(5,\\)"):
        load_dinov2(hub / "tiny_vit.pth", hub=hub, model="tiny_vit")


class NllOnlyEvaluator(Evaluator):
    """Code folders carry no pixels or decoder, so the final samples are skipped here; what is
    under test is training from codes and features."""

    def final(self, model: GPT, run_dir: Path, step: int, val_nll: float | None = None) -> dict:
        return {"val_nll": self.val_nll(model) if val_nll is None else val_nll}


def codes_overrides(llamagen: dict[str, Path], features: Path) -> dict:
    return {"data.dataset": "codes", "data.codes_dir": str(llamagen["codes"]), "data.features_dir": str(features),
            "data.val_fraction": 0.25, "tokenizer.codebook_size": 16, "model.preset": "tiny", "train.steps": 4,
            "train.batch_size": 8, "train.eval_every": 2, "train.threads": 1, "eval.metrics": False}


def test_mirai_i_trains_on_codes_with_dinov2_features_of_the_same_crops(tmp_path, llamagen, features,
                                                                       monkeypatch):
    cfg = build_config(None, {**codes_overrides(llamagen, features), "foresight.source": "bidirectional",
                              "foresight.encoder": "dinov2", "foresight.encoder_weights": str(llamagen["weights"]),
                              "foresight.k": 1, "foresight.student_block": 3})
    seen: list[torch.Tensor] = []
    read_targets = FeatureTableSource.targets

    def checked(self, tokens, labels, index, crop=None):
        out = read_targets(self, tokens, labels, index, crop)
        assert crop is not None and len(set(crop.tolist())) > 1  # several crops per batch
        # the token of every cell is the argmax channel of the feature of that cell of that crop
        assert torch.equal(out.argmax(-1), tokens)
        seen.append(index)
        return out

    monkeypatch.setattr(FeatureTableSource, "targets", checked)
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    final = trainer.run(NllOnlyEvaluator(cfg, trainer.data, tmp_path / "cache"))
    assert len(seen) == 4 and final["steps"] == 4
    assert {"align_loss_k0", "val_nll"} <= {r["metric"] for r in csv.DictReader(open(trainer.dir / "curve.csv"))}


def test_dinov2_without_features_says_how_to_make_them(tmp_path, llamagen, features):
    over = {**codes_overrides(llamagen, features), "foresight.source": "bidirectional", "foresight.encoder": "dinov2",
            "foresight.encoder_weights": str(llamagen["weights"]), "foresight.k": 1}
    with pytest.raises(UserError, match="mirai-lab prepare --encoder dinov2"):
        Trainer(build_config(None, {**over, "data.features_dir": ""}), tmp_path).setup()
    with pytest.raises(UserError, match="holds no DINOv2 features"):
        Trainer(build_config(None, {**over, "data.features_dir": str(tmp_path)}), tmp_path).setup()
    other = tmp_path / "other.pth"
    other.write_bytes(b"not the same checkpoint")
    with pytest.raises(UserError, match="is not the checkpoint the features"):
        Trainer(build_config(None, {**over, "foresight.encoder_weights": str(other)}), tmp_path).setup()


# --- LlamaGen checkpoints ------------------------------------------------------------------------------------------

def llamagen_state_dict(n_layer: int, dim: int, hidden: int, vocab: int, classes: int) -> dict[str, torch.Tensor]:
    """Parameter names and shapes of LlamaGen's c2i Transformer, written out independently of our GPT."""
    g = torch.Generator().manual_seed(3)
    shapes = {"tok_embeddings.weight": (vocab, dim), "cls_embedding.embedding_table.weight": (classes + 1, dim),
              "norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(n_layer):
        shapes |= {f"layers.{i}.attention.wqkv.weight": (3 * dim, dim), f"layers.{i}.attention.wo.weight": (dim, dim),
                   f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
                   f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                   f"layers.{i}.feed_forward.w2.weight": (dim, hidden), f"layers.{i}.attention_norm.weight": (dim,),
                   f"layers.{i}.ffn_norm.weight": (dim,)}
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


@pytest.fixture
def static_cfg(tmp_path, llamagen, features):
    ckpt = tmp_path / "0005000.pt"
    over = {**codes_overrides(llamagen, features), "train.steps": 2, "train.eval_every": 2,
            "foresight.source": "static", "foresight.static_checkpoint": str(ckpt), "foresight.k": 3,
            "foresight.student_block": 3, "foresight.teacher_block": 2}
    cfg = build_config(None, over)
    m = cfg.model
    state = llamagen_state_dict(m.n_layer, m.dim, m.ffn_hidden, 16, N_CLASSES)
    return cfg, ckpt, state


def test_llamagen_checkpoint_loads_as_model_and_as_static_teacher(tmp_path, static_cfg):
    cfg, ckpt, state = static_cfg
    save_tensors(ckpt, {"model": state, "optimizer": {}, "steps": 5000})  # LlamaGen's layout (minus its args)
    trainer = Trainer(cfg, tmp_path / "results")
    trainer.setup()
    model = GPT(model_shape(cfg, trainer.data))
    load_gpt_weights(model, ckpt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    teacher = trainer.foresight.source.teacher
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in state.items())
    final = trainer.run(NllOnlyEvaluator(cfg, trainer.data, tmp_path / "cache"))
    assert final["steps"] == 2


@pytest.mark.parametrize("damage, needle", [
    ("missing", "missing key 'layers.1.ffn_norm.weight'"),
    ("shape", "key 'tok_embeddings.weight' has shape (17, 32), the model expects (16, 32)"),
    ("extra", "unexpected key 'layers.9.attention.wo.weight'"),
])
def test_bad_llamagen_checkpoint_names_the_key_through_the_trainer(tmp_path, static_cfg, damage, needle):
    cfg, ckpt, state = static_cfg
    if damage == "missing":
        del state["layers.1.ffn_norm.weight"]
    elif damage == "shape":
        state["tok_embeddings.weight"] = torch.zeros(17, 32)
    else:
        state["layers.9.attention.wo.weight"] = torch.zeros(32, 32)
    save_tensors(ckpt, {"model": state})
    with pytest.raises(UserError) as info:
        Trainer(cfg, tmp_path / "results").run()
    assert needle in str(info.value)
    assert not (tmp_path / "results" / "runs").exists()  # nothing written
