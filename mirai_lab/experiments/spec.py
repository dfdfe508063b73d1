"""Experiment specs: a base config, axes of named variants, seeds, budget -> a run table.

    [experiment]
    name = "layout"          # sweep name (results/sweeps/<name>)
    budget = "standard"
    seeds = 3                # a count (seeds 0..n-1) or a list
    baseline = "baseline"    # the variant that changes are measured against

    [base]                   # run-config tables applied to every run
    foresight = { source = "ema", k = 3 }

    [axes.layout]            # one table per axis; its variants in order
    baseline = { baseline = true }          # foresight switched off and reset to defaults
    "1d" = { foresight = { layout = "1d" } }

    [paper]                  # optional: the paper's numbers for the same rows
    metric = "fid"
    rows = { baseline = 6.36 }

Several axes expand to their product; a variant's name joins its axis values with "/".

A sweep's folder is named by what it holds: the spec's name, then `-<budget>` when the
budget is not the spec's, `-s<n>` when the seeds are not the spec's, `-set<hash>` for --set
overrides, `-vs<hash>` for per-variant seed counts; an explicit name replaces all of it. So
`sweep --axis k --set foresight.coef=0.5` never replaces the manifest of `sweep --axis k`.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mirai_lab.config import MAX_RUNS, MAX_SEEDS, SECTIONS, RunConfig, check_budget, flatten, read_toml
from mirai_lab.errors import UserError
from mirai_lab.files.digest import content_hash
from mirai_lab.foresight.fit import configure
from mirai_lab.foresight.layout import head_offsets
from mirai_lab.runs.identity import run_id_of

# The built-in specs ship inside the package, so an installed wheel runs every axis and table.
SPECS_DIR = Path(str(resources.files("mirai_lab.experiments") / "specs"))
AXES = ("injection", "layout", "source", "layer", "k", "encoder", "visibility", "schedule")
SPEC_TABLES = {"experiment", "base", "axes", "paper"}
# adaptive, margin, max_seeds, max_minutes: the adaptive-seed defaults (experiments/adaptive.py)
# Exploration seeds lie below this; `mirai-lab confirm` draws its fresh blocks from here on, so a
# confirmation can never reuse a seed a verdict was found on.
CONFIRMATION_SEEDS = 1 << 30
PrecisionResolver = Callable[["RunConfig", str], str]  # (reference config, sweep name) -> "fp32" | "bf16"
EXPERIMENT_KEYS = {"name", "budget", "seeds", "baseline", "description", "adaptive", "margin", "max_seeds",
                   "max_minutes"}


@dataclass
class PlannedRun:
    run_id: str
    variant: str
    seed: int
    overrides: dict[str, Any]
    cfg: RunConfig
    depends_on: str | None = None  # run id whose checkpoint this run reads (static teacher)


@dataclass
class Plan:
    name: str
    budget: str
    seeds: list[int]
    axes: list[str]
    baseline: str | None
    runs: list[PlannedRun]
    paper: dict[str, Any] | None
    spec: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # one line each, for the caller to show

    @property
    def precision(self) -> str:
        """The precision every run trains in ("mixed" when a spec sets it per variant on purpose)."""
        found = {r.cfg.train.precision for r in self.runs}
        return found.pop() if len(found) == 1 else "mixed"

    @property
    def unique_runs(self) -> list[PlannedRun]:
        seen: dict[str, PlannedRun] = {}
        for run in self.runs:
            seen.setdefault(run.run_id, run)
        return list(seen.values())


def axis_spec_path(axis: str) -> Path:
    if axis not in AXES:
        raise UserError(f"--axis {axis!r}: expected one of {', '.join(AXES)}")
    return SPECS_DIR / "axes" / f"{axis}.toml"


def named_spec_path(name: str) -> Path:
    """`table2` -> the built-in spec table2.toml; a path is taken as it is."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        return path
    return SPECS_DIR / f"{name}.toml"


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, bool):
        raise UserError(f"{where}: seeds={value!r}: expected a count or a list of integers")
    if isinstance(value, int):
        if not 1 <= value <= MAX_SEEDS:
            raise UserError(f"{where}: seeds={value}: expected 1 <= value <= {MAX_SEEDS}")
        return list(range(value))
    if isinstance(value, list) and len(value) > MAX_SEEDS:
        raise UserError(f"{where}: seeds lists {len(value)} seeds: expected at most {MAX_SEEDS}")
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if not all(0 <= s < CONFIRMATION_SEEDS for s in value):
            raise UserError(f"{where}: seeds={value!r}: expected seeds in 0..{CONFIRMATION_SEEDS - 1} (the seeds from "
                            f"{CONFIRMATION_SEEDS} on are kept for confirmations on fresh seeds)")
        return list(dict.fromkeys(value))
    raise UserError(f"{where}: seeds={value!r}: expected a count or a list of integers")


