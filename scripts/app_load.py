"""Load and abuse test of the web server, on loopback; prints one JSON document.

Starts ``medrefine app`` in a subprocess (its own Gradio folder in a temporary directory),
then: N browsers segment the bundled polyp sample at the same moment (latency of each, the
server's peak resident memory); a file one browser uploaded is fetched by its owner, by
another browser and by no browser; a 16000 x 16000 PNG bomb is uploaded (seconds until it is
refused, server still alive and still segmenting); finally ``kill -TERM`` and what is left on
disk: session folders, and every file under the Gradio folder and the server's TMPDIR but the
copies of the bundled example pictures (``upload_files_left``, 0 when nothing is left).
tests/app/test_server.py runs it small; the README's figures come from

    python scripts/app_load.py --requests 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "medrefine" / "samples" / "kvasir_polyp.jpg"
sys.path.insert(0, str(ROOT / "tests" / "io"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, work: Path, extra: list[str]) -> subprocess.Popen:
    (work / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, GRADIO_TEMP_DIR=str(work / "gradio"), TMPDIR=str(work / "tmp"))
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    cmd = [sys.executable, "-m", "medrefine.cli", "app", "--port", str(port), *extra]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb")
    )


def session_folders(gradio: Path) -> list[Path]:
    """The session folders under the Gradio folder (in the server's own folder)."""
    return [p for root in gradio.rglob("medrefine-app-*") if root.is_dir() for p in root.iterdir()]


def files_left(folder: Path) -> list[Path]:
    """Every file under ``folder`` except copies of the bundled example pictures (the repo's)."""
    pictures = [p for p in SAMPLE.parent.iterdir() if p.suffix in (".jpg", ".png")]
    samples = {hashlib.sha256(p.read_bytes()).digest() for p in pictures}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and hashlib.sha256(p.read_bytes()).digest() not in samples
    )


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 240) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


