"""The app's Inpaint tab in headless Chromium: upload an X-ray, paint a stroke, inpaint,
download; then a mask upload, whose download must equal the Python API's result."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from inpaint_helpers import xray_like
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web interface needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")

from medrefine import app  # noqa: E402
from medrefine.inpaint.pipeline import (  # noqa: E402
    SYNTHETIC_NOTE,
    InpaintingPipeline,
    preset_weights,
)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found"),
    pytest.mark.skipif(not preset_weights("inpaint").is_file(),
                       reason="the inpaint preset's weights are not installed"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_inpaint_tab_brush_and_mask_upload(server, tmp_path):
    image = xray_like(np.random.default_rng(0), (96, 80))
    Image.fromarray(image).save(tmp_path / "cxr.png")
    mask = np.zeros(image.shape, np.uint8)
    mask[40:60, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "hole.png")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Inpaint").click()
            page.locator("#inpaint-file input[type=file]").set_input_files(
                str(tmp_path / "cxr.png"))
            page.wait_for_function(
                "() => document.querySelector('#inpaint-editor canvas') !== null")
            canvas = page.locator("#inpaint-editor canvas").first
            page.wait_for_timeout(3000)  # the editor binds its brush after the canvas appears
            box = canvas.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
            page.mouse.down()
            for f in (0.4, 0.5, 0.6, 0.7):
                page.mouse.move(box["x"] + box["width"] * f, box["y"] + box["height"] * 0.5)
            page.mouse.up()
            page.locator("#inpaint-run").click()
            page.wait_for_function(
                "() => document.querySelector('#inpaint-status').innerText.includes('Synthetic')")
            page.wait_for_function("() => !document.querySelector('#inpaint-download').disabled")
            with page.expect_download() as info:
                page.locator("#inpaint-download").click()
            brushed = tmp_path / "brushed.png"
            info.value.save_as(brushed)
            # the same image with an uploaded mask
            page.locator("#inpaint-mask input[type=file]").set_input_files(
                str(tmp_path / "hole.png"))
            page.wait_for_timeout(2000)  # the upload reaches the server before the run
            page.locator("#inpaint-run").click()
            page.wait_for_function(
                "() => document.querySelector('#inpaint-status').innerText.includes('Filled 7.8%')")
            with page.expect_download() as info:
                page.locator("#inpaint-download").click()
            uploaded = tmp_path / "uploaded.png"
            info.value.save_as(uploaded)
        finally:
            browser.close()
    out = np.asarray(Image.open(brushed))
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = out != image
    assert 0 < changed.mean() < 0.5
    assert Image.open(brushed).info["Description"] == SYNTHETIC_NOTE
    expected = InpaintingPipeline(steps=4, samples=2, seed=0).run(image, mask)
    np.testing.assert_array_equal(np.asarray(Image.open(uploaded)), expected.inpainted)
