import pytest

from mirai_lab.config import build_config, parse_set
from mirai_lab.errors import UserError
from mirai_lab.foresight.fit import configure


def test_budget_then_overrides():
    cfg = build_config(None, {"train.steps": "7"}, "quick")
    assert cfg.train.steps == 7 and cfg.model.preset == "cpu-s" and cfg.budget == "quick"
    assert (cfg.model.n_layer, cfg.model.dim, cfg.model.n_head, cfg.model.ffn_hidden) == (4, 128, 4, 352)


def test_gpt_b_preset_matches_llamagen_sizes():
    cfg = build_config(None, {"model.preset": "gpt-b"})
    assert (cfg.model.n_layer, cfg.model.dim, cfg.model.n_head, cfg.model.ffn_hidden) == (12, 768, 12, 2048)
    cfg = build_config(None, {"model.preset": "gpt-l"})
    assert cfg.model.ffn_hidden == 2816
    cfg = build_config(None, {"model.preset": "gpt-xl"})
    assert cfg.model.ffn_hidden == 3584


def test_foresight_defaults_resolve_to_two_thirds_depth():
    cfg = build_config(None, {"model.preset": "gpt-b", "foresight.source": "ema"})
    assert cfg.foresight.student_block == 8 and cfg.foresight.teacher_block == 8
    assert cfg.foresight.projector_dim == 768


def test_list_values_parse():
    cfg = build_config(None, parse_set(["foresight.source=ema", "foresight.head_coefs=[2,1,1]"]))
    assert cfg.foresight.head_coefs == [2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"train.stepz": "3"}, "unknown config key 'train.stepz'"),
        ({"nosection.x": "3"}, "unknown config key 'nosection.x'"),
        ({"train.steps": "many"}, "train.steps='many': expected an integer"),
        ({"train.lr": "-1"}, "train.lr=-1.0: expected > 0"),
        ({"foresight.layout": "3d", "foresight.source": "ema"}, "foresight.layout='3d'"),
        ({"foresight.student_block": "2"}, "foresight.source='none' takes no student_block"),
        ({"foresight.source": "ema", "foresight.student_block": "4"}, "injection='internal' needs a block < "),
        ({"foresight.source": "ema", "foresight.student_block": "9"}, "expected 1..4"),
        ({"foresight.source": "ema", "foresight.k": "3", "foresight.head_coefs": "[1,2]"}, "expected k=3"),
        ({"foresight.source": "static"}, "needs foresight.static_checkpoint"),
        ({"foresight.source": "ema", "foresight.schedule": "delayed"}, "needs foresight.warmup_frac > 0"),
        ({"foresight.injection": "mtp", "foresight.source": "ema"}, "must be 'none'"),
        ({"model.dim": "130"}, "not divisible"),
        ({"train.grad_clip": "nan"}, "train.grad_clip=nan: expected a finite number"),
        ({"train.lr": "inf"}, "train.lr=inf: expected a finite number"),
        ({"foresight.coef": "-inf"}, "foresight.coef=-inf: expected a finite number"),
        ({"train.beta1": "2"}, "train.beta1=2.0: expected 0 <= value < 1"),
        ({"model.n_head": "-1"}, "model.n_head=-1: expected 1 <= value <= 128"),
        ({"train.seed": "1e20"}, "train.seed='1e20': expected an integer"),
        ({"train.seed": str(2**31)}, "train.seed=2147483648: expected 0 <= value <= 2147483647"),
        ({"tokenizer.codebook_size": "100000000"}, "expected 2 <= value <= 4096 for the embedded k-means"),
        ({"foresight.source": "ema", "foresight.k": "1000"}, "foresight.k=1000: expected 1 <= value <= 64"),
        ({"foresight.source": "ema", "foresight.k": "50"}, "foresight.k=50: the 7x7 grid has only 49 cells"),
        ({"tokenizer.patch": "3"}, "tokenizer.patch=3 does not divide the 28x28 images of animal-mnist"),
    ],
)
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(UserError) as info:
        configure(None, overrides, "quick")  # build_config and the checks against the data
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_set_syntax():
    with pytest.raises(UserError, match="expected section.key=value"):
        parse_set(["train.steps"])


def test_unknown_budget():
    with pytest.raises(UserError, match="unknown budget 'huge'"):
        build_config(None, None, "huge")


@pytest.mark.parametrize("budget", ["", " ", "forever"])
def test_every_named_budget_is_checked(tmp_path, budget):
    with pytest.raises(UserError, match="budget"):
        build_config(None, None, budget)
    with pytest.raises(UserError, match="spec budget"):  # a spec's budget, even when --budget replaces it
        build_config({"budget": budget}, None, "smoke")


def test_deeply_nested_spec_is_one_line(tmp_path):
    from mirai_lab.config import read_toml

    for text in ["a = " + "[" * 5000 + "]" * 5000, "a = " + "[" * 20 + "]" * 20]:
        (tmp_path / "s.toml").write_text(text)
        with pytest.raises(UserError, match="nested too deeply: expected at most 8 levels"):
            read_toml(tmp_path / "s.toml")


@pytest.mark.parametrize(("overrides", "key", "condition"), [
    ({"foresight.visibility": "2"}, "foresight.visibility", "foresight on"),
    ({"foresight.source": "ema", "foresight.visibility": "2"}, "foresight.visibility", "bidirectional"),
    ({"foresight.source": "ema", "foresight.static_checkpoint": "/etc/passwd"}, "foresight.static_checkpoint",
     "foresight.source='static'"),
    ({"foresight.source": "ema", "foresight.encoder_weights": "/etc/shadow"}, "foresight.encoder_weights", "dinov2"),
    ({"foresight.source": "ema", "data.codes_dir": "/nonexistent"}, "data.codes_dir", "data.dataset='codes'"),
    ({"train.min_lr_ratio": "0.2"}, "train.min_lr_ratio", "cosine"),
])
def test_a_set_field_the_run_does_not_read_is_refused(overrides, key, condition):
    from mirai_lab.config import check_used

    cfg = build_config(None, overrides, "smoke")
    with pytest.raises(UserError, match="not used by this run") as err:
        check_used(overrides, [cfg], "this run")
    assert key in str(err.value) and condition in str(err.value)


def test_a_set_field_one_of_several_configs_reads_is_kept():
    from mirai_lab.config import check_used

    over = {"foresight.coef": "1.0"}
    check_used(over, [build_config(None, {}, "smoke"), build_config(None, {**over, "foresight.source": "ema"})], "x")
    check_used({"foresight.source": "none", "train.seed": "3"}, [build_config(None, {}, "smoke")], "this run")


def test_visibility_is_checked_whatever_the_source():
    with pytest.raises(UserError, match="foresight.visibility='half'"):
        build_config(None, {"foresight.source": "ema", "foresight.visibility": "half"})


@pytest.mark.parametrize("value", ["-1", str(2**31), "x"])
def test_check_seed_says_what_validate_says(value):
    from mirai_lab.config import check_seed

    with pytest.raises(UserError) as direct:
        check_seed(value)
    with pytest.raises(UserError) as built:
        build_config(None, {"train.seed": value})
    assert str(direct.value) == str(built.value)
