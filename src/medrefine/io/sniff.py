"""Tell a file's format from its first bytes, falling back to its suffix.

Content wins over the suffix: a PNG saved as ``scan.jpg`` is read as PNG, a DICOM file without a
``.dcm`` suffix is still DICOM, and a text file named ``scan.dcm`` is refused as not DICOM.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

from medrefine.errors import InputError
from medrefine.io.base import full_suffix

logger = logging.getLogger(__name__)

# The raster images' suffixes (read by ``raster``) and their format names.
RASTER_SUFFIXES = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}
# Format names returned by ``sniff_format``.
SUFFIX_FORMATS = {
    **RASTER_SUFFIXES,
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".ima": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
)


def sniff_format(path: Path) -> str:
    """Return ``png``, ``jpeg``, ``bmp``, ``tiff``, ``dicom``, ``dicom-folder`` or ``nifti``.

    A folder is a DICOM series folder. ``dicom`` is returned for files with the ``DICM``
    preamble and for ``.dcm``/``.dicom``/``.ima`` files that start like a raw DICOM data set
    (no preamble); the DICOM reader checks the rest.

    Raises:
        InputError: missing or empty file, or content that is no supported image format.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return "dicom-folder"
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError as err:
        raise InputError(f"{path}: cannot open the file ({err}); check its permissions") from err
    if not head:
        raise InputError(f"{path}: file is empty (0 bytes); re-export or re-download it")
    suffix = full_suffix(path)
    by_suffix = SUFFIX_FORMATS.get(suffix)
    found = _sniff_bytes(path, head)
    if found is None and by_suffix == "dicom" and _looks_like_raw_dicom(head):
        found = "dicom"
    if found is None:
        if by_suffix is None:
            raise InputError(
                f"{path}: not a supported image (unknown suffix {suffix!r} and unrecognised "
                "content); expected PNG, JPEG, TIFF, BMP, DICOM or NIfTI"
            )
        raise InputError(
            f"{path}: the content is not {by_suffix.upper()} despite the {suffix!r} suffix "
            "(unrecognised or damaged file); check that it is really an image"
        )
    if by_suffix is not None and by_suffix != found:
        logger.warning(
            "%s: suffix %r but the content is %s; reading it as %s", path, suffix, found, found
        )
    return found


def _sniff_bytes(path: Path, head: bytes) -> str | None:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(352)
        except (OSError, EOFError, zlib.error):
            return None
        if _is_nifti_header(inner):
            return "nifti"
    return None


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic at 344) or NIfTI-2 (540 bytes, magic at 4), any endian."""
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return struct.unpack("<i", head[:4])[0] == 348 or struct.unpack(">i", head[:4])[0] == 348
    if len(head) >= 8 and head[4:7] in (b"n+2", b"ni2"):
        return struct.unpack("<i", head[:4])[0] == 540 or struct.unpack(">i", head[:4])[0] == 540
    return False


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM data set without preamble starts with a group 0x0002 or 0x0008 little-endian tag.

    Text files (``"hello"``), JSON and the like fail this check, so they are refused with a clear
    message instead of being force-parsed into a nonsense data set.
    """
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x00FF:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    length = struct.unpack("<I", head[4:8])[0]  # implicit VR: a plausible element length
    return length < 1024
