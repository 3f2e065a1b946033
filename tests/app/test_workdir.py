"""Nothing left on disk (issues 25 and 26): the server's own folder, deleted when it stops, and
what dead servers left deleted at the next start; Gradio's stray files (empty ``tmp*``, partial
uploads) never kept; a session's uploads and pictures deleted when it ends."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the web interface needs gradio (pip install gradio)")
httpx = pytest.importorskip("httpx")

from medrefine.app import gradio_fixes, workdir  # noqa: E402
from medrefine.errors import ConfigError  # noqa: E402
from medrefine.presets import sample_path  # noqa: E402

SAMPLES = sample_path("polyp").parent
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def plant_server(root: Path, pid: int, files: dict[str, bytes]) -> Path:
    """A server folder as a server killed mid-upload leaves it (files relative to gradio/)."""
    folder = root / f"{pid}-{secrets.token_hex(8)}"
    for name, data in files.items():
        path = folder / "gradio" / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_bytes(data)
        path.chmod(0o600)
    return folder


def hold_lock(folder: Path) -> int:
    """Lock ``folder`` as its (live) server would; close the fd to let go."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_start_removes_what_dead_servers_left_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    root = workdir.servers_root(tmp_path)
    assert root.stat().st_mode & 0o777 == 0o700
    partial = {"tmpab12cd34": b"\x89PNG half of a patient's image", "f00d/image.png": b"png"}
    dead = plant_server(root, 999_999_999, partial)
    live = plant_server(root, os.getpid(), {"d00d/scan.png": b"png"})
    foreign = [root / "notes.txt", tmp_path / "other-app" / "upload.png"]
    for path in foreign:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not ours")
    fd = hold_lock(live)
    try:
        folder = workdir.claim(tmp_path)
        try:
            assert not dead.exists()  # its lock was free: its server is gone
            assert (live / "gradio" / "d00d" / "scan.png").is_file()  # a live server's: kept
            assert all(path.is_file() for path in foreign)
            assert folder.path.parent == root and folder.path.stat().st_mode & 0o777 == 0o700
            assert os.environ["GRADIO_TEMP_DIR"] == str(folder.gradio)
            assert tempfile.gettempdir() == str(folder.tmp)
            # The claimed folder is locked: another start leaves it alone.
            assert workdir.remove_dead_servers(tmp_path) == []
            assert folder.gradio.is_dir()
        finally:
            folder.release()
        assert not folder.path.exists()
        assert "GRADIO_TEMP_DIR" not in os.environ and tempfile.gettempdir() != str(folder.tmp)
        folder.release()  # idempotent
    finally:
        os.close(fd)
    assert workdir.remove_dead_servers(tmp_path) == [live]  # its server is gone now
    assert all(path.is_file() for path in foreign)


def test_a_root_of_another_user_is_refused(tmp_path, monkeypatch):
    root = tmp_path / workdir.ROOT_NAME
    root.symlink_to(tmp_path)  # what someone else could plant in a shared /tmp
    with pytest.raises(ConfigError, match="set GRADIO_TEMP_DIR to a folder of your own"):
        workdir.claim(tmp_path)
    root.unlink()
    root.mkdir(mode=0o755)
    workdir.servers_root(tmp_path)
    assert root.stat().st_mode & 0o777 == 0o700  # ours but readable by others: made private


def test_file_inputs_leave_no_empty_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    gradio_fixes.apply()
    upload = tmp_path / "abc" / "scan.png"
    upload.parent.mkdir()
    upload.write_bytes(b"png")
    component = gr.File(file_types=[".png"])
    assert component.preprocess(gr.FileData(path=str(upload))) == str(upload)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["scan.png"]
    with pytest.raises(gr.Error, match="Invalid file type"):
        component.preprocess(gr.FileData(path=str(tmp_path / "abc" / "scan.txt")))


def test_the_examples_copies_survive_gradio_s_cache_sweep(tmp_path, monkeypatch):
    """Gradio's hourly sweep (``delete_cache``) would delete the copies of the examples it
    made when the page was built, and the examples would then fail to load."""
    from gradio.route_utils import delete_files_created_by_app

    from medrefine.app import build_app, server

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    demo = build_app()
    kept = server._keep_app_files(demo)
    assert kept and {Path(p).name for p in kept} >= {"kvasir_polyp.jpg", "kvasir_polyp_mask.png"}
    delete_files_created_by_app(demo, None)  # None: every file, whatever its age
    assert all(Path(p).is_file() for p in kept)


