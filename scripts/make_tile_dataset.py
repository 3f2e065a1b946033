"""The tiles of a data set's frames as a data set of their own (images/, masks/, manifest.json
with the source's split, each tile in its frame's split): what ``--empty-rescue`` shows the
coarse model, for fitting a presence gate on them (``medrefine train --stage presence``). Tiles
without any of the object have empty masks. Written outside the repository (a derived copy of
the data); PNG, so the crops are not re-compressed.

    python scripts/make_tile_dataset.py ../shared/data/kvasir_seg /tmp/kvasir_tiles \
        [--tiles 3 --fraction 0.45 --splits train val]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medrefine.presets import DEFAULT_EMPTY_RESCUE
from medrefine.tiling import tile_boxes
from medrefine.training.data import find_pairs, read_label_map, split_pairs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("data")
parser.add_argument("out", type=Path)
parser.add_argument("--tiles", type=int, default=DEFAULT_EMPTY_RESCUE[0])
parser.add_argument("--fraction", type=float, default=DEFAULT_EMPTY_RESCUE[1])
parser.add_argument("--splits", nargs="+", default=["train", "val"])
args = parser.parse_args()

(args.out / "images").mkdir(parents=True, exist_ok=True)
(args.out / "masks").mkdir(parents=True, exist_ok=True)
splits = split_pairs(args.data, find_pairs(args.data))
manifest = {"source": str(Path(args.data).resolve()), "tiles": args.tiles,
            "tile_fraction": args.fraction, "split": {}, "empty_masks": []}
for split in args.splits:
    stems = []
    for pair in splits[split]:
        rgb = np.asarray(Image.open(pair.image).convert("RGB"))
        mask = read_label_map(pair.mask, 1) == 1
        if mask.shape != rgb.shape[:2]:
            raise SystemExit(f"{pair.mask}: {mask.shape} is not its image's {rgb.shape[:2]}")
        for k, (top, left, h, w) in enumerate(tile_boxes(mask.shape, args.tiles, args.fraction)):
            stem = f"{pair.image.stem}_t{k}"
            tile = Image.fromarray(rgb[top:top + h, left:left + w])
            tile.save(args.out / "images" / f"{stem}.png")
            crop = mask[top:top + h, left:left + w]
            Image.fromarray(crop.astype(np.uint8) * 255).save(args.out / "masks" / f"{stem}.png")
            if not crop.any():
                manifest["empty_masks"].append(stem)
            stems.append(stem)
    manifest["split"][split] = stems
(args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
print({k: len(v) for k, v in manifest["split"].items()}, "empty:", len(manifest["empty_masks"]))
