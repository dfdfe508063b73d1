"""The training loop of one run: NTP + foresight, EMA, periodic evaluation, exact resume.

Reproducibility contract: the batch order is a pure function of (seed, step), the global
RNG (dropout, class dropout) is saved with every checkpoint, and evaluation draws from its
own generators, so a run killed and restarted ends with the same curve and weights as an
uninterrupted one (CPU, same seed).
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import RunConfig
from .curve import Curve
from .data.tokens import TokenData, prepare_tokens
from .errors import UserError
from .foresight.encoders import encoder_features
from .foresight.layout import build_layout
from .foresight.objective import ForesightHeads
from .foresight.sources import (
    FeatureTableSource,
    TargetSource,
    TeacherSource,
    load_gpt_weights,
    resolve_checkpoint,
)
from .model.gpt import GPT, GPTShape
from .store import (
    CorruptFile,
    cache_dir,
    content_hash,
    load_tensors,
    read_json,
    run_dir,
    save_tensors,
    write_json,
)

INJECT_NAN_ENV = "MIRAI_LAB_INJECT_NAN_AT"  # fault injection for the reliability suite


class Diverged(Exception):
    """The loss became NaN or infinite; the run is marked failed and the sweep goes on."""


def run_id_of(cfg: RunConfig) -> str:
    """Hash of the resolved config; the thread count changes speed, not the run, so it is left out."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k != "threads"}
    return content_hash(d)


def model_shape(cfg: RunConfig, data: TokenData) -> GPTShape:
    m = cfg.model
    return GPTShape(vocab_size=data.vocab_size, num_classes=data.num_classes, grid=data.grid,
                    n_layer=m.n_layer, dim=m.dim, n_head=m.n_head, ffn_hidden=m.ffn_hidden,
                    token_dropout=m.token_dropout, resid_dropout=m.resid_dropout, ffn_dropout=m.ffn_dropout,
                    class_dropout=m.class_dropout)


def batch_indices(train_idx: torch.Tensor, batch: int, seed: int, step: int) -> torch.Tensor:
    """Epoch-wise shuffling without replacement, as a pure function of (seed, step)."""
    per_epoch = max(1, len(train_idx) // batch)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return train_idx[perm[offset * batch : (offset + 1) * batch]]


def crop_indices(batch: int, n_crops: int, seed: int, step: int) -> torch.Tensor | None:
    """A random augmentation crop per sample (code folders), a pure function of (seed, step),
    so the matching feature crop can be read and a resumed run draws the same crops."""
    if n_crops == 1:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
    return torch.randint(n_crops, (batch,), generator=g)


def learning_rate(cfg: RunConfig, step: int) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return t.lr


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings (ndim >= 2), none on norms and biases."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


@torch.no_grad()
def update_ema(ema: GPT, model: GPT, decay: float, step: int) -> None:
    """EMA with the usual warm-up of the decay, so short runs are not dominated by the init."""
    d = min(decay, (1 + step) / (10 + step))
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)


@dataclass
class Foresight:
    heads: ForesightHeads
    source: TargetSource | None  # None for mtp (targets are the tokens themselves)
    student_block: int


def build_foresight(cfg: RunConfig, data: TokenData, shape: GPTShape, ema: GPT, root: Path) -> Foresight | None:
    f = cfg.foresight
    if f.source == "none" and f.injection != "mtp":
        return None
    layout = build_layout(f.layout, f.k, data.grid)
    source: TargetSource | None = None
    if f.source == "ema":
        source = TeacherSource(ema, f.teacher_block)
    elif f.source == "static":
        teacher = GPT(shape)
        load_gpt_weights(teacher, resolve_checkpoint(f.static_checkpoint, root))
        teacher.requires_grad_(False)
        source = TeacherSource(teacher, f.teacher_block)
    elif f.source == "bidirectional":
        source = FeatureTableSource(encoder_features(f.encoder, f.visibility, data, cache_dir(root)))
    d_target = source.dim if source is not None else shape.dim
    heads = ForesightHeads(f, layout, shape.dim, d_target, shape.n_tokens, cfg.train.steps, shape.vocab_size)
    return Foresight(heads, source, f.student_block)


ProgressFn = Callable[[int, int, dict[str, float]], None]


def set_status(path: Path, state: str, **extra: Any) -> None:
    write_json(path / "status.json", {"state": state, "time": time.time(), "host": socket.gethostname(),
                                      "pid": os.getpid(), **extra})


