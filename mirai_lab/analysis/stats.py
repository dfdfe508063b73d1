"""Statistics of a sweep: per-seed differences against the baseline, their power, verdicts, speed-ups.

The unit of evidence is a seed. Variants of one seed share initial weights, batch order and
the training noise streams, so the comparison is the per-seed difference variant - baseline
(paired by seed); when the seeds of the two sides do not match, the comparison falls back
to Welch's unpaired interval and says so. Every number here is a plain function of the
per-seed values, so the report, the `plan` verb and the adaptive sweep compute it once,
the same way (docs/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mirai_lab.metrics import COMPARED, MARGINS  # noqa: F401 - the statistics' view of the registry

LEVEL = 0.95
POWER = 0.80
# The fewest paired seeds a verdict may rest on. With 2 the t-interval has one degree of freedom
# (t = 12.7 at 95%) and the sd is one number: a verdict there says more about the draw than the variant.
MIN_SEEDS = 3


class Verdict(StrEnum):
    """better / worse: the interval excludes zero (direction by metric); equivalent: the interval
    lies inside +-margin; unresolved: neither, at the seeds there are."""

    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"
    UNRESOLVED = "unresolved"

    @property
    def settled(self) -> bool:
        """Whether more seeds are no longer needed to answer the comparison."""
        return self is not Verdict.UNRESOLVED


def t_quantile(level: float, df: float | np.ndarray) -> float | np.ndarray:
    """Two-sided Student-t critical value of a `level` interval."""
    return stats.t.ppf(0.5 + level / 2, df)


def t_halfwidth(sd: float | np.ndarray, n: int | np.ndarray, level: float = LEVEL,
                df_factor: float = 1.0) -> float | np.ndarray:
    """Half-width of the t-interval of a mean of n values with spread sd (df = (n - 1) * df_factor).

    Vectorised over sd and n, so the sequential-stopping simulation uses this same function.
    """
    n = np.asarray(n, dtype=float)
    return t_quantile(level, (n - 1) * df_factor) * np.asarray(sd, dtype=float) / np.sqrt(n)


@dataclass(frozen=True)
class Difference:
    """Mean difference with its interval. sd is the spread of one per-seed difference (paired), or
    sqrt(var_a + var_b) for the unpaired fallback, whose degrees of freedom are (n - 1) * df_factor
    (Welch-Satterthwaite at equal n). lo/hi/half/mde are NaN when n < 2."""

    mean: float
    sd: float
    n: int
    level: float
    paired: bool
    df_factor: float = 1.0

    @property
    def half(self) -> float:
        if self.n < 2 or not math.isfinite(self.sd):
            return math.nan
        return float(t_halfwidth(self.sd, self.n, self.level, self.df_factor))

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    @property
    def mde(self) -> float:
        """Smallest true difference detected with 80% power by this interval at this n."""
        return minimum_detectable_effect(self.sd, self.n, self.level, POWER, self.df_factor)

    def seeds_for(self, halfwidth: float) -> int | None:
        """Seeds (pairs) that would bring the half-width to `halfwidth` at this sd and level."""
        return seeds_needed(self.sd, halfwidth, self.level, self.df_factor)


def _values(values: Mapping[int, float]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float],
                      level: float = LEVEL) -> Difference | None:
    """variant - baseline from {seed: value} maps: paired on the common seeds; Welch's unpaired
    interval when fewer than two seeds are common but each side has two; None when nothing compares."""
    a, b = _values(variant), _values(baseline)
    if not a or not b:
        return None
    common = sorted(a.keys() & b.keys())
    if len(common) < 2 and len(a) >= 2 and len(b) >= 2:
        return welch_difference(list(a.values()), list(b.values()), level)
    if not common:
        return None
    d = np.array([a[s] - b[s] for s in common])
    return Difference(float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else math.nan, int(d.size), level, True)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """Unpaired mean(a) - mean(b) with the Welch-Satterthwaite degrees of freedom.

    Expressed on the paired scale (sd of one difference, n = the smaller side) so that its
    half-width, MDE and seed count read like the paired ones.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size  # variances of the two means
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1)) if se > 0 else x.size + y.size - 2
    n = min(x.size, y.size)
    return Difference(float(x.mean() - y.mean()), se * math.sqrt(n), n, level, False, df / (n - 1))


