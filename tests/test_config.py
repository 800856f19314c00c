"""Typed configs: YAML + dotted overrides, and one clear error per mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml
from engine_toy import ToyConfig

from unitransformer.engine import (
    ConfigError,
    OptimConfig,
    ScheduleConfig,
    config_diff,
    config_to_dict,
    load_config,
)


@dataclass
class Inner:
    size: int = 2
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=list)
    shape: tuple[int, ...] = (1,)
    kind: Literal["a", "b"] = "a"
    scale: float = 1.0
    flag: bool = False


def _yaml(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_fill_nested_typed_fields(tmp_path):
    path = _yaml(tmp_path, "optim:\n  lr: 3e-4\n  betas: [0.9, 0.98]\ntrain:\n  max_steps: 7\n")
    config = load_config(ToyConfig, path, ["train.max_steps=9", "model.depth=1", "data.sleep=1"])
    assert config.optim.lr == 3e-4  # "3e-4" is a string to PyYAML, a number to the field.
    assert config.optim.betas == (0.9, 0.98) and isinstance(config.optim.betas, tuple)
    assert config.train.max_steps == 9  # The override wins over the file.
    assert config.model.depth == 1 and config.data.sleep == 1.0
    assert isinstance(config.data.sleep, float)
    assert config.schedule == ScheduleConfig()  # Untouched parts keep their defaults.


def test_generic_types_optional_list_tuple_literal(tmp_path):
    config = load_config(
        Outer, None, ["inner.name=x", "sizes=[1, 2]", "shape=[3, 4, 5]", "kind=b", "flag=true"]
    )
    assert config == Outer(Inner(2, "x"), [1, 2], (3, 4, 5), "b", 1.0, True)
    assert load_config(Outer, None, ["inner.name=null"]).inner.name is None


def test_the_saved_dict_loads_back_equal(tmp_path):
    config = load_config(ToyConfig, None, ["optim.betas=[0.8, 0.9]", "data.nan_batches=[3]"])
    path = _yaml(tmp_path, yaml.safe_dump(config_to_dict(config)))
    assert load_config(ToyConfig, path) == config


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    path = _yaml(tmp_path, "task: toy\noptim:\n  lr: 0.1\n  weight_decai: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(ToyConfig, path)
    message = str(info.value)
    assert f"{path} line 4" in message
    assert "'optim.weight_decai'" in message and "did you mean 'optim.weight_decay'" in message


def test_unknown_override_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'trian.max_steps'.*did you mean 'train'"):
        load_config(ToyConfig, None, ["trian.max_steps=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'train.max_steps'"):
        load_config(ToyConfig, None, ["train.max_step=3"])


def test_wrong_type_names_key_value_and_expected(tmp_path):
    path = _yaml(tmp_path, "train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"line 2: train.max_steps='lots'.*expected an integer"):
        load_config(ToyConfig, path)
    with pytest.raises(
        ConfigError, match=r"override 'train.compile': train.compile=1 .*expected true or false"
    ):
        load_config(ToyConfig, None, ["train.compile=1"])
    with pytest.raises(ConfigError, match=r"model.depth=True .*expected an integer"):
        load_config(ToyConfig, None, ["model.depth=true"])
    with pytest.raises(
        ConfigError, match=r"train.precision='fp8'.*one of 'auto', 'fp32', 'bf16', 'fp16'"
    ):
        load_config(ToyConfig, None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match=r"optim.betas=\[0.9\].*list of 2 values"):
        load_config(ToyConfig, None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"override 'optim': optim=3 .*mapping of OptimConfig"):
        load_config(ToyConfig, None, ["optim=3"])


def test_out_of_range_names_key_value_and_allowed(tmp_path):
    path = _yaml(tmp_path, "optim:\n  lr: -0.1\n")
    with pytest.raises(
        ConfigError, match=r"line 2: optim.lr=-0.1 is out of range \(expected > 0\)"
    ):
        load_config(ToyConfig, path)
    with pytest.raises(ConfigError, match=r"train.grad_accum=0 .*expected >= 1"):
        load_config(ToyConfig, None, ["train.grad_accum=0"])
    with pytest.raises(ConfigError, match=r"schedule.warmup_steps=0 .*for inverse_sqrt"):
        load_config(ToyConfig, None, ["schedule.name=inverse_sqrt"])
    with pytest.raises(ConfigError, match=r"train.max_seconds=-1.0 .*expected >= 0"):
        load_config(ToyConfig, None, ["train.max_seconds=-1"])
    with pytest.raises(ConfigError, match=r"data.batch_size=0 .*expected >= 1"):
        load_config(ToyConfig, None, ["data.batch_size=0"])  # A task's own range check.


def test_malformed_input_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3: invalid YAML"):
        load_config(ToyConfig, _yaml(tmp_path, "optim:\n  lr: 1\n   eps: 2\n"))
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        load_config(ToyConfig, _yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"cannot read the config file"):
        load_config(ToyConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"override 'optim.lr': expected key=value"):
        load_config(ToyConfig, None, ["optim.lr"])


def test_config_diff_lists_changed_dotted_keys():
    default = config_to_dict(ToyConfig())
    changed = config_to_dict(load_config(ToyConfig, None, ["optim.lr=0.5", "train.seed=3"]))
    assert config_diff(default, changed) == {"optim.lr": (1e-3, 0.5), "train.seed": (0, 3)}


def test_engine_dataclasses_check_ranges_when_built_in_code():
    with pytest.raises(ValueError, match="weight_decay"):
        OptimConfig(weight_decay=-1.0)
