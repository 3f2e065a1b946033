"""Shipped models: the one registry of presets, for every task. A segmentation preset names a
coarse model, a diffusion refiner, and the post-processing and refinement defaults chosen for
them on the validation split; an inpainting or lung-pathology preset names its model, whose
sampling and inference defaults are stored with its weights. Weights live in
``medrefine/weights/<preset>/`` inside the package, beside their model cards (``MODEL_CARD.md``
and ``model_card.json``, whose test figures ``card_figures`` reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medrefine.errors import ConfigError
from medrefine.postprocess import PostprocessConfig
from medrefine.tiling import check_tiles

# What turns box prompts into a mask (``refine --box-engine``): ``refiner``: the preset's coarse
# model inside the boxes where it holds the object, else the refiner from the boxes themselves;
# ``litemedsam``: LiteMedSAM's mask of the boxes (``medrefine.litemedsam``), then refined and
# reviewed as any given mask; ``litemedsam-only``: LiteMedSAM's mask as it is, the refiner run on
# it only for its uncertainty and the review score (``RefineParams.keep_input``); ``fuse``: the
# probabilities of ``litemedsam`` and ``refiner`` averaged, the larger uncertainty and review score.
BOX_ENGINES = ("refiner", "litemedsam", "litemedsam-only", "fuse")

TASKS = ("segmentation", "inpainting", "lung-pathology")

# The file in a preset's folder whose presence means its weights are installed.
MAIN_WEIGHTS = {
    "segmentation": "coarse.safetensors",
    "inpainting": "inpaint.safetensors",
    "lung-pathology": "lungpath.safetensors",
}

# The tiles of ``--empty-rescue on`` for a preset (or weights) without its own
# (``Preset.empty_rescue``): 3 x 3 tiles of 0.45 of the frame, chosen for polyps on ETIS-Larib.
DEFAULT_EMPTY_RESCUE = (3, 0.45)

# The segmentation preset a command or the API runs when neither a preset nor weights are named.
DEFAULT_PRESET = "polyp"
# The preset of each task that runs when none is named.
DEFAULT_PRESETS = {
    "segmentation": DEFAULT_PRESET,
    "inpainting": "inpaint",
    "lung-pathology": "lungpath",
}


@dataclass(frozen=True)
class Preset:
    """One shipped model set. ``description`` says what it segments (or fills); the fields
    from ``postprocess`` to ``tta`` are segmentation defaults and stay at their defaults for
    the other tasks, whose defaults are stored with their weights."""

    name: str
    description: str
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    sample: str = ""  # a shipped sample image under medrefine/samples/
    # Weight of the coarse model's own doubt in the review score of a mask from elsewhere
    # (``fusion.second_opinion_score``), chosen per preset on its val sources by
    # ``scripts/review_score_study.py`` (the weight whose worst source is best; 0 unless
    # another weight beats it by more than 0.01), then kept only where, on the test sources
    # of ``scripts/mask_fixer_eval.py``, its worst source is no lower than with 0.
    review_doubt_weight: float = 0.0
    # The box engine of ``--box-engine auto`` (``BOX_ENGINES``), the one with the best val Dice
    # on jittered ground-truth boxes in ``scripts/litemedsam_boxes.py``.
    box_engine: str = "refiner"
    # CT in Hounsfield units: labels are kept only within this many mm of the HU lung mask
    # (``lungpath.lungmask.hu_lung_mask``: air-density lung inside the body); 0 = off. For a
    # model trained on chest slices alone, which finds "lung" in the bowel gas of an abdomen.
    hu_lung_margin_mm: float = 0.0
    # Test-time flips of the coarse model (``inference.TTA_FLIPS``: "hflip", "vflip"), its
    # probabilities averaged over the image and these views; () = off. On only where own val
    # gains and the external archive does not lose (the model card's "Test-time flips").
    tta: tuple[str, ...] = ()
    # A mask from elsewhere (``refine --mask``, LiteMedSAM's in the box engines) on an image
    # the coarse model finds unfamiliar, its doubt (``fusion.review_score`` of its own entropy
    # over its own mask) above this, is kept as it is: the refiner, trained beside that coarse
    # model on one archive, is not trusted to move it there, and runs for the uncertainty and
    # the review score only. The most doubt the coarse model showed on the preset's val
    # images (the model card's "Unfamiliar images"); 0 = off.
    unfamiliar_doubt: float = 0.0
    # Where the coarse model's own mask of a 2D image comes out empty, look again over
    # ``(n, fraction)``: n x n overlapping tiles, each that fraction of the frame's side
    # (``medrefine.tiling``), for objects too small for the grid at the whole frame; () = off
    # (``--empty-rescue on`` then uses ``DEFAULT_EMPTY_RESCUE``). The model card's "Tiles for
    # an empty frame" says where it is on and why.
    empty_rescue: tuple[int, float] = ()
    task: str = "segmentation"  # one of TASKS

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"preset {self.name!r}: task {self.task!r}; choose from {TASKS}")
        segmentation_only = (self.postprocess != PostprocessConfig() or self.review_doubt_weight
                             or self.box_engine != "refiner" or self.hu_lung_margin_mm
                             or self.tta or self.unfamiliar_doubt or self.empty_rescue)
        if self.task != "segmentation" and segmentation_only:
            raise ConfigError(f"preset {self.name!r} ({self.task}): postprocess, "
                              "review_doubt_weight, box_engine, hu_lung_margin_mm, tta, "
                              "unfamiliar_doubt and empty_rescue are segmentation defaults; "
                              "leave them out")
        if self.empty_rescue:
            check_tiles(*self.empty_rescue)
        if not set(self.tta) <= {"hflip", "vflip"}:
            raise ConfigError(f"preset {self.name!r}: tta {self.tta!r}; use hflip and/or vflip")
        if self.box_engine not in BOX_ENGINES:
            raise ConfigError(f"preset {self.name!r}: box_engine {self.box_engine!r}; choose "
                              f"from {BOX_ENGINES}")

    @property
    def folder(self) -> Path:
        return Path(str(resources.files("medrefine") / "weights" / self.name))

    @property
    def weights(self) -> Path:
        """The preset's main weights file (``MAIN_WEIGHTS``); installed when it exists."""
        return self.folder / MAIN_WEIGHTS[self.task]

    @property
    def installed(self) -> bool:
        return self.weights.is_file()

    @property
    def model_card(self) -> Path:
        """``model_card.json``: what the model is, how it was trained and its test figures."""
        return self.folder / "model_card.json"

    @property
    def model_card_md(self) -> Path:
        return self.folder / "MODEL_CARD.md"

    @property
    def coarse_weights(self) -> Path:
        return self.folder / "coarse.safetensors"

    @property
    def coarse_members(self) -> list[Path]:
        """The coarse model files the preset runs: ``coarse.safetensors`` and, where the preset
        ships an ensemble (e.g. cross-validation folds), ``coarse_2.safetensors``,
        ``coarse_3.safetensors``, ... beside it, whose probabilities are averaged."""
        extra = sorted(self.folder.glob("coarse_*.safetensors"),
                       key=lambda p: (len(p.stem), p.stem))
        return [self.coarse_weights, *extra]

    @property
    def presence_weights(self) -> Path:
        """``presence.safetensors``: where the preset ships one, the image-level gate that
        leaves the mask of an image without an object empty (``medrefine.presence``)."""
        return self.folder / "presence.safetensors"

    @property
    def refiner_weights(self) -> Path:
        """The refiner ``segment`` runs on the preset's own coarse masks."""
        return self.folder / "refiner.safetensors"

    @property
    def fixer_weights(self) -> Path:
        """The refiner for masks from other tools, boxes and outlines (``refine``):
        ``fixer.safetensors`` where the preset ships one beside a refiner tuned to its own
        coarse model, else that refiner."""
        fixer = self.folder / "fixer.safetensors"
        return fixer if fixer.is_file() else self.refiner_weights


