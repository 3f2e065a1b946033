"""Issue 26 item 9 (series): a DICOM series with a missing slice is refused in one line naming
the gap, unless ``allow_gaps``/``--allow-gaps``, which puts every slice on the plane of its true
position on the regular grid, fills the missing plane between its neighbours and lists it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medrefine.cli import main
from medrefine.errors import InputError
from medrefine.io import read_image, read_mask, write_mask
from medrefine.io.slice_grid import plan_grid, uneven_gaps


@pytest.fixture(scope="module")
def series_dir(ct_hu: Path) -> Path:
    return ct_hu / "dicom_series"


@pytest.fixture(scope="module")
def full(series_dir: Path):
    """The complete 20-slice series as read (evenly spaced, 2 mm)."""
    return read_image(series_dir)


@pytest.fixture(scope="module")
def gap(series_dir: Path, full, tmp_path_factory) -> tuple[Path, int, Path]:
    """(folder, k, removed file): the series without the slice at D index k (a middle one)."""
    folder = tmp_path_factory.mktemp("gap") / "series"
    shutil.copytree(series_dir, folder)
    k = 10
    removed = Path(full.meta["files"][k])
    (folder / removed.name).unlink()
    return folder, k, removed


def test_missing_slice_is_refused_naming_the_gap(gap) -> None:
    folder, k, removed = gap
    with pytest.raises(InputError) as info:
        read_image(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{folder}: ")
    assert "not evenly spaced" in message and "4 mm between" in message
    assert "1 slice(s) missing" in message
    assert "rerun with --allow-gaps to place every slice at its true position" in message.replace(
        " (read_image(..., allow_gaps=True))", ""
    )
    z_removed = float(pydicom.dcmread(removed, stop_before_pixels=True).ImagePositionPatient[2])
    assert f"z {z_removed - 2:.4g} mm" in message and f"z {z_removed + 2:.4g} mm" in message


def test_allow_gaps_places_every_slice_at_its_true_position(gap, full) -> None:
    folder, k, removed = gap
    image = read_image(folder, allow_gaps=True)
    assert image.array.shape == full.array.shape == (1, 20, 512, 512)
    assert image.spacing == pytest.approx(full.spacing)
    assert image.meta["filled_slices"] == [k]
    kept = [d for d in range(20) if d != k]
    assert image.meta["source_slices"] == kept
    assert image.meta["files"] == [
        f.replace(str(full.path), str(folder)) for f in (full.meta["files"][d] for d in kept)
    ]
    for d in kept:  # each slice's pixels at the index of its own position, unchanged
        np.testing.assert_array_equal(image.array[0, d], full.array[0, d])
    expected = (full.array[0, k - 1] + full.array[0, k + 1]) / 2  # between its neighbours
    np.testing.assert_allclose(image.array[0, k], expected, atol=1e-3)
    np.testing.assert_allclose(image.meta["image_positions"], full.meta["image_positions"])
    assert str(removed) not in image.meta["files"]


def test_mask_writers_keep_the_true_geometry(gap, full, tmp_path: Path) -> None:
    folder, k, _ = gap
    image = read_image(folder, allow_gaps=True)
    mask = np.zeros(image.spatial_shape, np.uint8)
    mask[:, 200:300, 200:300] = 1
    mask[k + 1, :10, :10] = 1  # marks the plane of the slice just above the gap
    nifti = write_mask(mask, tmp_path / "m.nii.gz", like=image)
    reference = write_mask(mask, tmp_path / "ref.nii.gz", like=full)
    np.testing.assert_allclose(nib.load(nifti).affine, nib.load(reference).affine)
    seg_path = write_mask(mask, tmp_path / "m.dcm", like=image, format="dicom-seg")
    seg = pydicom.dcmread(seg_path)
    assert int(seg.NumberOfFrames) == 19  # one frame per source slice, none for the filled plane
    back = read_mask(seg_path, like=image)
    assert back.shape == mask.shape
    np.testing.assert_array_equal(back[np.arange(20) != k], mask[np.arange(20) != k])
    assert not back[k].any()


def test_cli_refuses_in_one_line_and_reads_with_allow_gaps(gap) -> None:
    folder, k, _ = gap
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "medrefine.cli", "info", str(folder)]
    refused = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert str(folder) in lines[0] and "--allow-gaps" in lines[0]
    read = subprocess.run(
        [*cli, "--allow-gaps", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert read.returncode == 0, read.stderr
    report = json.loads(read.stdout)[0]
    assert report["shape"] == [1, 20, 512, 512] and report["filled_slices"] == [k]
    assert "filled by linear interpolation" in read.stderr


def test_segment_refuses_then_writes_with_allow_gaps(gap, tiny_weights, tmp_path, capsys) -> None:
    folder, k, _ = gap
    args = ["segment", str(folder), "--weights", str(tiny_weights["coarse"]), "--no-refine"]
    assert main([*args, "-o", str(tmp_path / "refused"), "--format", "nifti"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-gaps" in err[0] and str(folder) in err[0]
    out = tmp_path / "ok"
    code = main([*args, "-o", str(out), "--format", "nifti,dicom-seg", "--allow-gaps"])
    assert code == 0
    entry = json.loads((out / "report.json").read_text())["files"][0]
    assert entry["status"] == "ok" and entry["filled_slices"] == [k]
    assert nib.load(out / "series.nii.gz").shape == (512, 512, 20)
    assert int(pydicom.dcmread(out / "series.dcm").NumberOfFrames) == 19


# ------------------------------------------------------------------ the grid on its own
def test_grid_of_an_even_series_is_not_needed() -> None:
    z = np.array([0.0, 2.0, 4.001, 5.999, 8.0])  # rounding jitter is not a gap
    assert uneven_gaps(z) == []


def test_grid_with_two_gaps_and_an_off_grid_slice() -> None:
    z = np.array([0.0, 2.0, 8.0, 10.0, 13.0])  # 2 planes missing at 4, 6; 13 lies between planes
    grid = plan_grid(z)
    assert grid.step == 2.0 and grid.depth == 7
    np.testing.assert_allclose(grid.z, [0, 2, 4, 6, 8, 10, 12])
    assert grid.source.tolist() == [0, 1, -1, -1, 2, 3, -1]
    assert grid.filled == [2, 3, 6]
    assert grid.weight[2] == pytest.approx(1 / 3) and grid.weight[6] == pytest.approx(2 / 3)
    assert grid.nearest.tolist() == [0, 1, 4, 5, 6]
