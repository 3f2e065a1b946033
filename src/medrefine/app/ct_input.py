"""The CT tab's upload, read as one CT: a NIfTI volume, one DICOM file, or a zipped DICOM series
unpacked into the session's request folder and read as a series folder.

A zip comes from the browser, so it is unpacked defensively: an entry that would land outside
the folder (``../``, an absolute path, a drive letter), a link or a password-protected entry
refuses the whole zip; so do more than ``MAX_ZIP_MEMBERS`` entries, more than
``MAX_ZIP_MB`` unpacked, or an archive that unpacks to over ``MAX_ZIP_RATIO`` times its own
size (a zip bomb: real DICOM series compress 2-10x). The sizes are counted while unpacking,
not taken from the headers, and a refused zip leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from medrefine.errors import InputError, MedrefineError
from medrefine.io import LoadedImage, read_image

MAX_ZIP_MEMBERS = 10_000  # a thin-slice chest CT has ~1,000 slices
MAX_ZIP_MB = 2048.0  # unpacked; a 1,000-slice 512x512 series is ~525 MB
MAX_ZIP_RATIO = 100.0  # unpacked / zip size; DICOM series compress 2-10x
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")  # C:/... from a Windows zip tool
# What macOS and Windows add to zips they make; never part of a series.
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def read_ct_upload(upload: str | Path, request: Path) -> LoadedImage:
    """The uploaded CT: a zip is unpacked into ``request/series`` and read as a DICOM series
    folder, anything else is read as it is (``read_image``). ``path`` of the result is the
    upload, so error messages and the JSON name the file the user gave."""
    upload = Path(upload)
    if upload.suffix.lower() == ".zip" or zipfile.is_zipfile(upload):
        folder = series_folder(extract_zip(upload, request / "series"), upload.name)
        try:
            image = read_image(folder)
        except MedrefineError as err:  # name the zip, not the folder it was unpacked into
            if "holds no DICOM image files" in str(err):
                raise InputError(
                    f"{upload.name}: the zip holds no DICOM image files; zip the folder of one "
                    "DICOM series (its .dcm slices) and upload that"
                ) from err
            message = (
                str(err)
                .replace(f"{folder}: folder holds", f"{upload.name}: the zip holds")
                .replace("put each series in its own folder or give one file", "zip one series")
            )
            raise type(err)(message.replace(str(folder), upload.name)) from err
    else:
        image = read_image(upload)
    image.path = upload
    return image


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Unpack ``zip_path`` into the new folder ``dest`` within the limits above; returns
    ``dest``. Raises ``InputError`` (one line naming the zip) on anything refused."""
    name = zip_path.name
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _checked_members(zf, name, zip_path.stat().st_size)
            dest.mkdir(mode=0o700)
            try:
                _unpack(zf, members, dest, name)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError) as err:  # fmt: skip
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise InputError(
            f"{name}: not a readable zip ({reason}); zip the folder of the series' DICOM "
            "files again and upload that"
        ) from err
    return dest


def _checked_members(zf: zipfile.ZipFile, name: str, zip_bytes: int) -> list[zipfile.ZipInfo]:
    """The entries to unpack (folders and OS junk left out), after the checks that refuse
    the whole zip."""
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InputError(
            f"{name}: holds {len(infos)} entries, more than the {MAX_ZIP_MEMBERS} allowed; "
            "zip one DICOM series"
        )
    members, declared = [], 0
    for info in infos:
        parts = _safe_parts(info.filename)
        if parts is None:
            raise InputError(
                f"{name}: entry {info.filename!r} points outside the zip's folder; refused "
                "(zip the series' folder with a normal zip tool)"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InputError(f"{name}: entry {info.filename!r} is a link; zip the files themselves")
        if info.flag_bits & 0x1:
            raise InputError(f"{name}: is password-protected; upload an unencrypted zip")
        if info.is_dir() or parts[0] == "__MACOSX" or _is_junk(parts[-1]):
            continue
        members.append(info)
        declared += info.file_size
    _check_size(declared, zip_bytes, name)
    if not members:
        raise InputError(f"{name}: the zip holds no files; zip the folder of a DICOM series")
    return members


def _unpack(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: Path, name: str) -> None:
    written = 0
    for info in members:
        target = dest.joinpath(*_safe_parts(info.filename))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise InputError(f"{name}: entry {info.filename!r} is in the zip twice; zip it again")
        with zf.open(info) as src, open(target, "xb") as out:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                _check_size(written, None, name)  # what it unpacks to, whatever the headers say
                out.write(chunk)


def _check_size(n_bytes: int, zip_bytes: int | None, name: str) -> None:
    if n_bytes > MAX_ZIP_MB * 2**20:
        raise InputError(
            f"{name}: unpacks to over {MAX_ZIP_MB:g} MB, more than the web page takes; "
            "upload one series, or run medrefine lung-pathology on the folder"
        )
    if zip_bytes and n_bytes > 2**20 and n_bytes > MAX_ZIP_RATIO * zip_bytes:
        raise InputError(
            f"{name}: unpacks to {n_bytes / zip_bytes:.0f} times its size (a zip bomb?); "
            "refused: upload a zip of the series' DICOM files"
        )


def _safe_parts(filename: str) -> tuple[str, ...] | None:
    """The entry's path components, or None when it would leave the folder it is unpacked
    into (absolute, ``..``, a drive letter)."""
    text = filename.replace("\\", "/")
    path = PurePosixPath(text)
    if text.startswith("/") or path.is_absolute():
        return None
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if not parts or ".." in parts or _DRIVE.match(parts[0]):
        return None
    return parts


def _is_junk(basename: str) -> bool:
    return basename in _JUNK_NAMES or basename.startswith("._")


def series_folder(root: Path, name: str) -> Path:
    """The one folder under ``root`` that holds the unpacked files (a zip often wraps the
    series in a folder or two)."""
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file()})
    if len(folders) == 1:
        return folders[0]
    listing = ", ".join(str(f.relative_to(root)) or "." for f in folders[:5])
    raise InputError(
        f"{name}: holds files in {len(folders)} folders ({listing}"
        f"{', ...' if len(folders) > 5 else ''}); zip one DICOM series, its slices in one folder"
    )
