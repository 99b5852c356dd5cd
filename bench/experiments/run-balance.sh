#!/usr/bin/env bash
# Claim 3 at small scale: micro-batch vs global-batch load balancing, 3 seeds each; after training,
# `moe eval` on 16 held-out batches reports I(domain; expert) per MoE layer. Writes results-balance.md.
set -euo pipefail
cd "$(dirname "$0")"
MOE=../../moe
OUT=${OUT:-/tmp/moe-experiments}
mkdir -p "$OUT"
{
  echo "# Claim 3: micro- vs global-batch balancing (CPU, synthetic corpus, 120 steps of 4 x 8 x 64 tokens)"
  echo
  echo "Command: \`bash bench/experiments/run-balance.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores). Mutual information"
  echo "of a token's domain (the 7 synthetic parts) and its 2 chosen experts, in bits, on 16 held-out batches."
  echo
  echo "| recipe | seed | eval loss | I(domain; expert) per MoE layer 0, 1, 2, 3 | mean over layers |"
  echo "|---|---|---|---|---|"
} > results-balance.md
for recipe in balance-micro-batch balance-global-batch; do
  for seed in 1 2 3; do
    run="$OUT/$recipe-$seed"
    $MOE train "$recipe.moe" --seed "$seed" --out "$run" > "$run.train.log" 2>&1
    ev=$($MOE eval "$run" --batches 16 2>/dev/null)
    loss=$(echo "$ev" | awk '$1 == "all" {print $2}')
    mis=$(echo "$ev" | awk '/mutual information/ {print $(NF-1)}' | paste -sd' ')
    mean=$(python3 -c "import sys; x=[float(v) for v in sys.argv[1:]]; print(f'{sum(x)/len(x):.4f}')" $mis)
    echo "| $recipe | $seed | $loss | $mis | $mean |" >> results-balance.md
    echo "$recipe seed $seed: loss $loss, MI $mis"
  done
done
cat results-balance.md
