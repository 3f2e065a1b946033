"""The web interface (Gradio): upload an image, segment it, compare the coarse and the refined
mask, look at the uncertainty, download the mask.

    medrefine app                      # http://127.0.0.1:7860
    python app.py --port 8080          # the same, from the repository root

The callbacks are plain functions (``segment_image``, ``segment_batch``, ...) that call the
Python API only (``SegmentationPipeline``, ``read_image``, ``write_mask``, ``visualize``,
``metrics``), so they can be tested without a browser. Each browser session owns a ``Session``
(kept in a ``gr.State``): a temporary folder that holds everything the app writes for it and
is deleted when the session ends, and the session's last result. Nothing else is shared
between users but the loaded models, which inference only reads.

Modules:
    session     the per-session state and ``readable_errors`` (errors as ``gr.Error``)
    guard       files served to their own browser only, deleted when their sessions end
    workdir     the server's own folder (Gradio's uploads, temporary files), gone when it stops
    gradio_fixes  Gradio's leftover and half-written files (empty ``tmp*``, partial uploads)
    models      presets or uploaded weights, their settings, the pipeline of one request
    files       uploads read, pictures, downloads, the batch's masks and zip
    callbacks   previews, ``segment_image`` (single tab), ``segment_batch`` (batch tab)
    layout      ``build_app``: the Blocks and their wiring
    server      ``launch``: serves them in the server's folder until Ctrl-C or SIGTERM
"""

from medrefine.app.callbacks import (
    change_mask_format,
    clear_results,
    preview_image,
    preview_slice,
    segment_batch,
    segment_image,
)
from medrefine.app.files import (
    COARSE_COLOR,
    MASK_FORMATS,
    REFINED_COLOR,
    display_image01,
    to_rgb,
    write_downloads,
)
from medrefine.app.layout import FONTS, build_app
from medrefine.app.models import (
    UPLOADED,
    _cached_pipeline,
    available_presets,
    build_pipeline,
    change_refiner_upload,
    change_source,
    model_defaults,
    model_note,
    postprocess_from,
)
from medrefine.app.prompt import painted_mask, prompt_canvas, refine_prompt
from medrefine.app.server import MAX_FILE_SIZE, launch
from medrefine.app.session import Outcome, Session, close_session, readable_errors
from medrefine.presets import PRESETS

__all__ = [
    "COARSE_COLOR",
    "FONTS",
    "MASK_FORMATS",
    "MAX_FILE_SIZE",
    "PRESETS",
    "REFINED_COLOR",
    "UPLOADED",
    "Outcome",
    "Session",
    "_cached_pipeline",
    "available_presets",
    "build_app",
    "build_pipeline",
    "change_mask_format",
    "change_refiner_upload",
    "change_source",
    "clear_results",
    "close_session",
    "display_image01",
    "launch",
    "model_defaults",
    "model_note",
    "painted_mask",
    "postprocess_from",
    "prompt_canvas",
    "preview_image",
    "preview_slice",
    "readable_errors",
    "refine_prompt",
    "segment_batch",
    "segment_image",
    "to_rgb",
    "write_downloads",
]
