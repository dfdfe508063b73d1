"""The paper's orderings, checked on a sweep: does "internal-2d < baseline" hold here?

A spec's [paper] table may list orderings between its variants on the metrics named by
`ordering_metrics` (lower-is-better metrics; "a < b" = a scores lower than b):

    [paper]
    orderings = ["internal-2d < baseline", "output-1d > baseline"]
    ordering_metrics = ["fid_domain", "val_nll"]

Each is judged by the paired difference a - b over the seeds both have, at the report's
interval level: it holds when the interval lies on its side of zero, is contradicted when it
lies on the other side, and is unresolved otherwise (noted "equivalent" when the interval is
inside the metric's margin, i.e. no difference that matters at this scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mirai_lab.analysis.collect import done
from mirai_lab.analysis.stats import COMPARED, Difference, by_seed, paired_difference
from mirai_lab.errors import UserError

OPS = ("<", ">")


@dataclass(frozen=True)
class Ordering:
    left: str
    op: str
    right: str

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


def parse_ordering(text: Any, variants: list[str], where: str) -> Ordering:
    """'a < b' or 'a > b' between two variants; anything else is a one-line UserError."""
    parts = str(text).split()
    if not isinstance(text, str) or len(parts) != 3 or parts[1] not in OPS:
        raise UserError(f"{where}: ordering {text!r}: expected 'VARIANT < VARIANT' or 'VARIANT > VARIANT'")
    left, op, right = parts
    for name in (left, right):
        if name not in variants:
            raise UserError(f"{where}: ordering {text!r}: {name!r} is not a variant ({', '.join(variants)})")
    if left == right:
        raise UserError(f"{where}: ordering {text!r}: compares a variant with itself")
    return Ordering(left, op, right)


def ordering_metrics(paper: Mapping[str, Any], where: str) -> list[str]:
    metrics = paper.get("ordering_metrics", list(COMPARED))
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not metrics or any(m not in COMPARED for m in metrics):
        raise UserError(f"{where}: ordering_metrics={metrics!r}: expected names from {', '.join(COMPARED)}")
    return metrics


def outcome(diff: Difference | None, op: str, margin: float | None) -> str:
    """holds / contradicted / unresolved (equivalent within +-margin) / unresolved."""
    if diff is None or not diff.excludes_zero:
        if diff is not None and diff.n >= 2 and margin and -margin < diff.lo and diff.hi < margin:
            return f"unresolved (equivalent within ±{margin:g})"
        return "unresolved"
    left_lower = diff.hi < 0
    return "holds" if left_lower == (op == "<") else "contradicted"


def check_orderings(paper: Mapping[str, Any], runs: pd.DataFrame, where: str, level: float,
                    margins: Mapping[str, float]) -> pd.DataFrame:
    """A row per (ordering, metric): ordering, metric, diff (left - right), lo, hi, n, outcome."""
    texts = paper.get("orderings") or []
    if not isinstance(texts, list):
        raise UserError(f"{where}: orderings={texts!r}: expected a list of 'VARIANT < VARIANT' strings")
    variants = list(dict.fromkeys(runs["variant"]))
    finished = done(runs)
    rows = []
    for text in texts:
        order = parse_ordering(text, variants, where)
        for metric in ordering_metrics(paper, where):
            left = by_seed(finished[finished["variant"] == order.left], metric)
            right = by_seed(finished[finished["variant"] == order.right], metric)
            diff = paired_difference(left, right, level)
            rows.append({"ordering": str(order), "metric": metric, "diff": diff.mean if diff else float("nan"),
                         "lo": diff.lo if diff else float("nan"), "hi": diff.hi if diff else float("nan"),
                         "n": diff.n if diff else 0, "outcome": outcome(diff, order.op, margins.get(metric))})
    return pd.DataFrame(rows, columns=["ordering", "metric", "diff", "lo", "hi", "n", "outcome"])
