"""The listener's series through the batch engine (no network: series handed to
``Listener.process`` as the receiver hands them out): a bad series fails alone, report.csv has
the provenance columns, a restarted listener skips a series it already segmented (``--overwrite``
segments it again), and a stop mid-series leaves no partial file and an interrupted report.
(Under torchrun there is nothing to share: one receiver holds one port.)"""

from __future__ import annotations

import csv
import json

import pytest
from orthanc_server import CT_SERIES, clone_series

from medrefine.batch import sigterm_as_interrupt
from medrefine.pacs.config import ListenConfig
from medrefine.pacs.listen import Listener
from medrefine.pacs.receiver import SeriesState
from medrefine.pipeline import SegmentationPipeline


@pytest.fixture
def series(data_dir, tmp_path):
    """Two received series (clones of the CT series, every other slice) and a broken one."""
    sources = sorted((data_dir / CT_SERIES).glob("*.dcm"))[::4]
    study, uids, files = clone_series(sources, tmp_path / "in", patient_id="B", n_series=2)
    states = []
    for uid, paths in zip(uids, files, strict=True):  # each series in its own folder
        folder = tmp_path / "received" / uid
        folder.mkdir(parents=True)
        for path in paths:
            path.rename(folder / path.name)
        states.append(SeriesState(study, uid, folder, {p.stem for p in paths}))
    broken = tmp_path / "in" / "broken"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"DICM" * 40)
    return [*states, SeriesState(study, "1.2.3.4", broken, {"x"})]


def _listener(out, weights, **kw) -> Listener:
    pipe = SegmentationPipeline(cpunet_weights=weights["coarse"], use_diffusion=False,
                                device="cpu")  # fmt: skip
    head = {"command": "listen", "provenance": {**pipe.provenance(), "seed": None}}
    return Listener(ListenConfig(port=11112), out, pipe, ["dicom-seg", "json"], head, **kw)


def test_listen_batch_behaviour(series, tiny_weights, tmp_path, sigterm_at_output):
    out = tmp_path / "out"
    listener = _listener(out, tiny_weights)
    for state in series:
        listener.process(state)
    assert listener.close() == []
    report = json.loads((out / "report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["ok", "ok", "failed"]
    assert "interrupted" not in report
    with (out / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["coarse_sha256"] and "medrefine_version" in rows[0]

    again = _listener(out, tiny_weights)  # restarted: what is done is skipped
    assert again.process(series[0])["status"] == "skipped (done)"
    assert _listener(out, tiny_weights, overwrite=True).process(series[0])["status"] == "ok"

    out2 = tmp_path / "out2"
    stopping = _listener(out2, tiny_weights)
    stopping.process(series[0])
    sigterm_at_output(out2, 1)  # a stop while the second series' SEG is written
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        stopping.process(series[1])
    stopping.close()
    assert not [p.name for p in out2.iterdir() if ".tmp" in p.name]
    assert not (out2 / f"{series[1].series}.dcm").exists()
    report = json.loads((out2 / "report.json").read_text())
    assert report["interrupted"] is True and report["n_ok"] == 1
