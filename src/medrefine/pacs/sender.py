"""C-STORE one DICOM file to a DIMSE peer (pynetdicom as SCU)."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom

from medrefine.errors import InputError
from medrefine.pacs.config import DEFAULT_TIMEOUT, Destination

logger = logging.getLogger(__name__)


def send_file(
    path: Path, destination: Destination, calling_ae_title: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Send ``path`` to ``destination`` in one association.

    ``timeout`` bounds each step (TCP connect, the association's reply, the C-STORE's reply,
    network silence): a peer that accepts the connection and never answers fails after it.

    Raises:
        InputError: the peer cannot be reached, refuses the association, or answers the
            C-STORE with a failure status.
    """
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise InputError(
            f"{destination}: cannot open an association to send {path.name} (refused, aborted, "
            f"unreachable or no answer within {timeout:g} s); check the host, port and AE "
            f"title, and that the peer knows {calling_ae_title}"
        )
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code < 0:  # no reply: the peer aborted, or stayed silent past dimse_timeout
        raise InputError(
            f"{destination}: C-STORE of {path.name} got no answer within {timeout:g} s (or the "
            "peer aborted); check the peer's log, or raise --pacs-timeout"
        )
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or success with a warning
        raise InputError(
            f"{destination}: C-STORE of {path.name} failed (status {code:#06x}); check the "
            "peer's log"
        )
    logger.info("%s sent to %s", path.name, destination)