def minimum_detectable_effect(sd: float, n: int, level: float = LEVEL, power: float = POWER,
                              df_factor: float = 1.0) -> float:
    """The true difference that the two-sided t-test at `level` detects with probability `power`.

    Exact under normal differences: the test statistic is noncentral t with noncentrality
    delta * sqrt(n) / sd, and the noncentrality at which it leaves +-t_crit with probability
    `power` is found by root finding.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = (n - 1) * df_factor
    crit = float(t_quantile(level, df))

    def shortfall(ncp: float) -> float:
        # the far tail's cdf underflows to NaN for large ncp, where it is 0
        return float(stats.nct.sf(crit, df, ncp) + np.nan_to_num(stats.nct.cdf(-crit, df, ncp))) - power

    hi = crit + 1.0
    while shortfall(hi) < 0:  # power grows with ncp: widen the bracket until it holds the answer
        hi *= 2
    ncp = optimize.brentq(shortfall, 0.0, hi, xtol=1e-10)
    return ncp * sd / math.sqrt(n)


def seeds_needed(sd: float, halfwidth: float, level: float = LEVEL, df_factor: float = 1.0,
                 cap: int = 100_000) -> int | None:
    """Smallest n >= 2 whose t-interval half-width at this sd is <= halfwidth; None beyond `cap`.

    The t quantile shrinks with n, so n is searched upwards from the normal-approximation
    lower bound (z * sd / h)^2, which t > z makes a bound for the exact answer.
    """
    if not (math.isfinite(sd) and math.isfinite(halfwidth)) or halfwidth <= 0:
        return None
    n = max(2, math.ceil((stats.norm.ppf(0.5 + level / 2) * sd / halfwidth) ** 2))
    while n <= cap:
        if t_halfwidth(sd, n, level, df_factor) <= halfwidth:
            return n
        n += 1
    return None


def classify(lo: float | np.ndarray, hi: float | np.ndarray, lower_is_better: bool,
             margin: float | None) -> np.ndarray:
    """Verdict strings from interval ends (vectorised; NaN ends = unresolved).

    Excluding zero decides first (a real difference is reported even if it is small);
    otherwise an interval inside +-margin is "equivalent".
    """
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    below, above = hi < 0, lo > 0
    good, bad = (below, above) if lower_is_better else (above, below)
    inside = (lo > -margin) & (hi < margin) if margin else np.zeros_like(below)
    return np.select([good, bad, inside], [Verdict.BETTER.value, Verdict.WORSE.value, Verdict.EQUIVALENT.value],
                     Verdict.UNRESOLVED.value)


def verdict(diff: Difference | None, lower_is_better: bool, margin: float | None) -> Verdict:
    """The row's verdict; below MIN_SEEDS seeds (on either side) it is unresolved, whatever the interval."""
    if diff is None or diff.n < MIN_SEEDS:
        return Verdict.UNRESOLVED
    return Verdict(str(classify(diff.lo, diff.hi, lower_is_better, margin)))


def p_value(diff: Difference) -> float:
    """Two-sided p-value of the difference's t-test (the test its interval inverts); NaN below 2 seeds."""
    if diff.n < 2 or not math.isfinite(diff.sd):
        return math.nan
    if diff.sd == 0:
        return 0.0 if diff.mean != 0 else 1.0
    t = abs(diff.mean) / (diff.sd / math.sqrt(diff.n))
    return float(2 * stats.t.sf(t, (diff.n - 1) * diff.df_factor))


ADJUSTMENTS = {"none": None, "holm": "holm", "bh": "fdr_bh"}  # --adjust -> statsmodels' method name