PRESETS: dict[str, Preset] = {
    "polyp": Preset(
        "polyp", "colonoscopy polyps (trained on Kvasir-SEG)",
        PostprocessConfig(fill_holes=True, min_object_fraction=0.001),
        sample="kvasir_polyp.jpg",
        # val: worst source 0.532 at 0, 0.583 at 1; test (confirmation): boxes 0.518 -> 0.589,
        # held-out segmenters 0.853 -> 0.882, 0.815 -> 0.840
        review_doubt_weight=1.0,
        # val (first 40, jittered boxes; scripts/litemedsam_boxes.py --split val): LiteMedSAM +
        # refiner 0.9444 (HD95 15.9), LiteMedSAM kept 0.9438, the refiner engine 0.895; with the
        # loss-averse fixer LiteMedSAM's masks are no longer made worse (0.931 before); fuse
        # (both engines' probabilities averaged) 0.9468 (HD95 15.3), review Spearman 0.465
        # against the litemedsam engine's 0.342 (2026-12-03)
        box_engine="fuse",
        # coarse Dice (MODEL_CARD.md "Test-time flips"): Kvasir val 0.8836 -> 0.8884 (hflip
        # alone 0.8800), ETIS-Larib 0.571 -> 0.599; test 0.905 -> 0.908; 2.5x the network time
        tta=("hflip", "vflip"),
        # the coarse model's doubt on the 99 Kvasir val images: median 0.38, max 3.377
        unfamiliar_doubt=3.38,
        # empty_rescue off (MODEL_CARD.md "Tiles for an empty frame"): ETIS-Larib 0.599 -> 0.727
        # with 3 x 3 tiles of 0.45 (--empty-rescue on), but 38.8% of the polyp-free tiles of
        # Kvasir val frames get a mask: most polyp-free frames would get a false one
    ),
    "skin": Preset(
        "skin", "dermoscopy skin lesions (trained on PH2)",
        # keep_largest off since v2: the same on PH2 val (0.9511 / 0.9512), and on ISIC 2017
        # (external val) it dropped a second lesion the annotators count (0.637 -> 0.681 off)
        PostprocessConfig(fill_holes=True),
        sample="ph2_lesion.jpg",
        # val (20 images): the refiner engine 0.951, fuse 0.949, LiteMedSAM + refiner 0.946,
        # LiteMedSAM 0.939; ISIC 2017 (external val, 9): fuse 0.903 (LiteMedSAM's masks kept on
        # the 7 unfamiliar images), the refiner engine 0.824 (the coarse model's mask in the box,
        # which does not travel): fuse, the val difference being within its noise (2026-12-04)
        box_engine="fuse",
        # the coarse model's doubt on the 20 PH2 val images: median 1.08, max 2.113; on ISIC
        # 2017 7 of 9 above it, among them the two where the fixer made LiteMedSAM's masks worse
        # (0.909 -> 0.453, 0.935 -> 0.901)
        unfamiliar_doubt=2.12,
    ),
    "lung": Preset(
        "lung", "lung fields on chest X-rays (trained on COVID CXR with V7 masks)",
        PostprocessConfig(fill_holes=True, keep_top_k=2),
        sample="cxr_lungs.jpg",
        # review_doubt_weight stays 0: val chose 2 (worst source 0.499 -> 0.731), but on test
        # it lowered the two held-out segmenters' Spearman (0.513 -> 0.453, 0.535 -> 0.444;
        # boxes 0.476 -> 0.482), so the confirmation on test vetoed it (docs/refiner_studies.md)
        # val (first 40): the refiner engine 0.956, LiteMedSAM + refiner 0.952, LiteMedSAM 0.840
        box_engine="refiner",
        # the coarse model's doubt on the 42 V7 val images: median 0.41, max 0.608
        unfamiliar_doubt=0.61,
    ),
    "chest": Preset(
        "chest", "right lung, left lung and heart on chest X-rays, a label map 1/2/3 "
        "(trained on COVID CXR radiologist polygons)",
        PostprocessConfig(fill_holes=True, keep_largest=True),
        sample="cxr_lungs.jpg",
    ),
    "breast-us": Preset(
        "breast-us", "breast lesions on B-mode ultrasound (trained on BUSI; on a frame without a "
        "lesion an empty mask is the answer)",
        # val (78 images, 14 normal; scripts/postprocess_sweep.py --objective balanced):
        # threshold 0.4, objects under 0.5% of the image dropped, the largest kept: lesion Dice
        # 0.811, normals left empty 92.9% (0.809 and 85.7% with the defaults); fill_holes ties
        PostprocessConfig(threshold=0.4, min_object_fraction=0.005, keep_largest=True),
        sample="busi_lesion.jpg",
    ),
    "ct-lung-infection": Preset(
        "ct-lung-infection", "lungs (1) and COVID-19 infection (2) on axial chest CT slices, a "
        "label map; a CT in HU gets the training slices' normalisation (trained on Ma et al.'s "
        "COVID-19 CT)",
        sample="ct_infection.jpg",
        # val has no HU (8-bit slices): the margin is the smallest whose val infection Dice,
        # gated by the 8-bit intensity lung mask instead, lost under 0.002 (20 mm: 0.5676 ->
        # 0.5670; 10 mm: 0.5621); on a CT in HU it removes "lung" found in the abdomen
        hu_lung_margin_mm=20.0,
    ),
    "devices": Preset(
        "devices", "what covers the lungs on chest X-rays (tubes, lines, wires, electrodes, "
        "markers); `medrefine inpaint --mask-from devices` fills it (trained on COVID CXR, V7's "
        "label 2)",
        PostprocessConfig(min_object_size=8),
        sample="cxr_lungs.jpg",
    ),
}


