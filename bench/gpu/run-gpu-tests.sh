#!/usr/bin/env bash
# Every GPU test and the MoE-layer benchmark, on a machine with an NVIDIA GPU. Needs Java 25 ($J, or
# `java` on PATH) and the project's jars in .device/lib (../shared/tools/device-java.sh builds both).
#
#   bash bench/gpu/run-gpu-tests.sh [OUTDIR]     # default OUTDIR: bench/results/gpu-<date>
#
# 1. GpuChecks: the MoE layer's output and every gradient against a float64 reference (22 cases).
# 2. MoeLayerBench: TFLOP/s forward and forward+backward, bf16, 8192 tokens, three shapes.
# 3. The PyTorch peer on the same GPU in the same run (bench/gpu/torch_moe_gpu.py), when torch is there.
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
$J $JOPTS -Xmx48g -cp "$CP" dev.moe.cuda.MoeLayerBench ${BENCH_ARGS:-} 2>&1 | tee "$OUT/moe-layer-bench.txt"
if python3 -c 'import torch' 2>/dev/null; then
  python3 bench/gpu/torch_moe_gpu.py 2>&1 | tee "$OUT/torch-peer.txt"
fi
exit $status
