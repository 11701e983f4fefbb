"""Config validation: every bad key fails before any work, naming its dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmt.cli import main
from cmt.config import ConfigError, Params, load_params, parse_params
from cmt.sections import NAME_RULE

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_documented_default():
    assert load_params(ROOT / "params.yaml") == Params()


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]):
                walk(ann)

    walk(Params)


@pytest.mark.parametrize(
    "raw, path, fragment",
    [
        ({"pretrain": {"lrr": 1}}, "pretrain.lrr", "Extra inputs"),
        ({"typo_section": {}}, "typo_section", "Extra inputs"),
        ({"pretrain": {"lr": "fast"}}, "pretrain.lr", "valid number"),
        ({"pretrain": {"lr": -1}}, "pretrain.lr", "greater than 0"),
        ({"model": {"dropout": 1.5}}, "model.dropout", "less than 1"),
        ({"model": {"prompt": "encoder"}}, "model", "fixed per backbone by cmt/methods.py"),
        ({"model": {"n_head": 3}}, "model", "not divisible"),
        ({"data": {"test_tasks": [50]}}, "data", "outside"),
        ({"data": {"test_tasks": [1, 1]}}, "data.test_tasks", "duplicates"),
        ({"data": {"test_tasks": [-1]}}, "data.test_tasks", "non-negative"),
        ({"pretrain": {"lr": float("inf")}}, "pretrain.lr", "finite number"),
        ({"prompt_tune": {"lr": float("nan")}}, "prompt_tune.lr", "finite number"),
        ({"pretrain": {"w_dyn": float("inf")}}, "pretrain.w_dyn", "finite number"),
        ({"compare": {"seeds": [0, 0]}}, "compare.seeds", "duplicates"),
        ({"compare": {"seeds": [-1]}}, "compare.seeds.0", "greater than or equal to 0"),
        ({"compare": {"methods": ["cmt_magic"]}}, "compare.methods.0", "Input should be"),
        ({"prompt_tune": {"objective": "bc"}}, "prompt_tune.objective", "filtered_bc"),
    ],
)
def test_bad_values_name_their_key(raw, path, fragment):
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "p.yaml")
    msg = str(err.value)
    assert msg.startswith("invalid configuration")
    assert f"  {path}: " in msg and fragment in msg, msg
    assert msg.splitlines()[-1].endswith("[p.yaml]"), msg  # where the bad value came from


def test_config_errors_name_where_the_value_came_from(tmp_path):
    """params.yaml, a preset file and --set each named on the lines of their own values."""
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  lr: -1\n")
    with pytest.raises(ConfigError) as err:
        load_params(path, {"evaluate.episodes": 0}, preset="cheetah_vel")
    lines = str(err.value).splitlines()
    assert any(ln.startswith("  pretrain.lr: ") and ln.endswith(f"[{path}]") for ln in lines)
    assert any(
        ln.startswith("  evaluate.episodes: ") and ln.endswith("[--set evaluate.episodes]")
        for ln in lines
    ), lines
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", {"data.transitions": 5}, preset="hopper_medium")
    assert "  data.transitions: " in str(err.value)
    assert str(err.value).endswith("[--set data.transitions]")
    with pytest.raises(ConfigError) as err:  # a whole section: every layer that set a key
        load_params(ROOT / "params.yaml", {"data.source": "/x/...hdf5"}, preset="hopper_medium")
    assert str(err.value).endswith("[preset presets/hopper_medium.yaml, --set data.source]")


@pytest.mark.parametrize(
    "override, path, fragment",
    [
        ({"compare.seeds": [True]}, "compare.seeds.0", "expected an integer, got a boolean"),
        ({"data.seed": False}, "data.seed", "expected an integer, got a boolean"),
        ({"evaluate.seed": 2**32}, "evaluate.seed", "Input should be less than 4294967296"),
        (
            {"compare.seeds": [99999999999999999999]},
            "compare.seeds.0",
            "Input should be less than 4294967296",
        ),
        ({"compare.seeds": ["1"]}, "compare.seeds.0", "Input should be a valid integer"),
    ],
)
def test_seeds_are_integers_below_2_to_the_32(override, path, fragment):
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", override)
    msg = str(err.value)
    assert f"  {path}: {fragment}" in msg, msg
    assert "Tuple should have at least" not in msg  # the bad item alone is reported
    assert load_params(ROOT / "params.yaml", {"compare.seeds": [2**32 - 1]}).compare.seeds


@pytest.mark.parametrize(
    "override, preset",
    [
        ({"data.name": "x;touch PWNED;"}, None),
        ({"data.name": "../escape"}, None),
        ({"data.name": ".."}, None),
        ({"data.name": "a b"}, None),
        ({"data.source": "/data/x;touch PWNED;.hdf5"}, "hopper_medium_replay"),
        ({"data.source": "/data/...hdf5"}, "hopper_medium_replay"),
        ({"data.source": "/data/$(id).hdf5"}, "hopper_medium_replay"),
        ({"data.source": "/data/hopper medium.hdf5"}, "hopper_medium_replay"),
        ({"tracking.registered_model": "cmt-{name.__class__}"}, None),
        ({"tracking.registered_model": "x'; drop"}, None),
    ],
)
def test_names_that_reach_paths_or_commands_are_refused(override, preset):
    """Every value that names a directory, a DVC stage argument or a registry filter."""
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", override, preset)
    msg = str(err.value)
    assert "not a safe name" in msg or "may appear" in msg, msg
    assert NAME_RULE in msg, msg
    assert "--set " in msg, msg


def test_names_are_at_most_100_characters():
    with pytest.raises(ConfigError, match="data.name: String should have at most 100 char"):
        load_params(ROOT / "params.yaml", {"data.name": "x" * 101})


def test_presets_are_only_the_files_in_presets():
    from cmt.config import load_preset

    for name in ("../params", "/etc/passwd", "point_robot/../../params", ""):
        with pytest.raises(ConfigError, match="unknown preset"):
            load_preset(name)


def test_yaml_problems_and_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("pretrain:\n  lr: 0.001\n")
    p = load_params(good, {"pretrain.steps": 7, "model.d_model": 64})
    assert (p.pretrain.lr, p.pretrain.steps, p.model.d_model) == (0.001, 7, 64)


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    code = main(["config", "--params", str(ROOT / "params.yaml"), "--set", "pretrain.lrr=1"])
    assert code == 2
    assert "pretrain.lrr" in capsys.readouterr().err


def test_cli_compare_smoke(tmp_path):
    """The main command end to end, CleanRL-style: a tiny budget, every method, a table."""
    import yaml
    from conftest import TINY

    params = tmp_path / "params.yaml"
    tiny = {**TINY, "pretrain": {**TINY["pretrain"], "steps": 5}}
    tiny["prompt_tune"] = {**TINY["prompt_tune"], "steps": 5}
    params.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "out"
    assert main(["compare", "--params", str(params), "--out", str(out), "--quiet"]) == 0
    table = (out / "results.md").read_text()
    for label in ("Multi-task DT", "Prompt-DT", "CMT zero-shot", "CMT + prompt tuning"):
        assert label in table
    assert (out / "results.png").stat().st_size > 1000
    assert len(list((out / "runs").glob("*.json"))) == 4
    # A rerun finds every run record and only rebuilds the report.
    mtime = (out / "runs" / "cmt_tuned_seed0.json").stat().st_mtime
    assert main(["compare", "--params", str(params), "--out", str(out), "--quiet"]) == 0
    assert (out / "runs" / "cmt_tuned_seed0.json").stat().st_mtime == mtime


def test_presets_switch_the_whole_benchmark() -> None:
    """Every preset validates, replaces the whole data section and sets the same keys of the
    other sections (so one fully replaces another), and the point-robot preset is
    params.yaml's default, so switching back restores it."""
    from cmt.config import (
        apply_preset,
        flatten,
        load_params,
        load_preset,
        parse_params,
        preset_names,
    )

    names = preset_names()
    envs, levels = ("hopper", "halfcheetah", "walker2d"), ("medium_replay", "medium_expert")
    assert {"point_robot", "cheetah_vel", "cheetah_dir", "ant_dir"} <= set(names)
    assert {f"{e}_{lv}" for e in envs for lv in levels} <= set(names)
    keys = {
        name: {k for k in flatten(load_preset(name)) if not k.startswith("data.")} for name in names
    }
    assert all(k == keys["point_robot"] for k in keys.values()), keys
    params_yaml = Path(__file__).parents[1] / "params.yaml"
    assert load_params(params_yaml, preset="point_robot") == load_params(params_yaml)
    for name in names:
        params = load_params(params_yaml, preset=name)
        assert params.data.name == name
        # Applying a preset on top of another one's result gives the preset alone.
        other = apply_preset(load_params(params_yaml, preset="hopper_medium").model_dump(), name)
        assert load_params(params_yaml, preset=name) == parse_params(other)
    with pytest.raises(ConfigError, match="unknown preset 'cheetah'.*cheetah_vel"):
        load_preset("cheetah")
