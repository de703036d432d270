#!/usr/bin/env bash
# Reproduce the built-in generator bundle shipped in src/cellsynth/data/bundle_dsb2018 from the
# built-in CC0 nuclei data set (fixed step counts, so the result does not depend on machine speed).
#
# Stage 1 is the former built-in bundle (tests/fixtures/bundle_dsb2018_v05): both models from
# scratch, texture model without the brightness channel. Stage 2 continues its texture model with
# the per-cell brightness condition (--init-from: the new input channel starts at zero weight);
# the mask model is kept (--mask-steps 0). Stage 3 continues both models with a cosine-decayed
# learning rate (2000 mask + 1000 texture steps): rounder, lumpier masks were the largest gap.
# About 25 + 15 + 25 minutes on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bundle_dsb2018}
stage1=${out}_stage1
stage2=${out}_stage2
data=src/cellsynth/data/dsb2018_nuclei
cellsynth learn "$data" -o "$stage1" --minutes 0 --mask-steps 1200 --texture-steps 2400 \
  --tile 64 --seed 0 --device cpu --checkpoint-minutes 5 --no-brightness-condition --no-preview
cellsynth learn "$data" -o "$stage2" --init-from "$stage1" --minutes 0 --mask-steps 0 \
  --texture-steps 3000 --texture-batch 4 --seed 0 --device cpu --checkpoint-minutes 5 --no-preview
cellsynth learn "$data" -o "$out" --init-from "$stage2" --minutes 0 --mask-steps 2000 \
  --texture-steps 1000 --texture-batch 4 --lr 5e-4 --lr-schedule cosine --seed 1 --device cpu \
  --checkpoint-minutes 5 --no-preview
rm -rf "$out/training_state"   # optimiser state is only needed to resume; not shipped
rm -f "$out/.cellsynth.lock"    # the writer's lock file
du -sh "$out"
echo "copy with: rm -rf src/cellsynth/data/bundle_dsb2018 && cp -r $out src/cellsynth/data/bundle_dsb2018"
