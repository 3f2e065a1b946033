"""The "CT lung pathology" tab's callbacks, called as Gradio calls them (no browser, no server),
on real CT (../shared/data/ct_hu_samples): the same numbers as ``medrefine lung-pathology``,
downloads that read back, bad uploads refused in one line, unsafe zips refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web interface needs gradio (pip install gradio)")

from medrefine.app import ct, ct_input  # noqa: E402
from medrefine.app.session import Session  # noqa: E402
from medrefine.cli import main  # noqa: E402
from medrefine.io import read_image, read_mask  # noqa: E402
from medrefine.io.dicom_seg import read_dicom_seg  # noqa: E402
from medrefine.lungpath.labels import CLASS_NAMES, COLOURS  # noqa: E402
from medrefine.lungpath.pipeline import LungPathologyPipeline  # noqa: E402

# gr.Warning outside a Gradio event (the coverage warning) is a Python warning
pytestmark = pytest.mark.filterwarnings("ignore:.*partial lung coverage:UserWarning")

# run_ct's outputs, in order.
OUT = "session view picture slider table status nifti_dl seg_dl json_dl".split()


@pytest.fixture(scope="module")
def series_zip(ct_hu, tmp_path_factory) -> Path:
    """The 20-slice DICOM series zipped as a zip tool does it: inside a folder or two."""
    path = tmp_path_factory.mktemp("zip") / "chest_series.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((ct_hu / "dicom_series").iterdir()):
            zf.write(f, f"patient/series/{f.name}")
        zf.writestr("__MACOSX/patient/series/._x.dcm", b"resource fork")
    return path


def lung_pathology_cli(inputs: Path, out: Path) -> dict:
    """``medrefine lung-pathology`` into ``out``; its ``<stem>.json``."""
    assert main(["-q", "lung-pathology", str(inputs), "-o", str(out),
                 "--format", "nifti,dicom-seg,json"]) == 0  # fmt: skip
    return json.loads((out / f"{inputs.name.removesuffix('.nii.gz')}.json").read_text())


def run(upload: Path, session: Session | None = None) -> dict:
    return dict(zip(OUT, ct.run_ct(session, str(upload)), strict=True))


def test_nifti_gives_the_command_lines_numbers(ct_hu, tmp_path):
    nifti = ct_hu / "example_ct_sm.nii.gz"
    out = run(nifti)
    session = out["session"]
    cli = lung_pathology_cli(nifti, tmp_path / "cli")
    assert out["table"] == ct.severity_table(cli)  # the table, from the CLI's summary()
    assert "| Ground-glass opacity |" in out["table"] and "% of lung" in out["table"]
    # the downloads: in the session's request folder, and the CLI's files' content
    report_path = Path(out["json_dl"]["value"])
    nifti_path = Path(out["nifti_dl"]["value"])
    assert report_path.parent == nifti_path.parent == session.request
    assert sorted(p.name for p in session.request.iterdir()) == [
        "example_ct_sm.json", "example_ct_sm.nii.gz"]  # fmt: skip
    report = json.loads(report_path.read_text())
    assert report["classes"] == cli["classes"] and report["lung_ml"] == cli["lung_ml"]
    assert report["input"] == "example_ct_sm.nii.gz"
    assert report["coverage"] == cli["coverage"] and report["partial_coverage"] is True
    np.testing.assert_array_equal(
        read_mask(nifti_path), read_mask(tmp_path / "cli" / "example_ct_sm.nii.gz")
    )
    np.testing.assert_allclose(nib.load(nifti_path).affine, nib.load(nifti).affine)
    assert out["seg_dl"]["visible"] is False and out["seg_dl"]["interactive"] is False
    # this sample shows part of the lungs only: said above the table
    assert "partial lung coverage" in out["status"] and "122.1 mL" in out["status"]
    # the slices: at display size, the classes in their colours
    picture = out["picture"]
    assert picture.dtype == np.uint8 and max(picture.shape[:2]) == ct.DISPLAY
    assert out["slider"]["visible"] and out["slider"]["maximum"] == 29
    session.close()


def test_the_slider_redraws_from_the_kept_labels(ct_hu, monkeypatch):
    out = run(ct_hu / "example_ct_sm.nii.gz")
    view = out["view"]

    def no_second_run(*args, **kwargs):
        raise AssertionError("the slider ran the pipeline again")

    monkeypatch.setattr(LungPathologyPipeline, "run", no_second_run)
    first, last = ct.show_ct_slice(view, 0), ct.show_ct_slice(view, 29)
    assert first.shape == last.shape == out["picture"].shape
    assert not np.array_equal(first, last)
    np.testing.assert_array_equal(ct.show_ct_slice(view, 99), last)  # clipped to the volume
    # the slice with the most lung shows its classes: healthy and ground-glass colours
    index = out["slider"]["value"]
    labels = cv2_nearest(view.labels[index], out["picture"].shape[:2])
    grey = np.asarray(out["picture"], np.float32)
    for value in np.unique(labels[labels > 0]):
        pixel = grey[labels == value][0]
        # blended at 0.45: the class's colour channel order shows through the grey
        assert np.argmax(pixel) == np.argmax(COLOURS[int(value)]), value
    assert ct.show_ct_slice(None, 3) == gr.update()  # no run yet: nothing to draw
    out["session"].close()


def cv2_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(labels, shape[::-1], interpolation=cv2.INTER_NEAREST)


def test_zipped_dicom_series_gives_the_command_lines_numbers_and_a_dicom_seg(
    ct_hu, series_zip, tmp_path
):
    out = run(series_zip)
    session = out["session"]
    cli = lung_pathology_cli(ct_hu / "dicom_series", tmp_path / "cli")
    assert out["table"] == ct.severity_table(cli)
    report = json.loads(Path(out["json_dl"]["value"]).read_text())
    assert report["classes"] == cli["classes"] and report["input"] == "chest_series.zip"
    assert report["format"] == "dicom"
    seg_path = Path(out["seg_dl"]["value"])
    assert out["seg_dl"]["visible"] and out["seg_dl"]["interactive"]
    assert seg_path.name == "chest_series.dcm" and seg_path.parent == session.request
    assert pydicom.dcmread(seg_path, stop_before_pixels=True).Modality == "SEG"
    series = read_image(ct_hu / "dicom_series")
    seg = read_dicom_seg(seg_path, like=series)
    np.testing.assert_array_equal(seg.mask, read_mask(tmp_path / "cli" / "dicom_series.nii.gz"))
    np.testing.assert_array_equal(
        read_mask(out["nifti_dl"]["value"]), read_mask(tmp_path / "cli" / "dicom_series.nii.gz")
    )
    assert not (session.request / "series").exists()  # the unpacked slices are gone
    assert out["slider"]["maximum"] == 19
    session.close()


# ---------------------------------------------------------------- bad uploads
def _png(folder: Path, ct_hu=None, series_zip=None) -> Path:
    path = folder / "xray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(path)
    return path


def _mr_nifti(folder: Path, ct_hu=None, series_zip=None) -> Path:
    path = folder / "brain_t1.nii.gz"
    volume = np.random.default_rng(0).uniform(0, 1200, (48, 48, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


def _pelvis_ct(folder: Path, ct_hu: Path, series_zip=None) -> Path:
    """A real CT with no lung: the lower 30 slices of example_ct."""
    img = nib.load(ct_hu / "example_ct.nii.gz")
    path = folder / "pelvis.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :30], img.affine), path)
    return path


def _corrupt_zip(folder: Path, ct_hu=None, series_zip=None) -> Path:
    path = folder / "series.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    return path


def _truncated_zip(folder: Path, ct_hu, series_zip: Path) -> Path:
    path = folder / "truncated.zip"
    path.write_bytes(series_zip.read_bytes()[:300_000])
    return path


def _mr_dicom_zip(folder: Path, ct_hu: Path, series_zip=None) -> Path:
    path = folder / "mr_series.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted((ct_hu / "dicom_series").iterdir())[:3]:
            ds = pydicom.dcmread(f)
            ds.Modality = "MR"
            ds.save_as(folder / f.name)
            zf.write(folder / f.name, f.name)
    return path


def _two_series_zip(folder: Path, ct_hu: Path, series_zip=None) -> Path:
    path = folder / "two_series.zip"
    other = pydicom.uid.generate_uid()
    with zipfile.ZipFile(path, "w") as zf:
        for i, f in enumerate(sorted((ct_hu / "dicom_series").iterdir())[:4]):
            ds = pydicom.dcmread(f)
            if i % 2:
                ds.SeriesInstanceUID = other
            ds.save_as(folder / f.name)
            zf.write(folder / f.name, f"study/{f.name}")
    return path


def _zip_of_pictures(folder: Path, ct_hu=None, series_zip=None) -> Path:
    path = folder / "notes.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "no DICOM in here")
    return path


@pytest.mark.parametrize(
    "make, name, says",
    [
        (_png, "xray.png", "8-bit picture"),
        (_mr_nifti, "brain_t1.nii.gz", "not CT in Hounsfield units"),
        (_pelvis_ct, "pelvis.nii.gz", "no lung found"),
        (_corrupt_zip, "series.zip", "not a readable zip"),
        (_truncated_zip, "truncated.zip", "not a readable zip"),
        (_mr_dicom_zip, "mr_series.zip", "is a MR image, not CT"),
        (_zip_of_pictures, "notes.zip", "the zip holds no DICOM image files"),
        (_two_series_zip, "two_series.zip", "the zip holds 2 DICOM series; zip one series"),
    ],
)
def test_bad_uploads_give_one_clear_error(make, name, says, tmp_path, ct_hu, series_zip):
    upload = make(tmp_path, ct_hu, series_zip)
    session = Session()
    with pytest.raises(gr.Error) as err:
        ct.run_ct(session, str(upload))
    message = err.value.message
    assert says in message and name in message, message
    assert "\n" not in message and "Traceback" not in message and len(message) < 800
    assert str(session.folder) not in message  # the unpacked folder is never named
    assert "--lung-masks" not in message  # the command line's advice is not the page's
    assert not (session.request / "series").exists()  # an unpacked zip does not stay
    session.close()


def test_no_upload_says_what_to_upload():
    with pytest.raises(gr.Error, match="no CT uploaded; upload a NIfTI"):
        ct.run_ct(None, None)


def test_an_8bit_picture_is_pointed_to_the_command_lines_rank_mode(tmp_path):
    with pytest.raises(gr.Error) as err:
        ct.run_ct(None, str(_png(tmp_path)))
    assert "upload the CT in Hounsfield units" in err.value.message
    assert "medrefine lung-pathology --intensity rank" in err.value.message


# ---------------------------------------------------------------- unsafe zips
@pytest.mark.parametrize(
    "entry",
    [
        "../evil.dcm",
        "series/../../evil.dcm",
        "/tmp/evil.dcm",
        "C:\\evil.dcm",
        "..\\evil.dcm",
    ],  # fmt: skip
)
def test_a_zip_reaching_outside_its_folder_is_refused(entry, tmp_path):
    upload = tmp_path / "upload" / "series.zip"
    upload.parent.mkdir()
    with zipfile.ZipFile(upload, "w") as zf:
        zf.writestr("series/ok.dcm", b"x" * 100)
        zf.writestr(zipfile.ZipInfo(entry), b"evil")
    session = Session()
    with pytest.raises(gr.Error, match="points outside the zip's folder; refused") as err:
        ct.run_ct(session, str(upload))
    assert "series.zip" in err.value.message
    assert not list(tmp_path.rglob("evil.dcm")) and not Path("/tmp/evil.dcm").exists()
    assert not (session.request / "series").exists()  # refused before anything is written
    session.close()


def test_a_zip_bomb_is_refused(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/slice.dcm", bytes(50 * 2**20))  # 50 MB of zeros in ~50 kB
    with pytest.raises(gr.Error, match=r"bomb.zip: unpacks to \d+ times its size"):
        ct.run_ct(None, str(bomb))

    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        for i in range(3):
            zf.writestr(f"series/{i}.dcm", np.random.default_rng(i).bytes(2**20))
    monkeypatch.setattr(ct_input, "MAX_ZIP_MB", 2.0)
    with pytest.raises(gr.Error, match="big.zip: unpacks to over 2 MB"):
        ct.run_ct(None, str(big))
    monkeypatch.setattr(ct_input, "MAX_ZIP_MB", 2048.0)
    monkeypatch.setattr(ct_input, "MAX_ZIP_MEMBERS", 2)
    with pytest.raises(gr.Error, match="holds 3 entries, more than the 2 allowed"):
        ct.run_ct(None, str(big))


def test_the_size_limit_counts_what_is_unpacked_not_the_headers(tmp_path, monkeypatch):
    """Headers that understate the sizes do not get past the limit, and a zip refused
    halfway leaves nothing behind."""
    upload = tmp_path / "series.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_STORED) as zf:
        for i in range(3):
            zf.writestr(f"{i}.dcm", np.random.default_rng(i).bytes(2**20))
    monkeypatch.setattr(ct_input, "_check_size", lambda n, zip_bytes, name: None)
    members = ct_input._checked_members(zipfile.ZipFile(upload), "series.zip", 1)
    monkeypatch.undo()
    monkeypatch.setattr(ct_input, "_checked_members", lambda zf, name, size: members)
    monkeypatch.setattr(ct_input, "MAX_ZIP_MB", 1.5)
    dest = tmp_path / "out"
    with pytest.raises(ct_input.InputError, match="unpacks to over 1.5 MB"):
        ct_input.extract_zip(upload, dest)
    assert not dest.exists()


def test_a_zip_of_several_folders_names_them(tmp_path):
    upload = tmp_path / "two.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        zf.writestr("a/1.dcm", b"x")
        zf.writestr("b/1.dcm", b"x")
    with pytest.raises(gr.Error, match=r"two.zip: holds files in 2 folders \(a, b\)"):
        ct.run_ct(None, str(upload))


# ---------------------------------------------------------------- sharing and wiring
def test_the_pipeline_is_loaded_once_per_server():
    assert ct.shared_pipeline() is ct.shared_pipeline()


def test_the_tab_is_wired_to_matching_outputs():
    from medrefine.app.layout import build_app

    demo = build_app()
    wired = {f.fn.__name__: len(f.outputs) for f in demo.fns.values() if f.fn is not None}
    assert wired["run_ct"] == len(OUT)
    assert wired["clear_ct"] == len(ct.clear_ct()) == len(OUT) - 1
    assert wired["show_ct_slice"] == 1
    assert {"CT lung pathology"} <= {b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)}


def test_the_legend_names_every_class_in_its_colour():
    html = ct.legend_html()
    for name in CLASS_NAMES:
        assert f"rgb{COLOURS[CLASS_NAMES.index(name) + 1]}" in html
    assert "Ground-glass opacity" in html
