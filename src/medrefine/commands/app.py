"""``medrefine app``: serve the web interface (Gradio) at http://127.0.0.1:7860.

Upload an image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI) or pick an example, segment it, compare the
coarse and the refined mask, look at the uncertainty and download the mask; a batch tab returns
a zip of masks with a report. The server listens on the loopback interface only unless --host
says otherwise: anyone who can reach the port can upload images and run the models.

examples:
  medrefine app
  medrefine app --port 8080
  medrefine app --host 0.0.0.0          # reachable from the network (a deliberate choice)
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from medrefine.errors import ConfigError


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
    parser.set_defaults(func=run)
    return parser


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
    if not is_loopback(args.host):
        print(
            f"medrefine: warning: listening on {args.host}, not only on this machine: anyone "
            "who can reach the port can upload images and run the models",
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
    launch(args.host, args.port, args.share, args.max_file_size)
    return 0
