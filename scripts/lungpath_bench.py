"""Speed and peak memory of ``medrefine lung-pathology`` on a 512 x 512 x 100 CT (issue 13 bar:
<= 3 min, <= 4 GB on this CPU).

The volume is made from real HU data: ``ct_hu_samples/example_ct.nii.gz`` (3 mm, 101 x 122 in
plane) slices 12..111 (lung bases at the top) resized in-plane to 512 x 512 (linear), spacing
scaled to match; written to OUT/ct_512x512x100.nii.gz and run through the pipeline from the
file, in this process (one thread unless OMP_NUM_THREADS says otherwise).

    OMP_NUM_THREADS=1 python scripts/lungpath_bench.py --out runs/lungpath_bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np


def synthesize(src: Path, dst: Path) -> None:
    img = nib.load(src)
    data = np.asarray(img.dataobj, np.float32)  # (i, j, k) on disk
    k0 = data.shape[2] - 100
    sub = data[:, :, k0:]
    out = np.stack(
        [
            cv2.resize(sub[:, :, k], (512, 512), interpolation=cv2.INTER_LINEAR)
            for k in range(sub.shape[2])
        ],
        axis=2,
    )
    affine = img.affine.copy()
    affine[:3, 0] *= data.shape[0] / 512
    affine[:3, 1] *= data.shape[1] / 512
    affine[:3, 3] += img.affine[:3, 2] * k0
    nib.save(nib.Nifti1Image(np.round(out).astype(np.int16), affine), dst)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ct", default="../shared/data/ct_hu_samples/example_ct.nii.gz")
    ap.add_argument("--out", default="runs/lungpath_bench")
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from medrefine.bench import peak_rss_mb
    from medrefine.io import read_image
    from medrefine.lungpath.outputs import write_result
    from medrefine.lungpath.pipeline import LungPathologyPipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ct = out / "ct_512x512x100.nii.gz"
    synthesize(Path(args.ct), ct)
    t0 = time.perf_counter()
    pipe = LungPathologyPipeline(args.weights)
    t_load = time.perf_counter()
    image = read_image(ct)
    result = pipe.run(image)
    written = write_result(result, out, "ct_512x512x100", ["nifti", "overlay", "json"])
    total = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    report = {
        "shape": list(image.spatial_shape),
        "spacing_mm": list(image.spacing),
        "seconds_total": total,
        "seconds_model_load": t_load - t0,
        "timings": result.timings,
        "peak_rss_mb": peak_mb,
        "lung_ml": result.lung_ml,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "outputs": [p.name for p in written],
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    steps = json.dumps({k: round(v, 1) for k, v in result.timings.items()})
    print(
        f"512x512x100 CT: {total:.1f} s total ({steps}), "
        f"peak memory {peak_mb:.0f} MB, {torch.get_num_threads()} thread(s), lung "
        f"{result.lung_ml:.0f} mL"
    )


if __name__ == "__main__":
    main()
