"""The "CT lung pathology" tab: upload a chest CT in Hounsfield units (NIfTI, a zipped DICOM
series or one DICOM file), run ``LungPathologyPipeline`` as ``medrefine lung-pathology`` does,
scroll its slices with the classes overlaid, read the severity table (mL and % of lung per
class, from ``lungpath.outputs.summary``) and download the label map, the DICOM-SEG (DICOM
input) and the JSON, written by ``lungpath.outputs.write_result`` into the session's request
folder.

The pipeline is loaded once per server and shared by every session (inference only reads
it). A run keeps the slices (lung window, uint8) and the label map in the tab's own state, so
the slider re-draws a slice at display size from them without running the pipeline again."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np

from medrefine.app.ct_input import read_ct_upload
from medrefine.app.session import Session, readable_errors
from medrefine.errors import InputError
from medrefine.io import stem_of
from medrefine.lungpath.labels import CLASS_NAMES, COLOURS, DISPLAY_NAMES, LABELS

DISPLAY = 512  # the slice picture's longer side, in pixels
NOTE = (
    "Labels the lungs of a chest CT in Hounsfield units as healthy, emphysema, ground-glass, "
    "consolidation or fibrosis, without annotations (DiffSegLung; the same model and numbers "
    "as `medrefine lung-pathology`). **Unsupervised research output, not for diagnosis.**"
)
# check_hu's advice is for the command line; the page reads CT in HU only.
_CLI_ADVICE = "for 8-bit slices use --intensity rank (with --lung-masks DIR)"
_WEB_ADVICE = (
    "upload the CT in Hounsfield units (NIfTI or the zipped DICOM series); 8-bit slices run "
    "on the command line: medrefine lung-pathology --intensity rank"
)


@dataclass
class CTView:
    """What the slider draws from: the lung-window slices and the label map, (D, H, W) uint8
    each (a single slice is D = 1)."""

    grey: np.ndarray
    labels: np.ndarray


def build_ct_tab(session: gr.State) -> None:
    """The tab's components and events (called inside ``gr.Tabs`` by ``layout.build_app``)."""
    view = gr.State(None, time_to_live=session.time_to_live)
    gr.Markdown(NOTE)
    with gr.Row():
        with gr.Column():
            ct_file = gr.File(
                label="CT in HU: NIfTI (.nii, .nii.gz), a zipped DICOM series (.zip) or one "
                "DICOM file",
                elem_id="ct-file",
            )
            run = gr.Button("Find lung pathology", variant="primary", elem_id="ct-run")
            status = gr.Markdown(elem_id="ct-status")
            table = gr.Markdown(elem_id="ct-table")
            with gr.Row():
                nifti_dl = gr.DownloadButton(
                    "Label map (NIfTI)", interactive=False, elem_id="ct-download-nifti"
                )
                seg_dl = gr.DownloadButton(
                    "DICOM-SEG", interactive=False, visible=False, elem_id="ct-download-seg"
                )
                json_dl = gr.DownloadButton(
                    "Report (JSON)", interactive=False, elem_id="ct-download-json"
                )
        with gr.Column():
            picture = gr.Image(
                label="Slice with the classes", format="png", interactive=False,
                elem_id="ct-slices",
            )  # fmt: skip
            slider = gr.Slider(0, 1, 0, step=1, label="Slice", visible=False, elem_id="ct-slice")
            gr.HTML(legend_html(), elem_id="ct-legend")
    outputs = [view, picture, slider, table, status, nifti_dl, seg_dl, json_dl]
    ct_file.change(clear_ct, None, outputs)
    run.click(run_ct, [session, ct_file], [session, *outputs])
    # Drawing a slice is quick: not held up behind the queue's pipeline runs.
    slider.change(
        show_ct_slice, [view, slider], [picture], trigger_mode="always_last",
        show_progress="hidden", concurrency_limit=None,
    )  # fmt: skip


# ---------------------------------------------------------------- the pipeline
_load_lock = threading.Lock()


@functools.cache
def _load_pipeline():
    from medrefine.lungpath.pipeline import InferenceConfig, LungPathologyPipeline

    # threads=0 keeps the server's share of the cores (commands/app.py); the default 1 would
    # set the whole process, every tab's models, to one thread. The labels do not depend on it.
    return LungPathologyPipeline(config=InferenceConfig(threads=0))


def shared_pipeline():
    """The shipped lung-pathology pipeline, loaded on first use, one per server."""
    with _load_lock:
        return _load_pipeline()


