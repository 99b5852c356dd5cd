#!/usr/bin/env bash
# Issue 9's measurements on a machine with several GPUs, in one call (results under $OUT, default /tmp/multi-gpu):
#   1. NcclCheck --gpus N: the communicator, the dispatch all-to-all, the expert-parallel layer over NCCL, and our all-reduce and
#      all-to-all bus bandwidth; then PyTorch's (NCCL's own figure) for the same sizes (bench/gpu/torch_collectives.py).
#   2. Correctness: moe train recipes/mixtral.moe --gpus N --expert-parallel against --gpus 1, fp32, worst relative loss difference
#      over 20 steps (issue: 1e-3).
#   3. Scaling: bench/gpu/deepseek-v3-like.moe (bf16, seq 1024) data-parallel and expert-parallel on 1, 2, 4, 8 GPUs (as many as
#      there are): tokens/s (median of steps 6-20) and each rank's parameter memory, as a table (scaling.md).
# GPUS="1 2" limits the world sizes (a world of one is a dry run of the script on one GPU). J is the java to use; the jars are in
# .device/lib (../shared/tools/device-java.sh).
set -u
J=${J:-java}
O="--enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector"
OUT=${OUT:-/tmp/multi-gpu}
RUNS=${RUNS:-/tmp/multi-gpu-runs} # the run directories (checkpoints): only logs and tables go to $OUT
rm -rf "$RUNS"; mkdir -p "$OUT" "$RUNS" # fresh run directories: metrics.jsonl is appended to
have=$(nvidia-smi -L | wc -l)
GPUS=${GPUS:-$(for n in 1 2 4 8; do [ "$n" -le "$have" ] && echo -n "$n "; done)}
STEPS=${STEPS:-20}
MOE=($J $O -Xmx32g -cp '.device/lib/*' dev.moe.cli.MoeCli)
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
tokens() { grep -o '"tokens_per_s":[0-9.]*' "$1/metrics.jsonl" | cut -d: -f2 | tail -n +6 | median; }
top=$(echo $GPUS | tr ' ' '\n' | sort -n | tail -1)

echo "== 1. NCCL on $top GPU(s)"
timeout 300 $J $O -cp '.device/lib/*' dev.moe.cuda.nccl.NcclCheck --gpus "$top" 2>&1 | grep -v WARNING | tee "$OUT/nccl-check.txt" | tail -12
timeout 300 torchrun --nproc_per_node "$top" bench/gpu/torch_collectives.py 2>&1 | grep -v -i warn | tee "$OUT/torch-collectives.txt" | tail -8

echo "== 2. correctness: mixtral, --gpus N --expert-parallel against --gpus 1 (fp32)"
timeout 300 "${MOE[@]}" train recipes/mixtral.moe --backend cuda --gpus 1 --steps "$STEPS" --seq 64 --out "$RUNS/mixtral-1" > "$OUT/mixtral-1.log" 2>&1
for n in $GPUS; do
  # a world of one too: --expert-parallel on one GPU must give the losses of --gpus 1
  timeout 300 "${MOE[@]}" train recipes/mixtral.moe --backend cuda --gpus "$n" --expert-parallel --steps "$STEPS" --seq 64 --out "$RUNS/mixtral-ep$n" > "$OUT/mixtral-ep$n.log" 2>&1
  echo "rc=$? $(paste <(grep -o '"loss":[0-9.]*' "$RUNS/mixtral-1/metrics.jsonl" | cut -d: -f2) <(grep -o '"loss":[0-9.]*' "$RUNS/mixtral-ep$n/metrics.jsonl" | cut -d: -f2) \
    | awk -v n="$n" '{d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > w) w = d} END {printf "%d GPUs: worst relative loss difference %.2e over %d steps (limit 1e-3): %s\n", n, w, NR, (w <= 1e-3 && NR > 0) ? "ok" : "FAIL"}')" \
    | tee -a "$OUT/correctness.txt"
done

echo "== 3. scaling: deepseek-v3-like, bf16, 8 x 1024 tokens a step"
{
  echo "| GPUs | mode | tokens/s | scaling | parameter memory of one rank |"
  echo "|---|---|---|---|---|"
} > "$OUT/scaling.md"
base=""
for n in $GPUS; do
  for mode in dp ep; do
    [ "$mode" = ep ] && [ "$n" -eq 1 ] && continue
    extra=$([ "$mode" = ep ] && echo --expert-parallel)
    dir="$RUNS/v3-$mode$n"
    timeout 590 "${MOE[@]}" train bench/gpu/deepseek-v3-like.moe --backend cuda --precision bf16 --gpus "$n" $extra --steps "$STEPS" --seq 1024 --out "$dir" > "$OUT/v3-$mode$n.log" 2>&1
    rc=$?
    t=$( [ $rc = 0 ] && tokens "$dir" || echo 0)
    [ -z "$base" ] && base=$t
    mem=$(grep -o 'holds its own experts only: [0-9.]* of the model.s [0-9.]* MiB' "$OUT/v3-$mode$n.log" | head -1 | sed 's/holds its own experts only: //')
    echo "| $n | $mode | $t | $(awk -v t="$t" -v b="$base" 'BEGIN {printf "%.2fx", (b > 0) ? t / b : 0}') | ${mem:-every expert} |" | tee -a "$OUT/scaling.md"
  done
done
cat "$OUT/scaling.md"
