"""SegmentationPipeline: load -> preprocess -> coarse -> diffusion refinement -> postprocess.

    pipe = SegmentationPipeline(preset="polyp")
    mask = pipe.segment_image("polyp.jpg")                  # (H, W) uint8 0/1, input size
    res = pipe.segment_image("polyp.jpg", return_intermediate=True)
    res["coarse_mask"], res["refined_mask"], res["uncertainty"], res["timings"]
    pipe.run("polyp.jpg", refine={"steps": 8}, postprocess=...)   # settings for one call

The models are chosen and loaded once (``medrefine.resolve``: ``resolve_models`` ->
``PipelineModels``, or ``SegmentationPipeline.from_models``); a built pipeline is never
changed: settings go in the call, ``with_settings`` and ``fixer`` are views over the same models.

Volumes ((C, D, H, W): NIfTI, multi-frame or series DICOM) are segmented slice by slice
(``medrefine.slices``: an image's or a volume's way through the models on the model grid) and
post-processed in 3D.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from medrefine import __version__
from medrefine.checkpoint import file_sha256
from medrefine.errors import ConfigError, InputError
from medrefine.fusion import (
    SECOND_OPINION_WEIGHT,
    binary_entropy,
    mask_disagreement,
    review_score,
    second_opinion_score,
)
from medrefine.inference import CoarseSegmenter
from medrefine.io import LoadedImage, read_image
from medrefine.postprocess import PostprocessConfig, postprocess, postprocess_labels
from medrefine.preprocess import PreprocessConfig, to_grid
from medrefine.presets import BOX_ENGINES, Preset, get_preset
from medrefine.prompts import boxes_to_mask, check_boxes
from medrefine.refine import RefineParams, Refiner
from medrefine.resolve import PipelineModels, resolve_models
from medrefine.slices import refinement_summary, slice_probs, volume_probs

logger = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """Everything one run produced, on the input's original grid.

    mask: uint8 (H, W) or (D, H, W): 0/1 for binary models, labels for multi-class.
    coarse_probs / refined_probs / uncertainty: float32, same spatial shape (refined and
    uncertainty are None without refinement).
    """

    image: LoadedImage
    mask: np.ndarray
    coarse_probs: np.ndarray
    refined_probs: np.ndarray | None
    uncertainty: np.ndarray | None
    review_score: float | None
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def coarse_mask(self) -> np.ndarray:
        return (
            (self.coarse_probs >= 0.5).astype(np.uint8)
            if self.coarse_probs.ndim == self.mask.ndim
            else self.coarse_probs.argmax(0).astype(np.uint8)
        )

    def as_dict(self) -> dict[str, Any]:
        refined = None if self.refined_probs is None else (self.refined_probs >= 0.5)
        return {
            "input": self.image.array,
            "original_size": self.image.spatial_shape,
            "coarse_mask": self.coarse_mask,
            "refined_mask": None if refined is None else refined.astype(np.uint8),
            "mask": self.mask,
            "coarse_probs": self.coarse_probs,
            "refined_probs": self.refined_probs,
            "uncertainty": self.uncertainty,
            "review_score": self.review_score,
            "timings": self.timings,
            "params": self.params,
        }


def is_hu_ct(loaded: LoadedImage) -> bool:
    """A CT in Hounsfield units: not an 8-bit picture, not another modality, air below -500."""
    modality = str(loaded.meta.get("modality") or "").upper()
    if loaded.meta.get("source_dtype") in ("uint8", "bool") or modality not in ("", "CT", "OT"):
        return False
    return float(loaded.array.min()) < -500


def hu_lung_gate(mask: np.ndarray, loaded: LoadedImage, margin_mm: float
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """``mask`` with every label farther than ``margin_mm`` from the HU lung mask set to 0,
    and what was removed (for the report)."""
    from scipy import ndimage as ndi

    from medrefine.lungpath.lungmask import hu_lung_mask

    hu = loaded.array[0].astype(np.float32)
    spacing = loaded.spacing
    lung = hu_lung_mask(hu, spacing)
    if lung.any():
        near = ndi.distance_transform_edt(~lung, sampling=spacing) <= margin_mm
    else:
        near = lung
    near = near.reshape(mask.shape)
    removed = int(((mask > 0) & ~near).sum())
    return np.where(near, mask, 0).astype(mask.dtype), {
        "margin_mm": margin_mm, "removed_voxels": removed, "lung_voxels": int(lung.sum())}


def as_loaded(image: str | Path | np.ndarray | LoadedImage) -> LoadedImage:
    """A path, a LoadedImage, or a numpy image ((H, W), (H, W, 1|3|4) or (C, H, W))."""
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a path, LoadedImage or numpy array, got {type(image).__name__}")
    array = image
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
        array = np.moveaxis(array, -1, 0)
    elif not (array.ndim == 3 and array.shape[0] in (1, 3, 4)):
        raise InputError(
            f"cannot interpret an array of shape {array.shape} as an image; pass "
            "(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4"
        )
    if array.size == 0:
        raise InputError("the image array is empty")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError("the image array contains NaN or infinite values")
    meta = {"format": "array", "source_dtype": str(image.dtype), "modality": "OT"}
    return LoadedImage(out, None, meta, None)


@dataclass(frozen=True)
class RunSettings:
    """What a pipeline does with its models on each run, unless the call says otherwise.

    Attributes:
        refine: refinement settings: a ``RefineParams`` (used as it is, by every refiner), a
            mapping of changes over the running refiner's own defaults (e.g.
            ``{"strength": "auto"}``), or None (those defaults).
        postprocess: mask clean-up; None: the models' default (the preset's).
        slice_batch: volume slices the coarse model sees at once (memory vs. speed).
    """

    refine: RefineParams | Mapping[str, Any] | None = None
    postprocess: PostprocessConfig | None = None
    slice_batch: int = 8

    def __post_init__(self):
        if self.slice_batch < 1:
            raise ConfigError(f"slice_batch must be at least 1, got {self.slice_batch}")
        if isinstance(self.refine, Mapping):
            unknown = sorted(set(self.refine) - {f.name for f in fields(RefineParams)})
            if unknown:
                raise ConfigError(f"refine: unknown setting(s) {unknown}; choose from "
                                  f"{[f.name for f in fields(RefineParams)]}")
            object.__setattr__(self, "refine", dict(self.refine))

    def merged(self, refine=None, postprocess: PostprocessConfig | None = None,
               slice_batch: int | None = None) -> RunSettings:
        """These settings with a call's (None: unchanged; a mapping of refinement changes
        goes on top of the refinement settings)."""
        if isinstance(refine, Mapping) and self.refine is not None:
            refine = ({**self.refine, **refine} if isinstance(self.refine, Mapping)
                      else replace(self.refine, **RunSettings(refine).refine))
        return RunSettings(
            self.refine if refine is None else refine,
            self.postprocess if postprocess is None else postprocess,
            self.slice_batch if slice_batch is None else slice_batch,
        )

    def params_for(self, refiner: Refiner | None) -> RefineParams | None:
        """The refinement settings ``refiner`` runs with (None without a refiner)."""
        if refiner is None:
            return None
        if isinstance(self.refine, RefineParams):
            return self.refine
        return replace(refiner.defaults, **(self.refine or {}))


class SegmentationPipeline:
    """Coarse segmentation plus diffusion refinement, over models chosen once.

    ``SegmentationPipeline(...)`` resolves the models from its arguments
    (``medrefine.resolve.resolve_models``); ``SegmentationPipeline.from_models(models)``
    takes resolved ones. A built pipeline is never changed: settings for one call go in the
    call (``run(image, refine={"strength": "auto"}, postprocess=...)``), and
    ``with_settings`` gives another pipeline over the same models.

    Args:
        cpunet_weights: coarse model weights (.safetensors), or several files of one kind
            (e.g. the fold models of ``train --cv-folds``) whose probabilities are averaged;
            default: the preset's (``Preset.coarse_members``).
        diffusion_weights: refiner weights; default: the preset's.
        device: ``auto``, ``cpu`` or ``cuda``.
        use_diffusion: refine the coarse mask (False = coarse only).
        preset: shipped model set used for whatever weights are not given (``polyp`` when
            none is named and some weights are missing); its post-processing is the default.
        refine: refinement settings (``RunSettings.refine``: ``RefineParams``, or a mapping
            of changes); default: the refiner's own defaults, chosen on its validation split.
        postprocess: mask clean-up; default: the preset's.
        slice_batch: volume slices the coarse model sees at once (memory vs. speed).
        backend: ``torch``, or ``onnx`` to run the models on ONNX Runtime (CPU only).
        onnx_dir: a folder written by ``medrefine export``; default (onnx backend): the
            per-user cache, exported on first use.
        quantized: use the int8 ONNX graphs (static quantisation; onnx backend only).
        tta: test-time flips of the coarse model (``"hflip"``, ``"hflip,vflip"``, a list, or
            ``"none"``): its probabilities averaged over the image and the flipped views;
            default: the preset's ``tta`` for the preset's own coarse model, else the weights'
            info ``"tta"``, else off.
        presence: use the preset's presence gate where it ships one (``medrefine.presence``:
            the own mask of a 2D image judged to hold no object is left empty); False: off.
        empty_rescue: where the coarse model's own mask of a 2D image is empty, look again
            over overlapping tiles (``medrefine.tiling``) for an object too small for the
            whole frame: ``auto`` (default: the preset's ``empty_rescue`` for its own coarse
            model), ``on`` or ``off``; report.json's ``empty_rescue`` says what it found.
    """

    def __init__(
        self,
        cpunet_weights: str | Path | Sequence[str | Path] | None = None,
        diffusion_weights: str | Path | None = None,
        device: str = "auto",
        use_diffusion: bool = True,
        preset: str | None = None,
        refine: RefineParams | Mapping[str, Any] | None = None,
        postprocess: PostprocessConfig | None = None,
        *,
        load_coarse: bool = True,
        slice_batch: int = 8,
        backend: str = "torch",
        onnx_dir: str | Path | None = None,
        quantized: bool = False,
        tta: str | Sequence[str] | None = None,
        presence: bool = True,
        empty_rescue: str | bool | None = None,
    ):
        settings = RunSettings(refine, postprocess, slice_batch)
        models = resolve_models(
            cpunet_weights, diffusion_weights, preset=preset, device=device,
            use_diffusion=use_diffusion, load_coarse=load_coarse, backend=backend,
            onnx_dir=onnx_dir, quantized=quantized, tta=tta, presence=presence,
            empty_rescue=empty_rescue,
        )
        self._take(models, settings)

    @classmethod
    def from_models(
        cls,
        models: PipelineModels,
        refine: RefineParams | Mapping[str, Any] | None = None,
        postprocess: PostprocessConfig | None = None,
        *,
        slice_batch: int = 8,
    ) -> SegmentationPipeline:
        """A pipeline over resolved ``models`` with these default settings."""
        return cls._view(models, RunSettings(refine, postprocess, slice_batch))

    @classmethod
    def _view(cls, models: PipelineModels, settings: RunSettings, as_fixer: bool = False
              ) -> SegmentationPipeline:
        pipe = cls.__new__(cls)
        pipe._take(models, settings, as_fixer)
        return pipe

    def _take(self, models: PipelineModels, settings: RunSettings, as_fixer: bool = False
              ) -> None:
        """Set once, when the pipeline is made; a bad refinement setting fails here."""
        self._models, self._settings, self._as_fixer = models, settings, as_fixer
        settings.params_for(models.refiner)

    @classmethod
    def for_refinement(
        cls,
        diffusion_weights: str | Path | None = None,
        preset: str | None = None,
        device: str = "auto",
        refine: RefineParams | Mapping[str, Any] | None = None,
        postprocess: PostprocessConfig | None = None,
    ) -> SegmentationPipeline:
        """A pipeline that only refines given masks (``refine``): no coarse model is loaded;
        images are preprocessed as the refiner was trained. A preset gives its refiner for
        other tools' masks and boxes (``Preset.fixer_weights``)."""
        if diffusion_weights is None and preset is not None:
            diffusion_weights = get_preset(preset).fixer_weights
        return cls(
            None, diffusion_weights, device, True, preset, refine, postprocess, load_coarse=False
        )

    def with_settings(
        self,
        refine: RefineParams | Mapping[str, Any] | None = None,
        postprocess: PostprocessConfig | None = None,
        *,
        slice_batch: int | None = None,
    ) -> SegmentationPipeline:
        """Another pipeline over the same models, with these settings over this one's (None:
        unchanged; a mapping of refinement changes goes on top). This one stays as it is."""
        return self._view(self._models, self._settings.merged(refine, postprocess, slice_batch),
                          self._as_fixer)

    def fixer(self) -> SegmentationPipeline:
        """The view that runs other tools' masks and boxes: this pipeline, or (for a preset
        that ships a separate refiner for them) the same models and settings with that
        refiner in the refiner's place, at its own defaults."""
        if self._models.fixer_path is None or self._as_fixer:
            return self
        return self._view(self._models, self._settings, as_fixer=True)

    # -------------------------------------------------------------- what it runs
    @property
    def models(self) -> PipelineModels:
        return self._models

    @property
    def settings(self) -> RunSettings:
        return self._settings

    @property
    def coarse(self) -> CoarseSegmenter | None:
        return self._models.coarse

    @property
    def refiner(self) -> Refiner | None:
        return self._models.fixer if self._as_fixer else self._models.refiner

    @property
    def refiner_path(self) -> Path | None:
        return self._models.fixer_path if self._as_fixer else self._models.refiner_path

    @property
    def coarse_paths(self) -> list[Path]:
        return list(self._models.coarse_paths)

    @property
    def coarse_path(self) -> Path | None:
        return self._models.coarse_paths[0] if self._models.coarse_paths else None

    @property
    def preset(self) -> Preset | None:
        return self._models.preset

    @property
    def tta(self) -> tuple[str, ...]:
        return self._models.tta

    @property
    def empty_rescue(self) -> tuple[int, float]:
        """``(n, fraction)`` of the tiles looked at where the own mask is empty; () = off."""
        return self._models.empty_rescue

    @property
    def backend(self) -> dict[str, Any]:
        return dict(self._models.backend)

    @property
    def pre_cfg(self) -> PreprocessConfig:
        return self._models.pre_cfg

    @property
    def refine_params(self) -> RefineParams | None:
        """The refinement settings a run of this view uses by default."""
        return self._settings.params_for(self.refiner)

    @property
    def post(self) -> PostprocessConfig:
        return self._settings.postprocess or self._models.postprocess

    @property
    def slice_batch(self) -> int:
        return self._settings.slice_batch

    # -------------------------------------------------------------- provenance
    def provenance(self) -> dict[str, Any]:
        weights = {}
        if self.coarse_path:
            weights["coarse"] = {
                "path": str(self.coarse_path),
                "sha256": file_sha256(self.coarse_path),
            }
            if len(self.coarse_paths) > 1:  # an ensemble: every member, the first as above
                weights["coarse"]["ensemble"] = [
                    {"path": str(p), "sha256": file_sha256(p)} for p in self.coarse_paths
                ]
        if self.refiner_path:
            weights["refiner"] = {
                "path": str(self.refiner_path),
                "sha256": file_sha256(self.refiner_path),
            }
        gate = self._models.presence
        if gate is not None and gate.path is not None:
            weights["presence"] = {"path": str(gate.path), "sha256": file_sha256(gate.path),
                                   "threshold": gate.threshold}
        return {
            "medrefine_version": __version__,
            "preset": self.preset.name if self.preset else None,
            "weights": weights,
            "use_diffusion": self.refiner is not None,
            "refine": asdict(self.refine_params) if self.refine_params else None,
            "postprocess": asdict(self.post),
            "tta": list(self.tta),
            "empty_rescue": list(self.empty_rescue) or None,
            "device": str((self.coarse or self.refiner).device),
            "backend": self.backend,
        }

    # -------------------------------------------------------------- core
    def run(
        self,
        image: str | Path | np.ndarray | LoadedImage,
        coarse_mask: np.ndarray | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        refine: RefineParams | Mapping[str, Any] | None = None,
        box_engine: str = "auto",
        *,
        postprocess: PostprocessConfig | None = None,
        slice_batch: int | None = None,
    ) -> SegmentationResult:
        """Segment one image or volume (``coarse_mask``: refine this mask instead of the
        coarse model's, values 0/1, 0/255 or probabilities, same spatial size; ``boxes``:
        ``(x0, y0, x1, y1)`` pixel boxes around the objects of a 2D image, turned into a mask
        by ``box_engine``).

        ``refine``, ``postprocess`` and ``slice_batch`` are settings for this run only, over
        the pipeline's (``with_settings``): ``refine`` a ``RefineParams`` as it is, or a
        mapping of changes (``{"strength": "auto"}``) over the settings of whichever refiner
        runs. The pipeline itself is left as it was.

        Box engines: ``refiner``: with a coarse model, its mask inside the boxes where every
        box holds some of it, refined as ``segment`` refines it; else the boxes themselves,
        refined into a mask and never kept as they are. ``litemedsam``: LiteMedSAM's mask of
        the boxes (``medrefine.litemedsam``), refined and reviewed as a given mask (where
        LiteMedSAM finds nothing in a box, the refiner engine runs instead).
        ``litemedsam-only``: the same, but LiteMedSAM's mask is kept (post-processed as every
        mask is); the refiner gives only its uncertainty and the review score. ``auto``: the
        preset's ``box_engine`` (``refiner`` without a preset). ``params["box_engine"]`` says
        which one ran.

        Volumes (C, D, H, W) go slice by slice through the models in batches of
        ``slice_batch`` and are post-processed in 3D; the mask is (D, H, W) on the input grid.

        The review score of a given mask or a box prompt on a 2D image adds a second opinion
        where the pipeline has a binary coarse model: the refined mask's disagreement with
        that model's own mask of the image (``fusion.second_opinion_score``; both parts in
        ``params["review"]``).
        """
        if refine is not None or postprocess is not None or slice_batch is not None:
            view = self.with_settings(refine, postprocess, slice_batch=slice_batch)
            return view.run(image, coarse_mask, boxes, box_engine=box_engine)
        engine = self.box_engine(box_engine)
        if boxes is None:
            return self._run(image, coarse_mask, boxes)
        if engine == "fuse":
            return self._run_fused(image, coarse_mask, boxes)
        if engine != "refiner":
            return self._run_litemedsam(image, coarse_mask, boxes,
                                        keep=engine == "litemedsam-only")
        result = self._run(image, coarse_mask, boxes)
        result.params["box_engine"] = "refiner"
        return result

    def box_engine(self, engine: str = "auto") -> str:
        """The box engine ``engine`` stands for (``auto``: the preset's, else ``refiner``)."""
        if engine == "auto":
            return self.preset.box_engine if self.preset is not None else "refiner"
        if engine not in BOX_ENGINES:
            raise ConfigError(f"unknown box engine {engine!r}; choose auto or one of "
                              f"{list(BOX_ENGINES)}")
        return engine

    def _run_litemedsam(self, image, coarse_mask, boxes, keep: bool = False,
                        own_probs: np.ndarray | None = None) -> SegmentationResult:
        """LiteMedSAM's mask of ``boxes``, then ``_run`` on it as on a given mask (``keep``:
        the mask stays LiteMedSAM's; the refiner runs for its uncertainty only; ``own_probs``:
        the coarse model's probabilities on the image, where the caller has them)."""
        from medrefine.litemedsam import empty_boxes, load_litemedsam

        loaded = as_loaded(image)
        self._check_box_prompt(loaded, coarse_mask, "the litemedsam box engine hands "
                               "LiteMedSAM's mask to the diffusion refiner")
        boxes = check_boxes(boxes, loaded.spatial_shape)
        t = time.perf_counter()
        lite = load_litemedsam(self._models.device,
                               quantized=self._models.backend.get("quantized", False))
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        mask = lite.predict(loaded.array, boxes, loaded.meta.get("source_dtype", "float32")) > 0.5
        t_lite = time.perf_counter() - t
        empty = empty_boxes(mask, boxes)
        if empty:  # a box LiteMedSAM sees nothing in would be lost: the refiner has it
            logger.warning("LiteMedSAM found no object in box %s; the refiner engine turns the "
                           "boxes into the mask", ",".join(f"{v:g}" for v in empty[0]))
            result = self._run(loaded, None, boxes, own_probs=own_probs)
            result.params["box_engine"] = "refiner"
            result.params["box_engine_note"] = (f"LiteMedSAM found no object in {len(empty)} "
                                                f"of {len(boxes)} boxes")
        else:
            refine = replace(self.fixer().refine_params, keep_input=True) if keep else None
            result = self._run(loaded, mask.astype(np.uint8), None, refine, own_probs)
            result.params["boxes"] = [list(map(float, b)) for b in boxes]
            result.params["boxes_from"] = "litemedsam"
            result.params["box_engine"] = "litemedsam-only" if keep else "litemedsam"
        result.params["litemedsam"] = lite.provenance()
        if t_load > 0.05:  # the first call loads the model (cached after it)
            result.timings["litemedsam_load"] = t_load
        result.timings["litemedsam"] = t_lite
        result.timings["total"] = sum(v for k, v in result.timings.items() if k != "total")
        return result

    def _run_fused(self, image, coarse_mask, boxes) -> SegmentationResult:
        """The ``litemedsam`` and ``refiner`` engines on the same boxes, their probabilities
        averaged and post-processed as a given mask is; the uncertainty is the larger of the
        two maps at each pixel and the review score the larger of the two (the fused mask is
        as doubtful as the more doubtful engine). Where LiteMedSAM finds nothing in a box,
        the refiner engine's result as ``_run_litemedsam`` falls back to it; on an image the
        coarse model finds unfamiliar (``Preset.unfamiliar_doubt``), LiteMedSAM's mask kept;
        where the two masks agree less than ``FUSE_MIN_AGREEMENT``, the litemedsam engine's."""
        loaded = as_loaded(image)
        own, t_own = None, 0.0  # the coarse model runs once for both engines
        if coarse_mask is None and self._has_second_opinion(loaded):
            t = time.perf_counter()
            own = self.coarse.predict(loaded.array, loaded.meta.get("source_dtype", "float32"),
                                      self.tta)
            t_own = time.perf_counter() - t
        by_lite = self._run_litemedsam(loaded, coarse_mask, boxes, own_probs=own)
        by_lite.timings["coarse_shared"] = t_own
        by_lite.timings["total"] += t_own
        if by_lite.params["box_engine"] == "refiner":
            return by_lite
        if "unfamiliar_image" in by_lite.params:
            # an image the coarse model finds unfamiliar: its mask in the boxes (the refiner
            # engine's) is not averaged in; LiteMedSAM's mask stands, judged
            by_lite.params["box_engine"] = "fuse"
            by_lite.params["box_engine_note"] = ("unfamiliar image: LiteMedSAM's mask kept, "
                                                 "the refiner engine's not fused in")
            return by_lite
        by_refiner = self._run(loaded, coarse_mask, boxes, own_probs=own)
        agreement = 1.0 - mask_disagreement(by_lite.mask > 0, by_refiner.mask > 0)
        if agreement < FUSE_MIN_AGREEMENT:
            # the two engines see different objects: an average would keep neither (a
            # confident empty mask halves LiteMedSAM's object); LiteMedSAM + refiner stands
            by_lite.params["box_engine"] = "fuse"
            by_lite.params["box_engine_note"] = (
                f"the engines disagree (Dice {agreement:.2f} < {FUSE_MIN_AGREEMENT}): "
                "LiteMedSAM's mask, refined, not averaged")
            by_lite.params["fuse_agreement"] = agreement
            return by_lite
        pair = (by_lite, by_refiner)
        probs = [r.refined_probs if r.refined_probs is not None else r.coarse_probs
                 for r in pair]
        fused = np.clip((probs[0] + probs[1]) / 2, 0.0, 1.0).astype(np.float32)
        mask = postprocess(fused, self.fixer().post, loaded.spacing)
        maps = [r.uncertainty for r in pair]
        uncertainty = None if any(m is None for m in maps) else np.maximum(*maps)
        scores = [r.review_score for r in pair]
        review = None if any(v is None for v in scores) else max(scores)
        params = {**by_lite.params, "box_engine": "fuse", "fuse_agreement": agreement,
                  "fused_review_scores": {"litemedsam": scores[0], "refiner": scores[1]}}
        timings = {f"litemedsam_engine_{k}": v for k, v in by_lite.timings.items()
                   if k not in ("total", "coarse_shared")}
        timings |= {f"refiner_engine_{k}": v for k, v in by_refiner.timings.items()
                    if k != "total"}
        timings["coarse_shared"] = t_own
        timings["total"] = by_lite.timings["total"] + by_refiner.timings["total"]
        return replace(by_lite, mask=mask, refined_probs=fused, uncertainty=uncertainty,
                       review_score=review, timings=timings, params=params)

    def _run(self, image, coarse_mask, boxes, refine: RefineParams | None = None,
             own_probs: np.ndarray | None = None) -> SegmentationResult:
        """``run`` with this pipeline's settings (``refine``: these refinement settings
        instead); ``own_probs``: the coarse model's probabilities on this image, when the
        caller has them already (the second opinion)."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        loaded = as_loaded(image)
        timings["load"] = time.perf_counter() - t
        own, prompt = coarse_mask is None and boxes is None, boxes
        given = not own  # a mask or boxes from the user: the review score takes a 2nd opinion
        mask_given = coarse_mask is not None  # a mask from elsewhere, not a box prompt
        if boxes is not None and coarse_mask is None and self.coarse is not None and \
                self.refiner is not None and not loaded.is_volume and not self._as_fixer:
            # boxes with a coarse model: its mask inside the boxes, refined as its own masks
            # are, when every box holds some of it; else the boxes themselves are the prompt
            t = time.perf_counter()
            within = boxes_to_mask(boxes, loaded.spatial_shape)
            if own_probs is None:
                own_probs = self.coarse.predict(
                    loaded.array, loaded.meta.get("source_dtype", "float32"), self.tta
                )
            probs = own_probs
            timings["coarse"] = time.perf_counter() - t
            if box_coverage(probs[0] > 0.5, boxes, loaded.spatial_shape) >= MIN_BOX_COVERAGE:
                coarse_mask, boxes, own = probs[0] * within, None, True
        fixer = self.fixer()
        if (coarse_mask is not None and not own or boxes is not None) and fixer is not self:
            return fixer._run(loaded, coarse_mask, boxes, refine, own_probs)
        params = refine or self.refine_params
        if boxes is not None:
            self._check_box_prompt(loaded, coarse_mask,
                                   "boxes are turned into masks by the diffusion refiner")
            if params.keep_input:
                raise ConfigError("keep_input keeps a given mask as it is, and boxes are not "
                                  "one; to judge LiteMedSAM's mask of the boxes unchanged use "
                                  "box engine litemedsam-only")
            coarse_mask = boxes_to_mask(boxes, loaded.spatial_shape)
            params = replace(params, leave_alone=False)
        if coarse_mask is not None:
            coarse_mask = _as_probability_mask(coarse_mask, loaded)
        dtype = loaded.meta.get("source_dtype", "float32")
        spacing = loaded.spacing
        opinion, unfamiliar = None, None
        if mask_given and self.refiner is not None and self._has_second_opinion(loaded) and \
                self.preset is not None and self.preset.unfamiliar_doubt > 0:
            t = time.perf_counter()
            opinion = self._second_opinion(loaded, own_probs)
            timings["second_opinion"] = time.perf_counter() - t
            if opinion[2] > self.preset.unfamiliar_doubt:  # the input stands (Preset's note)
                unfamiliar = {"coarse_doubt": opinion[2],
                              "unfamiliar_doubt": self.preset.unfamiliar_doubt}
                params = replace(params, keep_input=True)
        log: list[dict] = []
        notes: dict[str, Any] = {}
        if loaded.is_volume:
            coarse, refined, uncertainty = volume_probs(self, loaded.array, dtype, timings,
                                                        coarse_mask, params, log, own=own)
        else:
            coarse, refined, uncertainty = slice_probs(self, loaded.array, dtype, timings,
                                                       coarse_mask, params, log, own=own,
                                                       notes=notes)
        if coarse_mask is not None and not own:
            coarse, refined = _given_kept(coarse_mask, coarse, refined, log, loaded.is_volume)
        if unfamiliar is not None:
            log[-1]["decision"] = "kept: unfamiliar image"
        t = time.perf_counter()
        if coarse.shape[0] > 1:  # multi-class: labels from the softmax, cleaned per class
            mask = postprocess_labels(coarse.argmax(0).astype(np.uint8), self.post, spacing=spacing)
            coarse_out = coarse
        else:
            coarse_out = coarse[0]
            probs = refined if refined is not None else coarse_out
            mask = postprocess(probs, self.post, spacing=spacing)
        gate = None
        if self.preset is not None and self.preset.hu_lung_margin_mm > 0 and is_hu_ct(loaded):
            mask, gate = hu_lung_gate(mask, loaded, self.preset.hu_lung_margin_mm)
        timings["postprocess"] = time.perf_counter() - t
        presence = None
        if not given and self._models.presence is not None and not loaded.is_volume:
            # the preset's own mask of an image it judges to hold no object is left empty
            t = time.perf_counter()
            image01, _ = self.coarse.prepare(loaded.array, dtype)
            presence = self._models.presence.decide(image01, self.tta)
            if presence["emptied"]:
                mask = np.zeros_like(mask)
            timings["presence"] = time.perf_counter() - t
        score, review = None, None
        if uncertainty is not None:
            t = time.perf_counter()
            score = review_score(uncertainty, mask)  # volumes: the boundary band is 3D
            timings["review"] = time.perf_counter() - t
            if given and self._has_second_opinion(loaded):
                t = time.perf_counter()
                _, own_mask, doubt = opinion or self._second_opinion(loaded, own_probs)
                disagreement = mask_disagreement(mask, own_mask)
                doubt_weight = self._doubt_weight()
                review = {"uncertainty": score, "second_opinion_disagreement": disagreement,
                          "second_opinion_weight": SECOND_OPINION_WEIGHT,
                          "coarse_doubt": doubt, "coarse_doubt_weight": doubt_weight}
                score = second_opinion_score(score, disagreement, coarse_doubt=doubt,
                                             doubt_weight=doubt_weight)
                timings["second_opinion"] = (timings.get("second_opinion", 0.0)
                                             + time.perf_counter() - t)
        timings["total"] = sum(timings.values())
        run_params = {
            "refine": asdict(params) if self.refiner else None,
            "postprocess": asdict(self.post),
            "preset": self.preset.name if self.preset else None,
        }
        if coarse.shape[0] > 1:  # the label values' names (DICOM-SEG segments, reports)
            names = list(getattr(self.coarse, "info", {}).get("class_names") or [])
            if len(names) == coarse.shape[0] - 1:
                run_params["class_names"] = names
        if gate is not None:
            run_params["hu_lung_gate"] = gate
        if unfamiliar is not None:
            run_params["unfamiliar_image"] = unfamiliar
        if presence is not None:
            run_params["presence"] = presence
        if "empty_rescue" in notes:
            run_params["empty_rescue"] = notes["empty_rescue"]
        if review is not None:
            run_params["review"] = review
        if log:
            run_params["refinement"] = refinement_summary(log)
        if prompt is not None:
            run_params["boxes"] = [list(map(float, b)) for b in prompt]
            run_params["boxes_from"] = "coarse model" if boxes is None else "refiner"
        return SegmentationResult(
            loaded, mask, coarse_out, refined, uncertainty, score, timings, run_params
        )

    def _check_box_prompt(self, loaded: LoadedImage, coarse_mask, needs: str) -> None:
        """Boxes prompt a 2D image instead of a mask, and need the refiner (``needs`` says
        what for)."""
        if coarse_mask is not None or loaded.is_volume:
            raise InputError("boxes prompt a 2D image instead of a mask: pass one or the "
                             "other, on a 2D image")
        if self.refiner is None:
            raise ConfigError(f"{needs}; this pipeline has none")

    def _doubt_weight(self) -> float:
        """The preset's weight of the coarse model's doubt in the review score, where the
        coarse model is the preset's own (the weight was chosen for that model); else 0."""
        if not self._models.preset_coarse:
            return 0.0
        return self.preset.review_doubt_weight

    def _second_opinion(self, loaded: LoadedImage, own_probs: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray, float]:
        """The coarse model on a 2D image: its probabilities (``own_probs`` where the caller
        has them), its post-processed mask and its doubt over that mask."""
        if own_probs is None:
            own_probs = self.coarse.predict(loaded.array, loaded.meta.get("source_dtype",
                                                                          "float32"), self.tta)
        own_mask = postprocess(own_probs[0], self.post, spacing=loaded.spacing)
        return own_probs, own_mask, review_score(binary_entropy(own_probs[0]), own_mask)

    def _has_second_opinion(self, loaded: LoadedImage) -> bool:
        """A binary coarse model to compare a given 2D mask with."""
        if self.coarse is None or loaded.is_volume:
            return False
        cfg = getattr(self.coarse, "model_cfg", None)
        return cfg is None or cfg.num_classes == 1

    # -------------------------------------------------------------- the design's API
    def segment_image(
        self, path_or_array: str | Path | np.ndarray, return_intermediate: bool = False
    ):
        """The mask at the input's original size, or (``return_intermediate``) a dict with
        input, coarse_mask, refined_mask, original_size, uncertainty, timings and params."""
        result = self.run(path_or_array)
        return result.as_dict() if return_intermediate else result.mask

    def segment_batch(self, paths: list[str | Path]) -> list[np.ndarray]:
        return [self.run(p).mask for p in paths]

    def refine(
        self,
        image: str | Path | np.ndarray,
        mask: str | Path | np.ndarray | None = None,
        return_intermediate: bool = False,
        box: Sequence[float] | Sequence[Sequence[float]] | None = None,
        box_engine: str = "auto",
    ):
        """Refine a mask made by any segmenter (nnU-Net, SAM, your own), or turn ``box``
        (``(x0, y0, x1, y1)`` in pixels, or a list of them, one per object) into a mask with
        ``box_engine`` (``run``: ``refiner``, ``litemedsam`` or ``auto``, the preset's)."""
        if self.refiner is None:
            raise ConfigError("this pipeline has no diffusion refiner (use_diffusion=False); "
                              "pass diffusion_weights= to refine")
        if (mask is None) == (box is None):
            raise InputError("refine needs a mask or a box (one of them)")
        if mask is not None and box_engine != "auto":
            raise ConfigError("box_engine turns boxes into a mask; with a mask there are no "
                              "boxes: leave box_engine out or pass box=")
        if box is not None:
            boxes = [box] if np.ndim(box) == 1 else list(box)
            result = self.run(image, boxes=boxes, box_engine=box_engine)
            return result.as_dict() if return_intermediate else result.mask
        if isinstance(mask, (str, Path)):
            from medrefine.io import read_mask

            mask = read_mask(mask)
        result = self.run(image, coarse_mask=np.asarray(mask))
        return result.as_dict() if return_intermediate else result.mask

    def visualize(
        self,
        path_or_array,
        save_path: str | Path | None = None,
        ground_truth: np.ndarray | None = None,
    ) -> np.ndarray:
        """image | coarse | refined (| ground truth) | uncertainty panel as RGB uint8."""
        from medrefine.visualize import comparison_panel, save_png, uncertainty_heatmap

        result = self.run(path_or_array)
        if result.image.is_volume:
            raise InputError("visualize shows 2D images; pick a slice of the volume first")
        image01, _ = to_grid(result.image.array, result.image.spatial_shape)
        image01 = replace_range(image01, result.image.meta.get("source_dtype", "float32"))
        panels: dict[str, np.ndarray] = {"coarse": result.coarse_mask}
        if result.refined_probs is not None:
            panels["refined"] = result.mask
        if ground_truth is not None:
            panels["ground truth"] = np.asarray(ground_truth) > 0
        if result.uncertainty is not None:
            panels["uncertainty"] = uncertainty_heatmap(result.uncertainty, image01, vmax=1.0)
        rgb = comparison_panel(image01, panels)
        if save_path is not None:
            save_png(rgb, save_path)
        return rgb


