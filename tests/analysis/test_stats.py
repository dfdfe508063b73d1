"""analysis/stats.py against scipy and simulation: intervals, Welch, MDE, seed counts, verdicts, speed-ups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mirai_lab.analysis.stats import (
    Verdict,
    curve_difference,
    difference_to_baseline,
    minimum_detectable_effect,
    paired_difference,
    seeds_needed,
    seeds_to_resolve,
    speedup,
    verdict,
)

BASE = {0: 2.10, 1: 2.14, 2: 2.12, 3: 2.16, 4: 2.11}
VAR = {0: 2.08, 1: 2.13, 2: 2.07, 3: 2.12, 4: 2.10}


def test_paired_interval_matches_scipy_ttest_rel():
    diff = paired_difference(VAR, BASE)
    seeds = sorted(BASE)
    ci = stats.ttest_rel([VAR[s] for s in seeds], [BASE[s] for s in seeds]).confidence_interval(0.95)
    assert diff.paired and diff.n == 5
    assert diff.mean == pytest.approx(np.mean([VAR[s] - BASE[s] for s in seeds]))
    assert (diff.lo, diff.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert diff.half == pytest.approx((ci.high - ci.low) / 2)


def test_pairing_uses_common_seeds_only():
    diff = paired_difference({**VAR, 9: 5.0}, BASE)  # seed 9 has no baseline: not a pair
    assert diff.n == 5 and diff.mean == pytest.approx(paired_difference(VAR, BASE).mean)


def test_unpaired_fallback_is_welch():
    a, b = {0: 1.0, 1: 1.4, 2: 1.1}, {5: 0.5, 6: 0.9, 7: 0.6, 8: 0.8}  # no seed in common
    diff = paired_difference(a, b, level=0.9)
    ci = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(0.9)
    assert not diff.paired
    assert (diff.lo, diff.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_one_pair_has_no_interval_and_nothing_is_none():
    one = paired_difference({0: 1.5}, {0: 1.0})
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.lo) and math.isnan(one.mde)
    assert verdict(one, True, 0.01) is Verdict.UNRESOLVED and seeds_to_resolve(one, 0.01) is None
    assert paired_difference({}, BASE) is None


@pytest.mark.parametrize(("sd", "half", "level"), [(1.0, 1.0, 0.95), (0.03, 0.01, 0.95), (0.025, 0.01, 0.99821)])
def test_seeds_needed_is_the_smallest_n_that_reaches_the_halfwidth(sd: float, half: float, level: float):
    def scipy_half(n: int) -> float:
        lo, hi = stats.t.interval(level, n - 1, loc=0.0, scale=sd / math.sqrt(n))
        return (hi - lo) / 2

    n = seeds_needed(sd, half, level)
    assert scipy_half(n) <= half < scipy_half(n - 1)


def test_seeds_needed_exact_values():
    # t(0.975, 6) / sqrt(7) = 0.925 <= 1 < t(0.975, 5) / sqrt(6) = 1.050
    assert seeds_needed(1.0, 1.0) == 7
    assert seeds_needed(0.0, 0.01) == 2
    assert seeds_needed(1.0, 0.0) is None and seeds_needed(math.nan, 0.1) is None


def test_mde_gives_80_percent_power_by_simulation():
    n, sd = 6, 1.0
    mde = minimum_detectable_effect(sd, n, 0.95, 0.8)
    rng = np.random.default_rng(0)
    draws = rng.normal(mde, sd, size=(40_000, n))
    power = (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean()
    assert power == pytest.approx(0.80, abs=0.01)  # 40k draws: standard error 0.002
    # the normal approximation (z_a/2 + z_b) sd / sqrt(n) is too small at n = 6
    assert mde > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)


def test_verdicts_by_direction_and_margin():
    better = paired_difference({0: 1.0, 1: 1.1, 2: 1.05}, {0: 2.0, 1: 2.1, 2: 2.05})
    assert verdict(better, lower_is_better=True, margin=0.01) is Verdict.BETTER
    assert verdict(better, lower_is_better=False, margin=0.01) is Verdict.WORSE
    tiny = paired_difference({0: 2.001, 1: 1.999, 2: 2.0005, 3: 1.9995}, {s: 2.0 for s in range(4)})
    assert verdict(tiny, True, 0.01) is Verdict.EQUIVALENT
    assert verdict(tiny, True, None) is Verdict.UNRESOLVED
    wide = paired_difference({0: 2.05, 1: 1.97, 2: 2.02}, {s: 2.0 for s in range(3)})
    assert verdict(wide, True, 0.01) is Verdict.UNRESOLVED
    # needs the half-width that reaches max(|mean|, margin - |mean|) at the observed sd
    need = seeds_to_resolve(wide, 0.01)
    assert need == seeds_needed(wide.sd, max(abs(wide.mean), 0.01 - abs(wide.mean)))


# ---------------------------------------------------------------- speed-up

STEPS = np.arange(0, 101, 10, dtype=float)


def _curve(final: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """A decreasing curve from 3.0 to `final` at step 100, exponential in step."""
    return STEPS, final + (3.0 - final) * np.exp(-rate * STEPS) - (3.0 - final) * np.exp(-rate * 100) * STEPS / 100


def test_speedup_per_seed_and_interval_match_an_independent_computation():
    base = {s: _curve(2.0 + 0.01 * s, 0.03) for s in range(4)}
    var = {s: _curve(1.9 + 0.02 * s, 0.05 + 0.01 * s) for s in range(3)}
    var[3] = _curve(2.5, 0.03)  # ends above the baseline's final value: never reaches it
    got = speedup(base, var, lower_is_better=True)

    ratios = []
    for s in range(3):
        target = base[s][1][-1]
        # numpy.interp on the decreasing curve, read backwards; the baseline reaches its own final at step 100
        own = np.interp(target, var[s][1][::-1], var[s][0][::-1])
        ratios.append(100.0 / own)
    logs = np.log(ratios)
    lo, hi = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    assert got.n == 4 and got.reached == 3
    assert got.ratios == pytest.approx(ratios)
    assert got.mean == pytest.approx(math.exp(logs.mean()))
    assert (got.lo, got.hi) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
    assert all(r > 1 for r in got.ratios)  # every variant that ends below the baseline is faster


def test_a_variant_that_ends_below_the_baseline_is_never_not_reached():
    base = {0: (STEPS, np.linspace(3.0, 2.0, STEPS.size))}
    var = {0: (STEPS, np.linspace(3.0, 1.99, STEPS.size))}
    got = speedup(base, var, True)
    assert got.reached == 1 and got.ratios[0] == pytest.approx(100 / (100 * 1.0 / 1.01))


def test_no_speedup_from_a_metric_measured_at_the_final_evaluation_only():
    """A one-point curve (sample metrics at the end only) would give a meaningless 1.00x or "not reached"."""
    base = {s: (np.array([320.0]), np.array([7.0 + s])) for s in range(3)}
    var = {s: (np.array([320.0]), np.array([6.5 + s])) for s in range(3)}
    assert speedup(base, var, True) is None


def test_curve_difference_uses_the_common_steps():
    rows = []
    for seed in range(3):
        for label, steps, offset in (("baseline", [0, 10, 20], 0.0), ("v", [0, 20, 30], -0.1 * (seed + 1))):
            rows += [{"label": label, "seed": seed, "step": s, "metric": "val_nll", "value": 3 - s / 100 + offset,
                      "state": "done"} for s in steps]
    d = curve_difference(pd.DataFrame(rows), "v", "baseline", "val_nll").set_index("step")
    assert list(d.index) == [0, 20]
    assert d.loc[20, "mean"] == pytest.approx(-0.2)
    lo, hi = stats.t.interval(0.95, 2, loc=-0.2, scale=stats.sem([-0.1, -0.2, -0.3]))
    assert (d.loc[20, "lo"], d.loc[20, "hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_no_verdict_below_three_paired_seeds():
    """Two seeds with a tight interval far from zero are still unresolved; the third decides."""
    from mirai_lab.analysis.stats import MIN_SEEDS, Verdict, paired_difference, verdict

    base = {0: 2.0, 1: 2.1, 2: 2.2}
    variant = {0: 1.5, 1: 1.6001, 2: 1.7}
    two = paired_difference({s: variant[s] for s in (0, 1)}, {s: base[s] for s in (0, 1)})
    assert two.n == 2 and two.hi < 0  # the interval alone would say "better"
    assert MIN_SEEDS == 3 and verdict(two, True, 0.01) is Verdict.UNRESOLVED
    assert verdict(paired_difference(variant, base), True, 0.01) is Verdict.BETTER


def test_p_value_matches_scipys_paired_t_test():
    from scipy import stats as sps

    from mirai_lab.analysis.stats import p_value

    a, b = [2.01, 2.05, 1.98, 2.10, 2.03], [2.04, 2.09, 2.03, 2.12, 2.06]
    diff = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    assert p_value(diff) == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)


def test_holm_and_bh_verdicts_match_statsmodels_on_exact_p_values():
    """Rows built to hit given p-values: the rejections are statsmodels' on the same p-values."""
    from statsmodels.stats.multitest import multipletests

    from mirai_lab.analysis.stats import Difference, Verdict, adjusted_verdicts, p_value

    diffs = [Difference(-m, 0.02, 5, 0.95, True) for m in (0.05, 0.03, 0.02, 0.015, 0.001)]
    ps = [p_value(d) for d in diffs]
    for method, name in (("holm", "holm"), ("bh", "fdr_bh")):
        expected = multipletests(ps, alpha=0.05, method=name)[0]
        found = adjusted_verdicts(diffs, True, None, 0.05, method)
        assert [v is Verdict.BETTER for v in found] == list(expected)
    plain = [d.hi < 0 for d in diffs]
    holm = [v is Verdict.BETTER for v in adjusted_verdicts(diffs, True, None, 0.05, "holm")]
    assert sum(holm) < sum(plain)  # the adjustment takes verdicts away, never adds one


