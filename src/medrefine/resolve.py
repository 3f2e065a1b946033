"""Choosing the models a SegmentationPipeline runs, apart from running them.

    models = resolve_models(preset="skin")                        # the preset's files
    models = resolve_models("coarse.safetensors", "refiner.safetensors", device="cpu")
    pipe = SegmentationPipeline.from_models(models)               # settings go in the call

``resolve_models`` turns (preset | weights files, backend, device, tta) into ``PipelineModels``:
the loaded networks with the files they came from and what was decided about them (the preset
whose defaults apply, the test-time flips, refinement on or off). Every file is checked before
any is loaded, and a missing, foreign or mismatched one is one error that names its role.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from medrefine.checkpoint import read_info
from medrefine.errors import ConfigError, InputError
from medrefine.inference import CoarseSegmenter, as_one, check_tta, coarse_from_weights, parse_tta
from medrefine.postprocess import PostprocessConfig
from medrefine.preprocess import PreprocessConfig
from medrefine.presence import PresenceGate
from medrefine.presets import DEFAULT_EMPTY_RESCUE, DEFAULT_PRESET, Preset, get_preset
from medrefine.refine import Refiner

logger = logging.getLogger(__name__)

KINDS = {"coarse": "a coarse segmentation model", "refiner": "a diffusion refiner"}


@dataclass(frozen=True)
class PipelineModels:
    """The loaded models of a pipeline and what they are; shared read-only by its views.

    Attributes:
        coarse: the coarse model (an ensemble for several files), or None (refine only).
        refiner: the diffusion refiner ``segment`` runs, or None (coarse only).
        coarse_paths: the coarse model's files (the first is the ensemble's first member).
        refiner_path: the refiner's file.
        fixer_path: the preset's separate refiner for other tools' masks and boxes
            (``Preset.fixer_weights``), loaded on first use (``fixer``); None when the
            refiner does that job too.
        preset: the preset whose defaults apply (post-processing, box engine, review weight).
        tta: the coarse model's test-time flips.
        backend: ``{"name": "torch" | "onnx", "quantized": bool, "onnx_dir": str | None}``.
        device: the device asked for (``auto``, ``cpu``, ``cuda``).
        presence: the preset's image-level gate (``Preset.presence_weights``), which leaves the
            own mask of an image without an object empty; loaded with the preset's own coarse
            model only (it reads that model's encoder), else None.
        empty_rescue: ``(n, fraction)``: the tiles the coarse model looks at again where its
            own mask of a 2D image is empty (``Preset.empty_rescue``); () = off.
    """

    coarse: CoarseSegmenter | None
    refiner: Refiner | None
    coarse_paths: tuple[Path, ...] = ()
    refiner_path: Path | None = None
    fixer_path: Path | None = None
    preset: Preset | None = None
    tta: tuple[str, ...] = ()
    backend: dict[str, Any] = field(
        default_factory=lambda: {"name": "torch", "quantized": False, "onnx_dir": None})
    device: str = "auto"
    presence: PresenceGate | None = None
    empty_rescue: tuple[int, float] = ()

    def __post_init__(self):
        if self.coarse is None and self.refiner is None:
            raise ConfigError("a pipeline without a coarse model needs the diffusion refiner")

    @cached_property
    def fixer(self) -> Refiner | None:
        """The refiner for other tools' masks and boxes when the preset ships its own (loaded
        once, on first use), else None."""
        if self.fixer_path is None:
            return None
        return _load_refiner(self.fixer_path, self.backend, self.device)

    @property
    def pre_cfg(self) -> PreprocessConfig:
        """How images are prepared: as the coarse model was trained (else the refiner)."""
        return (self.coarse or self.refiner).pre_cfg

    @property
    def preset_coarse(self) -> bool:
        """The coarse model is the preset's own (its tta and review weight were chosen for it)."""
        return self.preset is not None and list(self.coarse_paths) == self.preset.coarse_members

    @property
    def postprocess(self) -> PostprocessConfig:
        """The default mask clean-up: the preset's, else none."""
        return self.preset.postprocess if self.preset is not None else PostprocessConfig()


