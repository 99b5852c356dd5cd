#!/usr/bin/env bash
# End-to-end training throughput on the GPU machine: moe train on bench/gpu/deepseek-v3-like.moe (fp32, tf32, bf16 experts)
# and its transformers twin (bench/gpu/hf_train_bench.py, bf16 autocast, then fp32+TF32). OUT: where logs go.
OUT=${OUT:-bench/results/e2e-$(date +%F)}; mkdir -p "$OUT"
mkdir -p /tmp/j && tar xJf .device/jdk.tar.xz -C /tmp/j && J=/tmp/j/jdk/bin/java
JO="--enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -Xmx48g"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $OUT/gpu.txt
# PRECISIONS (default "fp32 tf32 bf16") picks the runs of ours
for prec in ${PRECISIONS:-fp32 tf32 bf16}; do
  t=$([ "$prec" = fp32 ] && echo "" || echo "--precision $prec")
  n=ours${t:+-${t#--precision }}
  timeout 280 $J $JO -cp '.device/lib/*' dev.moe.cli.MoeCli train bench/gpu/deepseek-v3-like.moe --backend cuda $t --steps 20 --seq 1024 --out /tmp/$n > $OUT/$n.log 2>&1
  echo "$n rc=$?"; tail -2 $OUT/$n.log; cp /tmp/$n/metrics.jsonl $OUT/$n-metrics.jsonl
done
python3 bench/gpu/hf_train_bench.py --dtype bf16 > $OUT/hf-bf16.log 2>&1; tail -1 $OUT/hf-bf16.log
python3 bench/gpu/hf_train_bench.py --dtype fp32 --tf32 > $OUT/hf-fp32-tf32.log 2>&1; tail -1 $OUT/hf-fp32-tf32.log
