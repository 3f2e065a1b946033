"""Command-line options of the PACS bridge: ``segment --dicomweb`` and ``listen``.

Kept apart from ``pull.py`` and ``listen.py`` so that ``commands/segment.py`` can declare them
without importing the network libraries (or itself, through ``pull.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


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
    # Without --format a DICOMweb run writes dicom-seg,json (file inputs keep png).
    parser.set_defaults(format=None)
