"""The ONNX backend against torch: same inputs, same seed, same numbers (within tolerances).

Tolerances: float32 graphs agree with torch to a max abs difference of 1e-4 in probabilities
(measured: ~1e-6). int8 graphs are an approximation, checked against float32: on these tiny
untrained models probabilities within 0.1 (measured: coarse 2e-4, refined <= 0.04) and mask
Dice >= 0.9 (measured 0.93-0.94: untrained refiners leave many pixels near 0.5). On a trained
EfficientNet-Lite0 coarse model, 30 Kvasir test images, the post-processed int8 masks had Dice
0.993 on average (min 0.973) against float32, and the same Dice against ground truth.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from medrefine.checkpoint import file_sha256, read_info
from medrefine.cli import main
from medrefine.errors import ConfigError, InputError
from medrefine.export import cache_root, export_onnx, onnx_coarse, onnx_refiner
from medrefine.inference import CoarseSegmenter
from medrefine.pipeline import SegmentationPipeline
from medrefine.refine import RefineParams, Refiner

FP32_TOL = 1e-4


def _image(seed: int = 0, shape=(40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    disk = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= 100)[..., None] * 80.0
    return np.clip(rng.normal(60, 10, (h, w, 3)) + disk, 0, 255).astype(np.uint8)


def _pipelines(weights, **onnx_kwargs):
    kwargs = dict(device="cpu")
    torch_pipe = SegmentationPipeline(weights["coarse"], weights["refiner"], **kwargs)
    onnx_pipe = SegmentationPipeline(
        weights["coarse"], weights["refiner"], backend="onnx", **kwargs, **onnx_kwargs
    )
    return torch_pipe, onnx_pipe


# ---------------------------------------------------------------- the folder
def test_manifest_describes_the_graphs(onnx_weights, onnx_dir):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert manifest["format"] == "medrefine-onnx" and manifest["opset"] == 18
    assert manifest["quantize"] == ["int8"]
    for part in ("coarse", "refiner"):
        entry = manifest["models"][part]
        assert entry["weights"]["sha256"] == file_sha256(onnx_weights[part])
        info = read_info(onnx_weights[part])
        assert entry["info"]["preprocess"] == info["preprocess"]
        for graph in (*entry["graphs"].values(), *entry["int8"].values()):
            assert file_sha256(onnx_dir / graph["file"]) == graph["sha256"]
    refiner = manifest["models"]["refiner"]
    assert refiner["info"]["refine_defaults"]["steps"] == 2
    assert refiner["info"]["denoiser"]["widths"] == [8, 8, 8, 8]
    step = refiner["graphs"]["step"]
    assert step["file"] == "refiner_step.onnx"
    assert list(step["inputs"]) == ["x_t", "t", "full", "f0", "f1", "f2", "f3"]
    assert step["inputs"]["x_t"] == ["batch", 1, 32, 32]
    assert refiner["graphs"]["condition"]["outputs"]["f3"][0] == "batch"
    coarse = manifest["models"]["coarse"]["graphs"]["coarse"]
    assert coarse["inputs"] == {"image01": ["batch", 3, 32, 32]}
    assert coarse["outputs"] == {"probs": ["batch", 1, 32, 32]}
    meta = {p.key: p.value for p in onnx.load(str(onnx_dir / "coarse.onnx")).metadata_props}
    assert json.loads(meta["medrefine"])["weights_sha256"] == file_sha256(onnx_weights["coarse"])


# ---------------------------------------------------------------- float32 agrees with torch
def test_coarse_probabilities_match_torch_for_any_batch(onnx_weights, onnx_dir):
    reference = CoarseSegmenter.from_weights(onnx_weights["coarse"], "cpu")
    runner = onnx_coarse(onnx_weights["coarse"], onnx_dir)
    image01 = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    for batch in (image01[:1], image01):
        expected = reference.predict_grid(batch)
        got = runner.predict_grid(batch)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert float((got - expected).abs().max()) <= FP32_TOL


def test_refinement_matches_torch_with_the_same_seed(onnx_weights, onnx_dir):
    reference = Refiner.from_weights(onnx_weights["refiner"], "cpu")
    runner = onnx_refiner(onnx_weights["refiner"], onnx_dir)
    rng = np.random.default_rng(1)
    image01 = rng.random((3, 32, 32), dtype=np.float32)
    coarse = rng.random((32, 32), dtype=np.float32)
    for params in (RefineParams(steps=2, samples=1), RefineParams(steps=3, samples=3, eta=0.5)):
        expected = reference.refine_grid(image01, coarse, params)
        got = runner.refine_grid(image01, coarse, params)
        assert got.timesteps == expected.timesteps
        assert np.abs(got.samples - expected.samples).max() <= FP32_TOL
        assert np.abs(got.probs - expected.probs).max() <= FP32_TOL
        assert np.abs(got.uncertainty - expected.uncertainty).max() <= FP32_TOL


def test_pipeline_backends_agree_end_to_end(onnx_weights, onnx_dir):
    torch_pipe, onnx_pipe = _pipelines(onnx_weights, onnx_dir=onnx_dir)
    image = _image()
    expected, got = torch_pipe.run(image), onnx_pipe.run(image)
    assert np.abs(got.coarse_probs - expected.coarse_probs).max() <= FP32_TOL
    assert np.abs(got.refined_probs - expected.refined_probs).max() <= FP32_TOL
    # masks may differ only where the probability sits on the threshold
    undecided = np.abs(expected.refined_probs - 0.5) <= FP32_TOL
    assert np.array_equal(got.mask[~undecided], expected.mask[~undecided])
    backend = onnx_pipe.provenance()["backend"]
    assert backend == {"name": "onnx", "quantized": False, "onnx_dir": str(onnx_dir)}


def test_int8_stays_close_to_float32(onnx_weights, onnx_dir):
    _, fp32 = _pipelines(onnx_weights, onnx_dir=onnx_dir)
    int8 = SegmentationPipeline(
        onnx_weights["coarse"],
        onnx_weights["refiner"],
        device="cpu",
        backend="onnx",
        onnx_dir=onnx_dir,
        quantized=True,
    )
    for seed in (0, 1):
        image = _image(seed)
        expected, got = fp32.run(image), int8.run(image)
        assert np.abs(got.coarse_probs - expected.coarse_probs).max() <= 0.1
        assert np.abs(got.refined_probs - expected.refined_probs).max() <= 0.1
        # the untrained test weights put many pixels near 0.5, where int8 may flip them (and the
        # kernels int8 gets differ between CPUs); pixels clearly decided must not flip
        decided = np.abs(expected.refined_probs - 0.5) > 0.1
        assert np.mean(got.mask[decided] == expected.mask[decided]) >= 0.97


# ---------------------------------------------------------------- refusing bad folders
def test_missing_or_foreign_folder_is_a_clear_input_error(onnx_weights, tmp_path):
    with pytest.raises(InputError, match="ONNX folder not found"):
        onnx_coarse(onnx_weights["coarse"], tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no manifest.json"):
        onnx_coarse(onnx_weights["coarse"], tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the manifest"):
        onnx_coarse(onnx_weights["coarse"], bad)
    (bad / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a medrefine ONNX manifest"):
        onnx_coarse(onnx_weights["coarse"], bad)


def test_damaged_or_missing_graph_is_refused(onnx_weights, onnx_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(onnx_dir, copy)
    (copy / "refiner_step.onnx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="changed or damaged since the export"):
        onnx_refiner(onnx_weights["refiner"], copy)
    (copy / "coarse.int8.onnx").unlink()
    with pytest.raises(InputError, match="coarse.int8.onnx: missing"):
        onnx_coarse(onnx_weights["coarse"], copy, quantized=True)


def test_changed_weights_are_refused(retrained_coarse, onnx_dir):
    with pytest.raises(InputError, match="the weights changed since the export"):
        SegmentationPipeline(
            retrained_coarse, use_diffusion=False, device="cpu", backend="onnx", onnx_dir=onnx_dir
        )


def test_backend_option_errors(onnx_weights, onnx_dir):
    with pytest.raises(ConfigError, match="unknown backend"):
        SegmentationPipeline(onnx_weights["coarse"], use_diffusion=False, backend="tensorrt")
    with pytest.raises(ConfigError, match="need backend='onnx'"):
        SegmentationPipeline(onnx_weights["coarse"], use_diffusion=False, quantized=True)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        SegmentationPipeline(
            onnx_weights["coarse"],
            use_diffusion=False,
            device="cuda",
            backend="onnx",
            onnx_dir=onnx_dir,
        )
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(onnx_dir / "never", coarse_weights=onnx_weights["coarse"], opset=5)


# ---------------------------------------------------------------- the cache
def test_cache_is_filled_on_first_use_and_reused(onnx_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = cache_root() / file_sha256(onnx_weights["coarse"])
    assert folder.parent == tmp_path / "cache" / "medrefine" / "onnx"
    first = SegmentationPipeline(
        onnx_weights["coarse"], use_diffusion=False, device="cpu", backend="onnx"
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert list(manifest["models"]) == ["coarse"]
    stamp = (folder / "coarse.onnx").stat().st_mtime_ns
    second = SegmentationPipeline(
        onnx_weights["coarse"], use_diffusion=False, device="cpu", backend="onnx"
    )
    assert (folder / "coarse.onnx").stat().st_mtime_ns == stamp
    image = _image()
    assert np.array_equal(first.run(image).mask, second.run(image).mask)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    with pytest.raises(InputError, match="holds no refiner model"):
        onnx_refiner(onnx_weights["refiner"], folder)
    with pytest.raises(InputError, match="--quantize int8"):
        onnx_coarse(onnx_weights["coarse"], folder, quantized=True)


# ---------------------------------------------------------------- command line and bench
def test_segment_with_the_onnx_backend(onnx_weights, filled_cache, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(_image()).save(tmp_path / "case.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "case.png"), "-o", str(out), "--format", "png,json"]
    weights = ["--weights", str(onnx_weights["coarse"]), "--refiner-weights"]
    weights.append(str(onnx_weights["refiner"]))
    for backend in ("onnx", "onnx-int8"):
        code = main([*args, *weights, "--backend", backend, "--device", "cpu"])
        assert code == 0, capsys.readouterr().err
        assert (out / "case.png").is_file()
        report = json.loads((out / "report.json").read_text())
        assert report["provenance"]["backend"]["quantized"] == (backend == "onnx-int8")
        shutil.rmtree(out)


def test_bench_backends_section(onnx_weights, filled_cache):
    from medrefine.bench import bench_backends, format_table

    image01 = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    coarse = np.full((32, 32), 0.5, np.float32)
    rows = bench_backends(
        ("torch", "onnx"), onnx_weights["coarse"], onnx_weights["refiner"], image01, coarse, 1
    )
    assert list(rows) == ["torch", "onnx"]
    for row in rows.values():
        assert row["coarse"]["median_s"] > 0 and row["refine_default"]["median_s"] > 0
    table = format_table(
        {
            "medrefine_version": "0",
            "preset": "tiny",
            "image": "x",
            "image_size": [32, 32],
            "grid": [32, 32],
            "threads": 1,
            "device": "cpu",
            "stages": {},
            "end_to_end": {},
            "backends": rows,
            "peak_rss_mb": 1.0,
        }
    )
    assert "backend onnx" in table
    with pytest.raises(ConfigError, match="unknown backend"):
        bench_backends(("tvm",), onnx_weights["coarse"], None, image01, coarse, 1)


def test_export_command_errors(onnx_weights, tmp_path, capsys):
    code = main(
        [
            "export",
            "--onnx",
            str(tmp_path / "x"),
            "--weights",
            str(onnx_weights["coarse"]),
            "--calibration",
            str(tmp_path),
        ]
    )
    assert code == 2 and "--quantize int8" in capsys.readouterr().err
    code = main(
        [
            "export",
            "--onnx",
            str(tmp_path / "x"),
            "--weights",
            str(tmp_path / "missing.safetensors"),
        ]
    )
    assert code == 2 and "weights file not found" in capsys.readouterr().err


def test_an_ensemble_runs_on_onnx_from_the_cache_but_not_from_one_folder(
    onnx_weights, onnx_dir, tmp_path, monkeypatch, capsys
):
    from medrefine.presets import Preset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = read_info(onnx_weights["coarse"])
    torch.manual_seed(5)
    from medrefine.checkpoint import save_weights
    from medrefine.models.registry import SegModelConfig, build_seg_model

    other = save_weights(tmp_path / "coarse_2.safetensors",
                         build_seg_model(SegModelConfig.from_dict(info["model"])), info)
    members = [onnx_weights["coarse"], other]
    torch_ens = SegmentationPipeline(members, use_diffusion=False, device="cpu")
    onnx_ens = SegmentationPipeline(members, use_diffusion=False, device="cpu", backend="onnx")
    image = np.moveaxis(_image(), -1, 0).astype(np.float32)
    np.testing.assert_allclose(onnx_ens.coarse.predict(image, "uint8"),
                               torch_ens.coarse.predict(image, "uint8"), atol=FP32_TOL)
    with pytest.raises(ConfigError, match="ensemble of 2 coarse models runs on ONNX"):
        SegmentationPipeline(members, use_diffusion=False, device="cpu", backend="onnx",
                             onnx_dir=onnx_dir)
    shutil.copy(onnx_weights["coarse"], tmp_path / "coarse.safetensors")
    monkeypatch.setattr(Preset, "folder", property(lambda self: tmp_path))
    assert main(["export", "--onnx", str(tmp_path / "x"), "--preset", "chest"]) == 2
    assert "runs an ensemble of 2 coarse models" in capsys.readouterr().err


def test_the_int8_backend_asks_for_litemedsams_int8_encoder(onnx_weights, onnx_dir,
                                                            monkeypatch):
    """``--backend onnx-int8`` quantises every model in the loop, LiteMedSAM's image encoder
    among them (``litemedsam.load_litemedsam(quantized=True)``); the float backends do not."""
    from medrefine import litemedsam

    asked = []

    class Lite:
        def predict(self, image, boxes, source_dtype="float32"):
            out = np.zeros(image.shape[-2:], np.float32)
            x0, y0, x1, y1 = (int(v) for v in boxes[0])
            out[y0:y1, x0:x1] = 0.9
            return out

        def provenance(self):
            return {"model": "LiteMedSAM (test stand-in)"}

    def load(device="auto", backend="auto", quantized=False):
        asked.append(quantized)
        return Lite()

    monkeypatch.setattr(litemedsam, "load_litemedsam", load)
    for quantized in (True, False):
        pipe = SegmentationPipeline(onnx_weights["coarse"], onnx_weights["refiner"],
                                    device="cpu", backend="onnx", onnx_dir=onnx_dir,
                                    quantized=quantized)
        pipe.run(_image(), boxes=[(10, 8, 30, 28)], box_engine="litemedsam")
    assert asked == [True, False]