class PeakRSS(threading.Thread):
    """Polls /proc/PID/status; ``peak_mb`` is the largest VmRSS seen (VmHWM at the end)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.running = pid, 0.0, True

    def read(self, key: str) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def run(self) -> None:
        while self.running:
            self.peak_mb = max(self.peak_mb, self.read("VmRSS"), self.read("VmHWM"))
            time.sleep(0.1)


# One TLS context for every browser: gradio_client otherwise builds one per HTTP call (loading
# the CA store, about 20 ms of CPU each, several per request), which on this machine took as
# much CPU as the server it measures; a browser on its own computer costs the server nothing of
# the kind. Loopback is plain HTTP, so the context is never used for a handshake.
_TLS = ssl.create_default_context()


def browser(url: str, downloads: Path):
    from gradio_client import Client

    cookie = f"medrefine_client={secrets.token_urlsafe(32)}"
    return Client(url, verbose=False, headers={"Cookie": cookie}, download_files=str(downloads),
                  ssl_verify=_TLS)


def segment(client) -> tuple[bool, float, str]:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    try:
        out = client.predict(
            image_file=handle_file(str(SAMPLE)),
            gt_file=None,
            coarse_file=None,
            refiner_file=None,
            api_name="/segment_image",
        )
        ok = Path(out[-2]["value"]).is_file()  # the mask download reached this browser
        return ok, time.perf_counter() - t0, "" if ok else "no mask file"
    except Exception as err:
        return False, time.perf_counter() - t0, f"{type(err).__name__}: {err}"


def alone(url: str, downloads: Path, repeats: int = 5) -> dict[str, float]:
    """One request at a time: the browser's latency, and the page's own timings (the pipeline's
    ``total`` and the callback's ``app total``), medians over ``repeats`` requests."""
    from gradio_client import handle_file

    client = browser(url, downloads)
    rows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = client.predict(image_file=handle_file(str(SAMPLE)), gt_file=None, coarse_file=None,
                             refiner_file=None, api_name="/segment_image")
        latency = time.perf_counter() - t0
        text = next(o for o in out if isinstance(o, str) and o.startswith("Timings: "))
        parts = (p.rsplit(" ", 2) for p in text.removeprefix("Timings: ").split(" · "))
        timings = {name: float(ms) for name, ms, _ in parts}
        rows.append((latency, timings["total"], timings["app total"]))
    latency, total, app_total = (statistics.median(col) for col in zip(*rows, strict=True))
    return {
        "latency_ms": round(latency * 1000),
        "pipeline_total_ms": round(total),
        "app_total_ms": round(app_total),
        "app_own_ms": round(app_total - total),  # the page's "app total" minus "total"
        "browser_minus_pipeline_ms": round(latency * 1000 - total),
    }


def cross_session(url: str) -> dict[str, int]:
    """Upload as one browser; fetch the upload as it, as another one and as nobody."""
    owner = {"Cookie": f"medrefine_client={secrets.token_urlsafe(32)}"}
    other = {"Cookie": f"medrefine_client={secrets.token_urlsafe(32)}"}
    with SAMPLE.open("rb") as fh:
        up = httpx.post(f"{url}gradio_api/upload", files={"files": fh}, headers=owner)
    path = up.json()[0]
    get = f"{url}gradio_api/file={path}"
    return {
        "owner": httpx.get(get, headers=owner).status_code,
        "other browser": httpx.get(get, headers=other).status_code,
        "no cookie": httpx.get(get).status_code,
    }


def bomb_upload(url: str, work: Path, downloads: Path) -> dict:
    from gradio_client import handle_file
    from test_io_regressions import png_bomb

    bomb = png_bomb(work / "bomb.png")
    client = browser(url, downloads)
    t0 = time.perf_counter()
    try:
        client.predict(image_file=handle_file(str(bomb)), api_name="/preview_image")
        error = ""
    except Exception as err:
        error = str(err)
    seconds = time.perf_counter() - t0
    alive = httpx.get(url, timeout=10).status_code == 200
    ok_after, _, _ = segment(browser(url, downloads))
    return {
        "bytes": bomb.stat().st_size,
        "refused_s": round(seconds, 2),
        "error": error[:200],
        "alive_after": alive,
        "segments_after": ok_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--no-bomb", action="store_true")
    parser.add_argument("server_args", nargs="*", help="extra `medrefine app` options")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="app-load-"))
    downloads = work / "client"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(port, work, args.server_args)
    result: dict = {"requests": args.requests}
    try:
        result["startup_s"] = round(wait_ready(url, server), 1)
        result["alone"] = alone(url, downloads)
        monitor = PeakRSS(server.pid)
        monitor.start()
        clients = [browser(url, downloads) for _ in range(args.requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.requests) as pool:
            runs = list(pool.map(segment, clients))
        latencies = sorted(s for _, s, _ in runs)
        result["ok"] = sum(ok for ok, _, _ in runs)
        result["errors"] = sorted({e for _, _, e in runs if e})[:3]
        result["wall_s"] = round(time.perf_counter() - t0, 2)
        result["latency_s"] = {
            "min": round(latencies[0], 2),
            "median": round(statistics.median(latencies), 2),
            "p90": round(latencies[int(0.9 * (len(latencies) - 1))], 2),
            "max": round(latencies[-1], 2),
        }
        result["cross_session"] = cross_session(url)
        if not args.no_bomb:
            result["bomb"] = bomb_upload(url, work, downloads)
        monitor.running = False
        monitor.join()
        result["server_peak_rss_mb"] = round(monitor.peak_mb)
        result["sessions_before_sigterm"] = len(session_folders(work / "gradio"))
        t0 = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        result["sigterm_exit_code"] = server.wait(timeout=120)
        result["sigterm_exit_s"] = round(time.perf_counter() - t0, 1)
        left = session_folders(work / "gradio") + list(work.glob("medrefine-app-*"))
        result["session_folders_left"] = [str(p) for p in left]
        left_files = files_left(work / "gradio") + files_left(work / "tmp")
        result["upload_files_left"] = len(left_files)
        result["files_left"] = [str(p) for p in left_files[:10]]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print(json.dumps(result, indent=2))
    clean = not result.get("session_folders_left") and result.get("upload_files_left") == 0
    return 0 if result.get("ok") == args.requests and clean else 1


if __name__ == "__main__":
    sys.exit(main())
