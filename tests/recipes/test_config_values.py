"""Config values as users type them: every spelling of a number reads as that number, in YAML files, in
``--set`` and on the SFT command line; values of the wrong type or out of range are refused, naming where they
came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli import UsageError, read_yaml_mapping
from cli.yaml_values import load_yaml
from recipes.schedule import load_schedule_config
from recipes.sft import load_recipe
from recipes.training.stage_config import load_stage_config

REPO = Path(__file__).resolve().parents[2]
DISTILL_CONFIG = REPO / "recipes" / "configs" / "distill_tiny.yaml"
SCHEDULE_CONFIG = REPO / "recipes" / "configs" / "schedule_tiny.yaml"

FLOATS = {"1e-3": 1e-3, "1E-3": 1e-3, ".001": 1e-3, "0.001": 1e-3, "1.0e-3": 1e-3, "-.5": -0.5, "+.5": 0.5,
          "5e+2": 500.0, "1.5E3": 1500.0, "3.": 3.0}
INTS = {"10": 10, "010": 10, "1_000": 1000, "-1": -1, "+7": 7, "0x10": 16}


@pytest.mark.parametrize("text, number", [*FLOATS.items(), *INTS.items()])
def test_every_spelling_of_a_number_reads_as_that_number(text, number):
    value = load_yaml(text)
    assert value == number and type(value) is type(number)


@pytest.mark.parametrize("text, value", [("true", True), ("null", None), ("kl", "kl"), ("1:30", "1:30"),
                                         ("2e", "2e"), ("1.2.3", "1.2.3"), ("[1, 2e3]", [1, 2000.0])])
def test_other_scalars_read_as_yaml_reads_them(text, value):
    assert load_yaml(text) == value


@pytest.mark.parametrize("text", ["1e-3", "1E-3", ".001", "1.0e-3"])
def test_a_float_key_takes_every_spelling_in_set_and_in_the_file(text, tmp_path):
    assert load_stage_config(DISTILL_CONFIG, [f"learning_rate={text}"]).learning_rate == 1e-3
    config_file = tmp_path / "stage.yaml"
    config_file.write_text(DISTILL_CONFIG.read_text().replace("learning_rate: 1.0e-3", f"learning_rate: {text}"))
    assert load_stage_config(config_file).learning_rate == 1e-3
    assert read_yaml_mapping(config_file, "stage config")["learning_rate"] == 1e-3


@pytest.mark.parametrize("text, steps", [("1e3", 1000), ("5e+2", 500), ("1_000", 1000), ("250", 250), ("2.0e2", 200)])
def test_an_int_key_takes_a_whole_number_however_spelt(text, steps):
    config = load_stage_config(DISTILL_CONFIG, [f"max_steps={text}"])
    assert config.max_steps == steps and type(config.max_steps) is int


@pytest.mark.parametrize("override, words", [
    ("max_steps=-5", ("max_steps is -5", "from --set max_steps=-5", "above 0")),
    ("max_steps=0", ("max_steps is 0", "above 0")),
    ("max_steps=-1", ("max_steps is -1",)),
    ("max_steps=2.5", ("max_steps is 2.5", "type int")),
    ("per_device_batch_size=0", ("per_device_batch_size is 0",)),
    ("warmup_steps=-0.1", ("warmup_steps is -0.1", "0 or a number above 0")),
    ("learning_rate=-1e-3", ("learning_rate is -0.001",)),
])
def test_a_value_out_of_range_or_of_the_wrong_type_is_refused(override, words):
    with pytest.raises(UsageError) as error:
        load_stage_config(DISTILL_CONFIG, [override])
    assert all(word in str(error.value) for word in words), error.value


def test_a_value_from_the_file_is_named_with_the_file(tmp_path):
    config_file = tmp_path / "stage.yaml"
    config_file.write_text(DISTILL_CONFIG.read_text().replace("max_steps: 60 ", "max_steps: -5 "))
    with pytest.raises(UsageError, match=f"max_steps is -5 \\(in {config_file}\\)"):
        load_stage_config(config_file)


def test_an_unknown_key_from_set_is_named_with_its_set():
    with pytest.raises(ValueError) as error:
        load_stage_config(DISTILL_CONFIG, ["max_stepz=3"])
    assert "from --set max_stepz=3" in str(error.value) and "in " + str(DISTILL_CONFIG) not in str(error.value)


def test_sft_settings_take_numbers_as_typed_and_refuse_steps_below_one():
    recipe = load_recipe(None, {"model": "m", "learning_rate": load_yaml("1e-3"), "max_steps": load_yaml("5e+2")})
    assert recipe.learning_rate == 1e-3 and recipe.max_steps == 500 and type(recipe.max_steps) is int
    for steps in (-3, 0):
        with pytest.raises(UsageError, match=f"max_steps is {steps} \\(from --max-steps\\)"):
            load_recipe(None, {"model": "m", "max_steps": steps})


def test_sft_yaml_settings_take_numbers_as_typed(tmp_path):
    config_file = tmp_path / "sft.yaml"
    config_file.write_text("model: m\nlearning_rate: 2e-5\nmax_steps: 1e2\n")
    recipe = load_recipe(str(config_file), {})
    assert recipe.learning_rate == 2e-5 and recipe.max_steps == 100


def test_schedule_overrides_take_numbers_as_typed_and_check_the_distill_group():
    config = load_schedule_config(SCHEDULE_CONFIG, ["distill.learning_rate=1e-3", "distill.max_steps=1e2"])
    assert config.distill["learning_rate"] == 1e-3 and config.distill["max_steps"] == 100
    with pytest.raises(UsageError, match=r"max_steps is -5 \(from --set distill.max_steps=-5\)"):
        load_schedule_config(SCHEDULE_CONFIG, ["distill.max_steps=-5"])


def test_a_misspelt_group_from_set_is_named_with_its_set_not_the_file():
    with pytest.raises(UsageError) as error:
        load_schedule_config(SCHEDULE_CONFIG, ["distil.max_steps=10"])
    message = str(error.value)
    assert "unknown schedule keys ['distil']" in message and "from --set distil.max_steps=10" in message
    assert str(SCHEDULE_CONFIG) not in message.split(";")[0]


@pytest.mark.parametrize("override, words", [
    ("importance_options.metrc=kl", ("importance_options.metrc", "from --set importance_options.metrc=kl",
                                     "unrecognized arguments: --metrc kl")),
    ("importance_options.metric=bleu", ("importance_options.metric", "unknown metric 'bleu'")),
    ("mmr_options.trainable=everything", ("mmr_options.trainable", "invalid choice")),
    ("later_importance=mmx", ("later_importance is 'mmx'",)),
])
def test_importance_options_are_checked_when_the_schedule_is_read(override, words):
    with pytest.raises(UsageError) as error:
        load_schedule_config(SCHEDULE_CONFIG, [override])
    assert all(word in str(error.value) for word in words), error.value


def test_the_shipped_schedule_configs_pass_their_checks():
    for name in ("schedule_tiny.yaml", "schedule_demo.yaml"):
        config = load_schedule_config(REPO / "recipes" / "configs" / name)
        assert config.distill == yaml.safe_load((REPO / "recipes" / "configs" / name).read_text())["distill"]
