"""C-STORE one DICOM file to a DIMSE peer (pynetdicom as SCU)."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom

from medrefine.errors import InputError
from medrefine.pacs.config import Destination

logger = logging.getLogger(__name__)


def send_file(path: Path, destination: Destination, calling_ae_title: str) -> None:
    """Send ``path`` to ``destination`` in one association.

    Raises:
        InputError: the peer cannot be reached, refuses the association, or answers the
            C-STORE with a failure status.
    """
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise InputError(
            f"{destination}: cannot open an association to send {path.name} (refused, aborted "
            "or unreachable); check the host, port and AE title, and that the peer knows "
            f"{calling_ae_title}"
        )
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or success with a warning
        raise InputError(
            f"{destination}: C-STORE of {path.name} failed (status "
            f"{'none' if code < 0 else hex(code)}); check the peer's log"
        )
    logger.info("%s sent to %s", path.name, destination)
