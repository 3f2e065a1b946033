"""``segment --dicomweb --push`` against a real Orthanc: pull a CT series, segment it, store the
DICOM-SEG back, then ask Orthanc for it."""

from __future__ import annotations

import io
import json

import highdicom as hd
import numpy as np
import pydicom
from orthanc_server import CT_SERIES, dciodvfy_errors, uid_of

from medrefine.cli import main


def test_pull_segment_push_round_trip(orthanc, credentials, data_dir, tmp_path, capsys):
    files = sorted((data_dir / CT_SERIES).glob("*.dcm"))
    study, series = uid_of(files[0], "StudyInstanceUID"), uid_of(files[0], "SeriesInstanceUID")
    source_sops = {uid_of(f, "SOPInstanceUID") for f in files}
    out = tmp_path / "out"
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", study, "-o", str(out)]
    args += ["--push", "--preset", "polyp", "--no-refine", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err

    report = json.loads((out / "report.json").read_text())
    (record,) = report["files"]
    assert record["status"] == "ok" and record["pushed"] is True
    assert record["input"] == series and record["n_instances"] == len(files)
    assert sorted(record["outputs"]) == sorted([f"{series}.dcm", f"{series}.json"])
    assert not (out / ".dicomweb").exists()  # the fetched instances are gone

    # Orthanc lists the new SEG under the same study, referencing the source series.
    (seg_instance,) = orthanc.seg_instances(study)
    assert seg_instance["tags"]["SOPInstanceUID"] == record["seg_sop_instance_uid"]
    seg_bytes = orthanc.instance_file(seg_instance["ID"])
    ds = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert ds.StudyInstanceUID == study and ds.Modality == "SEG"
    assert ds.PatientID == uid_of(files[0], "PatientID")
    assert [str(item.SeriesInstanceUID) for item in ds.ReferencedSeriesSequence] == [series]
    seg = hd.seg.Segmentation.from_dataset(ds)
    assert {uids[2] for uids in seg.get_source_image_uids()} == source_sops
    assert int(seg.NumberOfFrames) == len(files)
    local = hd.seg.segread(out / f"{series}.dcm")
    assert local.SOPInstanceUID == ds.SOPInstanceUID
    mask = seg.get_pixels_by_source_instance(sorted(source_sops), combine_segments=True)
    assert mask.shape == (len(files), 512, 512) and mask.dtype == np.uint8
    (tmp_path / "seg.dcm").write_bytes(seg_bytes)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []

    # A rerun finds the SEG on the server and skips the series; nothing new is stored.
    capsys.readouterr()
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    statuses = {r["input"]: r["status"] for r in report["files"]}
    seg_series = seg_instance["tags"]["SeriesInstanceUID"]
    assert statuses == {series: "skipped (done)", seg_series: "skipped (not an image)"}
    assert "1 not image series (SEG, SR, ...) skipped" in capsys.readouterr().out
    assert len(orthanc.seg_instances(study)) == 1
    # --list says what a run would do, without changing anything.
    assert main(args + ["--list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    rows = [line.split("\t") for line in listed]
    assert {row[2]: row[0] for row in rows} == {
        series: "skip (SEG on server)",
        seg_series: "skip (not an image)",
    }
    assert [row[1] for row in rows] == [study, study]
