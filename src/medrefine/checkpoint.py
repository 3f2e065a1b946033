"""Weights files: safetensors (tensors only, nothing runs on load) with the config that
rebuilds the model stored as JSON in the file's metadata, so one file is self-describing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from medrefine import __version__
from medrefine.errors import InputError
from medrefine.io.base import atomic_output

META_KEY = "medrefine"


def save_weights(path: str | Path, model: torch.nn.Module, info: dict[str, Any]) -> Path:
    """Write ``model``'s state dict and ``info`` (JSON-serialisable) atomically."""
    return save_tensors(path, unwrap(model).state_dict(), info)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]
                 ) -> Path:
    """Write named tensors and ``info`` (JSON-serialisable) atomically, as ``save_weights``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {META_KEY: json.dumps({**info, "medrefine_version": __version__})}
    with atomic_output(path) as tmp:
        tmp.touch()  # the mode the umask gives every output...
        mode = tmp.stat().st_mode
        save_file(state, str(tmp), metadata=meta)
        tmp.chmod(mode)  # ...which safetensors' own 0600 would replace
    return path


def read_info(path: str | Path) -> dict[str, Any]:
    """The config/info stored in a weights file, without loading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a safetensors weights file ({err}); medrefine loads only "
                         ".safetensors files it wrote") from err
    if META_KEY not in meta:
        raise InputError(f"{path}: safetensors file has no medrefine metadata; it was not written "
                         "by medrefine")
    try:
        return json.loads(meta[META_KEY])
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: the medrefine metadata in this weights file is damaged "
                         f"({err}); use an intact copy") from err


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read weights ({err})") from err


def load_into(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a weights file into ``model``; a file made for another architecture or another
    medrefine version gives an InputError naming the file, not a torch traceback."""
    try:
        model.load_state_dict(load_state(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise InputError(f"{path}: these weights do not fit the model their own config "
                         f"describes ({first}); they were made by another medrefine version or "
                         "edited; retrain or use the matching medrefine version") from err
    return model


def load_matching(model: torch.nn.Module, path: str | Path) -> tuple[int, int]:
    """Start ``model`` from another weights file (fine-tuning): every tensor whose name and
    shape match is copied, the rest (e.g. an output head for another number of classes) keep
    their initial values. Returns (copied, total); a file that shares no tensor is an
    InputError, as it cannot be the model meant."""
    state = load_state(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise InputError(f"{path}: no tensor of these weights fits this model; give weights of "
                         "the same architecture (e.g. another preset's coarse.safetensors)")
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DistributedDataParallel (or torch.compile)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
