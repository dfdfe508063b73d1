"""The training loop of one run: NTP + foresight, EMA, dense val_nll, sparse sample metrics, exact resume.

Reproducibility contract: every random draw of training (initial weights, batch order, crops,
class-dropout and dropout masks) comes from a keyed stream (rng.py), a pure function
of (seed, step, stream, rank), and evaluation samples from its own stream. A run killed and
restarted from its checkpoint (runs/checkpoint.py) therefore ends with the same weights, EMA,
optimizer state and curve as an uninterrupted one, whatever the evaluation frequency or the
state of the caches; and the variants of one seed share all of these streams.

The step never waits for the device: the logged losses are summed on the device and a
divergence is recorded there (the first step with a non-finite loss); both are read once per
curve point, where a diverged run is marked failed with that step. The hooks (a progress
display, a tracker: runs/tracking.TrainingHook) keep that rule: each step's values stay on the
device, read in one transfer per curve point for a tracker, and a display reads the loss when
it prints (at most once per its interval), never every step.

Points of the curve (runs/curve.py): every `train.val_every` steps the training losses and
val_nll; every `train.eval_every` steps also the sample metrics and a checkpoint; at the last
step a checkpoint, then the final evaluation as the curve's last point and final.json.

Under torchrun the same loop runs on every rank (see distributed.py): each rank trains on
its slice of the global batch, optionally in `train.grad_accum` micro-batches, and rank 0
alone evaluates and writes the run files.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mirai_lab.config import RunConfig
from mirai_lab.data.tokens import prepare_tokens
from mirai_lab.distributed import init_distributed, world_size
from mirai_lab.errors import CorruptFile, UserError
from mirai_lab.evaluate.evaluator import Evaluator, final_curve_row
from mirai_lab.files.atomic import write_json
from mirai_lab.messages import warn
from mirai_lab.model.gpt import GPT
from mirai_lab.results_dir import CHECKPOINT, CONFIG, CURVE, FINAL, cache_dir, run_dir
from mirai_lab.rng import StepNoise, seeded_init
from mirai_lab.runs.checkpoint import load_resume, save_checkpoint
from mirai_lab.runs.curve import Curve
from mirai_lab.runs.identity import run_id_of
from mirai_lab.runs.provenance import write_provenance
from mirai_lab.runs.state import RunState, set_status
from mirai_lab.runs.tracking import StepView, TrainingHook
from mirai_lab.timing import part
from mirai_lab.training.batches import batch_indices, crop_indices
from mirai_lab.training.build import build_foresight, model_shape
from mirai_lab.training.ema import update_ema
from mirai_lab.training.faults import loss_hook
from mirai_lab.training.optim import param_groups
from mirai_lab.training.schedule import learning_rate
from mirai_lab.training.step import StepLoss

NO_DIVERGENCE = 2**62  # the recorded first non-finite step while there is none


class Diverged(Exception):
    """The loss became NaN or infinite; the run is marked failed and the sweep goes on."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the loss is not finite at step {step}")
        self.step = step


ProgressFn = Callable[[int, int, dict[str, float]], None]


