"""What an export folder holds and how it is checked: ``manifest.json`` (read, written,
validated), the graphs' file names and the refiner condition's output names, and the atomic
writes every file of the folder goes through.

The bottom of the export package: ``graphs`` (writing the graphs), ``runtime`` (running them),
``quantize`` (their int8 copies) and ``loading`` (the runners from a folder or the cache) all
read the folder through here, so none of them needs another for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from medrefine.checkpoint import file_sha256
from medrefine.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "medrefine-onnx"
FORMAT_VERSION = 1
COND_NAMES = ("full", "f0", "f1", "f2", "f3")
GRAPHS = {
    "coarse": {"coarse": "coarse.onnx"},
    "refiner": {"condition": "refiner_condition.onnx", "step": "refiner_step.onnx"},
}


# ---------------------------------------------------------------- manifest
def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(onnx_dir: str | Path) -> dict[str, Any]:
    """``onnx_dir/manifest.json``, checked to be a medrefine ONNX manifest."""
    onnx_dir = Path(onnx_dir)
    hint = "create it with `medrefine export --onnx DIR --preset NAME` (or --weights ...)"
    if not onnx_dir.is_dir():
        raise InputError(f"{onnx_dir}: ONNX folder not found; {hint}")
    path = onnx_dir / MANIFEST
    if not path.is_file():
        raise InputError(
            f"{onnx_dir}: has no {MANIFEST}, so it was not written by medrefine export; {hint}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read the manifest ({err}); re-export: {hint}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(
            f"{path}: not a medrefine ONNX manifest (format "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, "
            f"expected {FORMAT!r}); {hint}"
        )
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{path}: format version {manifest.get('format_version')} is newer "
            f"than this medrefine reads ({FORMAT_VERSION}); update medrefine or "
            "re-export"
        )
    if not isinstance(manifest.get("models"), dict):
        raise InputError(f"{path}: the manifest lists no models; re-export: {hint}")
    return manifest


def graph_files(
    onnx_dir: str | Path, part: str, weights: str | Path, quantized: bool = False
) -> dict[str, Path]:
    """The checked graph files of ``part`` (``coarse`` or ``refiner``) in ``onnx_dir``.

    Raises:
        InputError: no manifest, no such model in it, graphs exported from other weights than
            ``weights`` (their SHA-256 differs), no int8 graphs, or a missing/changed file.
    """
    onnx_dir, weights = Path(onnx_dir), Path(weights)
    manifest = read_manifest(onnx_dir)
    entry = manifest["models"].get(part)
    if entry is None:
        raise InputError(
            f"{onnx_dir}: holds no {part} model (it has "
            f"{sorted(manifest['models'])}); export it with `medrefine export "
            f"--onnx {onnx_dir}` and the {part} weights"
        )
    sha = file_sha256(weights)
    exported = entry.get("weights", {}).get("sha256", "")
    if exported != sha:
        raise InputError(
            f"{onnx_dir}: its {part} graphs were exported from weights with sha256 "
            f"{exported[:12]}..., but {weights} has sha256 {sha[:12]}...: the weights changed "
            f"since the export. Re-run `medrefine export --onnx {onnx_dir}` with these weights, "
            "or leave the ONNX folder out to use the per-user cache"
        )
    graphs = entry.get("int8") if quantized else entry.get("graphs")
    if not graphs:
        raise InputError(
            f"{onnx_dir}: has no {'int8' if quantized else 'float32'} {part} "
            f"graphs; re-export with `medrefine export --onnx {onnx_dir}"
            f"{' --quantize int8' if quantized else ''}`"
        )
    files = {}
    for name, graph in graphs.items():
        path = onnx_dir / graph["file"]
        if not path.is_file():
            raise InputError(f"{path}: missing, but {MANIFEST} lists it; re-run medrefine export")
        if file_sha256(path) != graph["sha256"]:
            raise InputError(
                f"{path}: changed or damaged since the export (its sha256 differs "
                f"from {MANIFEST}); re-run medrefine export"
            )
        files[name] = path
    return files


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary name beside ``path``, renamed onto it when the block succeeds."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
