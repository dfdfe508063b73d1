"""Per-variant seed counts (`sweep --variant-seeds`, the adaptive rounds): which runs a plan keeps."""

from __future__ import annotations

from collections import Counter

import pytest
from cli_helpers import refused

from mirai_lab.errors import UserError
from mirai_lab.experiments.spec import axis_spec_path, load_plan, parse_variant_seeds


def _counts(variant_seeds: dict[str, int] | None) -> Counter:
    plan = load_plan(axis_spec_path("source"), budget="smoke", seeds=3, variant_seeds=variant_seeds)
    return Counter(r.variant for r in plan.runs)


def test_a_variant_keeps_its_first_seeds_and_the_others_all():
    plan = load_plan(axis_spec_path("source"), budget="smoke", seeds=3, variant_seeds={"ema": 1, "mtm": 2})
    assert [(r.variant, r.seed) for r in plan.runs if r.variant in ("ema", "mtm")] == [
        ("ema", 0), ("mtm", 0), ("mtm", 1)]
    assert _counts({"ema": 1, "mtm": 2}) == {"baseline": 3, "ema": 1, "static": 3, "mtm": 2, "pixel-ae": 3}
    full = load_plan(axis_spec_path("source"), budget="smoke", seeds=3)
    kept = {r.run_id for r in plan.runs}
    assert kept < {r.run_id for r in full.runs}  # the same runs, ids unchanged: fewer of them


def test_a_run_that_another_kept_run_reads_is_kept():
    # `static` reads the baseline's checkpoint of the same seed: one baseline seed asked, three kept
    assert _counts({"baseline": 1})["baseline"] == 3
    assert _counts({"baseline": 1, "static": 1})["baseline"] == 1


def test_the_sweep_name_says_it_holds_fewer_seeds():
    plain = load_plan(axis_spec_path("source"), budget="smoke", seeds=3).name
    fewer = load_plan(axis_spec_path("source"), budget="smoke", seeds=3, variant_seeds={"ema": 1}).name
    assert fewer.startswith(plain + "-vs") and fewer != plain


@pytest.mark.parametrize(("items", "message"), [
    (["ema"], r"--variant-seeds 'ema': expected VARIANT=N"),
    (["ema=x"], r"--variant-seeds 'ema=x': expected VARIANT=N"),
    (["=2"], r"--variant-seeds '=2': expected VARIANT=N"),
])
def test_malformed_items_are_one_line(items: list[str], message: str):
    with pytest.raises(UserError, match=message):
        parse_variant_seeds(items)


@pytest.mark.parametrize(("variant_seeds", "message"), [
    ({"nope": 1}, r"--variant-seeds nope=1: no variant 'nope' \(expected one of baseline, ema, static, mtm, "
                  r"pixel-ae\)"),
    ({"ema": 4}, r"--variant-seeds ema=4: expected 1 <= seeds <= 3"),
    ({"ema": 0}, r"--variant-seeds ema=0: expected 1 <= seeds <= 3"),
])
def test_unknown_variant_or_count_is_refused(variant_seeds: dict[str, int], message: str):
    with pytest.raises(UserError, match=message):
        load_plan(axis_spec_path("source"), budget="smoke", seeds=3, variant_seeds=variant_seeds)


def test_cli_refuses_a_bad_item_with_exit_2(tmp_path):
    line = refused(["sweep", "--axis", "source", "--budget", "smoke", "--seeds", "2", "--variant-seeds", "ema=5",
                    "--dry-run", "--results-dir", str(tmp_path)], tmp_path)
    assert "--variant-seeds ema=5: expected 1 <= seeds <= 2" in line
    assert not any(tmp_path.iterdir())
