#!/usr/bin/env bash
# Every GPU test and the MoE-layer benchmark, on a machine with an NVIDIA GPU. Needs Java 25 ($J, or
# `java` on PATH) and the project's jars in .device/lib (../shared/tools/device-java.sh builds both).
#
#   bash bench/gpu/run-gpu-tests.sh [OUTDIR]     # default OUTDIR: bench/results/gpu-<date>
#   SKIP_BENCH=1 ...                             # only the correctness checks
#   BACKENDS=cuda ...                            # training and generation parity without cuda-hybrid
#
# 1. GpuChecks: the MoE layer's output and every gradient against a float64 reference (28 cases), gating-residual
#    pairs, layers with extra logits (RMoE's recurrent router) whose fp32 logit gradient is checked too, and the
#    balancing losses' per-sequence statistics and aux gradients (softmax and sigmoid scores).
# 2. BackendParity: the primitives CudaBackend runs on the GPU against the CPU backend (24 shapes);
#    DeviceOpsParity: the dense-model kernels (embedding, RMSNorm, LayerNorm, bias add, RoPE, GLU and plain
#    activations, cross-entropy, AdamW, attention, RMoE's GRU cell, latent attention's layout moves) against the CPU
#    backend, 20 shapes each. ExpertParallelGpuCheck: the expert-parallel MoE layer, 2-4 simulated ranks sharing the
#    GPU and NCCL worlds of one, against one layer holding every expert. ExpertParallelTrainCheck: moe train
#    --expert-parallel's path, generated device models (mixtral, zero/copy experts) with 1, 2 and 4 simulated ranks
#    training 3 steps against one model on every rank's shard.
# 3. DeviceModelParity: the device-resident generated models (CudaModelGenerator) against the
#    CPU-generated classes: losses, every gradient, gradient norms, weights and moments after 3 steps
#    (mixtral, deepseek-moe, switch, and its built-in models: sigmoid routing; the sequence-wise and sigmoid aux losses; LayerNorm, qk-norm, q/k/v biases, ungated
#    FFNs; expert activations and capacity; router options; blocks; MoE++; MoLE's latent experts; MoLA's LoRA experts;
#    recurrent (GRU) routers; router jitter; random capacity drops; parallel blocks; multi-head latent attention;
#    attention experts with jetmoe and bam).
#    Training parity: 100 steps of two recipes with --backend cuda (device-resident) and
#    --backend cuda-hybrid against --backend cpu; the losses must agree within 1e-3 relative at every step.
#    Greedy generation with --backend cuda and cuda-hybrid gives the CPU's text.
# 4. Data parallelism over NCCL with a world of one: `moe train --gpus 1 --backend cuda` (launcher, rendezvous,
#    nonblocking NCCL init, gradient all-reduce on the device) against the same run without --gpus, 20 steps;
#    the losses must agree within 1e-6 relative at every step.
#    With more GPUs (DP_GPUS=N), also N ranks against one: within 1e-3 relative (summation order differs).
# 5. MoeLayerBench: TFLOP/s forward and forward+backward, bf16, 8192 tokens, three shapes, and the
#    PyTorch peer on the same GPU in the same run (bench/gpu/torch_moe_gpu.py), when torch is there.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results/gpu-$(date +%F)}
mkdir -p "$OUT"
J=${J:-java}
CP='.device/lib/*'
JOPTS="--enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
status=0
$J $JOPTS -cp "$CP" dev.moe.cuda.GpuChecks 2>&1 | tee "$OUT/parity.txt"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
$J $JOPTS -cp "$CP" dev.moe.cuda.BackendParity 2>&1 | tee "$OUT/backend-parity.txt"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
$J $JOPTS -cp "$CP" dev.moe.cuda.DeviceOpsParity 2>&1 | tee "$OUT/device-ops-parity.txt"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
$J $JOPTS -cp "$CP" dev.moe.cuda.dist.ExpertParallelGpuCheck 2>&1 | tee "$OUT/expert-parallel-check.txt"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
$J $JOPTS -cp "$CP" dev.moe.cuda.model.ExpertParallelTrainCheck 2>&1 | tee "$OUT/expert-parallel-train-check.txt"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
$J $JOPTS -cp "$CP" dev.moe.cuda.model.DeviceModelParity 2>&1 | tee "$OUT/device-model-parity.txt"; [ "${PIPESTATUS[0]}" = 0 ] || status=1