def positive_number(value: Any, what: str, kind: type) -> Any:
    """A positive finite number (an integer for `kind` int; seeds at most MAX_SEEDS); `what` names
    it in the error. nan passes every comparison, inf every lower bound: both are refused first."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if not ok or not math.isfinite(value) or value <= 0:
        raise UserError(f"{what}: expected a positive {'integer' if kind is int else 'number'}")
    if kind is int and value > MAX_SEEDS:
        raise UserError(f"{what}: expected at most {MAX_SEEDS} (seeds of one sweep)")
    return kind(value)


def experiment_table(path: Path) -> dict[str, Any]:
    """A spec file's [experiment] table, its keys checked (the adaptive ones' values are checked
    where they are chosen, against the command line's: experiments/adaptive.py)."""
    return _checked_experiment(read_toml(path), str(path))


def _checked_experiment(spec: dict[str, Any], where: str) -> dict[str, Any]:
    exp = spec.get("experiment", {})
    if not isinstance(exp, dict):
        raise UserError(f"{where}: [experiment] must be a table")
    bad = set(exp) - EXPERIMENT_KEYS
    if bad:
        raise UserError(f"{where}: unknown key(s) in [experiment]: {', '.join(sorted(bad))}; "
                        f"expected {', '.join(sorted(EXPERIMENT_KEYS))}")
    return exp


