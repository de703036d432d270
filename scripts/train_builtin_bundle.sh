#!/usr/bin/env bash
# Reproduce the built-in generator bundle shipped in src/cellsynth/data/bundle_dsb2018 from the
# built-in CC0 nuclei data set (fixed step counts, so the result does not depend on machine speed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bundle_dsb2018}
data=src/cellsynth/data/dsb2018_nuclei
cellsynth learn "$data" -o "$out" --minutes 0 --mask-steps 1200 --texture-steps 2400 \
  --tile 64 --seed 0 --device cpu --checkpoint-minutes 5
rm -rf "$out/training_state"   # optimiser state is only needed to resume; not shipped
rm -f "$out/.cellsynth.lock"    # the writer's lock file
du -sh "$out"
echo "copy with: rm -rf src/cellsynth/data/bundle_dsb2018 && cp -r $out src/cellsynth/data/bundle_dsb2018"