def resolve_models(
    coarse_weights: str | Path | Sequence[str | Path] | None = None,
    refiner_weights: str | Path | None = None,
    *,
    preset: str | None = None,
    device: str = "auto",
    use_diffusion: bool = True,
    load_coarse: bool = True,
    backend: str = "torch",
    onnx_dir: str | Path | None = None,
    quantized: bool = False,
    tta: str | Sequence[str] | None = None,
    presence: bool = True,
    empty_rescue: str | bool | None = None,
) -> PipelineModels:
    """The models that the arguments name, checked and loaded.

    Args:
        coarse_weights: one coarse model file, or several of one kind (averaged); default:
            the preset's (``Preset.coarse_members``).
        refiner_weights: the refiner file; default: the preset's.
        preset: fills in whatever weights are not given (``DEFAULT_PRESET`` when none is named
            and some are missing).
        use_diffusion: load a refiner (off by itself for a multi-class coarse model, and for
            a preset that ships none).
        load_coarse: load a coarse model (False: a refiner alone, for given masks).
        backend / onnx_dir / quantized: ``torch``, or ``onnx`` (ONNX Runtime on the CPU,
            graphs from ``onnx_dir`` or the per-user cache; int8 graphs with ``quantized``).
        tta: test-time flips; default: the preset's for its own coarse model, else the
            weights' info ``"tta"``, else off.
        presence: load the preset's presence gate where it ships one (with its own coarse
            model); False: masks are never emptied by it.
        empty_rescue: ``auto`` (or None): the preset's ``empty_rescue`` for its own coarse
            model, else off; ``on`` (or True): the preset's tiles, else
            ``DEFAULT_EMPTY_RESCUE``; ``off`` (or False).

    Returns:
        ``PipelineModels``. Raises ``InputError`` for a missing or foreign weights file and
        ``ConfigError`` for a combination that cannot run.
    """
    if backend not in ("torch", "onnx"):
        raise ConfigError(f"unknown backend {backend!r}; use 'torch' or 'onnx'")
    if backend == "torch" and (quantized or onnx_dir is not None):
        raise ConfigError("quantized=True and onnx_dir need backend='onnx'")
    backend_info = {"name": backend, "quantized": bool(quantized),
                    "onnx_dir": str(onnx_dir) if onnx_dir is not None else None}
    needs_preset = (load_coarse and coarse_weights is None) or (
        use_diffusion and refiner_weights is None)
    if preset is None and needs_preset:
        preset = DEFAULT_PRESET
    chosen = get_preset(preset) if preset is not None else None
    coarse_paths: list[Path] = []
    if load_coarse:
        coarse_paths = _coarse_paths(coarse_weights, chosen)
        infos = [_checked_info(p, "coarse", chosen if coarse_weights is None else None)
                 for p in coarse_paths]
        if use_diffusion and infos[0]["model"].get("num_classes", 1) != 1:
            if refiner_weights is not None:
                raise ConfigError(
                    "diffusion refinement needs a binary coarse model; pass "
                    "use_diffusion=False for multi-class models"
                )
            # a multi-class preset (e.g. chest) is a label map by design: no refiner
            logger.info("%d-class coarse model: label map, no diffusion refinement",
                        infos[0]["model"]["num_classes"])
            use_diffusion = False
    if use_diffusion and refiner_weights is None and load_coarse and \
            not chosen.refiner_weights.is_file():
        logger.warning("preset %r ships no diffusion refiner yet: coarse segmentation only",
                       chosen.name)
        use_diffusion = False
    refiner_path = Path(refiner_weights or chosen.refiner_weights) if use_diffusion else None
    if refiner_path is not None:
        refiner_info = _checked_info(refiner_path, "refiner",
                                     chosen if refiner_weights is None else None)
        if coarse_paths:
            _check_pair(coarse_paths[0], infos[0], refiner_path, refiner_info)
    # a preset's refiner for other tools' masks and boxes, when it ships one of its own
    fixer_path = (chosen.fixer_weights if refiner_path is not None and refiner_weights is None
                  and chosen is not None and chosen.fixer_weights != refiner_path else None)
    if fixer_path is not None and coarse_paths:
        _check_pair(coarse_paths[0], infos[0], fixer_path,
                    _checked_info(fixer_path, "refiner", chosen))
    coarse = _load_coarse(coarse_paths, backend_info, device) if coarse_paths else None
    refiner = _load_refiner(refiner_path, backend_info, device) if refiner_path else None
    own = chosen is not None and coarse_paths == chosen.coarse_members
    presence = (PresenceGate.load(chosen.presence_weights, coarse_paths[0], device)
                if presence and own and chosen.presence_weights.is_file() else None)
    return PipelineModels(
        coarse, refiner, tuple(coarse_paths), refiner_path, fixer_path, chosen,
        _tta(tta, coarse, chosen.tta if own else None), backend_info, device, presence,
        _empty_rescue(empty_rescue, coarse, chosen, own),
    )


