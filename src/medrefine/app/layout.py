"""The interface: the Blocks that ``build_app`` lays out and wires to the callbacks
(``server.launch`` serves them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from medrefine.app import callbacks, prompt
from medrefine.app.ct import build_ct_tab
from medrefine.app.inpaint import build_inpaint_tab
from medrefine.app.models import (
    UPLOADED,
    available_presets,
    change_refiner_upload,
    change_source,
    default_source,
    has_refiner,
    model_defaults,
    model_note,
)
from medrefine.app.session import Session, close_session
from medrefine.io.formats import mask_formats
from medrefine.presets import BOX_ENGINES, PRESETS, sample_path
from medrefine.refine import RefineParams

# System fonts only: the default theme would fetch web fonts, which offline hospitals lack.
FONTS = dict(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


def build_app(
    idle_s: float = 4 * 3600,
    notice: str = "",
    on_session_end: Callable[[str], Any] | None = None,
) -> gr.Blocks:
    """The interface; ``launch`` serves it. ``idle_s``: a session's files are deleted after
    this long without a request; ``notice``: the server's limits, shown under the title;
    ``on_session_end(session_hash)``: called when a session's state is dropped, after its
    folder is deleted (``launch`` deletes the session's uploads and pictures there)."""
    presets = available_presets()
    sources = [*presets, UPLOADED]
    source0 = default_source(presets)
    params0, post0 = model_defaults(source0)

    def end_session(state: Session | None) -> None:
        close_session(state)
        if on_session_end is not None and state is not None and state.session_hash:
            on_session_end(state.session_hash)

    with gr.Blocks(title="medrefine", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        # Gradio drops a session's state an hour after its tab closes (or after idle_s idle).
        session = gr.State(None, time_to_live=idle_s, delete_callback=end_session)
        gr.Markdown(
            "# medrefine\nA coarse segmentation refined by diffusion, with a per-pixel "
            "uncertainty. Research software: not for diagnosis."
        )
        if notice:
            gr.Markdown(notice, elem_id="limits")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                source = gr.Radio(sources, value=source0, label="Model", elem_id="source")
                with gr.Group(visible=source0 == UPLOADED) as weights_box:
                    coarse_file = gr.File(
                        label="Coarse model (.safetensors)",
                        file_types=[".safetensors"],
                        height=150,
                        elem_id="coarse-weights",
                    )
                    refiner_file = gr.File(
                        label="Diffusion refiner (.safetensors, optional)",
                        file_types=[".safetensors"],
                        height=150,
                        elem_id="refiner-weights",
                    )
                note = gr.Markdown(
                    model_note(source0)
                    if presets
                    else "No preset weights are installed; upload your own."
                )
                refinable0 = source0 == UPLOADED or has_refiner(source0)
                use_diffusion = gr.Checkbox(
                    refinable0, label="Diffusion refinement", interactive=refinable0
                )
                with gr.Accordion("Refinement", open=True):
                    steps = gr.Slider(1, 100, params0.steps, step=1, label="Steps", elem_id="steps")
                    auto0 = params0.strength == "auto"
                    auto_strength = gr.Checkbox(
                        auto0,
                        label="Strength: auto",
                        info="picked per image from how far the refiner would move the mask; "
                        "where it is unsure of its correction the mask is kept",
                        elem_id="auto-strength",
                    )
                    strength = gr.Slider(
                        0.01,
                        1.0,
                        RefineParams().strength if auto0 else params0.strength,
                        step=0.01,
                        label="Strength (when not auto)",
                        info="share of the noise schedule "
                        "re-run; higher trusts the coarse mask less",
                    )
                    samples = gr.Slider(
                        1,
                        32,
                        params0.samples,
                        step=1,
                        label="Samples",
                        info="> 1 adds the samples' spread to the uncertainty",
                    )
                    seed = gr.Number(params0.seed, precision=0, label="Seed")
                with gr.Accordion("Post-processing", open=False):
                    threshold = gr.Slider(0.05, 0.95, post0.threshold, step=0.05, label="Threshold")
                    fill_holes = gr.Checkbox(post0.fill_holes, label="Fill holes")
                    keep_largest = gr.Checkbox(
                        post0.keep_largest or post0.keep_top_k == 1,
                        label="Keep the largest object only",
                    )
                    min_size = gr.Number(
                        post0.min_object_size,
                        precision=0,
                        minimum=0,
                        label="Minimum object size (pixels)",
                    )
                    empty_rescue = gr.Checkbox(
                        False,
                        label="Look again over tiles where the mask is empty",
                        info="3 x 3 tiles of the image, for an object too small for the whole "
                        "frame; on an image without one it may find one (see the preset's card)",
                        elem_id="empty-rescue",
                    )
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Single image"):
                        with gr.Row():
                            with gr.Column():
                                image_file = gr.File(
                                    label="Image: PNG, JPEG, TIFF, BMP, DICOM or NIfTI",
                                    elem_id="image-file",
                                )
                                gt_file = gr.File(
                                    label="Ground-truth mask (optional)", elem_id="gt-file"
                                )
                                slice_index = gr.Slider(
                                    0, 1, 0, step=1, label="Slice", visible=False, elem_id="slice"
                                )
                                run = gr.Button("Segment", variant="primary", elem_id="run")
                            preview = _picture("Image", "preview")
                        _examples(presets, image_file, gt_file, source)
                        status = gr.Markdown(elem_id="status")
                        with gr.Row():
                            coarse_img = _picture("Coarse mask", "coarse")
                            refined_img = _picture("Refined mask (final)", "refined")
                        with gr.Row():
                            contour_img = _picture(
                                "Contours: coarse (orange) vs refined (blue)", "contours"
                            )
                            uncert_img = _picture("Uncertainty", "uncertainty")
                        with gr.Row():
                            review = gr.Number(
                                label="Review score: share of the mask in doubt "
                                "(high: worth a human look)",
                                precision=3,
                                interactive=False,
                                elem_id="review",
                            )
                            mask_format = gr.Radio(
                                [f.display for f in mask_formats()],
                                value="PNG",
                                label="Mask format",
                                elem_id="mask-format",
                            )
                        with gr.Row():
                            mask_dl = gr.DownloadButton(
                                "Download mask", interactive=False, elem_id="download-mask"
                            )
                            overlay_dl = gr.DownloadButton(
                                "Download overlay", interactive=False, elem_id="download-overlay"
                            )
                        metrics = gr.Markdown(elem_id="metrics")
                        timings = gr.Markdown(elem_id="timings")
                    with gr.Tab("Refine a mask or box"):
                        gr.Markdown(
                            "Upload the image in the *Single image* tab, then paint roughly "
                            "over the object, type boxes, or upload a mask from another tool; "
                            "the preset's refiner turns it into a mask at its calibrated "
                            "settings (auto strength; samples and seed from the left)."
                        )
                        with gr.Row():
                            editor = gr.ImageEditor(
                                label="Paint over the object (a closed outline counts as "
                                "its inside)",
                                type="numpy",
                                sources=(),
                                layers=False,
                                transforms=(),
                                brush=gr.Brush(colors=["#ff8c00"], color_mode="fixed"),
                                elem_id="prompt-editor",
                            )
                            with gr.Column():
                                boxes = gr.Textbox(
                                    label="Boxes: x0,y0,x1,y1 in pixels, one per line",
                                    placeholder="120,80,260,210",
                                    lines=2,
                                    elem_id="prompt-boxes",
                                )
                                box_engine = gr.Dropdown(
                                    ["auto", *BOX_ENGINES],
                                    value="auto",
                                    label="Boxes become a mask by (auto: the preset's engine; "
                                    "litemedsam: LiteMedSAM, then the refiner)",
                                    elem_id="prompt-box-engine",
                                )
                                prompt_mask = gr.File(
                                    label="Or a mask from another tool", elem_id="prompt-mask"
                                )
                                prompt_run = gr.Button(
                                    "Refine", variant="primary", elem_id="prompt-run"
                                )
                        prompt_status = gr.Markdown(elem_id="prompt-status")
                        with gr.Row():
                            prompt_img = _picture(
                                "Prompt (orange) and refined mask (blue)", "prompt-result"
                            )
                            prompt_heat = _picture("Uncertainty", "prompt-uncertainty")
                        with gr.Row():
                            prompt_review = gr.Number(
                                label="Review score", precision=3, interactive=False
                            )
                            prompt_dl = gr.DownloadButton(
                                "Download mask", interactive=False, elem_id="prompt-download"
                            )
                    with gr.Tab("Batch"):
                        batch_files = gr.File(
                            file_count="multiple", label="Images", elem_id="batch-files"
                        )
                        batch_run = gr.Button("Segment all", variant="primary", elem_id="batch-run")
                        batch_zip = gr.File(
                            label="Masks and report.json (zip)", elem_id="batch-zip"
                        )
                        batch_summary = gr.Markdown(elem_id="batch-summary")
                    with gr.Tab("Inpaint"):
                        build_inpaint_tab(session)
                    with gr.Tab("CT lung pathology"):
                        build_ct_tab(session)

        settings = [source, coarse_file, refiner_file, use_diffusion, steps, strength,
                    auto_strength, samples, seed, threshold, fill_holes, keep_largest,
                    min_size]  # fmt: skip
        followers = [steps, strength, auto_strength, samples, seed, threshold, fill_holes,
                     keep_largest, min_size]  # fmt: skip
        source.change(
            change_source, [source, refiner_file], [weights_box, note, use_diffusion, *followers]
        )
        refiner_file.change(change_refiner_upload, [source, refiner_file], followers[:5])
        results = [session, preview, coarse_img, refined_img, contour_img, uncert_img, review,
                   status, metrics, timings, mask_format, mask_dl, overlay_dl]  # fmt: skip
        image_file.change(callbacks.preview_image, [image_file], [preview, slice_index])
        # A new image clears the last one's results, so they are never shown side by side.
        image_file.change(callbacks.clear_results, None, results[2:])
        slice_index.release(callbacks.preview_slice, [image_file, slice_index], [preview])
        run.click(
            callbacks.segment_image,
            [session, image_file, gt_file, slice_index, mask_format, *settings, empty_rescue],
            results,
        )
        mask_format.input(callbacks.change_mask_format, [session, mask_format], [mask_dl])
        image_file.change(prompt.prompt_canvas, [image_file], [editor])
        slice_index.release(prompt.prompt_canvas, [image_file, slice_index], [editor])
        prompt_run.click(
            prompt.refine_prompt,
            [session, image_file, slice_index, editor, prompt_mask, boxes, *settings, box_engine],
            [session, prompt_img, prompt_heat, prompt_review, prompt_status, prompt_dl],
        )
        batch_run.click(
            callbacks.segment_batch,
            [session, batch_files, *settings, empty_rescue],
            [session, batch_zip, batch_summary],
        )
    return demo


def _picture(label: str, elem_id: str) -> gr.Image:
    """A result picture for the screen, sent as JPEG (quality 90, ``gradio_fixes``): about 1 ms
    to encode a 512-px picture where PNG takes 60 ms, and a sixth of the bytes; the downloads
    stay lossless PNG."""
    return gr.Image(label=label, format="jpeg", interactive=False, elem_id=elem_id)


def _examples(presets: list[str], image_file, gt_file, source) -> None:
    """One bundled example per preset (all samples, without the model switch, when no preset
    is installed)."""
    names = presets or list(PRESETS)
    rows = []
    for name in names:
        image = sample_path(name)
        row = [str(image), str(image.with_name(f"{image.stem}_mask.png"))]
        rows.append(row + [name] if presets else row)
    gr.Examples(
        rows,
        [image_file, gt_file, source] if presets else [image_file, gt_file],
        label="Examples (image and ground truth)",
        example_labels=names,
    )
