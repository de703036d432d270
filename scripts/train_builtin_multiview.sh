#!/usr/bin/env bash
# Reproduce the built-in multiview model shipped in src/cellsynth/data/multiview. It is trained
# on procedural spherical-harmonic shapes only (no data), fixed seed and step count.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/multiview}
cellsynth train-multiview -o "$out" --steps 4000 --batch 32 --lr 2e-3 --seed 0 --device cpu
du -sh "$out"
echo "copy with: rm -rf src/cellsynth/data/multiview && cp -r $out src/cellsynth/data/multiview"