def _empty_rescue(choice: str | bool | None, coarse: CoarseSegmenter | None,
                  preset: Preset | None, own: bool) -> tuple[int, float]:
    """The tiles of ``resolve_models``'s ``empty_rescue`` (() = off)."""
    choice = {None: "auto", True: "on", False: "off"}.get(choice, choice)
    if choice not in ("auto", "on", "off"):
        raise ConfigError(f"empty_rescue {choice!r}; choose auto, on or off")
    tiles = tuple(preset.empty_rescue) if preset is not None else ()
    if choice == "off" or coarse is None or (choice == "auto" and not own):
        return ()
    binary = coarse.model_cfg.num_classes == 1
    if choice == "on":
        if not binary:
            raise ConfigError("empty_rescue: looking again over tiles needs a binary coarse "
                              "model (an empty label map of a multi-class model is not a miss)")
        return tiles or DEFAULT_EMPTY_RESCUE
    return tiles if binary else ()


def _coarse_paths(weights, preset: Preset | None) -> list[Path]:
    if weights is None:
        paths = preset.coarse_members
    elif isinstance(weights, (str, Path)):
        paths = [Path(weights)]
    else:
        paths = [Path(w) for w in weights]
    if not paths:
        raise ConfigError("cpunet_weights: an empty list; give one or more files")
    return paths


def _checked_info(path: Path, kind: str, preset: Preset | None) -> dict[str, Any]:
    """The info of ``path``, which must hold ``kind`` (``preset``: the file is the preset's)."""
    try:
        info = read_info(path)
    except InputError as err:
        if preset is None or path.is_file():
            raise
        raise InputError(f"preset {preset.name!r} is not fully installed: {err}; reinstall "
                         "medrefine with its weights, or pass weights files of your own") from err
    if info.get("kind") != kind:
        raise InputError(f"{path}: holds a {info.get('kind')!r} model, not {KINDS[kind]}; pass "
                         f"{KINDS[kind]}'s weights (written by medrefine train) there")
    return info


def _check_pair(coarse_path: Path, coarse_info: dict, refiner_path: Path,
                refiner_info: dict) -> None:
    """The refiner is conditioned on the image as the coarse model sees it: the same grid and
    channels."""
    coarse_pre, refiner_pre = coarse_info["preprocess"], refiner_info["preprocess"]
    for key in ("size", "channels"):
        if list(_as_list(coarse_pre.get(key))) != list(_as_list(refiner_pre.get(key))):
            raise ConfigError(
                f"{refiner_path.name}: the refiner was trained with preprocessing {key} "
                f"{refiner_pre.get(key)} but the coarse model {coarse_path.name} uses "
                f"{coarse_pre.get(key)}; pass a refiner trained for this coarse model"
            )


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load_coarse(paths: list[Path], backend: dict[str, Any], device: str) -> CoarseSegmenter:
    if backend["name"] != "onnx":
        return coarse_from_weights(paths, device, fold_bn=True)
    from medrefine.export import onnx_coarse

    if backend["onnx_dir"] is not None and len(paths) > 1:
        raise ConfigError(
            f"an ensemble of {len(paths)} coarse models runs on ONNX from the cache of graphs "
            "exported on first use; leave out the ONNX folder (it holds one coarse model)"
        )
    return as_one([onnx_coarse(p, **_onnx_options(backend, device)) for p in paths], paths)


def _load_refiner(path: Path, backend: dict[str, Any], device: str) -> Refiner:
    if backend["name"] != "onnx":
        return Refiner.from_weights(path, device, fold_bn=True)
    from medrefine.export import onnx_refiner

    return onnx_refiner(path, **_onnx_options(backend, device))


def _onnx_options(backend: dict[str, Any], device: str) -> dict[str, Any]:
    return {"onnx_dir": backend["onnx_dir"], "quantized": backend["quantized"], "device": device}


def _tta(tta, coarse: CoarseSegmenter | None, preset_tta: tuple[str, ...] | None
         ) -> tuple[str, ...]:
    """The coarse model's test-time flips: as given, else ``preset_tta`` (the preset's, for
    its own coarse model, for which it was chosen), else the weights' info, else none."""
    if coarse is None:
        if parse_tta(tta):
            raise ConfigError(f"tta {tta!r}: test-time flips need a coarse model")
        return ()
    if tta is None:
        tta = preset_tta if preset_tta is not None else coarse.info.get("tta")
    flips = parse_tta(tta)
    check_tta(flips, coarse.info.get("class_names"))
    return flips
