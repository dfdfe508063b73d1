"""The training loop of one run: NTP + foresight, EMA, periodic evaluation, exact resume.

Reproducibility contract: the batch order is a pure function of (seed, step), the global
RNG (dropout, class dropout) is saved with every checkpoint, and evaluation draws from its
own generators, so a run killed and restarted ends with the same curve and weights as an
uninterrupted one (CPU, same seed).

Under torchrun the same loop runs on every rank (see distributed.py): each rank trains on
its slice of the global batch, optionally in `train.grad_accum` micro-batches, and rank 0
alone evaluates and writes the run files.
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
from torch import nn

from .config import RunConfig
from .curve import Curve
from .data.tokens import TokenData, prepare_tokens
from .distributed import init_distributed
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

INJECT_NAN_ENV = "MIRAI_LAB_INJECT_NAN_AT"  # "STEP" or "RUN_ID:STEP": fault injection for the reliability suite


class Diverged(Exception):
    """The loss became NaN or infinite; the run is marked failed and the sweep goes on."""


def run_id_of(cfg: RunConfig) -> str:
    """Hash of the resolved config; the thread count and the micro-batching change speed and
    memory, not the run, so they are left out."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("threads", "grad_accum")}
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


def build_foresight(cfg: RunConfig, data: TokenData, shape: GPTShape, ema: GPT, root: Path,
                    device: torch.device = torch.device("cpu")) -> Foresight | None:
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
        source = TeacherSource(teacher.to(device), f.teacher_block)
    elif f.source == "bidirectional":
        source = FeatureTableSource(encoder_features(f.encoder, f.visibility, data, cache_dir(root),
                                                     features_dir=cfg.data.features_dir,
                                                     weights=f.encoder_weights, steps=f.encoder_steps))
    d_target = source.dim if source is not None else shape.dim
    heads = ForesightHeads(f, layout, shape.dim, d_target, shape.n_tokens, cfg.train.steps, shape.vocab_size)
    return Foresight(heads.to(device), source, f.student_block)


