#!/usr/bin/env bash
# LiteMedSAM's test box masks (written by scripts/litemedsam_boxes.py --split test -n 40 --out
# eval/lms/<preset>_test) through each preset's fixer with the command line tools: medrefine refine,
# then medrefine evaluate --pred on the input and the refined masks, then the review score's
# Spearman with 1 - Dice and its 95% bootstrap interval (scripts/mask_fixer_eval.py --intervals).
# usage: scripts/litemedsam_review.sh   (from the repository root, with the venv active)
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for pair in polyp:kvasir_seg skin:ph2 lung:covid_cxr_lungs_v7; do
  P=${pair%%:*}; D=../shared/data/${pair#*:}
  src=eval/lms/${P}_src/litemedsam; rm -rf $src eval/lms/${P}_imgs; mkdir -p $src eval/lms/${P}_imgs
  for m in eval/lms/${P}_test/*.png; do s=$(basename $m .png); ln -s $(readlink -f $(ls $D/images/$s.* | head -1)) eval/lms/${P}_imgs/; done
  medrefine refine --image eval/lms/${P}_imgs --mask eval/lms/${P}_test -o $src/refined --preset $P > $src/refine.log 2>&1
  # evaluate exits 2 here: the test cases past the first 40 have no mask and are listed failed
  medrefine evaluate --pred $src/refined --data $D --split test --out $src/eval_refined > $src/eval.log 2>&1 || true
  medrefine evaluate --pred eval/lms/${P}_test --data $D --split test --out $src/eval_input > $src/eval_in.log 2>&1 || true
done
for P in polyp skin lung; do
  echo "== $P"; grep '^masks' eval/lms/${P}_src/litemedsam/eval_in.log eval/lms/${P}_src/litemedsam/eval.log
  python scripts/mask_fixer_eval.py --out eval/lms/${P}_src --intervals
done