# Dice between the two engines' masks below which ``fuse`` keeps the litemedsam engine's
# instead of averaging: chosen on Kvasir-SEG val (first 40, jittered boxes; 0.9483 at 0.9,
# 0.9473-0.9475 at 0.5-0.85, 0.9468 averaging always), checked on ETIS-Larib (external, never
# tuned on: 0.914 against 0.828 averaging always and LiteMedSAM's 0.911), where the refiner
# engine finds nothing in two boxes and the average erased LiteMedSAM's polyp
FUSE_MIN_AGREEMENT = 0.9
MIN_BOX_COVERAGE = 0.1  # share of each box the coarse mask must fill to stand for the box


def _given_kept(given: np.ndarray, coarse: np.ndarray, refined: np.ndarray | None,
                log: list[dict], volume: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A given mask (H, W) or (D, H, W) as it came, not its round trip through the model grid:
    as the input shown (``coarse``) and where the refiner kept it (``left_alone``: its image, or
    its slices of a volume), as the result, so a kept mask is the input to the pixel."""
    coarse = given[None].astype(np.float32)
    if refined is None:
        return coarse, None
    kept = [bool(entry.get("left_alone")) for entry in log]
    if not volume:
        return coarse, (coarse[0].copy() if kept and kept[-1] else refined)
    for d, left_alone in enumerate(kept):
        if left_alone:
            refined[d] = given[d]
    return coarse, refined


def box_coverage(mask: np.ndarray, boxes, shape: tuple[int, int]) -> float:
    """The smallest share of a box that ``mask`` fills, over the boxes."""
    from medrefine.prompts import check_boxes

    shares = []
    for x0, y0, x1, y1 in check_boxes(boxes, shape):
        inside = mask[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))]
        shares.append(float(inside.mean()) if inside.size else 0.0)
    return min(shares)


def replace_range(image: np.ndarray, source_dtype: str) -> np.ndarray:
    """Raw intensities -> [0, 1] for display (the same rule as preprocessing's ``auto``)."""
    from medrefine.preprocess import normalize_intensity, to_channels

    out = normalize_intensity(image, "auto", source_dtype=source_dtype)
    return to_channels(out, 3 if out.shape[0] >= 3 else 1)


def _as_probability_mask(mask: np.ndarray, like: LoadedImage) -> np.ndarray:
    """A mask from another tool -> foreground probabilities in [0, 1] on the image's grid.

    Integer and bool masks are label maps: any non-zero label is foreground. Float masks are
    probabilities in [0, 1] (or 0..255 soft masks, scaled)."""
    mask = np.asarray(mask)
    if mask.ndim == len(like.spatial_shape) + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != like.spatial_shape:
        raise InputError(
            f"the mask has shape {mask.shape} but the image is "
            f"{like.spatial_shape}; pass a mask of the image's size"
        )
    if mask.dtype.kind in "biu":
        return (mask > 0).astype(np.float32)
    mask = mask.astype(np.float32)
    if not np.isfinite(mask).all() or mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise InputError("a float mask must hold probabilities in [0, 1] (or 0..255)")
    if mask.max(initial=0) > 1:
        mask = mask / 255.0
    return mask