def _variant_overrides(name: str, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UserError(f"{where}: variant {name!r} must be a table of overrides, got {table!r}")
    table = dict(table)
    is_baseline = table.pop("baseline", False)
    if is_baseline not in (True, False):
        raise UserError(f"{where}: variant {name!r}: baseline={is_baseline!r}: expected true")
    unknown = set(table) - set(SECTIONS)
    if unknown:
        raise UserError(f"{where}: variant {name!r}: unknown table(s) {', '.join(sorted(unknown))}; "
                        f"expected {', '.join(SECTIONS)}")
    out = flatten(table)
    if is_baseline:
        out["__baseline__"] = True
    return out


def plan_from_spec(spec: dict[str, Any], where: str, *, budget: str | None = None, seeds: int | None = None,
                   overrides: dict[str, Any] | None = None, name: str | None = None,
                   variant_seeds: dict[str, int] | None = None,
                   resolve_auto: PrecisionResolver | None = None) -> Plan:
    """Validate a spec and expand it into runs (every config is built, so errors surface now).

    `variant_seeds` gives some variants fewer seeds (the first n of the seed list): the adaptive
    sweep's rounds add seeds only to the variants still unresolved.

    A `train.precision = "auto"` is resolved once for the whole plan, by `resolve_auto` on the
    baseline's first run (else the first run), before any run id is made: every run of a sweep
    trains in the precision its id and config say, and the baseline and its variants alike.
    """
    unknown = set(spec) - SPEC_TABLES
    if unknown:
        raise UserError(f"{where}: unknown table(s) {', '.join(sorted(unknown))}; "
                        f"expected {', '.join(sorted(SPEC_TABLES))}")
    exp = _checked_experiment(spec, where)
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {seeds}: expected 1 <= value <= {MAX_SEEDS}")
    # the spec's budget is checked even when --budget replaces it, and an empty --budget is no budget
    spec_budget = check_budget(exp["budget"], f"{where}: budget") if "budget" in exp else "standard"
    spec_seeds = _seeds(exp.get("seeds", 1), where)
    budget_name = spec_budget if budget is None else check_budget(budget, "--budget")
    seed_list = list(range(seeds)) if seeds is not None else spec_seeds
    spec_name = exp.get("name") or Path(where).stem
    _check_name(spec_name, f"{where}: experiment name")
    if name is not None:
        _check_name(name, "--name")
    sweep_name = name or sweep_name_for(spec_name, budget_name if budget_name != spec_budget else None,
                                        seed_list if seed_list != spec_seeds else None, overrides, variant_seeds)
    base = spec.get("base", {})
    if not isinstance(base, dict) or set(base) - set(SECTIONS):
        raise UserError(f"{where}: [base] must hold run-config tables ({', '.join(SECTIONS)})")
    axes = spec.get("axes", {})
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, dict) and v for v in axes.values()):
        raise UserError(f"{where}: expected at least one [axes.<name>] table with variants")
    axis_variants = [[(vname, _variant_overrides(vname, vtable, where)) for vname, vtable in variants.items()]
                     for variants in axes.values()]
    n_runs = len(seed_list) * math.prod(len(v) for v in axis_variants)
    if n_runs > MAX_RUNS:
        raise UserError(f"{where}: {n_runs} runs (variants x seeds): expected at most {MAX_RUNS}")

    def build(variant: str, merged: dict[str, Any]) -> RunConfig:
        try:
            return configure(None, merged, budget_name)
        except UserError as exc:
            raise UserError(f"{where}: variant {variant!r}: {exc}") from None

    runs: list[PlannedRun] = []
    deferred: list[tuple[int, str, dict[str, Any]]] = []  # runs that name another variant's checkpoint
    for combo in itertools.product(*axis_variants):
        variant = "/".join(v[0] for v in combo)
        var_over: dict[str, Any] = {}
        for _, o in combo:
            var_over.update(o)
        shown = {k: v for k, v in var_over.items() if k != "__baseline__"}
        for seed in seed_list:
            merged = {**flatten(base), **var_over, **(overrides or {}), "train.seed": seed}
            if merged.pop("__baseline__", False):
                merged = {k: v for k, v in merged.items() if not k.startswith("foresight.")}
            ref = str(merged.get("foresight.static_checkpoint", ""))
            if ref.startswith("@"):
                deferred.append((len(runs), ref[1:], merged))
                runs.append(PlannedRun("", variant, seed, shown, RunConfig()))
                continue
            runs.append(PlannedRun("", variant, seed, shown, build(variant, merged)))
    baseline = exp.get("baseline")
    waiting = {i for i, _, _ in deferred}  # built once the runs they read have ids
    built = [r for i, r in enumerate(runs) if i not in waiting]
    reference = next((r for r in built if r.variant == baseline), built[0] if built else runs[0])
    resolve = _auto_resolver(copy.deepcopy(reference.cfg), sweep_name, resolve_auto)
    for run in built:
        run.cfg = resolve(run.cfg)
        run.run_id = run_id_of(run.cfg)
    by_variant_seed = {(r.variant, r.seed): r.run_id for r in runs if r.run_id}
    for index, target, merged in deferred:
        run = runs[index]
        dep = by_variant_seed.get((target, run.seed))
        if dep is None:
            raise UserError(f"{where}: variant {run.variant!r}: static_checkpoint '@{target}' names no variant "
                            "of this experiment")
        run.cfg = resolve(build(run.variant, {**merged, "foresight.static_checkpoint": dep}))
        run.run_id = run_id_of(run.cfg)
        run.depends_on = dep
    variants = list(dict.fromkeys(r.variant for r in runs))
    if baseline is not None and baseline not in variants:
        raise UserError(f"{where}: baseline={baseline!r} is not a variant ({', '.join(variants)})")
    if variant_seeds:
        runs = _fewer_seeds(runs, seed_list, variant_seeds, variants)
    paper = spec.get("paper")
    return Plan(sweep_name, budget_name, seed_list, list(axes), baseline, runs, paper, spec,
                duplicate_variants(runs, where))


