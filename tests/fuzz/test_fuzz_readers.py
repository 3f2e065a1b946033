"""Fuzz every reader with mutated files: only ``InputError`` (one line naming the file) may
leave ``read_image``, ``read_mask`` and the DICOM series reader, whatever the bytes.

Seeds are small real files of each format (``seeds.py``); each case flips bytes, writes
boundary integers and NaNs into headers, truncates, inserts, deletes or repeats chunks. CI runs
a few hundred cases (about 20 s); for hours by hand raise the count, e.g.::

    MEDREFINE_FUZZ_EXAMPLES=50000 python -m pytest -q tests/fuzz      # or scripts/fuzz_readers.sh

A failing file is saved to tests/fuzz/failures/ (git-ignored) after hypothesis shrinks the
case; copy it to tests/io/regressions/ with the fix, where ``test_io_regressions`` reads it.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz harness needs hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medrefine.errors import InputError  # noqa: E402
from medrefine.io import ReadLimits, read_image, read_limits, read_mask  # noqa: E402

from .seeds import build_seeds  # noqa: E402

LONG_RUN = "MEDREFINE_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("MEDREFINE_FUZZ_EXAMPLES", "120"))
FAILURES = Path(__file__).parent / "failures"
SEEDS = build_seeds()
# Small enough that a header mutated to promise gigabytes is refused, big enough for the seeds.
LIMITS = ReadLimits(max_decoded_mb=64)
INTERESTING = [0, 1, 2, 3, 7, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 16000, 1000, 2**31 - 1, 2**31,
               2**32 - 1, -1, -2, 2**63 - 1]  # fmt: skip
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,  # CI: the same cases every run; by hand: new ones each run
    database=None
    if not LONG_RUN
    else hypothesis.database.DirectoryBasedExampleDatabase(
        str(Path(__file__).parent / ".hypothesis")
    ),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=LONG_RUN,
)


def mutate(data: st.DataObject, seed: bytes) -> bytes:
    """Apply 1-6 mutations, mostly in the first KB where the headers are."""
    out = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        size = len(out)
        if size == 0:
            break
        head = data.draw(st.booleans(), label="in header")
        pos = data.draw(st.integers(0, min(size, 1024) - 1 if head else size - 1), label="pos")
        kind = data.draw(
            st.sampled_from(["flip", "byte", "int", "nan", "truncate", "insert", "delete", "copy"])
        )
        if kind == "flip":
            out[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte":
            out[pos] = data.draw(st.integers(0, 255))
        elif kind in ("int", "nan"):
            width = data.draw(st.sampled_from([2, 4, 8]))
            order = data.draw(st.sampled_from("<>"))
            if kind == "nan":
                packed = struct.pack(order + ("f" if width == 4 else "d"), float("nan"))
            else:
                value = data.draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
                packed = value.to_bytes(width, "little" if order == "<" else "big")
            out[pos : pos + len(packed)] = packed
        elif kind == "truncate":
            del out[max(pos, 1) :]
        elif kind == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del out[pos : pos + data.draw(st.integers(1, 64))]
        else:  # copy a chunk of the file elsewhere (repeated tags, frames)
            length = data.draw(st.integers(1, 256))
            out[pos:pos] = out[data.draw(st.integers(0, size - 1)) :][:length]
    return bytes(out)


def only_input_error(call, path: Path, name: str) -> None:
    """Run ``call``; it may return or raise ``InputError`` with one line naming ``path``."""
    try:
        call()
    except InputError as err:
        message = str(err)
        problems = []
        if "\n" in message:
            problems.append("more than one line")
        if str(path) not in message and path.name not in message:
            problems.append("does not name the file")
        if "unexpected" in message:
            problems.append("reached the last-resort guard: fix it in the reader")
        if problems:
            keep(path, name)
            pytest.fail(f"{name}: {', '.join(problems)}: {message}")
    except BaseException:
        keep(path, name)
        raise


def keep(path: Path, name: str) -> None:
    """Save the failing file; the one left is hypothesis' shrunk case (saved last)."""
    FAILURES.mkdir(exist_ok=True)
    if path.is_file():
        shutil.copy(path, FAILURES / f"{name}{''.join(path.suffixes)}")


def write_case(folder: Path, data: st.DataObject) -> tuple[Path, str]:
    seed = data.draw(st.sampled_from(SEEDS), label="seed")
    path = folder / f"case{seed.suffix}"
    path.write_bytes(seed.finish(mutate(data, seed.data)))
    return path, seed.name


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.data())
def test_read_image_raises_only_input_error(case_dir, data):
    path, name = write_case(case_dir, data)
    with read_limits(LIMITS):
        only_input_error(lambda: read_image(path), path, f"read_image-{name}")


@FUZZ
@given(data=st.data())
def test_read_mask_raises_only_input_error(case_dir, data):
    path, name = write_case(case_dir, data)
    with read_limits(LIMITS):
        only_input_error(lambda: read_mask(path), path, f"read_mask-{name}")


def _series_slices() -> tuple[bytes, bytes]:
    from .seeds import _dicom_bytes, ct_dataset

    first, second = ct_dataset(key="slice 1"), ct_dataset(key="slice 2")
    second.ImagePositionPatient = [0, 0, 2.5]
    return _dicom_bytes(first), _dicom_bytes(second)


SERIES = _series_slices()


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
@given(data=st.data())
def test_dicom_series_raises_only_input_error(case_dir, data):
    """A series folder: one intact CT slice beside a mutated one."""
    folder = case_dir / "series"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "a.dcm").write_bytes(SERIES[0])
    (folder / "b.dcm").write_bytes(mutate(data, SERIES[1]))
    with read_limits(LIMITS):
        only_input_error(lambda: read_image(folder), folder, "series")