def _simulated_tables(n_tables: int, rows: int, seeds: int, rng: np.random.Generator) -> list[list]:
    """Null tables: every variant equals the baseline; the rows share the baseline's seed noise."""
    from mirai_lab.analysis.stats import paired_difference

    tables = []
    for _ in range(n_tables):
        base = rng.normal(size=seeds)
        variants = base + rng.normal(scale=0.5, size=(rows, seeds))  # shared baseline: correlated rows
        tables.append([paired_difference(dict(enumerate(v)), dict(enumerate(base))) for v in variants])
    return tables


def test_the_table_wide_false_verdict_rate_under_the_null_stays_at_alpha(monkeypatch):
    """4,000 null tables of 7 rows at 5 seeds: without adjustment some row reads better/worse in
    about 1 - 0.95^7 = 30% of tables (less with the shared baseline); Holm keeps it at 5%, BH too
    (all nulls true: BH's FDR is its FWER)."""
    import gc

    from mirai_lab.analysis.stats import Verdict, adjusted_verdicts, verdict

    # statsmodels' Holm calls gc.collect() on every call (0.1 s with torch loaded): not part of the method
    monkeypatch.setattr(gc, "collect", lambda *a: 0)

    rng = np.random.default_rng(0)
    tables = _simulated_tables(4000, 7, 5, rng)
    wrong = {"none": 0, "holm": 0, "bh": 0}
    for diffs in tables:
        wrong["none"] += any(verdict(d, True, None) in (Verdict.BETTER, Verdict.WORSE) for d in diffs)
        for method in ("holm", "bh"):
            found = adjusted_verdicts(diffs, True, None, 0.05, method)
            wrong[method] += any(v in (Verdict.BETTER, Verdict.WORSE) for v in found)
    rate = {k: v / len(tables) for k, v in wrong.items()}
    # binomial sd of a 5% rate over 4,000 tables is 0.34 points: 0.06 is three sd above the target
    assert rate["holm"] <= 0.06 and rate["bh"] <= 0.06, rate
    assert rate["none"] > 0.15, rate  # the problem the adjustment solves is there