# ---------------------------------------------------------------- callbacks
@readable_errors
def run_ct(
    session: Session | None,
    ct_file: str | None,
    progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress tracker)
):
    """Run the pipeline on the upload and fill the tab: the slice picture and its slider, the
    severity table, the status (with the coverage warning) and the three downloads."""
    from medrefine.lungpath.outputs import coverage_warning, display01, summary, write_result

    if not ct_file:
        raise InputError("no CT uploaded; upload a NIfTI, a zipped DICOM series or a DICOM file")
    t0 = time.perf_counter()
    session = session or Session()
    upload = Path(ct_file)
    request = session.new_request()
    zipped = upload.suffix.lower() == ".zip"
    progress(0.05, desc="unpacking the series" if zipped else "reading the CT")
    stem = stem_of(upload.name)
    try:
        image = read_ct_upload(upload, request)
        progress(0.2, desc="loading the model")
        pipe = shared_pipeline()
        progress(0.3, desc="lung mask, diffusion features, clustering")
        try:
            result = pipe.run(image)
        except InputError as err:
            raise InputError(str(err).replace(_CLI_ADVICE, _WEB_ADVICE)) from err
        progress(0.85, desc="writing the label map and the report")
        extra = {
            "input": upload.name,
            "weights_sha256": pipe.provenance()["weights"]["lungpath"]["sha256"],
        }
        written = write_result(result, request, stem, ["nifti", "dicom-seg", "json"], extra)
    finally:  # the unpacked zip (the DICOM-SEG is written from the headers kept in memory)
        shutil.rmtree(request / "series", ignore_errors=True)
    paths = {p.name: p for p in written}
    report = summary(result, extra)
    grey = (display01(result) * 255).astype(np.uint8)  # as the montage
    labels = result.labels
    if labels.ndim == 2:
        grey, labels = grey[None], labels[None]
    view = CTView(grey, labels)
    index = int(np.argmax((labels > 0).sum(axis=(1, 2))))  # the slice with the most lung
    depth = len(labels)
    warning = coverage_warning(result, upload.name)
    if warning is not None:
        gr.Warning(warning)
    text = (
        f"**{upload.name}**: {_ml(result.lung_ml)} mL of lung, "
        f"{100 * report['abnormal_fraction_of_lung']:.1f}% of it abnormal; "
        f"{time.perf_counter() - t0:.1f} s."
    )
    if warning is not None:
        text = f"**Warning:** {warning.removeprefix(f'{upload.name}: warning: ')}\n\n{text}"
    dicom = f"{stem}.dcm" in paths
    return (
        session,
        view,
        render_slice(view, index),
        gr.update(
            visible=depth > 1,
            minimum=0,
            maximum=max(depth - 1, 1),
            value=index,
            label=f"Slice (of {depth})",
        ),  # fmt: skip
        severity_table(report),
        text,
        gr.update(value=str(paths[f"{stem}.nii.gz"]), interactive=True),
        gr.update(
            value=str(paths[f"{stem}.dcm"]) if dicom else None, interactive=dicom, visible=dicom
        ),  # fmt: skip
        gr.update(value=str(paths[f"{stem}.json"]), interactive=True),
    )


@readable_errors
def show_ct_slice(view: CTView | None, index: float | None):
    """The slider moved: slice ``index`` re-drawn from the kept label map."""
    if view is None:
        return gr.update()
    return render_slice(view, index)


def clear_ct():
    """A new upload: the last CT's results go (the outputs of ``run_ct`` after the session)."""
    off = gr.update(value=None, interactive=False)
    return [None, None, gr.update(visible=False, value=0), "", "", off,
            gr.update(value=None, interactive=False, visible=False), off]  # fmt: skip


# ---------------------------------------------------------------- pictures and tables
def render_slice(view: CTView, index: float | None) -> np.ndarray:
    """uint8 RGB: slice ``index`` (clipped to the volume) at display size (longer side
    ``DISPLAY``), the classes blended in their colours as in the montage."""
    from medrefine.lungpath.outputs import colour_slice

    d = min(max(int(index or 0), 0), len(view.labels) - 1)
    grey, labels = view.grey[d], view.labels[d]
    h, w = grey.shape
    f = DISPLAY / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA)
    labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    return colour_slice(grey, labels)


def severity_table(report: dict[str, Any]) -> str:
    """Markdown: mL and % of lung per class and the lung in the scan, from ``summary()``."""
    lines = ["| Class | mL | % of lung |", "|---|---:|---:|"]
    for name in CLASS_NAMES:
        row = report["classes"][name]
        lines.append(
            f"| {DISPLAY_NAMES[name]} | {_ml(row['ml'])} | {100 * row['fraction_of_lung']:.1f} |"
        )
    lines.append(f"| **Lung in the scan** | **{_ml(report['lung_ml'])}** | **100.0** |")
    lines.append("")
    abnormal = 100 * report["abnormal_fraction_of_lung"]
    lines.append(f"Abnormal (not healthy): {abnormal:.1f}% of the lung.")
    return "\n".join(lines)


def legend_html() -> str:
    """The overlay's colours, one swatch per class."""
    items = "".join(
        f'<span style="display:inline-flex;align-items:center;margin-right:1em">'
        f'<span style="width:1em;height:1em;margin-right:0.3em;display:inline-block;'
        f'background:rgb{COLOURS[LABELS[name]]}"></span>{DISPLAY_NAMES[name]}</span>'
        for name in CLASS_NAMES
    )
    return f'<div class="ct-legend">{items}</div>'


def _ml(ml: float | None) -> str:
    return "n/a" if ml is None else f"{ml:.1f}"
