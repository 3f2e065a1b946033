"""The preset registry: one lookup for every task, one-line errors naming the choices, a folder
with a model card for every entry, and model-card figures read, never made up."""

from __future__ import annotations

import pytest

from medrefine.errors import ConfigError
from medrefine.presets import (
    DEFAULT_PRESET,
    DEFAULT_PRESETS,
    PRESETS,
    REGISTRY,
    TASKS,
    Preset,
    all_presets,
    card_figures,
    get_preset,
    sample_path,
)


def test_every_task_has_a_table_and_a_default_of_its_own():
    assert tuple(REGISTRY) == TASKS and set(DEFAULT_PRESETS) == set(TASKS)
    assert DEFAULT_PRESET == DEFAULT_PRESETS["segmentation"] == "polyp"
    for task, name in DEFAULT_PRESETS.items():
        assert get_preset(name, task).task == task
    assert REGISTRY["segmentation"] is PRESETS  # the --preset choices of the commands


def test_names_are_unique_across_tasks_and_each_entry_sits_in_its_tasks_table():
    names = [p.name for p in all_presets()]
    assert len(names) == len(set(names))
    for task, table in REGISTRY.items():
        assert all(key == p.name and p.task == task for key, p in table.items())


@pytest.mark.parametrize("preset", all_presets(), ids=lambda p: p.name)
def test_every_entry_has_its_folder_weights_and_model_card(preset):
    assert preset.folder.is_dir() and preset.folder.name == preset.name
    assert preset.model_card.is_file() and preset.model_card_md.is_file()
    assert preset.installed and preset.weights.is_file()
    assert preset.description
    if preset.sample:
        assert sample_path(preset.name).is_file()


def test_lookup_by_task_and_across_tasks():
    assert get_preset("skin") is PRESETS["skin"]  # segmentation by default, as callers expect
    assert get_preset("inpaint", task="inpainting").task == "inpainting"
    assert get_preset("lungpath", task=None).task == "lung-pathology"


def test_a_preset_of_another_task_is_one_line_naming_the_tasks_choices():
    with pytest.raises(ConfigError) as err:
        get_preset("polyp", task="inpainting")
    message = str(err.value)
    assert "\n" not in message and "segmentation" in message and "['inpaint']" in message
    with pytest.raises(ConfigError, match=r"'inpaint' is for inpainting.*'polyp'"):
        get_preset("inpaint")


def test_an_unknown_name_or_task_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown segmentation preset 'nope'.*'skin'"):
        get_preset("nope")
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'.*'inpaint'.*'lungpath'"):
        get_preset("nope", task=None)
    with pytest.raises(ConfigError, match=r"unknown task 'ct'.*'lung-pathology'"):
        get_preset("polyp", task="ct")


def test_segmentation_defaults_are_refused_on_another_task():
    with pytest.raises(ConfigError, match="task 'video'"):
        Preset("x", "y", task="video")
    with pytest.raises(ConfigError, match="segmentation defaults"):
        Preset("x", "y", box_engine="litemedsam", task="inpainting")


def test_card_figures_are_what_the_card_holds():
    polyp = get_preset("polyp")
    card = {
        "refiner": {
            "test_summary": {
                "split": "test",
                "n": 3,
                "coarse": {"dice": {"mean": 0.5}},
                "refined": {"dice": {"mean": 0.75}},
            }
        },
        "coarse": {"test_summary": {"coarse": {"dice": {"mean": 0.4}}}},
    }
    assert [
        (f["name"], f["value"], f["split"], f["n"], f["source"]) for f in card_figures(polyp, card)
    ] == [
        ("coarse Dice", 0.5, "test", 3, "refiner.test_summary.coarse.dice.mean"),
        ("refined Dice", 0.75, "test", 3, "refiner.test_summary.refined.dice.mean"),
    ]
    coarse_only = {
        "coarse": {
            "test_summary": {
                "coarse": {"dice": {"mean": 0.4}},
                "per_class": {"heart": {"dice": {"mean": 0.3}}},
            }
        }
    }
    assert [(f["name"], f["value"], f["n"]) for f in card_figures(polyp, coarse_only)] == [
        ("coarse Dice", 0.4, None),
        ("heart Dice", 0.3, None),
    ]
    assert card_figures(polyp, {}) == []
    assert card_figures(polyp, {"coarse": {"test_summary": {"coarse": None}}}) == []
    assert card_figures(get_preset("lungpath", None), {"evaluations": [{"printed": "0.5"}]}) == []


def test_the_shipped_cards_give_their_headline_figures():
    skin = {f["name"]: f["value"] for f in card_figures(get_preset("skin"))}
    assert set(skin) == {"coarse Dice", "refined Dice"} and skin["refined Dice"] > 0.9
    names = [f["name"] for f in card_figures(get_preset("inpaint", None))]
    assert "ribs PSNR" in names and "box SSIM" in names
    assert card_figures(get_preset("lungpath", None)) == []  # its tables are printed text