def test_adjustment_with_adaptive_looks_uses_the_looks_level():
    """An adaptive row's interval is at 1 - alpha/L; its p-value is scaled by L before Holm, so a
    single row (m = 1) is rejected exactly when its own interval excludes zero."""
    from mirai_lab.analysis.stats import Difference, Verdict, adjusted_verdicts, p_value

    level = 1 - 0.05 / 4
    for mean in (0.01, 0.02, 0.03, 0.04):
        d = Difference(-mean, 0.02, 5, level, True)
        found = adjusted_verdicts([d], True, None, 0.05, "holm")[0]
        assert (found is Verdict.BETTER) == (d.hi < 0) == (p_value(d) * 4 <= 0.05)


def test_difference_to_baseline_pairs_by_seed_and_skips_missing_values():
    rows = pd.DataFrame({"seed": [0, 1, 2], "val_nll": [1.0, 2.5, float("nan")]})
    base = pd.DataFrame({"seed": [2, 1, 0], "val_nll": [9.0, 2.0, 2.0]})
    diff = difference_to_baseline(rows, base, "val_nll", 0.95)
    # seed 2 has no variant value: pairs (1.0-2.0, 2.5-2.0) = (-1.0, +0.5)
    assert (diff.n, diff.mean, diff.sd, diff.paired) == (2, -0.25, pytest.approx(math.sqrt(1.125)), True)
    assert difference_to_baseline(rows, None, "val_nll") is None
    assert difference_to_baseline(rows, base, "fid_domain") is None
