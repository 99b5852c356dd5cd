#!/usr/bin/env bash
# Every recipe trains with --backend cuda on a GPU machine: one step per stage (or train block) on
# short sequences, device-resident where the GPU code generator covers the model, else on the hybrid
# path (the note moe prints says which feature sent it there). Prints one line per recipe.
#
#   J=/path/to/java bash bench/gpu/smoke-all-recipes.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/moe-smoke}
mkdir -p "$OUT"
J=${J:-java}
status=0
for r in recipes/*.moe; do
  name=$(basename "$r" .moe)
  start=$(date +%s%N)
  $J --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -Xmx8g -cp '.device/lib/*' dev.moe.cli.MoeCli train "$r" \
      --backend cuda --stage-steps 1 --seq 32 --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  rc=$?
  path=$(grep -q "runs on the hybrid path" "$OUT/$name.log" && echo "hybrid ($(grep -o 'uses [^,]*' "$OUT/$name.log" | head -1))" || echo "device-resident")
  printf '%-22s rc=%d %6d ms  %s\n' "$name" "$rc" $(( ($(date +%s%N) - start) / 1000000 )) "$path"
  [ "$rc" = 0 ] || { status=1; tail -3 "$OUT/$name.log"; }
done
exit $status