# ---------------------------------------------------------------- the real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def session_files(folder: Path) -> list[Path]:
    """The files under ``folder`` but the copies of the bundled example pictures (the app's
    own, shared by every session)."""
    pictures = [p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png")]
    samples = {hashlib.sha256(p.read_bytes()).hexdigest() for p in pictures}
    return [
        p for p in files_under(folder) if hashlib.sha256(p.read_bytes()).hexdigest() not in samples
    ]


def wait_for(condition, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def abort_an_upload(port: int) -> None:
    """A browser that goes away after sending part of a 10 MB upload."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            b'--XX\r\nContent-Disposition: form-data; name="files"; filename="scan.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        sock.sendall(
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 10000000\r\n\r\n"
            + head
            + b"\x89PNG" * 100_000
        )
        time.sleep(1.0)


@pytest.mark.skipif(not sample_path("polyp").is_file(), reason="the polyp sample is missing")
def test_nothing_is_left_on_disk(tmp_path, tiny_weights, disk_image):
    """`medrefine app` in a subprocess: what a killed server left goes at the start; an
    aborted upload goes at once; a session's uploads and pictures go when it ends; SIGTERM
    leaves no file of the server's."""
    from gradio_client import Client, handle_file

    base, system_tmp = tmp_path / "gradio", tmp_path / "tmp"
    system_tmp.mkdir()
    root = workdir.servers_root(base)
    dead = plant_server(root, 999_999_999, {"tmpab12cd34": b"partial", "f00d/image.png": b"png"})
    live = plant_server(root, os.getpid(), {"d00d/scan.png": b"png"})
    other_app = base / "0123abcd" / "another-gradio-app.png"
    other_app.parent.mkdir()
    other_app.write_bytes(b"not ours")
    lock = hold_lock(live)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(
        os.environ,
        GRADIO_TEMP_DIR=str(base),
        TMPDIR=str(system_tmp),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_IS_E2E_TEST="1",  # Gradio drops a closed tab's state after 1 s, not 1 h
        OMP_NUM_THREADS="1",
    )
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "medrefine.cli", "-v", "app", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        wait_for(
            lambda: _ready(url, server), 300, f"the server to start ({log.read_text()[-500:]})"
        )
        assert not dead.exists()
        assert files_under(live) and other_app.is_file()
        (mine,) = [p for p in root.iterdir() if p not in (live,)]
        gradio_folder = mine / "gradio"
        cookie = {"Cookie": f"medrefine_client={secrets.token_urlsafe(32)}"}
        with disk_image[1].open("rb") as fh:  # an upload no session ever uses
            stray = httpx.post(f"{url}gradio_api/upload", files={"files": fh}, headers=cookie)
        stray = Path(stray.json()[0]).resolve()
        client = Client(url, verbose=False, headers=cookie, download_files=str(tmp_path / "dl"))
        out = client.predict(
            image_file=handle_file(str(disk_image[0])),
            gt_file=None,
            source="uploaded weights",
            coarse_file=handle_file(str(tiny_weights["coarse"])),
            refiner_file=None,
            use_diffusion=False,
            api_name="/segment_image",
        )
        assert Path(out[-2]["value"]).is_file()  # the mask reached the client
        abort_an_upload(port)
        wait_for(lambda: not list(gradio_folder.glob("tmp*")), 10, "the aborted upload to go")
        during = session_files(gradio_folder)
        assert any(p.name == "disk.png" for p in during)  # the session's upload
        assert any(p.name == "image.jpeg" for p in during)  # pictures it was sent
        assert any("medrefine-app-" in str(p) for p in during)  # its session folder
        client.close()  # the tab closes: the session ends
        wait_for(
            lambda: [p.resolve() for p in session_files(gradio_folder)] == [stray],
            30,
            "the session's files to go",
        )
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        os.close(lock)
    assert not mine.exists()
    assert files_under(base) == sorted([other_app, *files_under(live)])
    assert list(system_tmp.iterdir()) == []  # nothing in the system's temporary folder either


def _ready(url: str, server: subprocess.Popen) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"the server exited with {server.returncode}")
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
