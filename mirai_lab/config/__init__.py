"""Typed run configuration: dataclasses, TOML specs, dotted --set overrides, validation.

A run is fully described by one `RunConfig`; its resolved JSON (budget and preset applied)
is hashed into the run id, so anything that changes the result must live here.

The package: `schema` (the dataclasses and bounds), `parse` (TOML, --set, coercion), `validate`
(values and unused fields); `build_config` and `config_from_dict` here put them together, and
every public name of the three is importable from `mirai_lab.config`.
"""

from __future__ import annotations

from typing import Any

from mirai_lab.config.parse import (  # noqa: F401 - the package's public names
    apply_overrides,
    check_budget,
    finite,
    flatten,
    load_spec_file,
    parse_set,
    read_toml,
)
from mirai_lab.config.schema import (  # noqa: F401 - the package's public names
    CHOICES,
    MAX_BATCH,
    MAX_CODEBOOK_FIT,
    MAX_K,
    MAX_LAYERS,
    MAX_RUNS,
    MAX_SAMPLES,
    MAX_SEEDS,
    MAX_SPEC_DEPTH,
    MAX_STEPS,
    MAX_THREADS,
    MAX_TRIALS,
    MAX_VOCAB,
    MAX_WIDTH,
    MAX_WORKERS,
    SECTIONS,
    SEED_MAX,
    DataConfig,
    EvalConfig,
    ForesightConfig,
    ModelConfig,
    RunConfig,
    TokenizerConfig,
    TrainConfig,
)
from mirai_lab.config.validate import (  # noqa: F401 - the package's public names
    FORESIGHT_ON,
    READ_ONLY_WHEN,
    check_seed,
    check_used,
    unused_because,
    validate,
)
from mirai_lab.errors import UserError
from mirai_lab.presets import MODEL_PRESETS, budget_overrides, llamagen_ffn_hidden


def build_config(
    spec: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    budget: str | None = None,
) -> RunConfig:
    """Defaults <- budget <- spec tables <- overrides, then preset resolution and validation.

    The budget comes from the explicit argument, else the spec's or overrides' `budget`.
    Budget values come first so that a spec or --set can still change, e.g., the steps.
    """
    spec_flat = flatten(spec or {})
    overrides = dict(overrides or {})
    # every budget named is checked, also the ones that a higher-priority one replaces
    for where, value in (("--budget", budget), ("budget", overrides.get("budget")),
                         ("spec budget", spec_flat.get("budget"))):
        if value is not None:
            check_budget(value, where)
    name = budget or overrides.get("budget") or spec_flat.get("budget") or ""
    cfg = RunConfig()
    if name:
        apply_overrides(cfg, budget_overrides(str(name)))
        cfg.budget = str(name)
    spec_flat.pop("budget", None)
    overrides.pop("budget", None)
    apply_overrides(cfg, spec_flat)
    apply_overrides(cfg, overrides)
    resolve(cfg)
    validate(cfg)
    return cfg


def resolve(cfg: RunConfig) -> None:
    """Fill the zero-means-derived fields so that the saved config is explicit."""
    m = cfg.model
    if m.preset not in MODEL_PRESETS:
        raise UserError(f"model.preset={m.preset!r}: expected one of {', '.join(MODEL_PRESETS)}")
    n_layer, dim, n_head, multiple = MODEL_PRESETS[m.preset]
    m.n_layer = m.n_layer or n_layer
    m.dim = m.dim or dim
    m.n_head = m.n_head or n_head
    m.ffn_hidden = m.ffn_hidden or llamagen_ffn_hidden(m.dim, multiple)
    f = cfg.foresight
    if f.source != "none" or f.injection == "mtp":
        if f.student_block == 0:
            f.student_block = m.n_layer if f.injection == "output" else max(1, round(2 * m.n_layer / 3))
        if f.teacher_block == 0:
            f.teacher_block = f.student_block
        if f.projector_dim == 0:
            f.projector_dim = m.dim


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a saved (resolved) config, e.g. config.json of a run."""
    cfg = RunConfig()
    budget = d.get("budget", "")
    apply_overrides(cfg, {k: v for k, v in flatten({k: v for k, v in d.items() if k != "budget"}).items()})
    cfg.budget = budget
    resolve(cfg)
    validate(cfg)
    return cfg
