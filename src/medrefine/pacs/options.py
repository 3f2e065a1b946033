"""Command-line options of the PACS bridge: ``segment --dicomweb`` and ``listen``.

Kept apart from ``pull.py`` and ``listen.py`` so that ``commands/segment.py`` can declare them
without importing the network libraries (or itself, through ``pull.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medrefine.pacs.config import DEFAULT_TIMEOUT


def add_dicomweb_options(parser: argparse.ArgumentParser) -> None:
    """``segment``'s options for a DICOMweb server instead of INPUT files."""
    g = parser.add_argument_group(
        "DICOMweb (instead of INPUT files; credentials from MEDREFINE_DICOMWEB_TOKEN, "
        "MEDREFINE_DICOMWEB_USER/MEDREFINE_DICOMWEB_PASSWORD or a netrc entry, never options)"
    )
    g.add_argument("--dicomweb", metavar="URL", help="the server's DICOMweb root URL")
    g.add_argument("--study", metavar="UID", help="Study Instance UID: segment its image series")
    g.add_argument("--series", metavar="UID", help="only this Series Instance UID of --study")
    g.add_argument(
        "--query",
        metavar="'KEY=VALUE ...'",
        help="QIDO-RS series filters, e.g. 'PatientID=123 Modality=CT' (within --study if given)",
    )
    g.add_argument(
        "--push",
        action="store_true",
        help="store each DICOM-SEG back into its study (STOW-RS); series that a medrefine SEG "
        "on the server references already are skipped unless --overwrite",
    )
    g.add_argument(
        "--list",
        dest="list_only",
        action="store_true",
        help="print the series the run would cover, and what it would do with each; no changes",
    )
    g.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="FILE.pem",
        help="CA certificates to trust for https (TLS is always verified; default: the system's)",
    )
    add_pacs_timeout_option(g)
    # Without --format a DICOMweb run writes dicom-seg,json (file inputs keep png).
    parser.set_defaults(format=None)


def add_pacs_timeout_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--pacs-timeout``: how long a peer may take to connect and to answer each request."""
    parser.add_argument(
        "--pacs-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up on a PACS that does not connect or answer a request within SECONDS "
        f"(DICOMweb connect/read; DIMSE ACSE, DIMSE and network timeouts; default "
        f"{DEFAULT_TIMEOUT:g}); a request that timed out is not retried",
    )
