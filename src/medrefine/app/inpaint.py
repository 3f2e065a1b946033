"""The "Inpaint" tab: paint over a region of an uploaded X-ray with the brush (or upload a mask)
and get it filled by the inpainting diffusion model, as ``medrefine inpaint`` does; the result
downloads as PNG at the input's bit depth and says it is synthetic."""

from __future__ import annotations

import time

import gradio as gr
import numpy as np

from medrefine.app.files import display_image01, read_upload, to_rgb
from medrefine.app.prompt import painted_mask
from medrefine.app.session import Session, readable_errors
from medrefine.errors import InputError
from medrefine.io import stem_of

NOTE = ("Fills the painted region from its surroundings with a small diffusion model trained on "
        "chest X-rays. The result is a **synthetic image, not for diagnosis**.")


def build_inpaint_tab(session: gr.State) -> None:
    """The tab's components and events (called inside ``gr.Tabs`` by ``layout.build_app``)."""
    gr.Markdown(NOTE)
    with gr.Row():
        with gr.Column():
            image_file = gr.File(label="X-ray (PNG, JPEG, TIFF, DICOM)", elem_id="inpaint-file")
            editor = gr.ImageEditor(
                label="Paint over the region to fill", type="numpy", elem_id="inpaint-editor",
                brush=gr.Brush(colors=["#ff0000"], default_size=12), eraser=gr.Eraser(),
                layers=False, transforms=(), sources=(),
            )
            mask_file = gr.File(label="or upload a mask (non-zero = fill; the image's size)",
                                elem_id="inpaint-mask")
            with gr.Row():
                steps = gr.Slider(1, 8, value=4, step=1, label="Steps", elem_id="inpaint-steps")
                samples = gr.Slider(1, 8, value=2, step=1, label="Samples averaged",
                                    elem_id="inpaint-samples")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="inpaint-seed")
            run = gr.Button("Inpaint", variant="primary", elem_id="inpaint-run")
        with gr.Column():
            result = gr.Image(label="before | mask | after (synthetic)", format="png",
                              interactive=False, elem_id="inpaint-result")
            status = gr.Markdown(elem_id="inpaint-status")
            download = gr.DownloadButton("Download inpainted image", interactive=False,
                                         elem_id="inpaint-download")
    image_file.change(inpaint_canvas, [image_file], [editor])
    run.click(inpaint_image, [session, image_file, editor, mask_file, steps, samples, seed],
              [session, result, status, download])


@readable_errors
def inpaint_canvas(image_file: str | None):
    if not image_file:
        return None
    rgb = to_rgb(display_image01(read_upload(image_file, 0)))
    return {"background": rgb, "layers": [], "composite": rgb}


@readable_errors
def inpaint_image(session: Session | None, image_file: str | None, editor: dict | None,
                  mask_file: str | None, steps: float, samples: float, seed: float,
                  progress=gr.Progress()):  # noqa: B008 (how Gradio asks for a progress tracker)
    from medrefine.inpaint.outputs import write_compare, write_png
    from medrefine.inpaint.pipeline import InpaintingPipeline, as_source_dtype, check_mask
    from medrefine.io import read_mask

    t0 = time.perf_counter()
    session = session or Session()
    loaded = read_upload(image_file, 0)
    shape = loaded.spatial_shape
    if mask_file:
        mask = check_mask(read_mask(mask_file), shape, "the uploaded mask")
    else:
        mask = painted_mask(editor, shape)
        if mask is None:
            raise InputError("nothing to fill: paint over the region or upload a mask")
        mask = check_mask(mask, shape, "the painted region")
    progress(0.3, desc="inpainting")
    pipe = InpaintingPipeline(steps=int(steps), samples=int(samples), seed=int(seed or 0))
    image = as_source_dtype(loaded)
    outcome = pipe.run(image[0] if image.ndim == 3 else image, mask)
    folder = session.new_request()
    stem = stem_of(image_file)
    png, depth = write_png(outcome.inpainted, folder / f"{stem}_inpainted.png")
    compare = write_compare(outcome, folder / f"{stem}_compare.png")
    from PIL import Image

    picture = np.asarray(Image.open(compare).convert("RGB"))
    text = (f"**Synthetic image, not for diagnosis.** Filled {mask.mean():.1%} of the image "
            f"({depth}-bit PNG); steps {pipe.steps}, samples {pipe.samples}, seed {pipe.seed}; "
            f"{time.perf_counter() - t0:.1f} s.")
    return session, picture, text, gr.DownloadButton(value=str(png), interactive=True)
