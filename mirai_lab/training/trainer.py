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
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mirai_lab.config import RunConfig
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.distributed import init_distributed
from mirai_lab.errors import UserError
from mirai_lab.evaluate.evaluator import Evaluator
from mirai_lab.model.gpt import GPT
from mirai_lab.runs.curve import Curve
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.state import RunState, set_status
from mirai_lab.runs.store import (
    CorruptFile,
    cache_dir,
    load_tensors,
    run_dir,
    save_tensors,
    write_json,
)
from mirai_lab.training.batches import batch_indices, crop_indices
from mirai_lab.training.build import build_foresight, model_shape
from mirai_lab.training.ema import update_ema
from mirai_lab.training.optim import param_groups
from mirai_lab.training.schedule import learning_rate
from mirai_lab.training.step import StepLoss

INJECT_NAN_ENV = "MIRAI_LAB_INJECT_NAN_AT"  # "STEP" or "RUN_ID:STEP": fault injection for the reliability suite


class Diverged(Exception):
    """The loss became NaN or infinite; the run is marked failed and the sweep goes on."""






















ProgressFn = Callable[[int, int, dict[str, float]], None]




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
            set_status(self.dir, RunState.RUNNING)
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
                set_status(self.dir, RunState.FAILED, error=f"diverged: {exc}", step=self.step)
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
        set_status(self.dir, RunState.DONE)
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


