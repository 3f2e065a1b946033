"""``medrefine app``: serve the web interface (Gradio) at http://127.0.0.1:7860.

Upload an image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI) or pick an example, segment it, compare the
coarse and the refined mask, look at the uncertainty and download the mask; a batch tab returns
a zip of masks with a report. The server listens on the loopback interface only unless --host
says otherwise: anyone who can reach the port can upload images and run the models, so give
--auth when you open it to a network. The user:password pairs come from a file (one per line)
or an environment variable, never from the command line, where `ps` would show them.

The server writes only into a folder of its own under $GRADIO_TEMP_DIR (or the system's
temporary folder), medrefine-servers/<pid>-<random>/: uploads, pictures, temporary files.
Each browser's files are served to that browser only and deleted when its session ends; the
whole folder is deleted when the server stops (Ctrl-C, SIGTERM) and, for a server that was
killed, at the next start.

examples:
  medrefine app
  medrefine app --port 8080 --concurrency 4
  medrefine app --host 0.0.0.0 --auth ~/.medrefine_users    # reachable from the network
  MEDREFINE_APP_AUTH=alice:secret medrefine app --host 0.0.0.0 --auth env:MEDREFINE_APP_AUTH
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from medrefine.errors import ConfigError

DEFAULT_CONCURRENCY = 2  # as medrefine.app.server (not imported: it pulls in Gradio)
DEFAULT_MAX_BATCH = 0  # as medrefine.app.server
DEFAULT_QUEUE_SIZE = 64


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "app",
        help="serve the web interface (Gradio)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 = all)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public *.gradio.live link (needs internet; anyone with the link "
        "can use the app)",
    )
    parser.add_argument(
        "--max-file-size",
        default="200mb",
        metavar="SIZE",
        help="largest upload accepted, e.g. 200mb or 1gb (default 200mb)",
    )
    parser.add_argument(
        "--auth",
        metavar="FILE|env:NAME",
        help="ask for a user name and password: user:password pairs from FILE (one per line) "
        "or from the environment variable NAME (pairs separated by commas)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests segmented at once; more wait in a queue (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help="the networks of concurrent requests run in one thread, up to N waiting calls as "
        f"one batch (default {DEFAULT_MAX_BATCH}: each request runs its own; on 2 CPU cores "
        "batching measured no faster, see docs/web.md)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help=f"requests that may wait; more are refused (default {DEFAULT_QUEUE_SIZE})",
    )
    parser.set_defaults(func=run)
    return parser


def read_auth(source: str) -> list[tuple[str, str]]:
    """user:password pairs from a file (one per line, # comments) or ``env:NAME``."""
    if source.startswith("env:"):
        name = source[4:]
        text = os.environ.get(name)
        if not text:
            raise ConfigError(f"--auth {source}: the environment variable {name} is not set")
        lines = text.replace(",", "\n").splitlines()
    else:
        path = Path(source).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise ConfigError(f"--auth {source}: cannot read the file ({err.strerror})") from err
        if path.stat().st_mode & 0o077:
            print(
                f"medrefine: warning: {path} is readable by other users; chmod 600 it",
                file=sys.stderr,
            )
    pairs = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(
                f"--auth {source}: expected user:password entries, got one without both parts"
            )
        pairs.append((user, password))
    if not pairs:
        raise ConfigError(f"--auth {source}: holds no user:password entry")
    return pairs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: not a port; give a number in 1..65535")
    if args.concurrency < 1 or args.queue_size < 1:
        raise ConfigError("--concurrency and --queue-size: give at least 1")
    auth = read_auth(args.auth) if args.auth else None
    if not is_loopback(args.host) and auth is None:
        print(
            f"medrefine: warning: listening on {args.host}, not only on this machine: anyone "
            "who can reach the port can upload images and run the models; add --auth",
            file=sys.stderr,
        )
    if args.share:
        print(
            "medrefine: warning: --share opens a public link; anyone with it can use the app",
            file=sys.stderr,
        )
    try:
        from medrefine.app import launch
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise ConfigError(
            "the web interface needs Gradio; install it with `pip install gradio`"
        ) from err
    os.umask(0o077)  # everything the server writes (uploads, results) is owner-only
    _share_cores(1 if args.max_batch else args.concurrency)
    launch(
        args.host,
        args.port,
        args.share,
        args.max_file_size,
        auth=auth,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        max_batch=args.max_batch,
    )
    return 0


def _share_cores(concurrency: int) -> None:
    """Concurrent requests share the cores instead of each starting a thread per core (with
    the model lane, ``concurrency`` 1: the lane's one thread runs every network)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))
