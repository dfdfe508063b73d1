"""A run's identity: a short content hash of what it computes (config, seed, code, world size)."""

from __future__ import annotations

from mirai_lab.config import RunConfig
from mirai_lab.files.digest import content_hash

# The code's side of a run's identity (runs/provenance.py), hashed into every run id: bump it when
# a change of the code changes what a run computes, so that runs made before are never reused.
# 2: every random draw of training comes from keyed streams (rng.py).
# 3: train.precision is resolved before the id is made ("auto" is never hashed); the torchrun
#    world size is part of the id.
COMPUTE_VERSION = 3

# Settings that change how fast a run trains or how often it is measured, not what it learns:
# threads and micro-batching (speed, memory), val_every (evaluation draws nothing from the
# training streams, rng.py: the weights are bit-identical at any value) and compile
# (the same computation, fused; equal to float rounding).
NOT_IDENTITY = ("threads", "grad_accum", "val_every", "compile")

# Fields added after runs existed, with the default they were added at: hashed only when set to
# something else, so that adding a field keeps the ids of every run made at the same compute version.
# Empty: the bump to 3 renamed every run; add a field here when one is added to the config.
ADDED_LATER: dict[tuple[str, str], object] = {}


def run_id_of(cfg: RunConfig, world: int = 1) -> str:
    """Hash of the resolved config without the `NOT_IDENTITY` train settings, and of the code's
    compute version. The precision must be resolved (fp32 or bf16): "auto" means different
    computations on different machines, so it has no id (training/precision.py resolves it).

    `world` is the torchrun world size: each rank draws its own dropout and class-dropout
    streams (rng.py), so a 2-rank run computes something else than one process does
    and gets its own id; one process (world 1) hashes no world at all."""
    d = cfg.to_dict()
    if d["train"]["precision"] not in ("fp32", "bf16"):
        raise ValueError(f"train.precision={d['train']['precision']!r} has no run id: resolve it first "
                         "(training/precision.py)")
    d["train"] = {k: v for k, v in d["train"].items() if k not in NOT_IDENTITY}
    for (section, key), default in ADDED_LATER.items():
        if d[section][key] == default:
            del d[section][key]
    d["compute_version"] = COMPUTE_VERSION
    if world > 1:
        d["world"] = world
    return content_hash(d)