class Trainer:
    """One run, in one process or one rank of a torchrun job. `run()` trains (or resumes) to
    the end and evaluates (rank 0); `setup()` and `train_step()` are the pieces it is made of."""

    def __init__(self, cfg: RunConfig, root: Path, progress: ProgressFn | None = None,
                 threads: int | None = None, hooks: Sequence[TrainingHook] = ()) -> None:
        self.cfg = cfg
        self.threads = threads or cfg.train.threads or os.cpu_count() or 1
        self.root = root
        self.run_id = run_id_of(cfg, world_size())  # refuses an unresolved "auto" precision
        self.dir = run_dir(root, self.run_id)
        self.progress = progress
        self.hooks = list(hooks)

    def setup(self) -> None:
        """Build data, model, EMA, foresight heads and optimizer; writes no run file."""
        cfg = self.cfg
        self.dist = init_distributed()
        t = cfg.train
        if t.batch_size % (self.dist.world * t.grad_accum):
            raise UserError(f"train.batch_size={t.batch_size}: expected a multiple of {self.dist.world} ranks x "
                            f"train.grad_accum={t.grad_accum}")
        self.device = self.dist.device
        cuda = self.device.type == "cuda"
        # ranks on one CPU node share its cores
        torch.set_num_threads(self.threads if not self.dist.active else max(1, self.threads // self.dist.local_world))
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores, as LlamaGen trains
            torch.backends.cudnn.allow_tf32 = True
        with self.dist.main_first():  # rank 0 builds the caches, the other ranks then read them
            self.data = prepare_tokens(cfg.data, cfg.tokenizer, cache_dir(self.root))
            self.shape = model_shape(cfg, self.data)
            with seeded_init(t.seed, "model_init"):  # the same initial weights on every rank and variant
                self.model = GPT(self.shape).to(self.device)
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
            self.foresight = build_foresight(cfg, self.data, self.shape, self.ema, self.root, self.device)
        self.noise = StepNoise(t.seed, self.dist.rank, self.device)
        self.model.use_generators(**self.noise.generators)
        step_loss = self.dist.wrap(StepLoss(self.model, self.foresight))
        self.step_loss = torch.compile(step_loss) if t.compile else step_loss
        self.precision = cfg.train.precision  # fp32 | bf16: resolved before the run id was made
        self.bf16 = self.precision == "bf16"
        modules: list[torch.nn.Module] = [self.model]
        if self.foresight is not None:
            modules.append(self.foresight.heads)
        self.params = [p for m in modules for p in m.parameters()]
        self.opt = torch.optim.AdamW(param_groups(modules, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2),
                                     fused=cuda)
        self.loss_hook = loss_hook(self.run_id)
        self.curve = Curve(self.run_id)
        self.step = 0
        self.wall_offset = 0.0
        self.t0 = time.perf_counter()
        self.log_sums: dict[str, torch.Tensor] = {}
        self.log_counts: dict[str, int] = {}
        self.first_bad_step = torch.full((), NO_DIVERGENCE, dtype=torch.long, device=self.device)
        self.last_val_nll: tuple[int, float] | None = None  # (step, value) of the latest curve point
        if not self.dist.is_main:  # rank 0 alone displays and tracks
            self.hooks = []
        self.record_steps = any(h.wants_steps for h in self.hooks)
        self.step_values: dict[str, torch.Tensor] = {}  # this step's values, on the device (hooks only)
        self.step_logs: list[tuple[int, float, float, dict[str, torch.Tensor]]] = []  # (step, lr, seconds, values)
        self.step_started = 0.0
        self.tokens_per_step = 0

    def checkpoint_state(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "step": self.step, "rng": torch.get_rng_state(),
                 "wall_s": float(self.wall()), "config_hash": self.run_id, "curve_rows": len(self.curve.rows),
                 "curve_sha256": self.curve.digest()}
        if self.foresight is not None:
            state["foresight"] = self.foresight.heads.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def try_resume(self) -> bool:
        """Continue from the checkpoint if there is one that this run can trust; else start afresh."""
        if not (self.dir / CHECKPOINT).exists():
            return False
        try:
            resume = load_resume(self.dir, self.run_id, self.checkpoint_state(), self.opt, self.cfg.train.steps)
        except CorruptFile as exc:
            if self.dist.is_main:
                warn(f"{exc}; restarting run {self.run_id} from scratch")
            return False
        state = resume.state  # tensors come back on the CPU; load_state_dict copies them over
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        if self.foresight is not None:
            self.foresight.heads.load_state_dict(state["foresight"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = state["step"]
        self.wall_offset = state["wall_s"]
        self.curve = resume.curve
        return True

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t0

    def train_step(self, step: int) -> None:
        """One optimizer step on the batch of `step`; nothing in it waits for the device."""
        cfg, t = self.cfg, self.cfg.train
        self.step_started = time.perf_counter()
        self.step_values = {}
        idx = batch_indices(self.data.train_idx, t.batch_size, t.seed, step)
        crop = crop_indices(len(idx), self.data.n_crops, t.seed, step)
        if self.dist.active:
            idx, crop = self.dist.shard(idx), (self.dist.shard(crop) if crop is not None else None)
        self.noise.at(step)
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
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    targets = None
                    if fs is not None:
                        targets = x if fs.source is None else fs.source.targets(x, y, m_idx, m_crop).to(self.device)
                    loss, ntp, logs = self.step_loss(x, y, targets, step)
                if self.loss_hook is not None:
                    loss = self.loss_hook(loss, step)
                self.track(step, loss, {"train_ntp": ntp, **logs}, n_micro)
                self.tokens_per_step = t.batch_size * x.shape[1]
                (loss / n_micro).backward()
        for name in ("train_ntp", *logs):
            self.log_counts[name] = self.log_counts.get(name, 0) + 1
        norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip) if t.grad_clip > 0 else None
        if self.record_steps:  # the norm clipping computed anyway, else one more reduction: for a tracker only
            grads = [p.grad for p in self.params if p.grad is not None]
            self.step_values["grad_norm"] = (norm if norm is not None else torch.nn.utils.get_total_norm(grads)
                                             ).detach().float()
        self.opt.step()
        update_ema(self.ema, self.model, t.ema_decay, step)

    def track(self, step: int, loss: torch.Tensor, logs: dict[str, torch.Tensor], n_micro: int) -> None:
        """Device-side bookkeeping of a micro-batch: the logged sums and the first non-finite step."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step = torch.where(bad, self.first_bad_step.clamp(max=step), self.first_bad_step)
        for name, value in logs.items():
            part = value.detach().double() / n_micro  # float64: a long interval sums many steps
            self.log_sums[name] = self.log_sums[name] + part if name in self.log_sums else part
        if self.hooks:  # the step's own values, kept apart from the sums above (which stay as they were)
            for name, value in {"loss": loss, **logs}.items():
                part = value.detach().float() / n_micro
                self.step_values[name] = self.step_values[name] + part if name in self.step_values else part

    def read_logs(self) -> dict[str, float]:
        """The mean logged values since the last point, over ranks (the global batch): the one host
        read between points. Raises Diverged if any rank saw a non-finite loss."""
        bad = int(self.dist.min(self.first_bad_step))
        if bad != NO_DIVERGENCE:
            raise Diverged(bad)
        names = sorted(self.log_sums)
        sums = self.dist.mean(torch.stack([self.log_sums[k] for k in names]).tolist() if names else [])
        values = {k: s / self.log_counts[k] for k, s in zip(names, sums, strict=True)}
        self.log_sums.clear()
        self.log_counts.clear()
        return values

    def after_step(self) -> None:
        """Tell the hooks that step `self.step` ended; what a tracker wants of it stays on the device."""
        if not self.hooks:
            return
        lr = float(self.opt.param_groups[0]["lr"])  # a host float, set by train_step
        values = self.step_values
        if self.record_steps:
            self.step_logs.append((self.step, lr, time.perf_counter() - self.step_started, values))
        view = StepView(self.step, self.cfg.train.steps, lr, lambda: float(values["loss"]))
        for hook in self.hooks:
            hook.on_step(view)

    def read_step_logs(self) -> list[dict[str, float]]:
        """The per-step values since the last call, one dict per step, in one read from the device.
        steps_per_s and tokens_per_s time each step alone on the host clock (evaluations left out;
        on a GPU the clock sees the launches, which the device's queue keeps in step over a run)."""
        logs, self.step_logs = self.step_logs, []
        if not logs:
            return []
        read = iter(torch.stack([v for *_, values in logs for v in values.values()]).tolist())
        out = []
        for step, lr, seconds, values in logs:
            row = {"step": float(step), **{name: next(read) for name in values}, "lr": lr}
            if self.foresight is not None:
                row["lambda_scale"] = self.foresight.heads.scale(step - 1)
            if seconds > 0:
                row["steps_per_s"] = 1.0 / seconds
                row["tokens_per_s"] = self.tokens_per_step / seconds
            out.append(row)
        return out

    def make_evaluator(self) -> Evaluator:
        return Evaluator(self.cfg, self.data, cache_dir(self.root))

    def run(self, evaluator: Evaluator | None = None) -> dict[str, Any]:
        """Train from scratch or from the last checkpoint; evaluate; write final.json.

        Under torchrun only rank 0 evaluates and writes; the other ranks return a short summary
        when training ends (the final evaluation may outlast any collective timeout)."""
        cfg, t = self.cfg, self.cfg.train
        with part("setup"):
            self.setup()  # bad references (a missing static checkpoint, ...) fail here, before any write
        main = self.dist.is_main
        if main:
            config_path = self.dir / CONFIG
            if not config_path.exists():
                write_json(config_path, {"run_id": self.run_id, **cfg.to_dict()})
                write_provenance(self.dir, self.threads, self.precision)
            set_status(self.dir, RunState.RUNNING)
        resumed = self.try_resume()
        evaluator = (evaluator or self.make_evaluator()) if main else None
        self.t0 = time.perf_counter()
        for hook in self.hooks:
            hook.on_start(self.step, t.steps)
        try:
            while self.step < t.steps:
                with part("train"):
                    self.train_step(self.step)
                    self.step += 1
                    self.after_step()
                if self.step % t.val_every == 0 or self.step % t.eval_every == 0 or self.step == t.steps:
                    self.log_point(evaluator)
        except Diverged as exc:
            if main:
                set_status(self.dir, RunState.FAILED, error=f"diverged: {exc}", step=exc.step)
            raise
        self.dist.barrier()  # every rank leaves the group together, before rank 0's final evaluation
        self.dist.close()
        if not main:
            return {"run_id": self.run_id, "steps": self.step, "rank": self.dist.rank, "resumed": resumed,
                    "wall_s": round(self.wall(), 2)}
        # the last curve point scored the same EMA weights on the same data: reuse its val_nll
        known = self.last_val_nll[1] if self.last_val_nll and self.last_val_nll[0] == self.step else None
        with part("final_eval"):
            final = evaluator.final(self.ema, self.dir, self.step, val_nll=known)
        final.update({"run_id": self.run_id, "steps": self.step, "wall_s": round(self.wall(), 2),
                      "resumed": resumed, "params": self.model.n_params()})
        last_row = final_curve_row(final)
        with part("write"):
            self.curve.add(self.step, self.step * t.batch_size, self.wall(), last_row)
            self.curve.save(self.dir / CURVE)
            write_json(self.dir / FINAL, final)
            set_status(self.dir, RunState.DONE)
        for hook in self.hooks:
            hook.on_final(self.step, final, last_row)
        return final

    def log_point(self, evaluator: Evaluator | None) -> None:
        """A curve point: training means and val_nll; at eval points also the sample metrics (not at
        the last step: the final evaluation gives them) and a checkpoint, written after the curve."""
        t = self.cfg.train
        with part("train"):  # the one host read of the interval's device-side sums
            row = self.read_logs()  # on every rank: it averages over them
        if evaluator is None:
            return
        eval_point = self.step % t.eval_every == 0 or self.step == t.steps
        for name in list(row):
            if name.startswith("align_loss_"):
                row[name.replace("align_loss_", "align_cos_")] = -row[name]
        if self.foresight is not None:
            row["lambda_scale"] = self.foresight.heads.scale(self.step - 1)
        with part("val"):
            row.update(evaluator.in_training(self.ema, self.step, samples=eval_point and self.step < t.steps))
        self.last_val_nll = (self.step, row["val_nll"])
        with part("write"):
            self.curve.add(self.step, self.step * t.batch_size, self.wall(), row)
            self.curve.save(self.dir / CURVE)
            if eval_point:
                save_checkpoint(self.dir, self.checkpoint_state())
        if self.progress is not None:
            self.progress(self.step, t.steps, row)
        steps = self.read_step_logs()
        for hook in self.hooks:
            hook.on_point(self.step, row, steps)
