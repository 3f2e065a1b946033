"""The interface: the Blocks that ``build_app`` lays out and wires to the callbacks, and
``launch``, which serves it."""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from medrefine.app import callbacks, prompt
from medrefine.app.guard import (
    FileGuard,
    FileRegistry,
    atomic_picture_cache,
    cache_folder,
    remove_server_roots,
    remove_stale_roots,
)
from medrefine.app.inpaint import build_inpaint_tab
from medrefine.app.models import (
    UPLOADED,
    available_presets,
    change_refiner_upload,
    change_source,
    has_refiner,
    model_defaults,
    model_note,
)
from medrefine.app.session import close_session
from medrefine.io.limits import current_limits
from medrefine.presets import BOX_ENGINES, PRESETS, sample_path
from medrefine.refine import RefineParams

MAX_FILE_SIZE = "200mb"
DEFAULT_CONCURRENCY = 2  # requests segmented at once; more wait in the queue
DEFAULT_QUEUE_SIZE = 64  # requests waiting beyond that are refused ("queue full")
DEFAULT_IDLE_S = 4 * 3600.0
# System fonts only: the default theme would fetch web fonts, which offline hospitals lack.
FONTS = dict(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


def build_app(idle_s: float = 4 * 3600, notice: str = "") -> gr.Blocks:
    """The interface; ``launch`` serves it. ``idle_s``: a session's files are deleted after
    this long without a request; ``notice``: the server's limits, shown under the title."""
    presets = available_presets()
    sources = [*presets, UPLOADED]
    source0 = "polyp" if "polyp" in presets else sources[0]
    params0, post0 = model_defaults(source0)
    with gr.Blocks(title="medrefine", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        # Gradio drops a session's state an hour after its tab closes (or after idle_s idle).
        session = gr.State(None, time_to_live=idle_s, delete_callback=close_session)
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
                                ["PNG", "NIfTI"],
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
            [session, image_file, gt_file, slice_index, mask_format, *settings],
            results,
        )
        mask_format.input(callbacks.change_mask_format, [session, mask_format], [mask_dl])
        image_file.change(prompt.prompt_canvas, [image_file], [editor])
        slice_index.release(prompt.prompt_canvas, [image_file, slice_index], [editor])
        prompt_run.click(
            prompt.refine_prompt,
            [session, image_file, slice_index, editor, prompt_mask, boxes, *settings,
             box_engine],
            [session, prompt_img, prompt_heat, prompt_review, prompt_status, prompt_dl],
        )
        batch_run.click(
            callbacks.segment_batch,
            [session, batch_files, *settings],
            [session, batch_zip, batch_summary],
        )
    return demo


def _picture(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, elem_id=elem_id)


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


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_file_size: str | int = MAX_FILE_SIZE,
    *,
    auth: list[tuple[str, str]] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    idle_s: float = DEFAULT_IDLE_S,
    **kwargs: Any,
) -> gr.Blocks:
    """Build and serve the app; blocks until stopped (Ctrl-C or SIGTERM) unless
    ``prevent_thread_lock=True`` is passed (then the caller stops it with ``.close()`` on the
    returned Blocks). Either way the session folders are removed when it stops.

    ``concurrency`` requests run at once, up to ``queue_size`` more wait (each browser sees
    its place in the queue); output files are served only to the browser they were made for
    (``guard.FileGuard``); ``auth``: [(user, password)] pairs asked for on the login page."""
    remove_stale_roots()
    atomic_picture_cache()
    registry = FileRegistry(cache_folder())
    notice = limits_notice(max_file_size, concurrency, idle_s)
    demo = build_app(idle_s=idle_s, notice=notice)
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [
        *app_kwargs.get("middleware", []),
        Middleware(FileGuard, registry=registry),
    ]

    def cleanup() -> None:
        remove_server_roots()
        registry.forget_uploads()

    atexit.register(cleanup)
    blocking = not kwargs.get("prevent_thread_lock", False)
    with _sigterm_stops_the_server(blocking):
        try:
            demo.launch(
                server_name=host,
                server_port=port,
                share=share,
                max_file_size=max_file_size,
                ssr_mode=False,
                show_error=False,
                auth=auth or None,
                theme=gr.themes.Default(**FONTS),
                allowed_paths=[str(sample_path(next(iter(PRESETS))).parent)],
                app_kwargs=app_kwargs,
                **kwargs,
            )
        finally:
            if blocking:
                cleanup()
    if not blocking:
        close = demo.close

        def close_and_clean(*args: Any, **kw: Any) -> Any:
            try:
                return close(*args, **kw)
            finally:
                cleanup()

        demo.close = close_and_clean  # type: ignore[method-assign]
    return demo


def limits_notice(max_file_size: str | int, concurrency: int, idle_s: float) -> str:
    """What the server refuses and keeps, in one paragraph for the page."""
    limit_mb = current_limits().limit_mb()
    megapixels = limit_mb * 2**20 / (3 + 4) / 1e6 / 3  # 8-bit RGB: stored + float32 copy
    return (
        f"**Limits.** Uploads up to {max_file_size}; images up to {limit_mb:,.0f} MB once "
        f"decoded (about {megapixels:,.0f} megapixels of RGB), refused from the header before "
        f"decoding. {concurrency} request(s) run at a time; others wait in a queue and see "
        "their place in it. Your files are served to this browser only and deleted when you "
        f"leave, at the latest {idle_s / 3600:g} h after your last request."
    )


@contextlib.contextmanager
def _sigterm_stops_the_server(blocking: bool) -> Iterator[None]:
    """SIGTERM stops a blocking server like Ctrl-C (Gradio closes it on KeyboardInterrupt),
    so the session folders are removed by ``launch`` instead of left behind."""
    if not blocking or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
