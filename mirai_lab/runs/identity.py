"""A run's identity: a short content hash of its resolved config (seed included)."""

from __future__ import annotations

from mirai_lab.config import RunConfig
from mirai_lab.runs.store import content_hash


def run_id_of(cfg: RunConfig) -> str:
    """Hash of the resolved config; the thread count and the micro-batching change speed and
    memory, not the run, so they are left out."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("threads", "grad_accum")}
    return content_hash(d)
