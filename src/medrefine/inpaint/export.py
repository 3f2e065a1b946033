"""The inpainting model as an ONNX graph (``medrefine export --onnx OUT --inpaint``).

  inpaint_step.onnx       x_t, masked01, hole, prefill01 (B, 1, H, W), t (B,) int64
                          -> logits (B, 1, H, W): one denoising step's x0 logits
  inpaint_step.int8.onnx  with --quantize int8: static int8 (QDQ), calibrated on the inputs of
                          every step of float32 inpaintings of the shipped chest X-ray sample
                          with seeded rib, stroke and box masks
  manifest.json           the weights' medrefine info and SHA-256, each graph's SHA-256, and
                          the largest difference of each graph's x0 from torch's on a check case

The sampling loop stays in Python (``inpaint.sample``): a runner feeds the graph one step at a
time. Export and quantisation reuse the segmenters' helpers in ``medrefine.export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrefine import __version__
from medrefine.checkpoint import file_sha256
from medrefine.export.graphs import OPSET, export_graph
from medrefine.inpaint import masks as M
from medrefine.inpaint.model import build_schedule, load_inpainter, prefill
from medrefine.training.runlog import atomic_write_text

INPUTS = ["x_t", "t", "masked01", "hole", "prefill01"]


class _Step(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t, t, masked01, hole, prefill01):
        return self.net(x_t, t, masked01, hole, prefill01)


def step_feeds(weights: Path, cases: int = 6) -> list[dict[str, np.ndarray]]:
    """Inputs of every DDIM step of float32 inpaintings of the shipped CXR sample."""
    from medrefine.inpaint.pipeline import InpaintingPipeline
    from medrefine.io import read_image
    from medrefine.presets import sample_path

    pipe = InpaintingPipeline(weights=weights)
    model, size = pipe.model, pipe.cfg.size
    feeds: list[dict[str, np.ndarray]] = []

    def record(x_t, t, masked01, hole, prefill01):
        feeds.append({"x_t": x_t.numpy(), "t": t.numpy().astype(np.int64),
                      "masked01": masked01.contiguous().numpy(),
                      "hole": hole.contiguous().numpy(),
                      "prefill01": prefill01.contiguous().numpy()})
        return model(x_t, t, masked01, hole, prefill01)

    import cv2

    image = read_image(sample_path("lung")).array[0]
    grid01 = cv2.resize(image / max(float(image.max()), 1.0), (size, size)).astype(np.float32)
    rng = np.random.default_rng(0)
    for i in range(cases):
        hole = M.make_mask(("ribs", "strokes", "box")[i % 3], (size, size), rng)
        from medrefine.inpaint.sample import sample_fill

        sample_fill(record, pipe.schedule, grid01, hole, prefill(grid01, hole, pipe.cfg.prefill),
                    steps=pipe.steps, samples=1, seed=i)
    return feeds


def export_inpaint_onnx(weights: str | Path, out_dir: str | Path, opset: int = OPSET,
                        quantize: str | None = None) -> dict[str, Any]:
    weights, out_dir = Path(weights), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg, info = load_inpainter(weights)
    sha = file_sha256(weights)
    s = cfg.size
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn((2, 1, s, s), generator=gen), torch.tensor([10, 900]),
            torch.rand((2, 1, s, s), generator=gen), (torch.rand((2, 1, s, s)) > 0.8).float(),
            torch.rand((2, 1, s, s), generator=gen))
    meta = {"part": "inpaint", "weights_sha256": sha}
    graphs = {"step": export_graph(_Step(model), args, INPUTS, ["logits"],
                                   out_dir / "inpaint_step.onnx", opset,
                                   {**meta, "graph": "step"})}
    feeds = step_feeds(weights)
    check = feeds[len(feeds) // 2]
    diffs = {"step": _max_x0_diff(model, out_dir / "inpaint_step.onnx", check)}
    if quantize == "int8":
        from medrefine.export.quantize import quantize_static

        target = out_dir / "inpaint_step.int8.onnx"
        quantize_static(out_dir / "inpaint_step.onnx", target, feeds)
        graphs["step_int8"] = {"file": target.name, "sha256": file_sha256(target),
                               "calibration_inputs": len(feeds)}
        diffs["step_int8"] = _max_x0_diff(model, target, check)
    manifest = {"format": "medrefine-onnx-inpaint", "medrefine_version": __version__,
                "opset": int(opset), "weights": {"name": weights.name, "sha256": sha},
                "info": info, "graphs": graphs, "max_abs_x0_diff_vs_torch": diffs,
                "schedule": cfg.diffusion.to_dict()}
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _max_x0_diff(model, graph: Path, feed: dict[str, np.ndarray]) -> float:
    """max |x0_onnx - x0_torch| on one step's inputs, x0 in [-1, 1]."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    out = sess.run(None, feed)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(feed[k]) for k in INPUTS)).numpy()
    return float(np.abs(2 / (1 + np.exp(-out)) - 2 / (1 + np.exp(-ref))).max())


def onnx_step(graph: str | Path):
    """A callable with the net's signature that runs the graph in ONNX Runtime (for
    ``sample_fill``), one thread per core as the CPU allows."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

    def step(x_t, t, masked01, hole, prefill01):
        feed = {"x_t": x_t.numpy(), "t": t.numpy().astype(np.int64),
                "masked01": masked01.contiguous().numpy(), "hole": hole.contiguous().numpy(),
                "prefill01": prefill01.contiguous().numpy()}
        return torch.from_numpy(sess.run(None, feed)[0])

    return step


_ = build_schedule  # re-exported for runners that build the schedule from the manifest
