"""Every training recipe under configs/ still builds against today's config classes, and the
data folders and weights files it names exist (``medrefine train --dry-run``): the model cards
quote these files as their exact training commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medrefine.cli import build_parser, main
from medrefine.commands.train import STAGE_ALIASES, missing_inputs, stage_configs
from medrefine.config import load_config_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml"))


def _configs(path: Path, *flags: str) -> dict:
    args = build_parser().parse_args(["train", "--config", str(path), *flags])
    base = load_config_file(path)
    args.stage = STAGE_ALIASES[args.stage or base.get("stage", "both")]
    return stage_configs(args, base)


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 30 and Path("configs/v2/breast_us.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_a_shipped_training_config_builds_and_its_inputs_exist(path, data_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes' paths are relative to the repository root
    configs = _configs(path)
    assert configs
    # what may be missing on a fresh checkout: other runs' outputs (runs/..., made by the
    # scripts the config's header names), never data or shipped weights
    assert [m for m in missing_inputs(configs) if not m.split(": ", 1)[1].startswith("runs/")] \
        == []


def test_dry_run_prints_the_resolved_configs_and_trains_nothing(tmp_path, capsys, data_dir,
                                                                monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert main(["train", "--config", "configs/v2/breast_us_ft.yaml", "--epochs", "3",
                 "-o", str(out), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["coarse"]["epochs"] == 3
    assert printed["coarse"]["init_weights"] == "src/medrefine/weights/breast-us/coarse.safetensors"
    assert printed["coarse"]["augment"]["vflip"] is False
    assert not out.exists()


def test_both_stages_read_the_coarse_model_the_run_writes(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    configs = _configs(Path("configs/skin.yaml"), "-o", str(tmp_path / "run"))
    assert set(configs) == {"coarse", "refiner"}
    assert configs["refiner"].coarse_weights == str(tmp_path / "run" / "coarse" /
                                                    "best.safetensors")
    assert missing_inputs(configs) == []


def test_dry_run_names_an_input_that_is_not_there(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"stage": "coarse", "coarse": {
        "data_dir": str(tmp_path / "nowhere"), "init_weights": str(tmp_path / "w.safetensors")}}))
    assert main(["train", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"coarse.data_dir: {tmp_path / 'nowhere'}" in err
    assert f"coarse.init_weights: {tmp_path / 'w.safetensors'}" in err


def test_dry_run_refuses_an_unknown_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"stage": "coarse", "coarse": {
        "data_dir": str(tmp_path), "augment": {"hlfip": True}}}))
    assert main(["train", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['hlfip']" in err and "augment" in err
