"""Never lose an input: every command refuses, before it loads a model, an ``-o`` whose outputs
would replace a file it reads (exit 2, one line naming the file, the input's bytes unchanged);
``skipped (done)`` only for outputs medrefine wrote; a read-only ``-o`` and a second run on the
same OUT (its lock) are refused before any work; all outputs get one file mode."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medrefine.batch.guard import LOCK_NAME
from medrefine.cli import main
from medrefine.commands import segment


def _tiny(weights: dict[str, Path]) -> list[str]:
    return ["--weights", str(weights["coarse"]), "--no-refine", "--device", "cpu"]


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys, name: str) -> str:
    """Run ``argv``: exit 2 and exactly one line on stderr, naming ``name``."""
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if segment loads a model: the refusals come before any work."""

    def refuse(args):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(segment, "build_pipeline", refuse)


@pytest.fixture
def images(tiny_data, tmp_path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(tiny_data / "images", folder)
    return folder


@pytest.fixture
def masks(tiny_data, tmp_path) -> Path:
    folder = tmp_path / "masks"
    shutil.copytree(tiny_data / "masks", folder)
    return folder


def _nifti(path: Path, shape=(24, 20, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(-1000, 400, shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


# ---------------------------------------------------------------- outputs onto inputs
def test_lung_pathology_into_the_ct_folder_is_refused(tmp_path, capsys):
    ct = _nifti(tmp_path / "scans" / "chest.nii.gz")
    before = _snapshot(ct.parent)
    _refused(["lung-pathology", str(ct), "-o", str(ct.parent)], capsys, "chest.nii.gz")
    assert _snapshot(ct.parent) == before


def test_segment_nifti_into_its_own_folder_is_refused(tiny_weights, tmp_path, capsys, no_model):
    volume = _nifti(tmp_path / "scans" / "brain.nii.gz")
    before = _snapshot(volume.parent)
    argv = ["segment", str(volume), "-o", str(volume.parent), "--format", "nifti,json"]
    _refused([*argv, *_tiny(tiny_weights)], capsys, "brain.nii.gz")
    assert _snapshot(volume.parent) == before


def test_segment_dicom_seg_of_a_dicom_into_its_folder_is_refused(
    tiny_weights, data_dir, tmp_path, capsys, no_model
):
    ct = tmp_path / "dicom" / "CT_small.dcm"
    ct.parent.mkdir()
    shutil.copy(data_dir / "dicom_samples" / "CT_small.dcm", ct)
    before = _snapshot(ct.parent)
    argv = ["segment", str(ct), "-o", str(ct.parent), "--format", "dicom-seg,json"]
    _refused([*argv, *_tiny(tiny_weights)], capsys, "CT_small.dcm")
    assert _snapshot(ct.parent) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_segment_a_folder_into_itself_is_refused(
    tiny_weights, images, capsys, no_model, overwrite
):
    # before the fix: "skipped (done)" for images never segmented; --overwrite replaced them
    before = _snapshot(images)
    argv = ["segment", str(images), "-o", str(images), *_tiny(tiny_weights)]
    _refused(argv + ["--overwrite"] * overwrite, capsys, "case0.png")
    assert _snapshot(images) == before


@pytest.mark.parametrize("how", ["dot-slash", "symlinked folder", "hard link"])
def test_the_same_file_under_another_name_is_refused(
    tiny_weights, images, tmp_path, capsys, monkeypatch, no_model, how
):
    monkeypatch.chdir(tmp_path)
    if how == "dot-slash":
        inputs, out = ["images/case0.png"], "./images"
    elif how == "symlinked folder":
        (tmp_path / "link").symlink_to(images, target_is_directory=True)
        inputs, out = ["images/case0.png"], "link"
    else:  # OUT/case0.png is a hard link to the input: os.replace would unlink the input's name
        (tmp_path / "out").mkdir()
        os.link(images / "case0.png", tmp_path / "out" / "case0.png")
        inputs, out = [str(images / "case0.png")], "out"
    before = _snapshot(images)
    _refused(["segment", *inputs, "-o", out, *_tiny(tiny_weights)], capsys, "case0.png")
    assert _snapshot(images) == before


@pytest.mark.parametrize("into", ["images", "masks"])
def test_refine_into_the_image_or_the_mask_folder_is_refused(
    tiny_weights, images, masks, capsys, into
):
    out = images if into == "images" else masks
    before = _snapshot(images, masks)
    argv = ["refine", "--image", str(images), "--mask", str(masks), "-o", str(out)]
    argv += ["--weights", str(tiny_weights["refiner"]), "--device", "cpu"]
    line = _refused(argv, capsys, "case0.png")
    assert str(out) in line
    assert _snapshot(images, masks) == before


def test_refine_one_mask_into_its_own_folder_is_refused(tiny_weights, images, masks, capsys):
    before = _snapshot(images, masks)
    argv = ["refine", "--image", str(images / "case1.png"), "--mask", str(masks / "case1.png")]
    argv += ["-o", str(masks), "--weights", str(tiny_weights["refiner"]), "--device", "cpu"]
    _refused(argv, capsys, "case1.png")
    assert _snapshot(images, masks) == before


def test_inpaint_with_the_mask_in_out_under_the_image_stem_is_refused(tmp_path, capsys):
    image = tmp_path / "in" / "cxr.png"
    image.parent.mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(image)
    out = tmp_path / "out"
    out.mkdir()
    hole = np.zeros((32, 32), np.uint8)
    hole[8:16, 8:16] = 255
    Image.fromarray(hole).save(out / "cxr.png")  # the mask, named like the image
    before = _snapshot(image.parent, out)
    argv = ["inpaint", "--image", str(image), "--mask", str(out / "cxr.png"), "-o", str(out)]
    line = _refused(argv, capsys, "cxr.png")
    assert str(out / "cxr.png") in line
    assert _snapshot(image.parent, out) == before


def test_evaluate_into_the_data_folder_is_refused(tiny_weights, tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    before = _snapshot(data)
    argv = ["evaluate", "--data", str(data), "-o", str(data), "--split", "all"]
    line = _refused([*argv, *_tiny(tiny_weights)], capsys, "case0.png")
    assert str(data / "masks" / "case0.png") in line  # the reference mask
    assert _snapshot(data) == before


# ---------------------------------------------------------------- what is "done"
def test_only_outputs_medrefine_wrote_are_skipped_as_done(tiny_weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "case0.png"  # a file that medrefine did not write, named like an output
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(foreign)
    argv = ["segment", str(images / "case0.png"), str(images / "case1.png"), "-o", str(out)]
    assert main([*argv, *_tiny(tiny_weights)]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["ok", "ok"]  # case0 was not "done"
    assert np.asarray(Image.open(foreign)).shape == (40, 48)
    assert set(report["written"]) == {"case0.png", "case1.png"}

    assert main([*argv, *_tiny(tiny_weights)]) == 0  # now both are this tool's own
    report = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["skipped (done)"] * 2
    assert set(report["written"]) == {"case0.png", "case1.png"}


def test_an_output_made_from_another_input_is_not_done(tiny_weights, tmp_path, capsys):
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for path, value in ((first, 40), (second, 200)):
        path.parent.mkdir()
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["segment", str(first), "-o", str(out), *_tiny(tiny_weights)]) == 0
    assert main(["segment", str(second), "-o", str(out), *_tiny(tiny_weights)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["ok"]
    assert report["written"]["x.png"] == str(second.resolve())


# ---------------------------------------------------------------- OUT: writable, one run
def _read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: chmod 0555, or (root ignores the mode)
    sysfs, which refuses new files to everyone."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no read-only folder for this user")


def test_a_read_only_out_is_refused_before_computing(
    tiny_weights, images, tmp_path, capsys, no_model
):
    out = _read_only_dir(tmp_path)
    try:
        line = _refused(
            ["segment", str(images), "-o", str(out), *_tiny(tiny_weights)], capsys, str(out)
        )
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert "cannot write" in line


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(
    tiny_weights, images, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(images)
    argv = ["segment", str(images), "-o", str(out), *_tiny(tiny_weights)]
    with open(out / LOCK_NAME, "a+") as held:  # the first run, as another process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _refused(argv, capsys, str(out))
        assert "another medrefine run" in line
        assert not (out / "report.json").exists()
    assert main(argv) == 0, capsys.readouterr().err  # released: the run goes ahead
    assert not (out / LOCK_NAME).exists()  # ...and let go of the lock when it ended
    with open(out / LOCK_NAME, "a+") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert _snapshot(images) == before


def test_lung_pathology_and_refine_take_the_lock_too(tiny_weights, images, masks, tmp_path,
                                                    capsys):  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    ct = _nifti(tmp_path / "scans" / "chest.nii.gz")
    refine = ["refine", "--image", str(images), "--mask", str(masks), "-o", str(out)]
    refine += ["--weights", str(tiny_weights["refiner"]), "--device", "cpu"]
    with open(out / LOCK_NAME, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _refused(["lung-pathology", str(ct), "-o", str(out)], capsys, "another medrefine run")
        _refused(refine, capsys, "another medrefine run")


# ---------------------------------------------------------------- file modes
def test_every_output_gets_the_same_mode(tiny_weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        argv = ["segment", str(images / "case0.png"), "-o", str(out)]
        argv += ["--format", "png,overlay,uncertainty,json"]
        argv += ["--weights", str(tiny_weights["coarse"])]
        argv += ["--refiner-weights", str(tiny_weights["refiner"]), "--device", "cpu"]
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert {"case0_overlay.png", "case0_uncertainty.png", "report.csv"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes
