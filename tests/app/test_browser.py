"""End to end in a real browser: serve the app, drive headless Chromium with Playwright, upload a
Kvasir-SEG test image, segment it, download the mask and compare it with the Python API.

Uses Debian's Chromium (/usr/bin/chromium; Playwright's own browser download is not used). The
real ``polyp`` preset is used when its coarse and refiner weights are installed, else tiny
seeded weights uploaded through the page. The "CT lung pathology" tab: upload a CT NIfTI
(ct_hu_samples), run it, see the severity table and the overlay, scroll the slices, download
the label map and compare it with the Python API. Screenshots go to $MEDREFINE_ARTIFACTS or
tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the web interface needs gradio (pip install gradio)")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (pip install playwright)"
)

from medrefine import app  # noqa: E402
from medrefine.io import read_mask  # noqa: E402
from medrefine.lungpath.pipeline import LungPathologyPipeline  # noqa: E402
from medrefine.pipeline import SegmentationPipeline  # noqa: E402
from medrefine.postprocess import PostprocessConfig  # noqa: E402
from medrefine.presets import get_preset  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 120_000  # a busy CI machine; the tiny models take well under a second

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found (apt-get install -y chromium)"
    ),
    # Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def artifacts_dir() -> Path:
    folder = Path(
        os.environ.get("MEDREFINE_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def kvasir_test_image(data_dir: Path, tmp_path: Path) -> Path:
    """The first test-split image of Kvasir-SEG's manifest (copied: the page uploads it)."""
    root = data_dir / "kvasir_seg"
    manifest = root / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    stem = json.loads(manifest.read_text())["split"]["test"][0]
    found = sorted((root / "images").glob(f"{stem}.*"))
    if not found:
        pytest.skip(f"Kvasir-SEG test image {stem} not found")
    return Path(shutil.copy(found[0], tmp_path / found[0].name))


@pytest.fixture
def server():
    """The app on a free loopback port, in a thread of this process; its URL."""
    port = free_port()
    demo = app.launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_segment_and_download_in_the_browser(server, kvasir_test_image, tiny_weights, tmp_path):
    preset = get_preset("polyp")
    real = "polyp" in app.available_presets() and preset.refiner_weights.is_file()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server, wait_until="domcontentloaded")  # Gradio keeps a stream open
            page.wait_for_selector("#run")
            if not real:
                page.locator("#source").get_by_label(app.UPLOADED).check()
                page.locator("#coarse-weights input[type=file]").set_input_files(
                    str(tiny_weights["coarse"])
                )
                page.locator("#refiner-weights input[type=file]").set_input_files(
                    str(tiny_weights["refiner"])
                )
                # The uploaded refiner brings its tuned settings into the sliders.
                page.wait_for_function(
                    "() => document.querySelector('#steps input[type=number]').value === '2'"
                )
            page.locator("#image-file input[type=file]").set_input_files(str(kvasir_test_image))
            page.wait_for_selector("#preview img")
            page.locator("#run").click()
            page.wait_for_selector("#refined img")
            page.wait_for_selector("#uncertainty img")
            download_button = page.locator("#download-mask")
            page.wait_for_function("() => !document.querySelector('#download-mask').disabled")
            with page.expect_download() as info:
                download_button.click()
            downloaded = tmp_path / info.value.suggested_filename
            info.value.save_as(downloaded)
            page.screenshot(path=str(artifacts_dir() / "app_result.png"), full_page=True)
            status = page.locator("#status").inner_text()
        finally:
            browser.close()

    assert downloaded.name == f"{kvasir_test_image.stem}_mask.png"
    if real:
        pipe = SegmentationPipeline(preset="polyp")
    else:
        pipe = SegmentationPipeline(
            tiny_weights["coarse"], tiny_weights["refiner"], postprocess=PostprocessConfig()
        )
    expected = pipe.run(kvasir_test_image)
    np.testing.assert_array_equal(read_mask(downloaded), expected.mask)
    assert "refined" in status