def adjusted_verdicts(diffs: Sequence[Difference | None], lower_is_better: bool, margin: float | None,
                      alpha: float, method: str) -> list[Verdict | None]:
    """Verdicts of a table's rows with table-wide error control (`method` in ADJUSTMENTS).

    Each row's interval is at level 1 - alpha_row (alpha_row = alpha / L for an adaptive sweep of L
    looks, else alpha), so the row's p-value scaled by alpha / alpha_row is a valid p-value at
    `alpha` over all of its looks (the union bound the per-row level already rests on). Holm on
    those controls the chance that any row's better/worse is wrong at `alpha` (any dependence);
    Benjamini-Hochberg the expected share of wrong ones among them (rows sharing one baseline are
    positively dependent, where BH holds). "equivalent" needs the row's interval at the Bonferroni
    level 1 - alpha_row / m inside +-margin, so equivalence claims are table-wide too. A row with
    fewer than MIN_SEEDS seeds is unresolved and is not counted in m."""
    rows = [i for i, d in enumerate(diffs) if d is not None and d.n >= MIN_SEEDS]
    out: list[Verdict | None] = [None if d is None else Verdict.UNRESOLVED for d in diffs]
    if not rows:
        return out
    from statsmodels.stats.multitest import multipletests  # imported where used: it is slow to import

    alpha_row = 1 - diffs[rows[0]].level  # type: ignore[union-attr]
    scaled = [min(1.0, p_value(diffs[i]) * alpha / alpha_row) for i in rows]  # type: ignore[arg-type]
    reject = multipletests(scaled, alpha=alpha, method=ADJUSTMENTS[method])[0]
    for i, rejected in zip(rows, reject, strict=True):
        d = diffs[i]
        assert d is not None
        if rejected:
            out[i] = Verdict.BETTER if (d.mean < 0) == lower_is_better else Verdict.WORSE
            continue
        wide = Difference(d.mean, d.sd, d.n, 1 - alpha_row / len(rows), d.paired, d.df_factor)
        if margin and -margin < wide.lo and wide.hi < margin:
            out[i] = Verdict.EQUIVALENT
    return out


def seeds_to_resolve(diff: Difference | None, margin: float | None) -> int | None:
    """Plug-in seed count for an unresolved row: the half-width that would exclude zero (|mean|)
    or show equivalence (margin - |mean|), whichever is reached first, at the observed sd."""
    if diff is None or diff.n < 2:
        return None
    target = max(abs(diff.mean), (margin - abs(diff.mean)) if margin else 0.0)
    needed = diff.seeds_for(target) if target > 0 else None
    return max(needed, MIN_SEEDS) if needed is not None else None


# ---------------------------------------------------------------- speed-up


