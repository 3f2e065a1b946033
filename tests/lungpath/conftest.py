"""Real data for the lung-pathology tests (../shared/data) and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not here")
    return DATA


@pytest.fixture
def torchrun_lungpath(tmp_path, torchrun_env):
    """Train a lungpath config (a dict) with two CPU processes under torchrun (gloo DDP);
    returns (the finished process, the run folder)."""
    import shutil
    import subprocess

    import yaml

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")

    def run(config: dict):
        path, out = tmp_path / "lungpath.yaml", tmp_path / "run"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            ["torchrun", "--nproc_per_node=2", "-m", "medrefine.cli", "train", "--stage",
             "lungpath", "--config", str(path), "-o", str(out)],
            capture_output=True, text=True, env=torchrun_env, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc, out

    return run