def test_refine_boxes_and_brush_in_the_browser(server, tiny_weights, tmp_path):
    """The 'Refine a mask or box' tab: typed boxes give the Python API's mask; a brush stroke on
    the canvas is refined too."""
    image = Path(shutil.copy(get_preset("skin").folder.parents[1] / "samples" / "ph2_lesion.jpg",
                             tmp_path / "lesion.jpg"))
    real = "skin" in app.available_presets() and get_preset("skin").refiner_weights.is_file()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server, wait_until="domcontentloaded")
            page.wait_for_selector("#run")
            if real:
                page.locator("#source").get_by_label("skin").check()
            else:
                page.locator("#source").get_by_label(app.UPLOADED).check()
                page.locator("#coarse-weights input[type=file]").set_input_files(
                    str(tiny_weights["coarse"]))
                page.locator("#refiner-weights input[type=file]").set_input_files(
                    str(tiny_weights["refiner"]))
                page.wait_for_function(
                    "() => document.querySelector('#steps input[type=number]').value === '2'")
            page.locator("#image-file input[type=file]").set_input_files(str(image))
            page.wait_for_selector("#preview img")
            page.get_by_role("tab", name="Refine a mask or box").click()
            page.locator("#prompt-boxes textarea").fill("120,80,400,300")
            page.locator("#prompt-run").click()
            page.wait_for_selector("#prompt-result img")
            page.wait_for_function("() => !document.querySelector('#prompt-download').disabled")
            with page.expect_download() as info:
                page.locator("#prompt-download").click()
            downloaded = tmp_path / info.value.suggested_filename
            info.value.save_as(downloaded)
            box_status = page.locator("#prompt-status").inner_text()
            # a brush stroke across the canvas, boxes cleared: the painted region is refined
            page.locator("#prompt-boxes textarea").fill("")
            canvas = page.locator("#prompt-editor canvas").first
            page.wait_for_function(
                "() => document.querySelector('#prompt-editor canvas') !== null")
            box = canvas.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
            page.mouse.down()
            for f in (0.45, 0.5, 0.55, 0.6):
                page.mouse.move(box["x"] + box["width"] * f, box["y"] + box["height"] * 0.5)
            page.mouse.up()
            page.locator("#prompt-run").click()
            page.wait_for_function(
                "() => document.querySelector('#prompt-status').innerText.includes('painted')")
            page.screenshot(path=str(artifacts_dir() / "app_prompt.png"), full_page=True)
        finally:
            browser.close()
    assert "boxes" in box_status
    if real:
        pipe = SegmentationPipeline(preset="skin")
    else:
        pipe = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"],
                                    postprocess=PostprocessConfig())
    expected = pipe.run(image, boxes=[(120, 80, 400, 300)])
    np.testing.assert_array_equal(read_mask(downloaded), expected.mask)


@pytest.fixture
def ct_nifti(data_dir: Path, tmp_path: Path) -> Path:
    """example_ct_sm.nii.gz (30 slices, 3 mm), copied: the page uploads it."""
    source = data_dir / "ct_hu_samples" / "example_ct_sm.nii.gz"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    return Path(shutil.copy(source, tmp_path / source.name))


def test_ct_tab_in_the_browser(ct_nifti, server, tmp_path):  # the CT is copied first
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server, wait_until="domcontentloaded")  # Gradio keeps a stream open
            page.get_by_role("tab", name="CT lung pathology").click()
            page.locator("#ct-file input[type=file]").set_input_files(str(ct_nifti))
            page.wait_for_selector("#ct-file a, #ct-file .file-preview")  # upload arrived
            page.locator("#ct-run").click()
            page.wait_for_selector("#ct-table table")
            page.wait_for_selector("#ct-slices img")
            table = page.locator("#ct-table").inner_text()
            status = page.locator("#ct-status").inner_text()
            legend = page.locator("#ct-legend").inner_text()
            first_src = page.locator("#ct-slices img").get_attribute("src")
            # scroll: type a slice number into the slider's box; the picture is re-drawn
            box = page.locator("#ct-slice input[type=number]")
            box.fill("3")
            box.press("Enter")
            page.wait_for_function(
                "src => document.querySelector('#ct-slices img').getAttribute('src') !== src",
                arg=first_src,
            )
            page.wait_for_function("() => !document.querySelector('#ct-download-nifti').disabled")
            with page.expect_download() as info:
                page.locator("#ct-download-nifti").click()
            downloaded = tmp_path / "downloads" / info.value.suggested_filename
            info.value.save_as(downloaded)
            page.screenshot(path=str(artifacts_dir() / "app_ct.png"), full_page=True)
        finally:
            browser.close()

    assert "Ground-glass opacity" in table and "% of lung" in table and "Emphysema" in table
    assert "Lung in the scan" in table
    assert "partial lung coverage" in status  # this sample shows part of the lungs only
    assert "Consolidation" in legend and "Fibrosis" in legend
    assert downloaded.name == "example_ct_sm.nii.gz"
    expected = LungPathologyPipeline().run(ct_nifti)
    np.testing.assert_array_equal(read_mask(downloaded), expected.labels)
