#!/usr/bin/env bash
# Run several experiment configs at once on one GPU, three trainings per experiment side by side
# (`--devices cuda:0 cuda:0 cuda:0`: the ladder's rungs and the rows share the GPU), then pack
# their records (no models, no TIFFs) into one archive, OUT_ROOT/records-STAMP.tgz. How the H200 rows of docs/results.md
# were run (December 2026):
#
#   LIMIT=500 bash scripts/gpu_experiments.sh OUT_ROOT experiments/gowt1_gpu.json experiments/hela_gpu.json
#
# LIMIT (seconds, default none) stops every experiment cleanly (SIGINT: finished rows and rungs
# are kept, the same command continues them). SLOTS (default 3) is the trainings per experiment,
# DEVICE (default cuda:0) the device they share.
set -u
out=${1:?usage: gpu_experiments.sh OUT_ROOT CONFIG...}
shift
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)  # logs and archive never replace an earlier run's
slots=()
for _ in $(seq "${SLOTS:-3}"); do slots+=("${DEVICE:-cuda:0}"); done
for cfg in "$@"; do
  name=$(basename "$cfg" .json)
  if [ -n "${LIMIT:-}" ]; then stop=(timeout -s INT "$LIMIT"); else stop=(); fi
  "${stop[@]}" python3 -m cellsynth experiment "$cfg" -o "$out/$name" --devices "${slots[@]}" \
    > "$out/$name-$stamp.log" 2>&1 &
done
wait
tar czf "$out/records-$stamp.tgz" -C "$out" --exclude=models --exclude='*.tif' \
  --exclude='*.safetensors' $(cd "$out" && ls -d -- */ *.log 2>/dev/null)
echo "records: $out/records-$stamp.tgz"