def steps_to_reach(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, target: float,
                   lower_is_better: bool = True) -> float | None:
    """First step at which a curve reaches `target`, linearly interpolated between eval points.

    The crossing is placed on the segment between the first pair of points that brackets
    the target. A point that equals the target (or the first point already past it) gives its
    own step exactly; a curve that never gets there gives None, never an extrapolation.
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(s) & np.isfinite(v)
    order = np.argsort(s[keep], kind="stable")
    s, v = s[keep][order], v[keep][order]
    gap = (v - target) if lower_is_better else (target - v)  # <= 0: reached
    hits = np.flatnonzero(gap <= 0)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0 or gap[i] == 0:
        return float(s[i])
    return float(s[i - 1] + (s[i] - s[i - 1]) * gap[i - 1] / (gap[i - 1] - gap[i]))


@dataclass(frozen=True)
class SpeedUp:
    """Per-seed speed-ups over the seeds where the variant reached the target; geometric mean
    and a t-interval on log speed-up. n: seeds compared; reached: of those, where it got there."""

    ratios: tuple[float, ...]
    n: int
    level: float

    @property
    def reached(self) -> int:
        return len(self.ratios)

    @property
    def mean(self) -> float:
        return float(np.exp(np.mean(np.log(self.ratios)))) if self.ratios else math.nan

    def _half(self) -> float:
        logs = np.log(self.ratios)
        return float(t_halfwidth(logs.std(ddof=1), logs.size, self.level)) if logs.size > 1 else math.nan

    @property
    def lo(self) -> float:
        return self.mean * math.exp(-self._half()) if self.ratios else math.nan

    @property
    def hi(self) -> float:
        return self.mean * math.exp(self._half()) if self.ratios else math.nan


def speedup(baseline: Mapping[int, tuple[np.ndarray, np.ndarray]], variant: Mapping[int, tuple[np.ndarray, np.ndarray]],
            lower_is_better: bool, level: float = LEVEL) -> SpeedUp | None:
    """Per seed: steps the baseline needs to first reach its own final value (its curve's last point,
    the final evaluation) over the steps the variant of the same seed needs to reach it.

    Curves are {seed: (steps, values)}. A seed whose variant never reaches the target counts in n
    but gives no ratio; None when no seed has both curves, or when the baseline's curve is a single
    point (a metric measured at the final evaluation only has no time course to compare).
    """
    ratios, n = [], 0
    for seed in sorted(baseline.keys() & variant.keys()):
        b_steps, b_values = baseline[seed]
        if len(b_steps) < 2:
            continue
        last = int(np.argmax(b_steps))
        target = float(b_values[last])
        base = steps_to_reach(b_steps, b_values, target, lower_is_better)
        own = steps_to_reach(*variant[seed], target, lower_is_better)
        n += 1
        if own is not None and own > 0 and base:
            ratios.append(base / own)
    return SpeedUp(tuple(ratios), n, level) if n else None


def curve_difference(curves: pd.DataFrame, label: str, base_label: str, metric: str,
                     level: float = LEVEL) -> pd.DataFrame:
    """Per step: mean of variant - baseline over the seeds that have both at that step, with a
    pointwise t band (columns step, mean, lo, hi, n). Only steps both curves evaluated are used."""
    sel = curves[(curves["metric"] == metric) & (curves["state"] == "done")]
    wide = sel.pivot_table(index=["seed", "step"], columns="label", values="value", aggfunc="mean")
    if label not in wide or base_label not in wide:
        return pd.DataFrame(columns=["step", "mean", "lo", "hi", "n"])
    d = (wide[label] - wide[base_label]).dropna().rename("d").reset_index()
    g = d.groupby("step")["d"]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.size()}).reset_index()
    half = np.where(out["n"] > 1, t_halfwidth(out["sd"].fillna(0.0), out["n"].clip(lower=2), level), np.nan)
    return out.assign(lo=out["mean"] - half, hi=out["mean"] + half)[["step", "mean", "lo", "hi", "n"]]


def by_seed(frame: pd.DataFrame, column: str) -> dict[int, float]:
    """{seed: value} of a column over finished runs (missing values dropped)."""
    if column not in frame:
        return {}
    values = pd.to_numeric(frame[column], errors="coerce")
    return {int(s): float(v) for s, v in zip(frame["seed"], values, strict=True) if np.isfinite(v)}


def difference_to_baseline(rows: pd.DataFrame, base: pd.DataFrame | None, metric: str,
                           level: float = LEVEL) -> Difference | None:
    """A row's finished runs minus the baseline's on `metric`, paired by seed: the one difference
    every table, look, confirmation and seed plan judges (None without a baseline or values)."""
    if base is None:
        return None
    return paired_difference(by_seed(rows, metric), by_seed(base, metric), level)


def curves_by_seed(curves: pd.DataFrame, label: str, metric: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{seed: (steps, values)} of one variant's finished curves of `metric`, sorted by step."""
    sel = curves[(curves["label"] == label) & (curves["metric"] == metric) & (curves["state"] == "done")]
    out = {}
    for seed, group in sel.groupby("seed"):
        g = group.groupby("step")["value"].mean().sort_index()
        out[int(seed)] = (g.index.to_numpy(dtype=float), g.to_numpy(dtype=float))
    return out
