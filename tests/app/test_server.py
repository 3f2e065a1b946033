"""The web server's safety (issue 15): files served to their own browser only, owner-only
session folders removed at session end, at SIGTERM and (stale ones) at the next start, login
from a file or the environment, bombs refused while the server stays up."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the web interface needs gradio (pip install gradio)")
httpx = pytest.importorskip("httpx")

from medrefine import app  # noqa: E402
from medrefine.app import gradio_fixes, guard  # noqa: E402
from medrefine.commands.app import read_auth  # noqa: E402
from medrefine.errors import ConfigError  # noqa: E402
from medrefine.presets import sample_path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture
def gradio_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def test_session_folders_are_owner_only_and_go_away(gradio_dir):
    session = app.Session()
    request = session.new_request()
    assert session.folder.parent == guard.server_root()
    assert session.folder.parent.parent == gradio_dir.resolve()  # Gradio serves it in place
    for folder in (session.folder.parent, session.folder, request):
        assert folder.stat().st_mode & 0o777 == 0o700
    assert len(session.folder.name) >= 32  # unguessable
    app.close_session(session)
    assert not session.folder.exists()
    dropped = app.Session()
    folder = dropped.folder
    del dropped  # never closed: the finalizer removes it
    assert not folder.exists()


def test_stale_roots_of_dead_servers_are_removed(gradio_dir):
    gradio_dir.mkdir()
    dead = gradio_dir / f"{guard.ROOT_PREFIX}999999999-abc"
    (dead / "session").mkdir(parents=True)
    (dead / "session" / "mask.png").write_bytes(b"x")
    mine = guard.server_root()
    assert dead in guard.remove_stale_roots()
    assert not dead.exists() and mine.is_dir()


def test_files_are_served_to_their_browser_only(gradio_dir, tmp_path):
    port = _free_port()
    demo = app.launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        page = httpx.get(url)
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(guard.COOKIE) and "HttpOnly" in cookie
        assert "Limits." in page.text and "--max-decoded-mb" not in page.text
        owner = {"Cookie": cookie.split(";")[0]}
        other = {"Cookie": f"{guard.COOKIE}={secrets.token_urlsafe(32)}"}
        with sample_path("polyp").open("rb") as fh:
            upload = httpx.post(f"{url}gradio_api/upload", files={"files": fh}, headers=owner)
        path = upload.json()[0]
        assert Path(path).is_relative_to(gradio_dir.resolve())
        fetch = f"{url}gradio_api/file={path}"
        assert httpx.get(fetch, headers=owner).status_code == 200
        assert httpx.get(fetch, headers=other).status_code == 403
        assert httpx.get(fetch).status_code == 403
        # A file outside Gradio's folder (the bundled examples) follows Gradio's own rules.
        assert httpx.get(f"{url}gradio_api/file={sample_path('polyp')}").status_code == 200
        session = app.Session()
    finally:
        demo.close()
    assert not session.folder.exists() and not Path(path).exists()  # removed at shutdown


def test_a_session_s_files_go_when_the_last_session_using_them_ends(tmp_path):
    cache = tmp_path / "gradio"
    registry = guard.FileRegistry(cache)
    files = {}
    for name in ("example/polyp.jpg", "shared/scan.png", "a/image.png", "b/image.png", "c/x.png"):
        files[name] = cache / name
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_bytes(b"x")
    registry.keep.add(str(files["example/polyp.jpg"].resolve()))

    def quoted(*names: str) -> bytes:
        return json.dumps({"data": [{"path": str(files[n])} for n in names]}).encode()

    # Responses (uploads, the queue's stream) give a browser its files, and a session its own.
    registry.record("alice", quoted("example/polyp.jpg", "shared/scan.png"))
    registry.record("alice", quoted("a/image.png"), session="tab-a")
    registry.record("bob", quoted("shared/scan.png", "b/image.png"), session="tab-b")
    # A request's inputs join its session if they were sent to that browser: "c/x.png" was not.
    registry.record_request("alice", "tab-a", quoted("example/polyp.jpg", "shared/scan.png"))
    registry.record_request("alice", "tab-a", quoted("c/x.png"))
    registry.record_request("bob", "tab-b", quoted("shared/scan.png"))
    assert registry.end_session("tab-a") == 1  # a/image.png; scan.png is tab-b's too
    assert not files["a/image.png"].exists() and not files["a/image.png"].parent.exists()
    assert files["shared/scan.png"].exists() and files["c/x.png"].exists()
    assert registry.end_session("tab-b") == 2
    assert not files["shared/scan.png"].exists() and not files["b/image.png"].exists()
    assert files["example/polyp.jpg"].exists()  # the app's own: kept
    assert not registry.allowed("alice", str(files["a/image.png"]))


def test_an_idle_session_without_state_ends_after_idle_s(tmp_path, monkeypatch):
    cache = tmp_path / "gradio"
    (cache / "a").mkdir(parents=True)
    upload = cache / "a" / "scan.png"
    upload.write_bytes(b"x")
    registry = guard.FileRegistry(cache, idle_s=600)
    registry.record("alice", json.dumps([str(upload)]).encode(), session="tab")
    now = guard.time.monotonic()
    monkeypatch.setattr(guard.time, "monotonic", lambda: now + 601)
    registry.record("bob", b"{}")  # any later response sweeps
    assert not upload.exists()


def test_auth_comes_from_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users"
    users.write_text("# who may log in\nalice:s3cret:with:colons\nbob:pw\n")
    users.chmod(0o600)
    assert read_auth(str(users)) == [("alice", "s3cret:with:colons"), ("bob", "pw")]
    assert capsys.readouterr().err == ""
    users.chmod(0o644)
    read_auth(str(users))
    assert "readable by other users" in capsys.readouterr().err
    monkeypatch.setenv("MEDREFINE_TEST_AUTH", "carol:pw1,dave:pw2")
    assert read_auth("env:MEDREFINE_TEST_AUTH") == [("carol", "pw1"), ("dave", "pw2")]
    with pytest.raises(ConfigError, match="not set"):
        read_auth("env:MEDREFINE_NO_SUCH_VARIABLE")
    (tmp_path / "bad").write_text("alice\n")
    with pytest.raises(ConfigError, match="user:password"):
        read_auth(str(tmp_path / "bad"))


def test_launch_passes_auth_concurrency_and_the_file_guard(monkeypatch, gradio_dir):
    captured = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: captured.update(kw))
    demo = app.launch(auth=[("alice", "pw")], concurrency=3, queue_size=5)
    assert captured["auth"] == [("alice", "pw")] and captured["server_name"] == "127.0.0.1"
    assert [m.cls for m in captured["app_kwargs"]["middleware"]] == [
        guard.FileGuard,
        gradio_fixes.UploadCleanup,
    ]
    assert demo._queue.default_concurrency_limit == 3 and demo._queue.max_size == 5


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(requests: int) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "app_load.py"), "--requests", str(requests)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.stdout, done.stderr[-2000:]
    return json.loads(done.stdout)


def _check(result: dict, requests: int) -> None:
    assert result["ok"] == requests, result
    assert result["cross_session"] == {"owner": 200, "other browser": 403, "no cookie": 403}
    bomb = result["bomb"]
    assert bomb["refused_s"] < 5 and "--max-decoded-mb" in bomb["error"], bomb
    assert bomb["alive_after"] and bomb["segments_after"]
    assert result["server_peak_rss_mb"] < 2048
    assert result["sessions_before_sigterm"] >= requests
    assert result["sigterm_exit_code"] == 0 and result["session_folders_left"] == []
    assert result["upload_files_left"] == 0, result["files_left"]


@pytest.mark.skipif(not sample_path("polyp").is_file(), reason="the polyp sample is missing")
def test_server_survives_a_bomb_and_leaves_nothing_after_sigterm():
    """`medrefine app` in a subprocess: two browsers at once, a PNG bomb, kill -TERM."""
    _check(_load(2), 2)


@pytest.mark.slow
def test_twenty_concurrent_browsers():
    _check(_load(20), 20)
