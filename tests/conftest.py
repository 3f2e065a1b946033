"""Shared test fixtures: the real data folder (``shared/data`` beside the repo) and tiny seeded
weights files with the same info layout as ``training/coarse.py`` and ``training/refiner.py``
write (``weights_info``), so code under test loads them exactly as it loads trained models."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from medrefine.checkpoint import save_weights
from medrefine.diffusion import DiffusionConfig
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.preprocess import PreprocessConfig
from medrefine.refine import RefineParams

DATA_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture
def torchrun_env() -> dict[str, str]:
    """The environment for a ``torch.distributed.run`` child: this process's own, without the
    rank variables of an outer torchrun, one thread per process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``shared/data`` beside the repository root; tests using it skip when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} not found (expected shared/data beside the repo)")
    return DATA_DIR


@pytest.fixture(scope="session")
def ct_hu(data_dir: Path) -> Path:
    """``shared/data/ct_hu_samples``: real CT in Hounsfield units (NIfTI volumes, a 20-slice
    DICOM series) with reference label maps."""
    folder = data_dir / "ct_hu_samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


GRID = (32, 32)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """{"coarse": path, "refiner": path}: seeded, untrained, 32x32 grid, 2 steps, 2 samples."""
    folder = tmp_path_factory.mktemp("weights")
    pre = PreprocessConfig(size=GRID, channels=3)
    torch.manual_seed(0)
    model_cfg = SegModelConfig(
        encoder="scratch", widths=(4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 4)
    )
    coarse_info = {
        "kind": "coarse",
        "model": model_cfg.to_dict(),
        "preprocess": asdict(pre),
        "class_names": ["foreground"],
        "training": {"data_dir": "tiny", "seed": 0},
    }
    coarse = save_weights(folder / "coarse.safetensors", build_seg_model(model_cfg), coarse_info)
    den_cfg = DenoiserConfig(encoder="scratch", widths=(8, 8, 8, 8), attention=False, time_dim=16)
    params = RefineParams(steps=2, strength=0.3, samples=2, seed=0)
    refiner_info = {
        "kind": "refiner",
        "denoiser": den_cfg.to_dict(),
        "diffusion": DiffusionConfig().to_dict(),
        "preprocess": asdict(pre),
        "refine_defaults": asdict(params),
        "training": {"data_dir": "tiny", "seed": 0, "coarse_weights": "coarse.safetensors"},
    }
    refiner = save_weights(folder / "refiner.safetensors", Denoiser(den_cfg), refiner_info)
    return {"coarse": coarse, "refiner": refiner}


@pytest.fixture
def sigterm_at_output(monkeypatch):
    """``arm(out, n)``: SIGTERM this process just before its n-th output in ``out`` (reports
    left out) is renamed into place, as a scheduler's stop would come mid-write."""
    import os
    import signal

    real_replace = os.replace

    def arm(out: Path, n: int) -> None:
        seen: list[str] = []

        def replace(src, dst, *args, **kwargs):
            target = Path(dst)
            if target.parent == out and not target.name.startswith("report"):
                seen.append(target.name)
                if len(seen) == n:
                    os.kill(os.getpid(), signal.SIGTERM)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    yield arm
    monkeypatch.setattr(os, "replace", real_replace)


@pytest.fixture
def batch_behaviour(sigterm_at_output):
    """``check(argv, out, good, bad)``: see ``check_batch_behaviour``."""
    from medrefine.cli import main

    def check(argv: list[str], out: Path, good: int, bad: str) -> None:
        check_batch_behaviour(argv, out, sigterm_at_output, good, bad, main)

    return check


def check_batch_behaviour(argv, out: Path, arm, good: int, bad: str, main) -> None:
    """What every batch command does (``argv`` writes into ``out``; ``good`` inputs that work,
    ``bad`` the name of one that fails): exit 2 with the rest written and report.csv's
    provenance columns; a rerun skips the finished inputs; SIGTERM mid-batch exits 130 with
    no partial file and an interrupted report, and the next run resumes."""
    import csv
    import json
    import shutil

    assert main(argv) == 2
    report = json.loads((out / "report.json").read_text())
    assert (report["n_ok"], report["n_failed"]) == (good, 1), report["files"]
    assert [r for r in report["files"] if r["status"] == "failed"][0]["input"].endswith(bad)
    with (out / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"medrefine_version", "seed"} <= set(rows[0]) and len(rows) == good + 1
    assert [c for c in rows[0] if c.endswith("_sha256") and rows[0][c]], rows[0]
    assert main(argv) == 2  # the bad one again; the rest done
    report = json.loads((out / "report.json").read_text())
    assert report["n_skipped"] == good and report["n_ok"] == 0
    shutil.rmtree(out)
    arm(out, 2)  # SIGTERM as the second output is written
    assert main(argv) == 130
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and report["n_not_started"] >= 1
    arm(out, 0)
    assert main(argv) == 2
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] + report["n_skipped"] == good and "interrupted" not in report
