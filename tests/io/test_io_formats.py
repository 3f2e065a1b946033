"""The table of output formats (``medrefine.io.formats``): every format's writer round-trips
through ``medrefine.io``'s readers, the help lists every format, the file names stay as they
were, and a format that needs a DICOM input refuses a PNG input with one clear error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrefine.errors import InputError
from medrefine.io import OUTPUT_FORMATS, LoadedImage, read_image, read_mask
from medrefine.io.formats import by_display, formats_help, mask_formats


def _blob(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(n // 4, n // 2) for n in shape)] = 1
    return mask


@pytest.fixture
def png_image(tmp_path: Path) -> LoadedImage:
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path)
    return read_image(path)


def _like(name: str, png_image: LoadedImage, data_dir: Path) -> LoadedImage:
    """An input the format fits: DICOM for DICOM-SEG, else the PNG."""
    if OUTPUT_FORMATS[name].needs_input != "dicom":
        return png_image
    path = data_dir / "dicom_samples" / "CT_small.dcm"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


@pytest.mark.parametrize("name", list(OUTPUT_FORMATS))
def test_every_format_round_trips(
    name: str, png_image: LoadedImage, data_dir: Path, tmp_path: Path
) -> None:
    spec = OUTPUT_FORMATS[name]
    like = _like(name, png_image, data_dir)
    names = spec.file_names("case", volume=False, nifti=True)  # every file the format has
    assert names[0] == f"case{spec.suffix}"
    mask = _blob(like.spatial_shape)
    if spec.holds_mask:  # label maps through write_mask, back through read_mask
        out = spec.write(mask, tmp_path / names[0], like=like, label_names=["lesion"])
        np.testing.assert_array_equal(read_mask(out), mask)
    elif name == "json":  # no medrefine reader: plain JSON, NaN as null
        out = spec.write({"n": 3, "score": float("nan")}, tmp_path / names[0])
        assert json.loads(out.read_text()) == {"n": 3, "score": None}
    else:  # pictures (overlay, the uncertainty heat map) back through read_image
        rgb = np.stack([mask * 255, mask * 0, mask * 100]).astype(np.uint8)  # (3, H, W)
        out = spec.write(rgb, tmp_path / names[0])
        np.testing.assert_array_equal(read_image(out).array, rgb)
    assert out.name == names[0]
    if spec.map_suffix is not None:  # the float map beside the picture
        assert names[1] == f"case{spec.map_suffix}" and spec.write_map is not None
        probs = mask.astype(np.float32) * 0.25
        out = spec.write_map(probs, tmp_path / names[1], like=like)
        np.testing.assert_allclose(read_image(out).array[0], probs)
    else:
        assert len(names) == 1


def test_file_names_as_before() -> None:
    suffixes = {n: f.suffix for n, f in OUTPUT_FORMATS.items()}
    assert suffixes == {
        "png": ".png",
        "nifti": ".nii.gz",
        "dicom-seg": ".dcm",
        "overlay": "_overlay.png",
        "uncertainty": "_uncertainty.png",
        "json": ".json",
    }
    uncertainty = OUTPUT_FORMATS["uncertainty"]
    assert uncertainty.file_names("a") == ["a_uncertainty.png"]
    assert uncertainty.file_names("a", volume=True) == ["a_uncertainty.nii.gz"]
    assert uncertainty.file_names("a", nifti=True) == ["a_uncertainty.png", "a_uncertainty.nii.gz"]
    downloads = {f.display: (f.download_suffix, f.zip_suffix) for f in mask_formats("dicom")}
    assert downloads == {
        "PNG": ("_mask.png", ".png"),
        "NIfTI": ("_mask.nii.gz", ".nii.gz"),
        "DICOM-SEG": ("_seg.dcm", "_seg.dcm"),
    }
    assert by_display("NIfTI") is OUTPUT_FORMATS["nifti"]


def test_help_lists_every_format() -> None:
    from medrefine.commands.options import add_format_option

    parser = argparse.ArgumentParser()
    add_format_option(parser)
    text = " ".join(parser.format_help().split())
    for name, spec in OUTPUT_FORMATS.items():
        assert f"{name} = {' '.join(spec.help.split())}" in text
        assert f"{name} = " in formats_help()
    assert formats_help(["json"]) == f"json = {OUTPUT_FORMATS['json'].help}"


def test_mask_formats_fit_the_input() -> None:
    assert [f.name for f in mask_formats()] == ["png", "nifti"]
    assert [f.name for f in mask_formats("png")] == ["png", "nifti"]
    assert [f.name for f in mask_formats("dicom")] == ["png", "nifti", "dicom-seg"]
    assert (
        OUTPUT_FORMATS["png"].refusal("nifti", volume=True) == "holds 2D images only, got a volume"
    )
    assert OUTPUT_FORMATS["nifti"].fits("png") and OUTPUT_FORMATS["nifti"].fits("dicom", True)


def test_dicom_seg_refuses_a_png_input(png_image: LoadedImage, tmp_path: Path) -> None:
    from medrefine.batch.segment import check_formats_fit

    seg = OUTPUT_FORMATS["dicom-seg"]
    assert not seg.fits("png")
    with pytest.raises(InputError) as caught:
        seg.check_fits(png_image, advice="write the mask as NIfTI")
    message = str(caught.value)
    assert message == (
        f"{png_image.path}: DICOM-SEG needs a DICOM input to reference, got 'png'; "
        "write the mask as NIfTI"
    )
    assert "\n" not in message
    with pytest.raises(
        InputError,
        match=r"--format dicom-seg needs a DICOM input to reference, "
        r"got 'png'; use --format nifti",
    ):
        check_formats_fit(png_image, ["dicom-seg"])
    check_formats_fit(png_image, ["png", "dicom-seg"])  # dropped where other formats remain
    OUTPUT_FORMATS["png"].check_fits(png_image)  # the formats that fit say nothing