class Trainer:
    """One run in one process. `run()` trains (or resumes) to the end and evaluates."""

    def __init__(self, cfg: RunConfig, root: Path, progress: ProgressFn | None = None,
                 threads: int | None = None) -> None:
        self.cfg = cfg
        self.threads = threads or cfg.train.threads or os.cpu_count() or 1
        self.root = root
        self.run_id = run_id_of(cfg)
        self.dir = run_dir(root, self.run_id)
        self.progress = progress

    def setup(self) -> None:
        cfg = self.cfg
        torch.set_num_threads(self.threads)
        self.data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(self.root))
        torch.manual_seed(cfg.train.seed)
        self.shape = model_shape(cfg, self.data)
        self.model = GPT(self.shape)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.foresight = build_foresight(cfg, self.data, self.shape, self.ema, self.root)
        modules: list[torch.nn.Module] = [self.model]
        if self.foresight is not None:
            modules.append(self.foresight.heads)
        self.params = [p for m in modules for p in m.parameters()]
        t = cfg.train
        self.opt = torch.optim.AdamW(param_groups(modules, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2))
        self.curve = Curve(self.run_id)
        self.step = 0
        self.wall_offset = 0.0

    def checkpoint_state(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "step": self.step, "rng": torch.get_rng_state(),
                 "wall_s": self.wall(), "config_hash": self.run_id}
        if self.foresight is not None:
            state["foresight"] = self.foresight.heads.state_dict()
        return state

    def try_resume(self) -> bool:
        path = self.dir / "checkpoint.pt"
        if not path.exists():
            return False
        try:
            state = load_tensors(path)
        except CorruptFile as exc:
            print(f"warning: {exc}; restarting run {self.run_id} from scratch")
            return False
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        if self.foresight is not None:
            self.foresight.heads.load_state_dict(state["foresight"])
        torch.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.wall_offset = float(state["wall_s"])
        self.curve = Curve.load(self.dir / "curve.csv", self.run_id, max_step=self.step)
        return True

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t0

    def train_step(self, step: int, sums: dict[str, float], counts: dict[str, int]) -> None:
        cfg = self.cfg
        idx = batch_indices(self.data.train_idx, cfg.train.batch_size, cfg.train.seed, step)
        crop = crop_indices(len(idx), self.data.n_crops, cfg.train.seed, step)
        x = self.data.tokens(idx, crop)
        y = self.data.labels[idx]
        fs = self.foresight
        blocks = (fs.student_block,) if fs is not None else ()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            logits, hidden = self.model(x[:, :-1], y, hidden_blocks=blocks)
            ntp = F.cross_entropy(logits.flatten(0, 1), x.flatten())
            loss = ntp
            logs: dict[str, torch.Tensor] = {}
            if fs is not None:
                targets = fs.source.targets(x, y, idx, crop) if fs.source is not None else x
                aux, logs = fs.heads(hidden[fs.student_block], targets, step)
                loss = loss + aux
        if os.environ.get(INJECT_NAN_ENV) == str(step):
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            raise Diverged(f"loss is {loss.item()} at step {step}")
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.train.grad_clip)
        self.opt.step()
        update_ema(self.ema, self.model, cfg.train.ema_decay, step)
        sums["train_ntp"] += float(ntp.detach())
        counts["train_ntp"] += 1
        for name, value in logs.items():
            sums[name] += float(value)
            counts[name] += 1

    def make_evaluator(self) -> Any:
        from .evaluate.evaluator import Evaluator

        return Evaluator(self.cfg, self.data, cache_dir(self.root))

    def run(self, evaluator: Any = None) -> dict[str, Any]:
        """Train from scratch or from the last checkpoint; evaluate; write final.json."""
        cfg = self.cfg
        self.setup()  # bad references (a missing static checkpoint, ...) fail here, before any write
        config_path = self.dir / "config.json"
        if not config_path.exists():
            write_json(config_path, {"run_id": self.run_id, **cfg.to_dict()})
        set_status(self.dir, "running")
        resumed = self.try_resume()
        evaluator = evaluator or self.make_evaluator()
        self.t0 = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        try:
            while self.step < cfg.train.steps:
                self.train_step(self.step, sums, counts)
                self.step += 1
                if self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps:
                    self.log_eval(evaluator, sums, counts)
                    sums.clear()
                    counts.clear()
        except Diverged as exc:
            set_status(self.dir, "failed", error=f"diverged: {exc}", step=self.step)
            raise
        final = evaluator.final(self.ema, self.dir, self.step)
        final.update({"run_id": self.run_id, "steps": self.step, "wall_s": round(self.wall(), 2),
                      "resumed": resumed, "params": self.model.n_params()})
        write_json(self.dir / "final.json", final)
        set_status(self.dir, "done")
        return final

    def log_eval(self, evaluator: Any, sums: dict[str, float], counts: dict[str, int]) -> None:
        images_seen = self.step * self.cfg.train.batch_size
        row: dict[str, float] = {name: sums[name] / counts[name] for name in sums}
        for name in list(row):
            if name.startswith("align_loss_"):
                row[name.replace("align_loss_", "align_cos_")] = -row[name]
        if self.foresight is not None:
            row["lambda_scale"] = self.foresight.heads.scale(self.step - 1)
        row.update(evaluator.in_training(self.ema, self.step))
        self.curve.add(self.step, images_seen, self.wall(), row)
        self.curve.save(self.dir / "curve.csv")
        save_tensors(self.dir / "checkpoint.pt", self.checkpoint_state())
        if self.progress is not None:
            self.progress(self.step, self.cfg.train.steps, row)


def load_run_config(root: Path, run: str) -> tuple[RunConfig, Path]:
    """Config of an existing run given its id or its directory."""
    from .config import config_from_dict

    path = Path(run)
    if not (path / "config.json").exists():
        path = run_dir(root, run)
    if not (path / "config.json").exists():
        raise UserError(f"run {run!r} not found (looked for {path / 'config.json'})")
    try:
        d = read_json(path / "config.json")
    except ValueError as exc:
        raise UserError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    d.pop("run_id", None)
    return config_from_dict(d), path
