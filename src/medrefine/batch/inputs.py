"""What a batch command reads: input specs expanded to files, their output stems, and an
input's kind (volume or 2D, NIfTI, DICOM), which decides the files its outputs are."""

from __future__ import annotations

import errno
import glob
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from medrefine.errors import InputError
from medrefine.io import LoadedImage, sniff_format, stem_of
from medrefine.io.base import full_suffix
from medrefine.io.sniff import SUFFIX_FORMATS

logger = logging.getLogger(__name__)


def expand_inputs(
    specs: list[str], ignored: list[tuple[str, str]] | None = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (their supported images, not recursive; a folder holding one DICOM
    series is one input) and glob patterns -> (inputs in order, [(entry, why it failed)]).

    Every entry a spec names is accounted for: an input, a failure (a symlink loop or broken
    link, a folder named like an image, a FIFO or device, a file that cannot be read) or, when
    ``ignored`` is given, appended there with why (a file that is not an image, a sub-folder).
    Nothing here raises for a bad entry."""
    inputs: list[Path] = []
    problems: list[tuple[str, str]] = []
    ignored = [] if ignored is None else ignored
    for spec in specs:
        path = Path(spec)
        if _lexists(path):
            candidates, from_pattern = [path], False
        elif glob.has_magic(spec):
            candidates, from_pattern = [Path(p) for p in sorted(glob.glob(spec))], True
            if not candidates:
                problems.append((spec, "no file matches this pattern"))
        else:
            problems.append((spec, "no such file or folder; check the path"))
            continue
        for cand in candidates:
            why = entry_problem(cand)
            if why is not None:
                problems.append((str(cand), why))
            elif cand.is_dir():
                found = folder_inputs(cand, problems=problems, ignored=ignored)
                if not found and not from_pattern:
                    problems.append(
                        (
                            spec,
                            "folder holds no supported images (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)",
                        )
                    )
                elif not found:
                    ignored.append((str(cand), "a folder without supported images"))
                inputs.extend(found)
            elif not from_pattern or _looks_supported(cand):
                inputs.append(cand)
            else:
                ignored.append((str(cand), _not_an_image(cand)))
    first: dict[Path, Path] = {}
    for path in inputs:  # the same file named twice is segmented once
        first.setdefault(_resolved(path), path)
    return list(first.values()), problems


def entry_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an input (without opening it), or None.

    A symlink loop or a broken link, a folder named like an image file, a FIFO, socket or
    device (reading one could block for ever), a file this user may not read."""
    try:
        info = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself); remove or fix the link"
        if path.is_symlink():
            return f"broken symlink (it points to {os.readlink(path)!r}, which does not exist)"
        return f"cannot be examined ({err.strerror or err}); check the path and permissions"
    if stat.S_ISDIR(info.st_mode):
        if SUFFIX_FORMATS.get(full_suffix(path)) not in (None, "dicom"):
            return "is a folder, not an image file, despite its name; give the files in it"
        return None if os.access(path, os.R_OK | os.X_OK) else "folder cannot be read (permission)"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a FIFO, socket or device); give an image file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied); check its permissions"
    return None


def folder_inputs(
    folder: Path,
    *,
    problems: list[tuple[str, str]] | None = None,
    ignored: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """The inputs in ``folder`` (not recursive); entries that cannot be inputs go to
    ``problems`` (failures, see ``entry_problem``) or ``ignored`` (not images, sub-folders)."""
    problems = [] if problems is None else problems
    ignored = [] if ignored is None else ignored
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        problems.append((str(folder), f"cannot list the folder ({err.strerror or err})"))
        return []
    files = []
    for entry in entries:
        why = entry_problem(entry)
        if why is not None:
            problems.append((str(entry), why))
        elif entry.is_dir():
            ignored.append((str(entry), "a sub-folder (not searched; give it as its own input)"))
        elif entry.name.startswith("."):
            ignored.append((str(entry), "a hidden file"))
        else:
            files.append(entry)
    images = [p for p in files if SUFFIX_FORMATS.get(full_suffix(p)) not in (None, "dicom")]
    dicoms = [p for p in files if _is_dicom(p)]
    ignored.extend((str(p), _not_an_image(p)) for p in files if p not in images and p not in dicoms)
    if images or len(dicoms) <= 1:
        return images + dicoms
    if len(_series_uids(dicoms)) == 1:
        return [folder]  # one series: one volume
    logger.info("%s: holds several DICOM series; segmenting each file on its own", folder)
    return dicoms


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop made after the check: keep it apart
        return path.absolute()


def _not_an_image(path: Path) -> str:
    suffix = full_suffix(path)
    return (
        f"not a supported image ({'suffix ' + repr(suffix) if suffix else 'no suffix, not DICOM'})"
    )


def _looks_supported(path: Path) -> bool:
    return SUFFIX_FORMATS.get(full_suffix(path)) is not None or _is_dicom(path)


def _is_dicom(path: Path) -> bool:
    if SUFFIX_FORMATS.get(full_suffix(path)) == "dicom":
        return True
    if full_suffix(path):  # other suffixes (.json, .txt, images) are not DICOM candidates
        return False
    try:
        return sniff_format(path) == "dicom"
    except InputError:
        return False


def _series_uids(paths: list[Path]) -> set[str]:
    from medrefine.io.dicom import open_dicom

    uids = set()
    for path in paths:
        try:
            uids.add(str(open_dicom(path, stop_before_pixels=True).get("SeriesInstanceUID")))
        except InputError:
            uids.add(f"unreadable:{path}")  # reported when the file itself is read
    return uids


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems; a repeated stem gets ``_2``, ``_3``... so no output overwrites another
    (``report`` counts as taken: the run report is ``report.json``)."""
    seen: dict[str, int] = {"report": 1}
    stems = []
    for path in paths:
        stem = stem_of(path)
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            logger.warning(
                "%s: another input has the stem %r; writing it as %s_%d",
                path,
                stem,
                stem,
                seen[stem],
            )
            stem = f"{stem}_{seen[stem]}"
        stems.append(stem)
    return stems


@dataclass(frozen=True)
class InputKind:
    """What decides which files an input's outputs are: volume or 2D, NIfTI, DICOM."""

    volume: bool
    nifti: bool = False
    dicom: bool = False

    @classmethod
    def of(cls, image: LoadedImage) -> InputKind:
        fmt = image.meta.get("format")
        return cls(image.is_volume, fmt == "nifti", fmt == "dicom")


def probe_kind(path: Path) -> InputKind:
    """An input's kind from its header alone (no pixel data), for resume checks.

    Raises:
        InputError: the file cannot be read; the caller then segments it (and reports it).
    """
    fmt = sniff_format(path)
    if fmt == "dicom-folder":
        return InputKind(True, dicom=True)
    if fmt == "dicom":
        from medrefine.io.dicom import open_dicom

        ds = open_dicom(path, stop_before_pixels=True)
        return InputKind(int(ds.get("NumberOfFrames", 1) or 1) > 1, dicom=True)
    if fmt == "nifti":
        import nibabel as nib

        try:
            shape = nib.load(path).shape
        except Exception as err:  # nibabel raises many types for damaged headers
            raise InputError(f"{path}: cannot read the NIfTI header ({err})") from err
        return InputKind(len(shape) >= 3 and shape[2] > 1, nifti=True)
    if fmt == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return InputKind(len(tif.pages) > 1)
        except Exception as err:
            raise InputError(f"{path}: cannot read the TIFF header ({err})") from err
    return InputKind(False)
