#!/usr/bin/env bash
# Training parity of recipes on the GPU: each recipe trains STEPS steps (default 50) with --backend cpu
# and --backend cuda (fp32) from the same seed; the losses must agree within 1e-3 relative at every step.
# Prints one line per recipe with the worst difference, the path the GPU run took and both speeds.
#
#   J=/path/to/java bash bench/gpu/recipe-parity.sh OUTDIR recipes/a.moe [recipes/b.moe ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=$1; shift
STEPS=${STEPS:-50}
mkdir -p "$OUT"
J=${J:-java}
status=0
for r in "$@"; do
  name=$(basename "$r" .moe)
  for backend in cpu cuda; do
    $J --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -Xmx8g -cp '.device/lib/*' dev.moe.cli.MoeCli train "$r" \
        --steps "$STEPS" --backend $backend --out "$OUT/$name-$backend" > "$OUT/$name-$backend.log" 2>&1 \
        || { status=1; echo "$name --backend $backend failed:"; tail -5 "$OUT/$name-$backend.log"; continue 2; }
  done
  path=$(grep -q "runs on the hybrid path" "$OUT/$name-cuda.log" && echo "hybrid" || echo "device-resident")
  python3 - "$OUT/$name-cpu/metrics.jsonl" "$OUT/$name-cuda/metrics.jsonl" "$name" "$path" "$STEPS" <<'PY' || status=1
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
n = int(sys.argv[5])
assert len(a) == len(b) == n, (len(a), len(b))
diffs = [abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b)]
worst = max(diffs)
tps = lambda r: sum(x.get("tokens_per_s", 0) for x in r[5:]) / max(1, len(r) - 5)
print(f"{sys.argv[3]:<16} {sys.argv[4]:<15} {n} steps, loss cpu {a[-1]['loss']:.5f} cuda {b[-1]['loss']:.5f}, worst relative difference "
      f"{worst:.2e} at step {diffs.index(worst) + 1} ({'ok' if worst <= 1e-3 else 'FAIL'}); tokens/s cpu {tps(a):.0f} cuda {tps(b):.0f}")
sys.exit(0 if worst <= 1e-3 else 1)
PY
done
exit $status
