"""The "CT lung pathology" tab end to end in a real browser: serve the app, drive headless
Chromium with Playwright, upload a CT NIfTI (ct_hu_samples), run it, see the severity table and
the overlay, scroll the slices, download the label map and compare it with the Python API.

Uses Debian's Chromium (/usr/bin/chromium), as tests/app/test_browser.py does. A screenshot
goes to $MEDREFINE_ARTIFACTS or tests/artifacts/.
"""

from __future__ import annotations

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
TIMEOUT_MS = 120_000  # a busy CI machine; the pipeline takes a few seconds on this CT

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
def ct_nifti(data_dir: Path, tmp_path: Path) -> Path:
    """example_ct_sm.nii.gz (30 slices, 3 mm), copied: the page uploads it."""
    source = data_dir / "ct_hu_samples" / "example_ct_sm.nii.gz"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    return Path(shutil.copy(source, tmp_path / source.name))


@pytest.fixture
def server():
    """The app on a free loopback port, in a thread of this process; its URL."""
    port = free_port()
    demo = app.launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


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
