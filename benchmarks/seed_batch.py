"""Seed-batched training on this CPU: does stacking several seeds' models into one batched
computation train them faster per core than one process per seed?

Each arm trains the baseline GPT of a budget (its real shape and token data) for a few steps:

- `one seed`: S separate models, one after the other, each step a plain forward, next-token
  loss, backward, per-model gradient clipping and a foreach AdamW update;
- `stacked`: the same S models as stacked parameters (torch.func.stack_module_state), the
  forward vmapped over the seed dimension, the S losses summed (their gradients stay separate:
  no parameter is shared), clipping per seed and one foreach AdamW over the stacked tensors
  (elementwise, so each seed's update is its own).

Both arms see the same initial weights and batches, and the first step's gradients are compared
seed by seed: equal up to float reassociation. Timings alternate the arms in rounds and report
the median seconds per seed-step; the thread count is the training step's (one per run).

    python benchmarks/seed_batch.py --seeds 1 2 4 --steps 6 --rounds 5 --threads 1 --out FILE.md
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from mirai_lab.bench.steps import build_trainer
from mirai_lab.config import TrainConfig
from mirai_lab.model.gpt import GPT
from mirai_lab.runs.provenance import cpu_matrix_extensions, cpu_model


def batches(trainer, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The trainer's own batches of the first `steps` steps (the seed only picks the order)."""
    from mirai_lab.training.batches import batch_indices

    t = trainer.cfg.train
    out = []
    for step in range(steps):
        idx = batch_indices(trainer.data.train_idx, t.batch_size, t.seed, step)
        out.append((trainer.data.tokens(idx, None), trainer.data.labels[idx]))
    return out


def ntp_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))


def adamw(params: list[torch.Tensor], t: TrainConfig) -> torch.optim.AdamW:
    """The run's AdamW (lr, betas, weight decay), in one group: the trainer's second group (no decay on
    norms and biases) costs the same elementwise work, and its ndim rule would misplace a stacked bias."""
    return torch.optim.AdamW(params, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, foreach=True)


class OneSeed:
    """S models stepped one after the other: what S one-thread processes do per core."""

    def __init__(self, models: list[GPT], t: TrainConfig) -> None:
        self.models, self.clip = models, t.grad_clip
        self.opts = [adamw(list(m.parameters()), t) for m in models]

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for m in self.models:
            m.zero_grad(set_to_none=True)
            ntp_loss(m(x[:, :-1], y)[0], x).backward()
            out.append({k: p.grad.clone() for k, p in m.named_parameters()})
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for m, opt in zip(self.models, self.opts, strict=True):
            opt.zero_grad(set_to_none=True)
            ntp_loss(m(x[:, :-1], y)[0], x).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), self.clip)
            opt.step()


class Stacked:
    """The same S models as one vmapped computation over stacked parameters."""

    def __init__(self, models: list[GPT], t: TrainConfig) -> None:
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v[0] for k, v in buffers.items()}  # rope: the same for every seed
        self.base = copy.deepcopy(models[0]).to("meta")
        self.opt = adamw(list(self.params.values()), t)
        self.n, self.clip = len(models), t.grad_clip

        def one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ntp_loss(functional_call(self.base, (p, self.buffers), (x[:, :-1], y))[0], x)

        self.losses = torch.vmap(one, in_dims=(0, None, None))

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for p in self.params.values():
            p.grad = None
        self.losses(self.params, x, y).sum().backward()

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.backward(x, y)
        return [{k: p.grad[i].clone() for k, p in self.params.items()} for i in range(self.n)]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.backward(x, y)
        grads = [p.grad for p in self.params.values()]
        # per-seed global norm over every stacked tensor's slice i, then clip each seed alone
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (self.clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
        self.opt.step()


def models_for(trainer, n: int) -> list[GPT]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = GPT(trainer.model.shape)
        m.cls_embedding.dropout = 0.0  # class dropout draws per seed; the arms compare arithmetic
        out.append(m.train())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the table here as markdown, with the command")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from mirai_lab.presets import budget_overrides

    over = {k: v for k, v in budget_overrides(a.budget).items() if k.startswith(("model.", "train.batch_size"))}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(over.get("model.preset", "cpu-s"), "baseline", "fp32", over["train.batch_size"],
                                Path(tmp), over)
        data = batches(trainer, a.steps)
        s = trainer.model.shape
        head = (f"{cpu_model()}, matrix extensions {' '.join(cpu_matrix_extensions())}; torch {torch.__version__}, "
                f"{a.threads} thread(s); budget {a.budget}: {s.n_layer} blocks, dim {s.dim}, {s.n_tokens} tokens, "
                f"vocab {s.vocab_size}, batch {over['train.batch_size']}; medians of {a.rounds} interleaved rounds "
                f"of {a.steps} steps")
        print(head)
        rows = ["| seeds S | one seed, ms per seed-step | stacked, ms per seed-step | stacked / one seed "
                "| largest relative gradient difference |", "|---|---|---|---|---|"]
        for n in a.seeds:
            t = trainer.cfg.train
            one, stacked = OneSeed(models_for(trainer, n), t), Stacked(models_for(trainer, n), t)
            x, y = data[0]
            worst = max((ga[k] - gb[k]).abs().max().item() / max(ga[k].abs().max().item(), 1e-30)
                        for ga, gb in zip(one.grads(x, y), stacked.grads(x, y), strict=True) for k in ga)
            times: dict[str, list[float]] = {"one seed": [], "stacked": []}
            for _ in range(a.rounds):
                for name, arm in (("one seed", one), ("stacked", stacked)):
                    start = time.perf_counter()
                    for x, y in data:
                        arm.step(x, y)
                    times[name].append((time.perf_counter() - start) / (len(data) * n))
            t1, t2 = statistics.median(times["one seed"]), statistics.median(times["stacked"])
            rows.append(f"| {n} | {1e3 * t1:.1f} | {1e3 * t2:.1f} | {t2 / t1:.3f} | {worst:.1e} |")
            print(rows[-1])
    if a.out:
        command = "python benchmarks/seed_batch.py " + shlex.join(sys.argv[1:])
        a.out.write_text(f"# Seed-batched training on the CPU\n\nCommand: `{command}`\n\n{head}.\n\n"
                         + "\n".join(rows) + "\n\nWhat the arms are: the docstring of benchmarks/seed_batch.py.\n")

if __name__ == "__main__":
    main()
