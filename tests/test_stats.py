"""report/stats.py against scipy and simulation: intervals, Welch, MDE, seed counts, verdicts, speed-ups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mirai_lab.report.stats import (
    Verdict,
    curve_difference,
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
