#!/usr/bin/env bash
# Every recipe trains with --backend cuda on a GPU machine: one step per stage (or train block) on
# short sequences, device-resident where the GPU code generator covers the model, else on the hybrid
# path (the note moe prints says which feature sent it there); then greedy generation of 8 tokens from
# the last checkpoint on the same backend. Prints one line per recipe.
#
#   J=/path/to/java bash bench/gpu/smoke-all-recipes.sh [OUTDIR]
#   BACKEND=cpu ...                  # the same on the CPU (to try the script without a GPU)
#   RECIPES="recipes/a.moe ..." ...  # some recipes only
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/moe-smoke}
mkdir -p "$OUT"
J=${J:-java}
BACKEND=${BACKEND:-cuda}
MOE=("$J" --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -Xmx8g -cp '.device/lib/*' dev.moe.cli.MoeCli)
status=0
total=0; trained=0; generated=0; resident=0
for r in ${RECIPES:-recipes/*.moe}; do
  name=$(basename "$r" .moe)
  start=$(date +%s%N)
  "${MOE[@]}" train "$r" --backend "$BACKEND" --stage-steps 1 --seq 32 --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  rc=$?
  path=$(grep -q "runs on the hybrid path" "$OUT/$name.log" && echo "hybrid ($(grep -o 'uses [^,]*' "$OUT/$name.log" | head -1))" || echo "device-resident")
  [ "$BACKEND" = cpu ] && path=cpu
  # the last checkpoint: the run directory's, or (several stages or models) the newest stage directory's
  ck="$OUT/$name"
  if [ ! -f "$ck/last.safetensors" ]; then
    ck=$(ls -td "$OUT/$name"/*/ 2>/dev/null | while read -r d; do [ -f "$d/last.safetensors" ] && { echo "$d"; break; }; done)
  fi
  gen=skipped
  if [ "$rc" = 0 ] && [ -n "$ck" ]; then
    "${MOE[@]}" generate "$ck" --backend "$BACKEND" --temperature 0 --max-tokens 8 --prompt "a" > "$OUT/$name.generate.txt" 2>&1 && gen=ok || gen=FAIL
  fi
  printf '%-22s rc=%d %6d ms  generate %-7s %s\n' "$name" "$rc" $(( ($(date +%s%N) - start) / 1000000 )) "$gen" "$path"
  total=$((total + 1)); [ "$rc" = 0 ] && trained=$((trained + 1)); [ "$gen" = ok ] && generated=$((generated + 1))
  [ "$path" = device-resident ] && resident=$((resident + 1))
  [ "$rc" = 0 ] && [ "$gen" != FAIL ] || { status=1; tail -3 "$OUT/$name.log"; [ -f "$OUT/$name.generate.txt" ] && tail -3 "$OUT/$name.generate.txt"; }
done
echo "$trained of $total recipes trained, $generated generated$([ "$BACKEND" = cpu ] || echo "; $resident device-resident, $((total - resident)) hybrid")"
exit $status
