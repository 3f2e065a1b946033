"""Training fixtures: a synthetic data folder (bright disks on noise, mask = the disk) and a
tiny coarse run trained on it once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrefine.models.registry import SegModelConfig
from medrefine.preprocess import PreprocessConfig

N_IMAGES = 12
SIZE = 64
TINY_MODEL = SegModelConfig(
    name="unet",
    in_channels=1,
    encoder="scratch",
    widths=(4, 8, 8, 8, 8),
    decoder_widths=(8, 8, 4, 4),
)
TINY_PRE = PreprocessConfig(size=(SIZE, SIZE), channels=1)


def write_disks(root: Path, n: int = N_IMAGES, size: int = SIZE, seed: int = 0) -> Path:
    """``root/images/case_XX.png`` (uint8 gray) and ``root/masks/case_XX.png`` (0/255)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        r = rng.uniform(0.15, 0.3) * size
        cy, cx = rng.uniform(r, size - r, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = np.clip(60 + 120 * disk + rng.normal(0, 20, (size, size)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"case_{i:02d}.png")
        Image.fromarray((disk * 255).astype(np.uint8)).save(root / "masks" / f"case_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def make_disks():
    """``write_disks(root, n=12, size=64, seed=0)``: write a synthetic data folder."""
    return write_disks


@pytest.fixture(scope="session")
def coarse_config():
    """``coarse_config(data_dir, output_dir, **overrides)``: a tiny CPU coarse training config."""
    from medrefine.training.coarse import CoarseTrainConfig

    def make(data_dir, output_dir, **overrides):
        kwargs = dict(
            model=TINY_MODEL,
            preprocess=TINY_PRE,
            epochs=2,
            batch_size=4,
            device="cpu",
            amp=False,
            pretrained=False,
            seed=0,
        )
        return CoarseTrainConfig(
            data_dir=str(data_dir), output_dir=str(output_dir), **{**kwargs, **overrides}
        )

    return make


@pytest.fixture(scope="session")
def disk_data(tmp_path_factory) -> Path:
    return write_disks(tmp_path_factory.mktemp("disks"))


@pytest.fixture(scope="session")
def coarse_run(disk_data, coarse_config, tmp_path_factory) -> Path:
    """A finished 2-epoch coarse run folder (do not modify; copy it first)."""
    from medrefine.training.coarse import train_coarse

    return train_coarse(coarse_config(disk_data, tmp_path_factory.mktemp("coarse_run") / "run"))


@pytest.fixture
def coarse_run_copy(coarse_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(coarse_run, dst)
    return dst


@pytest.fixture(scope="session")
def expected_tuning():
    """``expected_tuning(weights, coarse_weights, val_pairs)``: kind -> {strength: val Dice} at
    the steps a refiner run chose, scored here on all of ``val_pairs``, for comparison with the
    calibration report stored in its weights."""
    from dataclasses import replace

    from medrefine.checkpoint import read_info
    from medrefine.inference import CoarseSegmenter
    from medrefine.refine import RefineParams, Refiner
    from medrefine.training.calibrate import ValSet

    def score(weights, coarse_weights, val_pairs):
        info = read_info(weights)
        val = ValSet(CoarseSegmenter.from_weights(coarse_weights, "cpu"), val_pairs)
        refiner = Refiner.from_weights(weights, "cpu")
        base = replace(RefineParams(**info["refine_defaults"]), leave_alone=False)
        out: dict[str, dict[str, float]] = {}
        for strength in info["training"]["calibration"]["per_kind"]["coarse"]["fixed"]:
            scores = val.score(refiner, replace(base, strength=float(strength)))
            for kind, values in scores.items():
                out.setdefault(kind, {})[strength] = float(np.mean(values))
        return out

    return score
