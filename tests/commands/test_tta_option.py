"""``--tta`` of ``evaluate`` and ``segment`` reaches the pipeline (its provenance says so)."""

from __future__ import annotations

import json

import pytest

from medrefine.cli import main


@pytest.mark.parametrize("flag, expected", [(None, []), ("hflip,vflip", ["hflip", "vflip"])])
def test_evaluate_passes_tta_to_the_pipeline(
    tiny_weights, tiny_data, tmp_path, capsys, flag, expected
):
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--weights",
        str(tiny_weights["coarse"]),
        "--no-refine",
        "--device",
        "cpu",
        "--data",
        str(tiny_data),
        "--split",
        "test",
        "--panels",
        "0",
        "--out",
        str(out),
    ]
    code = main(args + (["--tta", flag] if flag else []))
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["tta"] == expected
    assert summary["n"] == 3


def test_segment_passes_tta_to_the_pipeline(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "seg"
    code = main(
        [
            "segment",
            str(tiny_data / "images"),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights["coarse"]),
            "--no-refine",
            "--device",
            "cpu",
            "--tta",
            "hflip",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["tta"] == ["hflip"]


def test_an_unknown_flip_is_refused_on_the_command_line(tiny_weights, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "segment",
                str(tiny_data / "images"),
                "-o",
                str(tmp_path / "seg"),
                "--weights",
                str(tiny_weights["coarse"]),
                "--no-refine",
                "--tta",
                "rot90",
            ]
        )
    assert exit_.value.code == 2
    assert "unknown flip" in capsys.readouterr().err
