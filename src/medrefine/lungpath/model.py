"""Loading a DiffSegLung weights file (``medrefine train --stage lungpath``) and the shipped
one (``medrefine/weights/lungpath/lungpath.safetensors``, the distilled stage-2 model).

The file's ``model.net`` rebuilds the net, 2D or 3D (``net.dims``); files written before
``dims`` existed (the shipped ones) carry none and load as 2D, unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from medrefine.checkpoint import load_into, read_info
from medrefine.config import build_dataclass
from medrefine.diffusion.gaussian import GaussianDiffusion
from medrefine.errors import InputError
from medrefine.lungpath.net import LungDenoiser
from medrefine.presets import DEFAULT_PRESETS, get_preset


def shipped_weights(name: str = "lungpath") -> Path:
    """A weights file of the shipped lung-pathology preset (``medrefine.presets``): ``lungpath``
    (the distilled model, the default) or ``lungpath_stage1`` (diffusion only, the ablation's)."""
    preset = get_preset(DEFAULT_PRESETS["lung-pathology"], task="lung-pathology")
    return preset.folder / f"{name}.safetensors"


def load_model(path: str | Path) -> tuple[LungDenoiser, GaussianDiffusion, dict]:
    """(model in eval mode, its noise schedule, the file's info)."""
    from medrefine.lungpath.train import ModelConfig

    info = read_info(path)
    if info.get("kind") != "lungpath":
        raise InputError(
            f"{path}: not a lung-pathology weights file (kind "
            f"{info.get('kind')!r}); give one written by medrefine train --stage "
            "lungpath"
        )
    mcfg = build_dataclass(ModelConfig, info["model"], f"{path} model")
    model = load_into(LungDenoiser(mcfg.net, mcfg.radiomics.dim), path).eval()
    d = mcfg.diffusion
    schedule = GaussianDiffusion(d.num_timesteps, d.schedule, d.beta_start, d.beta_end, "epsilon")
    for p in model.parameters():
        p.requires_grad_(False)
    return model, schedule, info


def torch_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
