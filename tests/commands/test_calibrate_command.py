"""``medrefine calibrate``: the coarse masks it calibrates on are those of the coarse model a
preset runs, an ensemble included (``--coarse-weights`` with several files)."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medrefine.checkpoint import read_info
from medrefine.cli import main
from medrefine.inference import coarse_from_weights
from medrefine.training.calibrate import ValSet
from medrefine.training.data import find_pairs, split_pairs


def test_own_coarse_calibration_runs_on_the_ensembles_masks(tiny_weights, tiny_data, tmp_path,
                                                             capsys):
    first = tiny_weights["coarse"]
    second = tmp_path / "coarse_2.safetensors"  # another member: the same kind, other weights
    tensors = load_file(str(first))
    torch.manual_seed(1)
    save_file({k: (v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v)
               for k, v in tensors.items()}, str(second), metadata=_metadata(first))
    out = tmp_path / "calibrated.safetensors"
    code = main(["calibrate", "--weights", str(tiny_weights["refiner"]), "--coarse-weights",
                 str(first), str(second), "--data", str(tiny_data), "--own-coarse",
                 "--max-cases", "0", "--strengths", "0.3", "-o", str(out), "--device", "cpu"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.rsplit("calibrated weights:", 1)[0])
    pairs = split_pairs(tiny_data, find_pairs(tiny_data))["val"]
    expected = {}
    for name, paths in (("ensemble", [first, second]), ("first", [first])):
        val = ValSet(coarse_from_weights(paths, "cpu"), pairs, ("coarse",))
        expected[name] = float(np.mean(val.score(None, None)["coarse"]))
    assert expected["ensemble"] != expected["first"]  # the check can tell the two apart
    assert printed["per_kind"]["coarse"]["input"] == round(expected["ensemble"], 4)
    assert "auto_strength_own" in read_info(out)


def _metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()