def _auto_resolver(reference: RunConfig, sweep_name: str, resolve_auto: PrecisionResolver | None
                   ) -> Callable[[RunConfig], RunConfig]:
    """cfg -> cfg with "auto" replaced by the one choice made for `reference` (decided on first use)."""
    choice: list[str] = []

    def resolve(cfg: RunConfig) -> RunConfig:
        if cfg.train.precision != "auto":
            return cfg
        if not choice:
            if resolve_auto is None:
                raise UserError("train.precision=auto needs a machine to resolve it on: run the sweep, or set "
                                "train.precision=fp32 or bf16")
            choice.append(resolve_auto(reference, sweep_name))
        cfg.train.precision = choice[0]
        return cfg

    return resolve


def _fewer_seeds(runs: list[PlannedRun], seed_list: list[int], variant_seeds: dict[str, int],
                 variants: list[str]) -> list[PlannedRun]:
    """The runs left when variant v keeps only the first variant_seeds[v] seeds; a run another
    kept run reads (static teacher) is kept too."""
    for variant, n in variant_seeds.items():
        if variant not in variants:
            raise UserError(f"--variant-seeds {variant}={n}: no variant {variant!r} (expected one of "
                            f"{', '.join(variants)})")
        if not 1 <= n <= len(seed_list):
            raise UserError(f"--variant-seeds {variant}={n}: expected 1 <= seeds <= {len(seed_list)} (the sweep's)")
    keep = [r for r in runs if seed_list.index(r.seed) < variant_seeds.get(r.variant, len(seed_list))]
    needed = {r.depends_on for r in keep if r.depends_on}
    kept = {r.run_id for r in keep}
    return [r for r in runs if r.run_id in kept or r.run_id in needed]


def parse_variant_seeds(items: list[str]) -> dict[str, int]:
    """--variant-seeds NAME=N items as {name: n}; a malformed item is a one-line UserError."""
    out: dict[str, int] = {}
    for item in items:
        variant, sep, count = item.rpartition("=")
        if not sep or not variant or not count.strip().isdigit():
            raise UserError(f"--variant-seeds {item!r}: expected VARIANT=N with N a positive integer")
        out[variant] = int(count)
    return out


def _check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value or not value.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"{what} {value!r}: expected letters, digits, - or _")


def sweep_name_for(spec_name: str, budget: str | None, seeds: list[int] | None,
                   overrides: dict[str, Any] | None, variant_seeds: dict[str, int] | None = None) -> str:
    """The spec's name plus what makes this sweep differ from the spec (module docstring)."""
    parts = [spec_name]
    if budget is not None:
        parts.append(budget)
    if seeds is not None:
        parts.append(f"s{len(seeds)}" if seeds == list(range(len(seeds))) else f"s{content_hash(seeds, 6)}")
    if overrides:
        parts.append(f"set{content_hash(overrides, 6)}")
    if variant_seeds:
        parts.append(f"vs{content_hash(variant_seeds, 6)}")
    return "-".join(parts)


def effective_config(cfg: RunConfig) -> dict[str, Any]:
    """What a run computes, as far as the config tells: the run-id fields, with foresight
    dropped when it is off and the layout replaced by its head offsets (at K = 3, `2d` and
    `2d-wide` are the same cells)."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("threads", "grad_accum")}
    f = cfg.foresight
    if f.source == "none" and f.injection != "mtp":
        d.pop("foresight")
    else:
        d["foresight"]["layout"] = [f.layout == "1d", head_offsets(f.layout, f.k)]
    return d


def duplicate_variants(runs: list[PlannedRun], where: str) -> list[str]:
    """One warning line per variant that trains the same thing as an earlier one (same seed)."""
    first: dict[tuple[int, str], str] = {}
    warned: dict[str, str] = {}
    for run in runs:
        key = (run.seed, content_hash(effective_config(run.cfg)))
        other = first.setdefault(key, run.variant)
        if other != run.variant and run.variant not in warned:
            warned[run.variant] = (f"warning: {where}: variant {run.variant!r} resolves to the same configuration "
                                   f"as {other!r}; both train the same model")
    return list(warned.values())


def load_plan(path: Path, **kwargs: Any) -> Plan:
    return plan_from_spec(read_toml(path), str(path), **kwargs)
