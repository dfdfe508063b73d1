"""Robustness at a neighbouring setting: do a sweep's verdicts hold when one setting moves?

A verdict found at one budget and learning rate is a statement about that setting. `mirai-lab
robust SWEEP --vary ...` trains the baseline and the rows again at each neighbouring setting, from
the configs the sweep's manifest recorded, with one thing changed:

- `train.lr=0.5x,1.5x`: a factor of each run's recorded value (any numeric field);
- `train.lr=1e-3,3e-3`: absolute values (any dotted config field, checked by the config schema);
- `budget=standard`: the same runs at another budget. Every field the sweep's budget set goes to
  the new budget's value where it sets one, else to the schema default; the other fields the new
  budget sets take its values (what `--budget standard` gives a spec that sets none of them).

Each value is one setting, trained on seeds 0..n-1 as a sweep of its own
(`<sweep>-robust-<setting>`), and judged at a plain 95% paired interval: each setting is a single
planned look, never pooled with the first look or with another setting. Per row and metric the
summary compares the first look's verdict with the settings' (`summarize`). The result is kept in
<results>/sweeps/<sweep>/robust.json, settings keyed by name (running a setting again replaces
its entry; JSON lists keep their order), and `report` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from mirai_lab.analysis.collect import collect, read_optional
from mirai_lab.analysis.stats import LEVEL
from mirai_lab.config import (
    MAX_SEEDS,
    RunConfig,
    apply_overrides,
    check_budget,
    config_from_dict,
    flatten,
    resolve,
    unused_because,
)
from mirai_lab.errors import UserError
from mirai_lab.experiments.confirm import (
    SETTLED,
    confirmation_plan,
    first_look,
    resolved_rows,
    sweep_first_look,
)
from mirai_lab.experiments.request import SweepRequest
from mirai_lab.experiments.spec import Plan
from mirai_lab.experiments.sweep_verb import execute_plan, read_manifest
from mirai_lab.files.atomic import write_json
from mirai_lab.files.digest import content_hash
from mirai_lab.foresight.fit import check_data_fit
from mirai_lab.metrics import COMPARED
from mirai_lab.presets import BUDGETS
from mirai_lab.results_dir import ROBUST, safe_name, sweep_dir

ROWS = ("resolved", "all")
DEFAULT_SEEDS = 5
# Fields resolve() derives from others when they are 0 (the preset's shape, foresight's blocks and
# projector), in the order it derives them: a setting that moves what they derive from re-derives them.
DERIVED = ("model.n_layer", "model.dim", "model.n_head", "model.ffn_hidden", "foresight.student_block",
           "foresight.teacher_block", "foresight.projector_dim")
NOT_VARIED = {"train.seed": "each run's seed comes from --seeds"}
OPPOSITE = {"better": "worse", "worse": "better"}
UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One neighbouring setting: a dotted field (or `budget`) and one value, or a factor of the recorded value."""

    key: str
    value: Any
    factor: bool = False

    @property
    def name(self) -> str:
        return f"{self.key}={_text(self.value)}{'x' if self.factor else ''}"

    @property
    def slug(self) -> str:
        """The name as one path component: unsafe characters replaced, and a hash then keeps names apart."""
        clean = UNSAFE.sub("_", self.name)
        return clean if clean == self.name else f"{clean}-{content_hash(self.name, 6)}"

    def budget(self, original: str) -> str:
        return str(self.value) if self.key == "budget" else original

    def apply(self, cfg: RunConfig) -> RunConfig:
        """`cfg` at this setting (validated); unchanged when it never reads the field."""
        if self.key == "budget":
            return changed(cfg, budget_values(cfg.budget, str(self.value)), str(self.value))
        if unused_because(cfg, self.key):
            return cfg
        value = self.value
        if self.factor:
            recorded = flatten(cfg.to_dict())[self.key]
            value = round(recorded * value) if isinstance(recorded, int) else float(f"{recorded * value:.12g}")
        return changed(cfg, {self.key: value}, cfg.budget)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):  # short where that is exact: 0.001, 1.5; else every digit, so names stay apart
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _split(values: str) -> list[str]:
    """Comma-separated values; commas inside [...] belong to a list value."""
    return [v.strip() for v in re.split(r",(?![^\[]*\])", values)]


def parse_vary(items: list[str]) -> list[Setting]:
    """`--vary` specs -> settings (duplicates once, in order); a bad spec is one UserError line."""
    if not items:
        raise UserError("robust needs at least one --vary (e.g. --vary train.lr=0.5x,1.5x or --vary budget=standard)")
    settings: dict[str, Setting] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--vary {item!r}: expected field=value[,value...] (e.g. train.lr=0.5x,1.5x or "
                            "budget=standard)")
        for text in _split(values):
            if not text:
                raise UserError(f"--vary {item!r}: an empty value")
            setting = _setting(item, key, text)
            settings.setdefault(setting.name, setting)
    return list(settings.values())


