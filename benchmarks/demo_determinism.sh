#!/usr/bin/env bash
# Determinism check (issue 17): a recipe run twice into fresh folders, then once killed with kill -9 after its
# first stage and resumed; prints the sha256 of model.onnx and model_int8.onnx of the three runs, which must be
# identical. Not a timing measurement: the quantize pass times its candidates, and that timing must not change
# the bytes. About three demo runs of wall time.
# Usage: benchmarks/demo_determinism.sh [RECIPE] [OUT]   (defaults: recipes/demo.yaml, out/determinism)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
recipe=${1:-recipes/demo.yaml}
out=${2:-out/determinism}
rm -rf "$out/run1" "$out/run2" "$out/run3"
mkdir -p "$out"
for k in 1 2; do
  start=$(date +%s)
  compressor compress --recipe "$recipe" --out "$out/run$k" --quiet > "$out/run$k.log" 2>&1
  echo "run$k exit $? in $(( $(date +%s) - start )) s"
done
start=$(date +%s)
compressor compress --recipe "$recipe" --out "$out/run3" --quiet > "$out/run3-killed.log" 2>&1 &
pid=$!
until python -c "import json,sys; sys.exit(0 if json.load(open('$out/run3/manifest.json'))['stages'] else 1)" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
kill -9 "$pid"
wait "$pid"
echo "run3 killed (exit $?) after $(( $(date +%s) - start )) s with its first stage done"
start=$(date +%s)
compressor compress --recipe "$recipe" --out "$out/run3" --quiet --resume > "$out/run3-resumed.log" 2>&1
echo "run3 resumed: exit $? in $(( $(date +%s) - start )) s"
grep "^resume" "$out/run3-resumed.log"
for k in 1 2 3; do
  echo "run$k model.onnx $(sha256sum "$out/run$k/model.onnx" | cut -c1-64)" \
       "model_int8.onnx $(sha256sum "$out/run$k/model_int8.onnx" | cut -c1-64)"
done
