"""The one table of output formats: what each ``--format`` name writes, under which file name,
for which inputs, with which writer, and how the CLI help and the web app name it.

Every place that writes or names outputs reads it: the ``--format`` choices and help and the
segment/refine outputs (``commands.options``, ``commands.outputs``), the lung-pathology outputs
(``lungpath.outputs``), the web app's mask-format radio, downloads and batch zip (``app``) and
the PACS listener (``commands.listen``). Commands keep only what is theirs: which formats they
offer (lung-pathology has no ``uncertainty``) and their defaults.

Each format's ``write(data, path, like=None, **options)`` takes what that format holds: a label
map (mask formats, through ``write_mask``), an RGB picture (``overlay``, the 2D ``uncertainty``
heat map), a float map (``write_map``: the ``uncertainty`` NIfTI) or a JSON-ready dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrefine.errors import InputError
from medrefine.io.base import LoadedImage
from medrefine.io.writers import write_float_nifti, write_image_png, write_json, write_mask

Writer = Callable[..., Path]

# What an input format is called in a message ("needs a DICOM input")
_INPUT_NAMES = {"dicom": "DICOM"}


def _mask_writer(fmt: str) -> Writer:
    """``write_mask`` held to ``fmt`` (so the suffix is checked against the format)."""

    def write(mask: Any, path: str | Path, like: LoadedImage | None = None, **options) -> Path:
        return write_mask(mask, path, like=like, format=fmt, **options)

    return write


def _write_picture(rgb: Any, path: str | Path, like: LoadedImage | None = None) -> Path:
    return write_image_png(rgb, path)


def _write_map(array: Any, path: str | Path, like: LoadedImage | None = None) -> Path:
    return write_float_nifti(array, path, like=like)


def _write_json(data: Any, path: str | Path, like: LoadedImage | None = None) -> Path:
    return write_json(path, data)


@dataclass(frozen=True)
class OutputFormat:
    """One output format.

    Attributes:
        name: as the CLI spells it (``--format nifti``).
        display: as the web app shows it (``NIfTI``).
        suffix: the file ``<stem><suffix>`` the commands write (segment, refine, listen,
            lung-pathology: masks and label maps alike).
        help: what ``--format`` help says it writes.
        write: ``(data, path, like=None, **options) -> path``; see the module docstring.
        holds_mask: a mask/label-map format (``write_mask``), offered for mask downloads.
        needs_input: the input format it needs (``"dicom"``: a DICOM-SEG references the
            DICOM instances it segments); None fits any input.
        two_d_only: holds 2D images only (PNG pictures); a volume cannot be written as it.
        map_suffix: a second file, the float map as NIfTI, written for volumes and NIfTI
            inputs (``<stem><suffix>`` is then the 2D picture, written for 2D inputs only).
        write_map: the writer of ``map_suffix``'s file.
        download_suffix: the web app's mask download (``<stem>_mask.png``).
        zip_suffix: the web app's batch zip (``masks/<stem>.png``).
    """

    name: str
    display: str
    suffix: str
    help: str
    write: Writer
    holds_mask: bool = False
    needs_input: str | None = None
    two_d_only: bool = False
    map_suffix: str | None = None
    write_map: Writer | None = None
    download_suffix: str | None = None
    zip_suffix: str | None = None

    def file_names(self, stem: str, *, volume: bool = False, nifti: bool = False) -> list[str]:
        """The files this format writes for an input called ``stem`` (volume or 2D, NIfTI or
        not), in the order they are written."""
        if self.map_suffix is None:
            return [f"{stem}{self.suffix}"]
        names = [] if volume else [f"{stem}{self.suffix}"]
        if volume or nifti:
            names.append(f"{stem}{self.map_suffix}")
        return names

    def refusal(self, input_format: str | None, volume: bool = False) -> str | None:
        """Why an input of ``input_format`` (``meta["format"]``) cannot have this output, as
        ``needs a DICOM input to reference, got 'png'``; None when it can."""
        if self.needs_input is not None and input_format != self.needs_input:
            need = _INPUT_NAMES.get(self.needs_input, self.needs_input)
            return f"needs a {need} input to reference, got {input_format!r}"
        if self.two_d_only and volume:
            return "holds 2D images only, got a volume"
        return None

    def fits(self, input_format: str | None, volume: bool = False) -> bool:
        return self.refusal(input_format, volume) is None

    def check_fits(
        self, image: LoadedImage, *, label: str | None = None, advice: str | None = None
    ) -> None:
        """Raise one ``InputError`` when ``image`` cannot have this output: ``PATH: LABEL
        needs a DICOM input to reference, got 'png'; ADVICE`` (LABEL defaults to the display
        name)."""
        why = self.refusal(image.meta.get("format"), image.is_volume)
        if why is None:
            return
        where = f"{image.path}: " if image.path is not None else ""
        tail = f"; {advice}" if advice else ""
        raise InputError(f"{where}{label or self.display} {why}{tail}")


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            "png",
            "PNG",
            ".png",
            "<stem>.png: the mask, 0/255, at the input size (2D inputs)",
            _mask_writer("png"),
            holds_mask=True,
            two_d_only=True,
            download_suffix="_mask.png",
            zip_suffix=".png",
        ),
        OutputFormat(
            "nifti",
            "NIfTI",
            ".nii.gz",
            "<stem>.nii.gz: the mask as uint8 labels with the input's geometry "
            "(2D inputs give a 2D NIfTI)",
            _mask_writer("nifti"),
            holds_mask=True,
            download_suffix="_mask.nii.gz",
            zip_suffix=".nii.gz",
        ),
        OutputFormat(
            "dicom-seg",
            "DICOM-SEG",
            ".dcm",
            "<stem>.dcm: a DICOM-SEG referencing the source instances (DICOM inputs)",
            _mask_writer("dicom-seg"),
            holds_mask=True,
            needs_input="dicom",
            download_suffix="_seg.dcm",
            zip_suffix="_seg.dcm",
        ),
        OutputFormat(
            "overlay",
            "Overlay",
            "_overlay.png",
            "<stem>_overlay.png: the mask tinted over the image (2D inputs)",
            _write_picture,
            two_d_only=True,
        ),
        OutputFormat(
            "uncertainty",
            "Uncertainty",
            "_uncertainty.png",
            "<stem>_uncertainty.png: the refiner's uncertainty heat map (2D inputs), "
            "and <stem>_uncertainty.nii.gz: the uncertainty as float32 (volumes and NIfTI inputs)",
            _write_picture,
            map_suffix="_uncertainty.nii.gz",
            write_map=_write_map,
        ),
        OutputFormat(
            "json",
            "JSON",
            ".json",
            "<stem>.json: shape, spacing, foreground pixels and area (mm2) or volume (mm3), "
            "review score, timings and parameters",
            _write_json,
        ),
    )
}


def mask_formats(input_format: str | None = None) -> list[OutputFormat]:
    """The mask formats in table order that fit a 2D input of ``input_format``; without it,
    those that need no particular input (what the web app offers before an upload)."""
    return [
        f
        for f in OUTPUT_FORMATS.values()
        if f.holds_mask and (f.needs_input is None or f.fits(input_format))
    ]


def by_display(display: str) -> OutputFormat:
    """The format the web app shows as ``display`` (``"NIfTI"``)."""
    for f in OUTPUT_FORMATS.values():
        if f.display == display:
            return f
    raise KeyError(display)


def formats_help(names: list[str] | None = None) -> str:
    """``png = <stem>.png: ...; nifti = ...`` for ``--format`` help (all formats by default)."""
    return "; ".join(f"{n} = {OUTPUT_FORMATS[n].help}" for n in (names or OUTPUT_FORMATS))
