"""``launch``: serve the interface ``layout.build_app`` lays out, in a folder of its own
(``workdir``), with the file guard and Gradio's fixes (``guard``, ``gradio_fixes``), until
Ctrl-C or SIGTERM; and the limits the page states."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from medrefine.app import gradio_fixes, workdir
from medrefine.app.guard import (
    FileGuard,
    FileRegistry,
    cache_folder,
    remove_server_roots,
    remove_stale_roots,
)
from medrefine.app.layout import FONTS, build_app
from medrefine.app.models import default_source, use_model_lane, warm_up
from medrefine.batch import sigterm_as_interrupt
from medrefine.io.limits import current_limits
from medrefine.presets import PRESETS, sample_path

logger = logging.getLogger(__name__)

MAX_FILE_SIZE = "200mb"
DEFAULT_CONCURRENCY = 2  # requests segmented at once; more wait in the queue
DEFAULT_MAX_BATCH = 0  # >0: the networks of concurrent requests run batched in one lane
DEFAULT_QUEUE_SIZE = 64  # requests waiting beyond that are refused ("queue full")
DEFAULT_IDLE_S = 4 * 3600.0


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
    max_batch: int = DEFAULT_MAX_BATCH,
    **kwargs: Any,
) -> gr.Blocks:
    """Build and serve the app; blocks until stopped (Ctrl-C or SIGTERM) unless
    ``prevent_thread_lock=True`` is passed (then the caller stops it with ``.close()`` on the
    returned Blocks).

    Everything the server writes goes into a folder of its own (``workdir``: Gradio's uploads,
    the pictures it renders, the session folders, temporary files), deleted when it stops,
    either way; a start first deletes what servers that were killed left. A session's uploads
    and pictures are deleted when it ends (``guard.FileRegistry``). ``concurrency`` requests
    run at once, up to ``queue_size`` more wait (each browser sees its place in the queue);
    output files are served only to the browser they were made for (``guard.FileGuard``);
    ``auth``: [(user, password)] pairs asked for on the login page. The requests' networks run
    in one lane that batches up to ``max_batch`` waiting calls (``microbatch.ModelLane``; 0:
    each request runs them itself)."""
    blocking = not kwargs.pop("prevent_thread_lock", False)
    with _sigterm_stops_the_server(blocking):
        remove_stale_roots()  # what medrefine versions before the server folder left
        folder = workdir.claim()

        def cleanup() -> None:
            remove_server_roots()
            folder.release()

        atexit.register(cleanup)
        try:
            demo = _serve(
                dict(server_name=host, server_port=port, share=share, auth=auth or None),
                max_file_size=max_file_size,
                concurrency=concurrency,
                queue_size=queue_size,
                idle_s=idle_s,
                max_batch=max_batch,
                **kwargs,
            )
        except BaseException:
            cleanup()
            raise
        if not blocking:
            close = demo.close

            def close_and_clean(*args: Any, **kw: Any) -> Any:
                try:
                    return close(*args, **kw)
                finally:
                    cleanup()

            demo.close = close_and_clean  # type: ignore[method-assign]
            return demo
        try:
            while demo.is_running:
                time.sleep(0.1)
        except KeyboardInterrupt:
            logger.info("stopping the server")
        finally:
            demo.close()  # the queue and the heartbeats first, then the server
            cleanup()
    return demo


def _serve(
    server: dict[str, Any],
    *,
    max_file_size: str | int,
    concurrency: int,
    queue_size: int,
    idle_s: float,
    max_batch: int = DEFAULT_MAX_BATCH,
    **kwargs: Any,
) -> gr.Blocks:
    """``launch``'s server, started in a thread (``server``: where it listens, who may log in);
    the caller owns the server folder it runs in."""
    gradio_fixes.apply()
    registry = FileRegistry(cache_folder(), idle_s=idle_s)
    notice = limits_notice(max_file_size, concurrency, idle_s)
    demo = build_app(idle_s=idle_s, notice=notice, on_session_end=registry.end_session)
    use_model_lane(max_batch)
    warm_up(default_source())
    registry.keep.update(_keep_app_files(demo))
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [
        *app_kwargs.get("middleware", []),
        Middleware(FileGuard, registry=registry),
        Middleware(gradio_fixes.UploadCleanup),
    ]
    demo.launch(
        **server,
        max_file_size=max_file_size,
        ssr_mode=False,
        show_error=False,
        theme=gr.themes.Default(**FONTS),
        allowed_paths=[str(sample_path(next(iter(PRESETS))).parent)],
        app_kwargs=app_kwargs,
        prevent_thread_lock=True,
        **kwargs,
    )
    return demo


def _keep_app_files(demo: gr.Blocks) -> set[str]:
    """The files ``build_app`` put in the cache (the examples' copies) are the app's, shared by
    every session: no session's end deletes them, nor does Gradio's hourly sweep (which would
    otherwise break the examples after an hour)."""
    kept = set()
    for block in demo.blocks.values():
        files = getattr(block, "temp_files", None)
        if files and isinstance(getattr(block, "keep_in_cache", None), set):
            block.keep_in_cache.update(files)
            kept.update(os.path.realpath(f) for f in files)
    return kept


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
    """SIGTERM stops a blocking server like Ctrl-C, so ``launch`` deletes the server's folder
    instead of leaving it behind. A second SIGTERM while it stops is ignored (it would cut
    the deletion short); SIGKILL still ends it, and the next start deletes the rest."""
    if not blocking:
        yield
        return
    with sigterm_as_interrupt(once=True):
        yield
