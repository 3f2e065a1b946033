#!/usr/bin/env bash
# The model-agnostic check of the refiner (issue: "on masks from a deliberately weak segmenter,
# `medrefine refine` raises mean Dice by at least 0.03"):
#   1. train a deliberately weak segmenter: a plain U-Net from scratch, two epochs;
#   2. write its masks (0/255 PNGs, as any other tool would hand them over) for a split;
#   3. refine those masks with `medrefine refine` and a shipped refiner;
#   4. score both folders against the ground truth with `medrefine evaluate --pred`.
# usage: scripts/weak_segmenter_experiment.sh PRESET DATA_DIR SPLIT [WORK_DIR]
#   e.g. scripts/weak_segmenter_experiment.sh polyp ../shared/data/kvasir_seg test runs/weak
set -euo pipefail
preset=$1 data=$2 split=$3 work=${4:-runs/weak_$1}
mkdir -p "$work"
if [ ! -f "$work/unet/best.safetensors" ]; then
    medrefine train --stage coarse --arch unet --encoder scratch --no-pretrained --epochs 2 \
        --data "$data" --seed 0 -o "$work/unet"
fi
# the split's images, listed from the data folder's manifest
mapfile -t images < <(python - "$data" "$split" <<'PY'
import sys
from medrefine.training.data import find_pairs, split_pairs
pairs = find_pairs(sys.argv[1], "masks")
for pair in split_pairs(sys.argv[1], pairs)[sys.argv[2]]:
    print(pair.image)
PY
)
rm -rf "$work/$split"
mkdir -p "$work/$split/images"
for image in "${images[@]}"; do ln -s "$(realpath "$image")" "$work/$split/images/"; done
medrefine segment "$work/$split/images" -o "$work/$split/weak" --weights "$work/unet/best.safetensors" \
    --no-refine --format png
medrefine refine --image "$work/$split/images" --mask "$work/$split/weak" -o "$work/$split/refined" \
    --preset "$preset"
for kind in weak refined; do
    medrefine evaluate --pred "$work/$split/$kind" --data "$data" --split "$split" \
        -o "$work/$split/eval_$kind" > "$work/$split/printed_$kind.txt"
    cat "$work/$split/printed_$kind.txt"
done
