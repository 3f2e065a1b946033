"""``medrefine evaluate`` on a tiny data folder, and its AUROC helper."""

from __future__ import annotations

import csv
import json
import math
import shutil
from itertools import product

import numpy as np
from PIL import Image

from medrefine.cli import main
from medrefine.commands.evaluate import METRICS, auroc

ARGS_REFINE = ["--steps", "1", "--device", "cpu", "--panels", "2"]


def _weights(weights) -> list[str]:
    return ["--weights", str(weights["coarse"]), "--refiner-weights", str(weights["refiner"])]


def _rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_evaluate_writes_masks_metrics_summary(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            *_weights(tiny_weights),
            "--data",
            str(tiny_data),
            "--split",
            "test",
            "--out",
            str(out),
            *ARGS_REFINE,
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "n=3" in printed and "Dice" in printed and "refined" in printed
    stems = ["case3", "case4", "case5"]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == stems
    mask = np.asarray(Image.open(out / "masks" / "case3.png"))
    assert mask.shape == (40, 48) and set(np.unique(mask).tolist()) <= {0, 255}
    columns, rows = _rows(out / "metrics.csv")
    assert columns == [
        "stem",
        *METRICS,
        "reference_empty",
        "pred_empty",
        *[f"coarse_{m}" for m in METRICS],
        "review_score",
        "seconds",
    ]
    assert [r["stem"] for r in rows] == stems
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["split"] == "test"
    assert summary["data_dir"] == str(tiny_data)
    assert set(summary["refined"]) >= set(METRICS) and set(summary["coarse"]) >= set(METRICS)
    assert summary["refined"]["dice"]["n"] == 3
    assert {"rho", "p", "n"} <= set(summary["review_score_vs_error"])
    assert summary["uncertainty_auroc"]["pixels"] == 3 * 40 * 48  # fewer pixels than asked
    assert summary["provenance"]["weights"]["coarse"]["sha256"]
    assert sorted(p.stem for p in (out / "panels").glob("*.png")) == ["case3", "case4"]

    again = tmp_path / "eval2"
    assert (
        main(
            [
                "evaluate",
                *_weights(tiny_weights),
                "--data",
                str(tiny_data),
                "--split",
                "test",
                "--out",
                str(again),
                *ARGS_REFINE,
            ]
        )
        == 0
    )
    for stem in stems:  # seeded: the same masks
        first = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert np.array_equal(first, np.asarray(Image.open(again / "masks" / f"{stem}.png")))


def test_evaluate_no_refine_columns(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--weights",
            str(tiny_weights["coarse"]),
            "--no-refine",
            "--data",
            str(tiny_data),
            "--split",
            "all",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--panels",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    columns, rows = _rows(out / "metrics.csv")
    assert columns == ["stem", *METRICS, "reference_empty", "pred_empty", "seconds"]
    assert len(rows) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refined"] is None and summary["coarse"]["dice"]["n"] == 6
    assert "review_score_vs_error" not in summary
    assert not (out / "panels").exists()


def test_evaluate_pred_scores_existing_masks(tiny_data, tmp_path, capsys):
    """--pred scores masks made elsewhere: the truth itself scores 1, an emptied mask 0, a
    missing mask is reported as failed (exit 2) while the others are still scored."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for stem in ("case3", "case4"):
        mask = np.asarray(Image.open(tiny_data / "masks" / f"{stem}.png"))
        Image.fromarray(mask if stem == "case3" else np.zeros_like(mask)).save(pred / f"{stem}.png")
    # a mask whose name only starts like case5 is not taken for case5
    Image.fromarray(mask).save(pred / "case5.extra.png")
    out = tmp_path / "eval"
    code = main(["evaluate", "--pred", str(pred), "--data", str(tiny_data), "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert "case5" in captured.err and "masks" in captured.out
    columns, rows = _rows(out / "metrics.csv")
    assert columns == ["stem", *METRICS, "reference_empty", "pred_empty", "seconds"]
    assert {r["stem"]: float(r["dice"]) for r in rows} == {"case3": 1.0, "case4": 0.0}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["masks"]["dice"]["mean"] == 0.5 and summary["n_failed"] == 1
    assert summary["failed"][0]["stem"] == "case5"


def test_evaluate_pred_refuses_a_model(tiny_data, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path),
            "--preset",
            "polyp",
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 2
    assert "--pred" in capsys.readouterr().err


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.3
    pairs = list(product(scores[positive], scores[~positive]))
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert math.isclose(auroc(scores, positive), expected)
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert math.isnan(auroc(np.array([0.1, 0.9]), np.array([False, False])))


def test_evaluate_counts_empty_references_apart(tiny_data, tmp_path, capsys):
    """Images with nothing to find (normal ultrasound frames): an empty prediction there is
    right (Dice 1), a non-empty one wrong (Dice 0), and the summary says how many were left
    empty and the Dice over the images that do hold an object."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    pred = tmp_path / "pred"
    pred.mkdir()
    mask = np.asarray(Image.open(tiny_data / "masks" / "case3.png"))
    empty = np.zeros_like(mask)
    image = Image.open(next((tiny_data / "images").glob("case3.*")))
    cases = {"lesion": (mask, mask), "normal_ok": (empty, empty), "normal_fp": (empty, mask)}
    for stem, (truth, guess) in cases.items():
        image.save(data / "images" / f"{stem}.png")
        Image.fromarray(truth).save(data / "masks" / f"{stem}.png")
        Image.fromarray(guess).save(pred / f"{stem}.png")
    out = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(pred), "--data", str(data), "--split", "all",
                 "--out", str(out)]) == 0
    _, rows = _rows(out / "metrics.csv")
    by = {r["stem"]: r for r in rows}
    assert float(by["normal_ok"]["dice"]) == 1.0 and float(by["normal_fp"]["dice"]) == 0.0
    assert by["normal_ok"]["reference_empty"] == "1" and by["lesion"]["reference_empty"] == "0"
    e = json.loads((out / "summary.json").read_text())["empty_references"]
    assert (e["n"], e["left_empty"], e["fraction_left_empty"]) == (2, 1, 0.5)
    assert e["dice_on_the_others"]["mean"] == 1.0 and e["dice_on_the_others"]["n"] == 1
    printed = capsys.readouterr().out
    assert "empty references: 1/2 left empty (50.0%)" in printed
    assert "Dice on the 1 others 1.000" in printed


