#!/usr/bin/env bash
# Trains the other segmenters whose masks the refiners are trained and tested on (issue: "the
# refiner as a mask fixer for any segmenter"). All at a 128 grid, so they cost minutes on a CPU
# and their masks carry the blocky boundaries of a low-resolution model.
#   train/  : sources the refiner learns from: a plain U-Net from scratch, kept at an early and
#             a late epoch (epoch_2, last);
#   heldout/: sources it never sees in training, for the test tables: UNet 3+ from scratch, and a
#             U-Net on the ImageNet EfficientNet-Lite0 encoder (another seed).
# usage: scripts/train_mask_sources.sh PRESET DATA_DIR [WORK_DIR] [EPOCHS_SCALE]
#   e.g. scripts/train_mask_sources.sh skin ../shared/data/ph2 runs/sources/skin
set -euo pipefail
preset=$1 data=$2 work=${3:-runs/sources/$1}
epochs_unet=${UNET_EPOCHS:-8} epochs_u3p=${UNET3P_EPOCHS:-6} epochs_pre=${PRETRAINED_EPOCHS:-2}
max_minutes=${MAX_MINUTES:-0}
mkdir -p "$work"
train() {  # name, then medrefine train options
    local name=$1; shift
    [ -f "$work/$name/last.safetensors" ] && return 0
    medrefine train --stage coarse --data "$data" --size 128 --max-minutes "$max_minutes" \
        -o "$work/$name" "$@" > "$work/$name.log" 2>&1
}
train unet_scratch --arch unet --encoder scratch --no-pretrained --epochs "$epochs_unet" \
    --keep-epochs 2 --seed 0
train heldout_unet3plus --arch unet3plus --encoder scratch --no-pretrained \
    --epochs "$epochs_u3p" --seed 11
train heldout_unet_effnet --arch unet --encoder efficientnet_lite0 --epochs "$epochs_pre" --seed 12