for recipe in mixtral deepseek-moe; do
  for backend in cpu ${BACKENDS:-cuda cuda-hybrid}; do
    $J $JOPTS -Xmx8g -cp "$CP" dev.moe.cli.MoeCli train "recipes/$recipe.moe" --steps 100 --backend $backend \
        --out "$OUT/train-$recipe-$backend" > "$OUT/train-$recipe-$backend.log" 2>&1 || { status=1; tail -5 "$OUT/train-$recipe-$backend.log"; }
  done
  for backend in ${BACKENDS:-cuda cuda-hybrid}; do
  python3 - "$OUT/train-$recipe-cpu/metrics.jsonl" "$OUT/train-$recipe-$backend/metrics.jsonl" "$recipe" "$backend" <<'PY' | tee -a "$OUT/train-parity.txt" || status=1
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 100, (len(a), len(b))
worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
tps = lambda r: sum(x.get("tokens_per_s", 0) for x in r[10:]) / max(1, len(r) - 10)
print(f"{sys.argv[3]} --backend {sys.argv[4]}: 100 steps, loss cpu {a[-1]['loss']:.5f} {sys.argv[4]} {b[-1]['loss']:.5f}, worst relative difference {worst:.2e}"
      f" ({'ok' if worst <= 1e-3 else 'FAIL'}); tokens/s cpu {tps(a):.0f} {sys.argv[4]} {tps(b):.0f}")
sys.exit(0 if worst <= 1e-3 else 1)
PY
  done
done

# Greedy generation from the CPU-trained checkpoint: the device-resident model must pick the same tokens.
for backend in cpu ${BACKENDS:-cuda cuda-hybrid}; do
  $J $JOPTS -cp "$CP" dev.moe.cli.MoeCli generate "$OUT/train-mixtral-cpu" --backend $backend --temperature 0 --max-tokens 48 \
      --prompt "sort: 5 2 9 1 -> " > "$OUT/generate-$backend.txt" 2>"$OUT/generate-$backend.err" || { status=1; tail -3 "$OUT/generate-$backend.err"; }
done
for backend in ${BACKENDS:-cuda cuda-hybrid}; do
  if cmp -s "$OUT/generate-cpu.txt" "$OUT/generate-$backend.txt"; then echo "generate --backend $backend: same greedy text as cpu (ok)";
  else echo "generate --backend $backend: text differs from cpu (FAIL)"; status=1; fi
done | tee "$OUT/generate-parity.txt"

DP_RECIPE=recipes/mixtral.moe
$J $JOPTS -Xmx8g -cp "$CP" dev.moe.cli.MoeCli train $DP_RECIPE --steps 20 --backend cuda --out "$OUT/dp-plain" \
    > "$OUT/dp-plain.log" 2>&1 || { status=1; tail -5 "$OUT/dp-plain.log"; }
for n in 1 ${DP_GPUS:-}; do
  [ "$n" = 1 ] && tol=1e-6 || tol=1e-3
  $J $JOPTS -Xmx8g -cp "$CP" dev.moe.cli.MoeCli train $DP_RECIPE --steps 20 --backend cuda --gpus "$n" --out "$OUT/dp-gpus$n" \
      > "$OUT/dp-gpus$n.log" 2>&1 || { status=1; tail -5 "$OUT/dp-gpus$n.log"; }
  python3 - "$OUT/dp-plain/metrics.jsonl" "$OUT/dp-gpus$n/metrics.jsonl" "$n" "$tol" <<'PY' | tee -a "$OUT/data-parallel.txt" || status=1
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
tol = float(sys.argv[4])
assert len(a) == len(b) == 20, (len(a), len(b))
worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
print(f"--gpus {sys.argv[3]} against one process: 20 steps, loss {a[-1]['loss']:.6f} / {b[-1]['loss']:.6f},"
      f" worst relative difference {worst:.2e} ({'ok' if worst <= tol else 'FAIL'}, limit {tol})")
sys.exit(0 if worst <= tol else 1)
PY
done

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  $J $JOPTS -Xmx48g -cp "$CP" dev.moe.cuda.MoeLayerBench ${BENCH_ARGS:-} 2>&1 | tee "$OUT/moe-layer-bench.txt"
  if python3 -c 'import torch' 2>/dev/null; then
    python3 bench/gpu/torch_moe_gpu.py 2>&1 | tee "$OUT/torch-peer.txt"
  fi
fi
exit $status
