"""``medrefine inpaint`` end to end: PNG 8/16-bit, DICOM in -> derived DICOM out, report.json,
the synthetic-image notes, bad masks, the per-class evaluate table of multi-class models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inpaint_helpers import xray_like
from PIL import Image

from medrefine.cli import main
from medrefine.inpaint.pipeline import SYNTHETIC_NOTE


@pytest.fixture
def case16(tmp_path):
    rng = np.random.default_rng(0)
    image = xray_like(rng, (60, 52)).astype(np.uint16) * 200 + 1000  # 16-bit values
    mask = np.zeros(image.shape, np.uint8)
    mask[20:34, 10:30] = 255
    Image.fromarray(image).save(tmp_path / "cxr.png")
    Image.fromarray(mask).save(tmp_path / "hole.png")
    return tmp_path / "cxr.png", tmp_path / "hole.png", image, mask


def test_png16_in_png16_out_with_report(case16, tiny_inpaint_weights, tmp_path, capsys):
    image_path, mask_path, image, mask = case16
    out = tmp_path / "out"
    rc = main(["inpaint", "--image", str(image_path), "--mask", str(mask_path), "-o", str(out),
               "--weights", str(tiny_inpaint_weights), "--steps", "2", "--samples", "2",
               "--blend", "hard"])
    assert rc == 0
    written = Image.open(out / "cxr.png")
    assert written.info["Description"] == SYNTHETIC_NOTE
    array = np.asarray(written)
    assert array.dtype == np.uint16 and array.shape == image.shape
    assert np.array_equal(array[mask == 0], image[mask == 0])
    assert not np.array_equal(array[mask > 0], image[mask > 0])
    compare = np.asarray(Image.open(out / "cxr_compare.png"))
    assert compare.shape[1] > 3 * image.shape[1]
    report = json.loads((out / "report.json").read_text())
    assert report["synthetic"] is True and "Not for diagnosis" in report["note"]
    assert report["bit_depth"] == 16 and report["provenance"]["params"]["steps"] == 2
    assert report["timings"]["sample"] > 0
    assert np.array_equal(np.asarray(Image.open(image_path)), image)  # original untouched
    assert "not for diagnosis" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["size", "empty", "full", "top-row"])
def test_bad_masks_exit_2_with_one_line(case16, tiny_inpaint_weights, tmp_path, capsys, bad):
    image_path, _, image, _ = case16
    shape = (image.shape[0] + 4, image.shape[1]) if bad == "size" else image.shape
    mask = np.full(shape, 255 if bad in ("full", "top-row") else 0, np.uint8)
    if bad == "size":
        mask[5:10, 5:10] = 255
    if bad == "top-row":  # only the top row known (it crashed inside scikit-image, exit 1)
        mask[0] = 0
    Image.fromarray(mask).save(tmp_path / "bad.png")
    rc = main(["inpaint", "--image", str(image_path), "--mask", str(tmp_path / "bad.png"),
               "-o", str(tmp_path / "o"), "--weights", str(tiny_inpaint_weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "bad.png" in err
    assert {"size": "64x52", "empty": "empty", "full": "whole image",
            "top-row": "leaves 1.7% of the image known"}[bad] in err
    assert not (tmp_path / "o" / "cxr.png").exists()


def test_refuses_to_overwrite_the_input(case16, tiny_inpaint_weights, capsys):
    image_path, mask_path, _, _ = case16
    rc = main(["inpaint", "--image", str(image_path), "--mask", str(mask_path), "-o",
               str(image_path.parent), "--weights", str(tiny_inpaint_weights)])
    assert rc == 2 and "overwrite" in capsys.readouterr().err


def test_dicom_in_gives_a_derived_dicom_with_new_uids(tiny_inpaint_weights, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(1)
    pixels = xray_like(rng, (64, 48)).astype(np.uint16) * 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.ImageType = "CR", "anon", ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    src = tmp_path / "cr.dcm"
    ds.save_as(src, enforce_file_format=True)
    mask = np.zeros(pixels.shape, np.uint8)
    mask[30:40, 10:30] = 1
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    out = tmp_path / "out"
    rc = main(["inpaint", "--image", str(src), "--mask", str(tmp_path / "m.png"), "-o", str(out),
               "--weights", str(tiny_inpaint_weights), "--blend", "hard"])
    assert rc == 0
    derived = pydicom.dcmread(out / "cr.dcm")
    assert list(derived.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert derived.SOPInstanceUID != ds.SOPInstanceUID
    assert derived.SeriesInstanceUID != ds.SeriesInstanceUID
    assert derived.StudyInstanceUID == ds.StudyInstanceUID
    assert "Not for diagnosis" in derived.ImageComments
    assert "Not for diagnosis" in derived.DerivationDescription
    filled = derived.pixel_array
    assert np.array_equal(filled[mask == 0], pixels[mask == 0])
    assert not np.array_equal(filled[mask > 0], pixels[mask > 0])
    assert np.array_equal(pydicom.dcmread(src).pixel_array, pixels)
    assert np.asarray(Image.open(out / "cr.png")).dtype == np.uint16


def test_evaluate_prints_per_class_scores_of_a_multiclass_model(tiny_cxr_data, tmp_path, capsys):
    import torch

    from medrefine.checkpoint import save_weights
    from medrefine.io import read_mask
    from medrefine.metrics import per_class_metrics
    from medrefine.models.registry import SegModelConfig, build_seg_model
    from medrefine.pipeline import SegmentationPipeline
    from medrefine.postprocess import PostprocessConfig
    from medrefine.preprocess import PreprocessConfig

    torch.manual_seed(0)
    cfg = SegModelConfig(encoder="scratch", widths=(4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 4),
                         num_classes=2)
    pre = PreprocessConfig(size=(32, 32), channels=3)
    from dataclasses import asdict

    weights = save_weights(tmp_path / "mc.safetensors", build_seg_model(cfg), {
        "kind": "coarse", "model": cfg.to_dict(), "preprocess": asdict(pre),
        "class_names": ["lung", "device"]})
    rc = main(["evaluate", "--weights", str(weights), "--no-refine", "--data", str(tiny_cxr_data),
               "--mask-dir", "masks_multiclass", "--split", "val", "--out", str(tmp_path / "ev"),
               "--panels", "0"])
    printed = capsys.readouterr().out
    assert rc == 0 and "lung" in printed and "device" in printed
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(summary["per_class"]) == {"lung", "device"}
    pipe = SegmentationPipeline(weights, use_diffusion=False, postprocess=PostprocessConfig())
    expected = []
    for stem in ("cxr3", "cxr4"):
        result = pipe.run(tiny_cxr_data / "images" / f"{stem}.png")
        gt = read_mask(tiny_cxr_data / "masks_multiclass" / f"{stem}.png")
        expected.append(per_class_metrics(result.mask, gt, [1, 2])[1]["dice"])
    assert summary["per_class"]["lung"]["dice"]["mean"] == pytest.approx(np.mean(expected))


def test_evaluate_scores_one_class_of_a_label_map(tiny_cxr_data, tmp_path):
    """--mask-labels 2: the reference is label 2 of masks_multiclass (the 'device' bar), so
    masks of exactly that bar score Dice 1; against every non-zero label they do not."""
    from medrefine.io import read_mask

    pred = tmp_path / "pred"
    pred.mkdir()
    for path in sorted((tiny_cxr_data / "masks_multiclass").iterdir()):
        labels = read_mask(path)
        Image.fromarray(((labels == 2) * 255).astype(np.uint8)).save(pred / path.name)
    dice = {}
    for name, extra in (("device", ["--mask-labels", "2"]), ("any", [])):
        out = tmp_path / name
        rc = main(["evaluate", "--pred", str(pred), "--data", str(tiny_cxr_data), "--mask-dir",
                   "masks_multiclass", "--split", "val", "--out", str(out), *extra])
        assert rc == 0
        dice[name] = json.loads((out / "summary.json").read_text())["masks"]["dice"]["mean"]
    assert dice["device"] == pytest.approx(1.0) and dice["any"] < 0.9


def _v7_test_case_with_device(data_dir):
    """A covid_cxr_lungs_v7 test image whose label map has a large device region (label 2)."""
    from medrefine.io import read_image
    from medrefine.training.data import find_pairs, split_pairs

    root = data_dir / "covid_cxr_lungs_v7"
    for pair in split_pairs(root, find_pairs(root, "masks_multiclass"), 0)["test"]:
        labels = np.round(read_image(pair.mask).array[0]).astype(np.uint8)
        if (labels == 2).sum() > 2000:
            return pair.image, labels == 2
    pytest.skip("no test image with a large device region")


def test_mask_from_devices_covers_the_reference_device(data_dir, tmp_path):
    """--mask-from devices: the devices preset's mask, with a margin, is the hole; on a real
    test image it covers most of the reference device outline and little else."""
    from medrefine.commands.inpaint import mask_for
    from medrefine.io import read_image

    image_path, device = _v7_test_case_with_device(data_dir)
    out = tmp_path / "out"
    rc = main(["inpaint", "--image", str(image_path), "--mask-from", "devices", "-o", str(out)])
    assert rc == 0
    assert json.loads((out / "report.json").read_text())["mask"] == "--mask-from devices"
    args = type("Args", (), {"mask": None, "mask_from": "devices", "image": image_path})()
    hole = mask_for(args, read_image(image_path)) > 0
    assert (hole & device).sum() / device.sum() > 0.5
    assert hole.mean() < 0.25  # the devices, not the chest


def test_mask_from_with_nothing_found_exits_2(tmp_path, capsys):
    Image.fromarray(np.full((128, 128), 90, np.uint8)).save(tmp_path / "flat.png")
    rc = main(["inpaint", "--image", str(tmp_path / "flat.png"), "--mask-from", "devices",
               "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "flat.png" in err
    assert not (tmp_path / "o" / "flat.png").exists()
