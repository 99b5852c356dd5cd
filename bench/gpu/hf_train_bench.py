#!/usr/bin/env python3
"""Trains the transformers twin of bench/gpu/deepseek-v3-like.moe on the GPU and prints tokens/s.

The twin is Glm4MoeForCausalLM (DeepSeek-V3-style router: sigmoid scores, e_score_correction_bias,
renormalised top-k scaled by routed_scaling_factor, shared expert, first layer dense) with
n_group = topk_group = 1 and full-width RoPE: the same parameters (954 M) and FLOPs as our recipe.
AdamW (fused) with the recipe's settings, random token ids, batch 8 x 1024, sdpa attention.

  python3 bench/gpu/hf_train_bench.py --dtype bf16        # autocast bf16, fp32 master weights
  python3 bench/gpu/hf_train_bench.py --dtype fp32 --tf32 # fp32 storage, TF32 matmuls
"""
import argparse
import json
import time

import torch
import transformers
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=1024)
p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
p.add_argument("--tf32", action="store_true")
p.add_argument("--experts", default="grouped_mm", help="experts_implementation: grouped_mm, batched_mm or eager")
a = p.parse_args()

torch.backends.cuda.matmul.allow_tf32 = a.tf32
torch.backends.cudnn.allow_tf32 = a.tf32
cfg = Glm4MoeConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512, num_hidden_layers=12,
                    num_attention_heads=16, num_key_value_heads=4, head_dim=64, n_routed_experts=48, n_shared_experts=1,
                    num_experts_per_tok=6, first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=2.5,
                    norm_topk_prob=True, partial_rotary_factor=1.0, attention_bias=False, use_qk_norm=False,
                    tie_word_embeddings=False, max_position_embeddings=1024, rms_norm_eps=1e-6,
                    attn_implementation="sdpa", experts_implementation=a.experts)
torch.manual_seed(1)
model = Glm4MoeForCausalLM(cfg).cuda().train()
params = sum(t.numel() for t in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
gen = torch.Generator(device="cuda").manual_seed(0)
tokens = a.batch * a.seq
times = []
torch.cuda.reset_peak_memory_stats()
for step in range(a.steps):
    ids = torch.randint(0, 256, (a.batch, a.seq), device="cuda", generator=gen)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
    print(f"step {step + 1}: loss {loss.item():.4f} {tokens / times[-1]:.0f} tok/s", flush=True)
steady = times[a.warmup:]
tps = tokens * len(steady) / sum(steady)
flops_per_token = 3 * 439e6  # forward 439 MFLOP/token at full context (moe info), backward twice that
print(json.dumps({"impl": "transformers " + transformers.__version__ + " Glm4Moe", "dtype": a.dtype, "tf32": a.tf32,
                  "experts_implementation": a.experts, "params": params, "tokens_per_step": tokens,
                  "tokens_per_s": round(tps), "model_tflops": round(tps * flops_per_token / 1e12, 1),
                  "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}))