def _setting(item: str, key: str, text: str) -> Setting:
    if key == "budget":
        return Setting(key, check_budget(text, f"--vary {item}"))
    if key in NOT_VARIED:
        raise UserError(f"--vary {item}: {key} is not varied here ({NOT_VARIED[key]})")
    probe = RunConfig()
    try:
        apply_overrides(probe, {key: "0"})  # the key first: an unknown field says so whatever the value
    except UserError as exc:
        raise UserError(f"--vary {item}: {exc}") from None
    default = flatten(RunConfig().to_dict())[key]  # the field's type, as the schema's default has it
    if text.endswith("x") and not isinstance(default, str):
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise UserError(f"--vary {item}: {key} is not a number, so it has no factor ({text!r}); give values")
        try:
            factor = float(text[:-1])
        except ValueError:
            raise UserError(f"--vary {item}: {text!r}: expected a factor like 0.5x") from None
        if not (math.isfinite(factor) and factor > 0):
            raise UserError(f"--vary {item}: {text!r}: expected a finite factor > 0")
        return Setting(key, factor, factor=True)
    try:
        apply_overrides(probe, {key: text})
    except UserError as exc:
        raise UserError(f"--vary {item}: {exc}") from None
    value = flatten(probe.to_dict())[key]
    if key == "train.precision" and value == "auto":
        raise UserError(f"--vary {item}: train.precision=auto is decided per sweep; give fp32 or bf16")
    return Setting(key, value)


def budget_values(old: str, new: str) -> dict[str, Any]:
    """The dotted fields a move from budget `old` to budget `new` sets: every field `old` set, at
    `new`'s value or else the schema default, and every field `new` sets."""
    if old == new:
        raise UserError(f"--vary budget={new}: the sweep ran at {new} already; name another budget")
    defaults = flatten({k: v for k, v in RunConfig().to_dict().items() if k != "budget"})
    return {**{k: BUDGETS[new].get(k, defaults[k]) for k in BUDGETS.get(old, {})}, **BUDGETS[new]}


def derived_fields(cfg: RunConfig) -> set[str]:
    """The DERIVED fields of a resolved config that resolve() filled in (a field counts as derived when
    resolving it from 0, the fields before it kept, gives its recorded value)."""
    flat = flatten({k: v for k, v in cfg.to_dict().items() if k != "budget"})
    derived = set()
    for i, key in enumerate(DERIVED):
        probe = RunConfig()
        apply_overrides(probe, {**flat, **dict.fromkeys(DERIVED[i:], 0)})
        resolve(probe)
        if flatten(probe.to_dict())[key] == flat[key]:
            derived.add(key)
    return derived


def changed(cfg: RunConfig, values: dict[str, Any], budget: str) -> RunConfig:
    """`cfg` with the dotted `values` set and the fields it derived derived again (a preset or width
    moved by the setting reshapes the model as `--set` would), validated."""
    flat = flatten({k: v for k, v in cfg.to_dict().items() if k != "budget"})
    rederive = dict.fromkeys(derived_fields(cfg) - set(values), 0)
    out = config_from_dict({**flat, **rederive, **values, "budget": budget})
    check_data_fit(out)
    return out


# ---------------------------------------------------------------- the summary


def summarize(original: str | None, verdicts: dict[str, str | None], original_name: str) -> str:
    """One row and metric: whether its first-look verdict holds at the settings (None: no result there).

    - `holds at every setting`: the same settled verdict at each;
    - `flips at <settings>`: the opposite settled verdict (better <-> worse) at any;
    - `holds at some (<settings>)`: the same verdict at some, unresolved or another settled one elsewhere;
    - `holds at no setting`: at none, and flips at none;
    - `no verdict to hold: ...`: the first look settled nothing; every setting's verdict is listed."""
    def said(verdict: str | None) -> str:
        return verdict or "no result"

    if original not in SETTLED:
        listed = [f"{said(original)} at {original_name}", *(f"{said(v)} at {name}" for name, v in verdicts.items())]
        return "no verdict to hold: " + ", ".join(listed)
    flips = [name for name, v in verdicts.items() if v is not None and OPPOSITE.get(original) == v]
    if flips:
        return "flips at " + ", ".join(flips)
    holds = [name for name, v in verdicts.items() if v == original]
    if verdicts and len(holds) == len(verdicts):
        return "holds at every setting"
    return f"holds at some ({', '.join(holds)})" if holds else "holds at no setting"


def summary_rows(first: dict[str, dict[str, dict[str, Any]]], settings: list[dict[str, Any]],
                 original_name: str) -> list[dict[str, Any]]:
    """A row per variant and metric: {variant, metric, original, verdicts, summary} over every
    setting that trained the variant (each setting's `variants`: its rows, the baseline aside)."""
    variants = [v for s in settings for v in s["variants"]]
    rows = []
    for variant in dict.fromkeys([*first, *variants]):
        at = [s for s in settings if variant in s["variants"]]
        if not at:
            continue  # a row no setting trained
        for metric in COMPARED:
            original = first.get(variant, {}).get(metric)
            verdicts = {s["name"]: s["rows"].get(variant, {}).get(metric, {}).get("verdict") for s in at}
            if original is None and not any(verdicts.values()):
                continue  # a metric these runs never measured
            rows.append({"variant": variant, "metric": metric, "original": original, "verdicts": verdicts,
                         "summary": summarize(original and original["verdict"], verdicts, original_name)})
    return rows


