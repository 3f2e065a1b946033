"""Config files and nested dataclass configs: unknown keys, lists -> tuples, parse errors."""

from __future__ import annotations

import pytest

from medrefine.config import build_dataclass, load_config_file
from medrefine.errors import ConfigError
from medrefine.models.registry import SegModelConfig
from medrefine.preprocess import PreprocessConfig
from medrefine.training.coarse import CoarseTrainConfig


def test_lists_become_tuples():
    cfg = build_dataclass(
        PreprocessConfig,
        {"size": [32, 48], "percentiles": [1, 99], "window": [40, 400], "norm": "window"},
    )
    assert cfg.size == (32, 48) and isinstance(cfg.size, tuple)
    assert cfg.percentiles == (1, 99) and isinstance(cfg.percentiles, tuple)
    assert cfg.window == (40, 400) and isinstance(cfg.window, tuple)  # str | tuple | None
    assert build_dataclass(PreprocessConfig, {"window": "lung"}).window == "lung"


def test_nested_dataclasses_are_built():
    cfg = build_dataclass(
        CoarseTrainConfig,
        {
            "data_dir": "d",
            "output_dir": "o",
            "model": {"name": "unet", "encoder": "scratch", "widths": [4, 8, 8, 8, 8]},
            "preprocess": {"size": [64, 64]},
            "augment": {"scale": [0.9, 1.1]},
            "class_names": ["lesion"],
        },
    )
    assert isinstance(cfg.model, SegModelConfig) and cfg.model.widths == (4, 8, 8, 8, 8)
    assert cfg.preprocess.size == (64, 64)
    assert cfg.augment.scale == (0.9, 1.1)
    assert cfg.class_names == ("lesion",)
    assert cfg.model.decoder_widths == SegModelConfig().decoder_widths  # defaults kept


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match=r"unknown keys \['sise'\]"):
        build_dataclass(PreprocessConfig, {"sise": [32, 32]})


def test_unknown_nested_key_names_its_place():
    with pytest.raises(ConfigError, match=r"coarse\.model.*unknown keys \['depth'\]"):
        build_dataclass(
            CoarseTrainConfig, {"data_dir": "d", "output_dir": "o", "model": {"depth": 3}}, "coarse"
        )


def test_missing_required_key_is_a_config_error():
    with pytest.raises(ConfigError, match="output_dir"):
        build_dataclass(CoarseTrainConfig, {"data_dir": "d"})


def test_validation_errors_pass_through():
    with pytest.raises(ConfigError, match="channels"):
        build_dataclass(PreprocessConfig, {"channels": 2})


def test_load_yaml_and_json(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stage: coarse\ncoarse:\n  epochs: 2\n  model: {widths: [4, 8, 8, 8, 8]}\n")
    assert load_config_file(y) == {
        "stage": "coarse",
        "coarse": {"epochs": 2, "model": {"widths": [4, 8, 8, 8, 8]}},
    }
    j = tmp_path / "c.json"
    j.write_text('{"epochs": 3}')
    assert load_config_file(j) == {"epochs": 3}
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    assert load_config_file(empty) == {}


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.yaml", "a: [1, 2\n", "cannot parse"),
        ("bad.json", "{epochs: 3}", "cannot parse"),
        ("list.yaml", "- 1\n- 2\n", "mapping"),
    ],
)
def test_load_errors(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.yaml")


def test_scalar_for_a_nested_section_is_a_config_error():
    with pytest.raises(ConfigError, match="model"):
        build_dataclass(CoarseTrainConfig, {"data_dir": "d", "output_dir": "o", "model": "cpunet"})