INPAINT_PRESETS: dict[str, Preset] = {
    "inpaint": Preset(
        "inpaint", "fills a marked region of a chest X-ray with a diffusion model; synthetic "
        "output, not for diagnosis (trained on COVID CXR train splits)",
        sample="cxr_lungs.jpg", task="inpainting",
    ),
}

LUNGPATH_PRESETS: dict[str, Preset] = {
    "lungpath": Preset(
        "lungpath", "healthy lung, emphysema, ground glass, consolidation and fibrosis on chest "
        "CT, unsupervised (DiffSegLung; trained on 8-bit slices of Ma et al.'s and MedSeg's "
        "COVID-19 CT); research output, not for diagnosis",
        task="lung-pathology",
    ),
}

# The registry: every shipped preset, by task. Names are unique across tasks
# (tests/test_presets.py). PRESETS keeps its name: commands offer it as the --preset choices.
REGISTRY: dict[str, dict[str, Preset]] = {
    "segmentation": PRESETS,
    "inpainting": INPAINT_PRESETS,
    "lung-pathology": LUNGPATH_PRESETS,
}


def all_presets() -> list[Preset]:
    """Every preset of every task, in the order of ``TASKS``."""
    return [preset for table in REGISTRY.values() for preset in table.values()]


def get_preset(name: str, task: str | None = "segmentation") -> Preset:
    """The preset ``name`` of ``task`` (any task when ``task`` is None). Segmentation is the
    default because the segmentation pipeline, its commands and the app call this with a name
    alone. An unknown name, or one of another task, is a ``ConfigError`` naming the choices."""
    if task is not None and task not in REGISTRY:
        raise ConfigError(f"unknown task {task!r}; choose from {list(TASKS)}")
    tables = [REGISTRY[task]] if task is not None else list(REGISTRY.values())
    for table in tables:
        if name in table:
            return table[name]
    choices = sorted(REGISTRY[task]) if task is not None else sorted(p.name for p in all_presets())
    other = next((p for p in all_presets() if p.name == name), None)
    if other is not None:
        raise ConfigError(f"preset {name!r} is for {other.task}, not {task}; choose from the "
                          f"{task} presets {choices}")
    kind = f"{task} " if task is not None else ""
    raise ConfigError(f"unknown {kind}preset {name!r}; choose from {choices}")