# ---------------------------------------------------------------- the command


def robustness_plans(manifest: dict[str, Any], rows: list[str], settings: list[Setting],
                     seeds: list[int]) -> list[tuple[Setting, Plan]]:
    """One plan per setting (all built, so all checked, before anything trains)."""
    recorded = [r for r in manifest["runs"] if r["variant"] in {manifest["baseline"], *rows} and "config" in r]
    unchanged = {r.run_id for r in confirmation_plan(manifest, rows, seeds, "unchanged").runs}
    plans = []
    for setting in settings:
        if setting.key == "budget" and setting.value == manifest["budget"]:
            raise UserError(f"--vary {setting.name}: the sweep ran at {setting.value} already; name another budget")
        if setting.key != "budget":
            reasons = [unused_because(config_from_dict(dict(r["config"])), setting.key) for r in recorded]
            if reasons and all(reasons):
                raise UserError(f"--vary {setting.name}: no run of these rows reads {setting.key} (it is read only "
                                f"with {reasons[0]})")
        name = safe_name(f"{manifest['name']}-robust-{setting.slug}", "robustness sweep name")
        try:
            plan = confirmation_plan(manifest, rows, seeds, name, change=setting.apply,
                                     budget=setting.budget(manifest["budget"]))
        except UserError as exc:
            raise UserError(f"--vary {setting.name}: {exc}") from None
        if {r.run_id for r in plan.runs} == unchanged:
            raise UserError(f"--vary {setting.name}: changes no run (each is the sweep's own computation; "
                            f"{setting.key} is not part of what a run computes, or already has this value)")
        plans.append((setting, plan))
    return plans


def robust_sweep(root: Path, sweep: str, *, vary: list[str], seeds: int = DEFAULT_SEEDS, workers: int = 1,
                 rows: str = "resolved", command: str = "", dry_run: bool = False,
                 as_json: bool = False) -> dict[str, Any]:
    """Train each setting's runs (what is missing of them), judge them, and merge into robust.json;
    returns the whole record (the dry run: the plans, nothing written)."""
    if not 3 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {seeds}: expected 3..{MAX_SEEDS} (a verdict needs 3 paired seeds)")
    if rows not in ROWS:
        raise UserError(f"--rows {rows!r}: expected {' or '.join(ROWS)}")
    wanted = parse_vary(vary)
    manifest = read_manifest(root, sweep)
    baseline = manifest.get("baseline")
    if not baseline:
        raise UserError(f"sweep {sweep!r} has no baseline: no verdict to check")
    manifest = {**manifest, "name": sweep}
    level, first = sweep_first_look(root, sweep, baseline)
    chosen = resolved_rows(first) if rows == "resolved" else \
        [v for v in dict.fromkeys(r["variant"] for r in manifest["runs"]) if v != baseline]
    seed_list = list(range(seeds))
    if not chosen:
        return {"sweep": sweep, "note": "no resolved row in the first look: nothing to check (--rows all checks "
                                        "every row)", "settings": [], "rows": []}
    plans = robustness_plans(manifest, chosen, wanted, seed_list)
    if dry_run:
        request = SweepRequest(spec=Path(sweep), command=command, workers=workers, dry_run=True)
        return {"sweep": sweep, "dry_run": True, "rows": chosen,
                "settings": [{"name": s.name, "plan": execute_plan(p, request, root, as_json=as_json)}
                             for s, p in plans]}
    record_path = sweep_dir(root, sweep) / ROBUST
    settings = read_optional(record_path).get("settings") or []
    if not isinstance(settings, list) or not all(isinstance(s, dict) and "name" in s for s in settings):
        raise UserError(f"{record_path} is damaged (no list of settings): delete it and run robust again")
    original = str(manifest["budget"])
    out: dict[str, Any] = {}
    for setting, plan in plans:
        execute_plan(plan, SweepRequest(spec=Path(sweep), command=command, workers=workers), root, as_json=as_json)
        looked = first_look(collect(root, [plan.name])[0], baseline, LEVEL)
        settings = [s for s in settings if s["name"] != setting.name]  # a setting run again replaces its entry
        settings.append({"name": setting.name, "field": setting.key, "value": setting.value,
                         "factor": setting.factor, "sweep": plan.name, "budget": plan.budget, "seeds": seed_list,
                         "command": command, "variants": chosen, "rows": {v: looked.get(v, {}) for v in chosen}})
        out = {"sweep": sweep, "original": original, "first_level": level, "level": LEVEL, "settings": settings,
               "rows": summary_rows(first, settings, original)}
        write_json(record_path, out)  # after each setting: a later one that fails keeps the ones before
    return out


def summary_lines(record: dict[str, Any]) -> list[str]:
    """One line per row: each metric's summary."""
    by_variant: dict[str, list[str]] = {}
    for row in record.get("rows", []):
        by_variant.setdefault(row["variant"], []).append(f"{row['metric']} {row['summary']}")
    return [f"{variant}: " + "; ".join(parts) for variant, parts in by_variant.items()]
