"""``medrefine presets``: every preset of every task, in text and as JSON, through the CLI."""

from __future__ import annotations

import json

from medrefine.cli import main
from medrefine.presets import all_presets


def test_presets_lists_every_preset_with_task_weights_and_figures(capsys):
    assert main(["presets"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    for preset in all_presets():
        row = next(line for line in lines if line.split()[0] == preset.name)
        assert preset.task in row and "installed" in row
    assert "polyp *" in out and "inpaint *" in out and "lungpath *" in out  # task defaults
    assert "test (n=40): coarse Dice" in out  # skin, from its model card
    assert "test figures: -" in out  # lungpath: its card holds no structured figure


def test_presets_json_is_the_same_listing(capsys):
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [p.name for p in all_presets()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["inpaint"]["task"] == "inpainting" and by_name["inpaint"]["default"]
    assert by_name["lungpath"]["task"] == "lung-pathology"
    assert by_name["lungpath"]["test_figures"] == []
    assert by_name["polyp"]["installed"] and "coarse.safetensors" in by_name["polyp"]["weights"]
    card = json.loads(open(by_name["skin"]["model_card"]).read())
    refined = next(f for f in by_name["skin"]["test_figures"] if f["name"] == "refined Dice")
    assert refined["value"] == card["refiner"]["test_summary"]["refined"]["dice"]["mean"]


def test_bench_refuses_a_preset_of_another_task_in_one_line(capsys):
    assert main(["bench", "--preset", "lungpath"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lung-pathology" in err
    assert main(["bench", "--inpaint", "--preset", "polyp"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is for segmentation, not inpainting" in err and "['inpaint']" in err
