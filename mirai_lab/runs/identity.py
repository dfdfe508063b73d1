"""A run's identity: a short content hash of its resolved config (seed included)."""

from __future__ import annotations

from mirai_lab.config import RunConfig
from mirai_lab.runs.store import content_hash

# The code's side of a run's identity (runs/provenance.py): bump it when a change of the code
# changes what a run computes, so that runs made before are seen as stale. 2: every random draw
# of training comes from keyed streams (training/rng.py).
COMPUTE_VERSION = 2

# Settings that change how fast a run trains or how often it is measured, not what it learns:
# threads and micro-batching (speed, memory), val_every (evaluation draws nothing from the
# training streams, training/rng.py: the weights are bit-identical at any value) and compile
# (the same computation, fused; equal to float rounding).
NOT_IDENTITY = ("threads", "grad_accum", "val_every", "compile")

# Fields added after runs existed, with the default they were added at: hashed only when set to
# something else, so that adding a field keeps the ids of every run made before it.
ADDED_LATER = {("eval", "metrics_in_training"): True}


def run_id_of(cfg: RunConfig) -> str:
    """Hash of the resolved config without the `NOT_IDENTITY` train settings, so that adding
    one of them kept the ids of existing runs. train.precision "auto" is hashed as "fp32", the
    default it replaced: it resolves per machine at run time (training/precision.py) and the
    run's provenance records what it trained in. `ADDED_LATER` fields are hashed only off their default."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in NOT_IDENTITY}
    if d["train"]["precision"] == "auto":  # the default since it replaced fp32: the ids of fp32 runs stand
        d["train"]["precision"] = "fp32"
    for (section, key), default in ADDED_LATER.items():
        if d[section][key] == default:
            del d[section][key]
    return content_hash(d)