class StepLoss(nn.Module):
    """The model and the foresight heads as one module, so that DDP syncs the gradients of
    both with one reducer and the loss of a (micro-)batch is a single forward call."""

    def __init__(self, model: GPT, foresight: Foresight | None) -> None:
        super().__init__()
        self.model = model
        self.heads = foresight.heads if foresight is not None else None
        self.blocks = (foresight.student_block,) if foresight is not None else ()

    def forward(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, step: int
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, NTP loss, per-head logs) of token grids x (B, N), labels y and foresight targets."""
        logits, hidden = self.model(x[:, :-1], y, hidden_blocks=self.blocks)
        ntp = F.cross_entropy(logits.flatten(0, 1), x.flatten())
        if self.heads is None:
            return ntp, ntp, {}
        aux, logs = self.heads(hidden[self.blocks[0]], targets, step)
        return ntp + aux, ntp, logs


ProgressFn = Callable[[int, int, dict[str, float]], None]


def set_status(path: Path, state: str, **extra: Any) -> None:
    write_json(path / "status.json", {"state": state, "time": time.time(), "host": socket.gethostname(),
                                      "pid": os.getpid(), **extra})


class Trainer:
    """One run, in one process or one rank of a torchrun job. `run()` trains (or resumes) to
    the end and evaluates (rank 0)."""

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
        self.dist = init_distributed()
        t = cfg.train
        if t.batch_size % (self.dist.world * t.grad_accum):
            raise UserError(f"train.batch_size={t.batch_size}: expected a multiple of {self.dist.world} ranks x "
                            f"train.grad_accum={t.grad_accum}")
        self.device = self.dist.device
        # ranks on one CPU node share its cores
        torch.set_num_threads(self.threads if not self.dist.active else max(1, self.threads // self.dist.local_world))
        with self.dist.main_first():  # rank 0 builds the caches, the other ranks then read them
            self.data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(self.root))
            torch.manual_seed(t.seed)  # the same initial weights on every rank
            self.shape = model_shape(cfg, self.data)
            self.model = GPT(self.shape).to(self.device)
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
            self.foresight = build_foresight(cfg, self.data, self.shape, self.ema, self.root, self.device)
        self.step_loss = self.dist.wrap(StepLoss(self.model, self.foresight))
        modules: list[torch.nn.Module] = [self.model]
        if self.foresight is not None:
            modules.append(self.foresight.heads)
        self.params = [p for m in modules for p in m.parameters()]
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
            state = load_tensors(path)  # tensors come back on the CPU; load_state_dict copies them over
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
        cfg, t = self.cfg, self.cfg.train
        idx = batch_indices(self.data.train_idx, t.batch_size, t.seed, step)
        crop = crop_indices(len(idx), self.data.n_crops, t.seed, step)
        if self.dist.active:
            torch.manual_seed(self.dist.step_seed(t.seed, step))  # this rank's own dropout stream
            idx, crop = self.dist.shard(idx), (self.dist.shard(crop) if crop is not None else None)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        self.opt.zero_grad(set_to_none=True)
        n_micro = t.grad_accum
        micro = len(idx) // n_micro
        fs = self.foresight
        for i in range(n_micro):
            m_idx = idx[i * micro : (i + 1) * micro]
            m_crop = crop[i * micro : (i + 1) * micro] if crop is not None else None
            x = self.data.tokens(m_idx, m_crop).to(self.device)
            y = self.data.labels[m_idx].to(self.device)
            with self.dist.no_sync(self.step_loss, skip=i < n_micro - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
                    targets = None
                    if fs is not None:
                        targets = x if fs.source is None else fs.source.targets(x, y, m_idx, m_crop).to(self.device)
                    loss, ntp, logs = self.step_loss(x, y, targets, step)
                if os.environ.get(INJECT_NAN_ENV) in (str(step), f"{self.run_id}:{step}"):
                    loss = loss * float("nan")
                if not self.dist.all_finite(loss):
                    raise Diverged(f"loss is {loss.item()} at step {step}")
                (loss / n_micro).backward()
            for name, value in {"train_ntp": ntp, **logs}.items():
                sums[name] += float(value.detach()) / n_micro
        for name in ("train_ntp", *logs):
            counts[name] += 1
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        self.opt.step()
        update_ema(self.ema, self.model, t.ema_decay, step)

    def make_evaluator(self) -> Any:
        from .evaluate.evaluator import Evaluator

        return Evaluator(self.cfg, self.data, cache_dir(self.root))

    def run(self, evaluator: Any = None) -> dict[str, Any]:
        """Train from scratch or from the last checkpoint; evaluate; write final.json.

        Under torchrun only rank 0 evaluates and writes; the other ranks return a short summary
        when training ends (the final evaluation may outlast any collective timeout)."""
        cfg = self.cfg
        self.setup()  # bad references (a missing static checkpoint, ...) fail here, before any write
        main = self.dist.is_main
        if main:
            config_path = self.dir / "config.json"
            if not config_path.exists():
                write_json(config_path, {"run_id": self.run_id, **cfg.to_dict()})
            set_status(self.dir, "running")
        resumed = self.try_resume()
        evaluator = (evaluator or self.make_evaluator()) if main else None
        self.t0 = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        try:
            while self.step < cfg.train.steps:
                self.train_step(self.step, sums, counts)
                self.step += 1
                if self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps:
                    names = sorted(sums)  # the curve logs the mean over ranks: the global batch
                    sums.update(zip(names, self.dist.mean([sums[k] for k in names]), strict=True))
                    if main:
                        self.log_eval(evaluator, sums, counts)
                    sums.clear()
                    counts.clear()
        except Diverged as exc:
            if main:
                set_status(self.dir, "failed", error=f"diverged: {exc}", step=self.step)
            raise
        self.dist.barrier()  # every rank leaves the group together, before rank 0's final evaluation
        self.dist.close()
        if not main:
            return {"run_id": self.run_id, "steps": self.step, "rank": self.dist.rank, "resumed": resumed,
                    "wall_s": round(self.wall(), 2)}
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