def test_evaluate_layered_mask_dir_scores_one_layer(tiny_data, tmp_path):
    """--mask-dir a+b --mask-labels 2: the reference is the second folder's masks (label 2 of
    the stacked map), read with the first; -o the data folder is refused."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "inner").mkdir()
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in sorted((data / "masks").iterdir()):
        mask = np.asarray(Image.open(path))
        inner = np.zeros_like(mask)
        inner[: mask.shape[0] // 2] = mask[: mask.shape[0] // 2]  # the top half of the object
        Image.fromarray(inner).save(data / "inner" / path.name)
        Image.fromarray(inner).save(pred / path.name)
    out = tmp_path / "eval"
    args = ["evaluate", "--pred", str(pred), "--data", str(data), "--split", "all",
            "--mask-dir", "masks+inner"]
    assert main([*args, "--mask-labels", "2", "--out", str(out)]) == 0
    _, rows = _rows(out / "metrics.csv")
    assert rows and all(float(r["dice"]) == 1.0 for r in rows if r["reference_empty"] == "0")
    assert main([*args, "--out", str(out)]) == 0  # the union (any label) is the whole object
    _, rows = _rows(out / "metrics.csv")
    assert any(float(r["dice"]) < 1.0 for r in rows)
    assert main([*args, "--out", str(data)]) == 2  # OUT/masks/ would replace the references