def sample_path(name: str) -> Path:
    """The bundled sample image of a preset (of any task)."""
    preset = get_preset(name, task=None)
    return Path(str(resources.files("medrefine") / "samples" / preset.sample))


def read_model_card(preset: Preset) -> dict:
    """The preset's ``model_card.json``, or {} where it has none."""
    if not preset.model_card.is_file():
        return {}
    try:
        return json.loads(preset.model_card.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{preset.model_card}: not valid JSON ({err}); restore the file "
                          "from the package") from err


def card_figures(preset: Preset, card: dict | None = None) -> list[dict]:
    """The headline test figures that the preset's model card holds, as
    ``{"name", "value", "split", "n", "source"}`` (``source``: the card's key path); [] where
    the card holds none in a known place. Nothing is computed: only what the card says.

    segmentation: the Dice of the refiner's test run (coarse and refined, the same images)
    where the card has one, else the coarse model's test Dice; per class where it is kept.
    inpainting: PSNR and SSIM of the model per mask kind. lung pathology: the card keeps its
    test tables as printed text only, so none."""
    card = read_model_card(preset) if card is None else card
    if preset.task == "segmentation":
        for part, pairs in (("refiner", ("coarse", "refined")), ("coarse", ("coarse",))):
            summary = (card.get(part) or {}).get("test_summary") or {}
            base = f"{part}.test_summary"
            rows = [(f"{stage} Dice", f"{base}.{stage}.dice.mean", (summary.get(stage) or {})
                     .get("dice", {}).get("mean")) for stage in pairs]
            for label, metrics in (summary.get("per_class") or {}).items():
                rows.append((f"{label} Dice", f"{base}.per_class.{label}.dice.mean",
                             (metrics.get("dice") or {}).get("mean")))
            figures = [_figure(label, value, summary, key) for label, key, value in rows
                       if isinstance(value, int | float)]
            if figures:
                return figures
        return []
    if preset.task == "inpainting":
        summary = (card.get("inpaint") or {}).get("test_summary") or {}
        figures = []
        for kind_method, metrics in (summary.get("summary") or {}).items():
            kind, _, method = kind_method.partition("/")
            if method != "ours":
                continue
            for metric in ("psnr", "ssim"):
                if isinstance(metrics.get(metric), int | float):
                    key = f"inpaint.test_summary.summary.{kind_method}.{metric}"
                    figures.append(_figure(f"{kind} {metric.upper()}", metrics[metric],
                                           summary, key))
        return figures
    return []


def _figure(name: str, value: float, summary: dict, source: str) -> dict:
    n = summary.get("n")
    return {"name": name, "value": float(value), "split": summary.get("split"),
            "n": int(n) if isinstance(n, int | float) else None, "source": source}
