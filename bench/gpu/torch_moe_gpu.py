# Baselines of an MoE SwiGLU layer on the GPU, measured with PyTorch (the peer) and
# a dense GEMM of equal FLOPs (the practical ceiling). Prints one table.
# The project's copy of ../shared/bench/torch_moe_gpu.py, plus the peak memory of the grouped
# forward+backward (torch.cuda.max_memory_allocated) to compare with our allocator's high-water mark.
import torch, time, json, sys
import torch.nn.functional as F
from triton.testing import do_bench
torch.manual_seed(0)
dev = "cuda"; dt = torch.bfloat16

CONFIGS = {
  # name: tokens, d_model, d_ff, experts, top_k, shared experts
  "mixtral":  (8192, 4096, 14336, 8, 2, 0),
  "deepseek": (8192, 2048, 1408, 64, 6, 2),
  "olmoe":    (8192, 2048, 1024, 64, 8, 0),
}

def route(x, wr, k):
    logits = x @ wr
    p = logits.float().softmax(-1)
    w, idx = p.topk(k, -1)
    w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
    return w, idx

def naive(x, wr, w1, w3, w2, k):
    w, idx = route(x, wr, k)
    out = torch.zeros_like(x)
    E = w1.shape[0]
    for e in range(E):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        if tok.numel() == 0: continue
        h = x[tok]
        y = (F.silu(h @ w1[e]) * (h @ w3[e])) @ w2[e]
        out.index_add_(0, tok, y * w[tok, slot, None])
    return out

def grouped(x, wr, w1, w3, w2, k):
    w, idx = route(x, wr, k)
    T = x.shape[0]; E = w1.shape[0]
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=E)
    offs = counts.cumsum(0).to(torch.int32)
    tok = order // k
    h = x[tok]
    w13 = torch.cat([w1, w3], dim=2)  # E, d, 2f
    g = torch._grouped_mm(h, w13, offs=offs)
    f = w1.shape[2]
    a = F.silu(g[:, :f]) * g[:, f:]
    y = torch._grouped_mm(a, w2, offs=offs)
    y = y * w.reshape(-1)[order, None]
    out = torch.zeros_like(x)
    out.index_add_(0, tok, y)
    return out

def bench(fn, backward=False):
    if not backward:
        return do_bench(fn, warmup=50, rep=300, return_mode="median")
    def fb():
        out = fn()
        out.float().square().mean().backward()
    return do_bench(fb, warmup=50, rep=300, return_mode="median")

rows = []
for name, (T, d, f, E, k, S) in CONFIGS.items():
    x = torch.randn(T, d, device=dev, dtype=dt)
    wr = torch.randn(d, E, device=dev, dtype=dt) * d**-0.5
    w1 = (torch.randn(E, d, f, device=dev, dtype=dt) * d**-0.5)
    w3 = (torch.randn(E, d, f, device=dev, dtype=dt) * d**-0.5)
    w2 = (torch.randn(E, f, d, device=dev, dtype=dt) * f**-0.5)
    flops_fwd = 6.0 * T * k * d * f
    # check grouped vs naive
    ref = naive(x, wr, w1, w3, w2, k); got = grouped(x, wr, w1, w3, w2, k)
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    # dense ceiling: the same FLOPs as three GEMMs of T*k rows
    A = torch.randn(T * k, d, device=dev, dtype=dt); B13 = torch.randn(d, 2 * f, device=dev, dtype=dt); B2 = torch.randn(f, d, device=dev, dtype=dt)
    def dense():
        g = A @ B13
        return (F.silu(g[:, :f]) * g[:, f:]) @ B2
    t_dense = bench(dense)
    t_naive = bench(lambda: naive(x, wr, w1, w3, w2, k))
    t_grp = bench(lambda: grouped(x, wr, w1, w3, w2, k))
    for p in (wr, w1, w3, w2): p.requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    t_naive_b = bench(lambda: naive(xg, wr, w1, w3, w2, k), True)
    t_grp_b = bench(lambda: grouped(xg, wr, w1, w3, w2, k), True)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    out = grouped(xg, wr, w1, w3, w2, k); out.float().square().mean().backward(); torch.cuda.synchronize()
    peak_fb = torch.cuda.max_memory_allocated()
    for p in (wr, w1, w3, w2): p.requires_grad_(False)
    tf = lambda ms, mult=1.0: flops_fwd * mult / (ms * 1e-3) / 1e12
    rows.append(dict(cfg=name, T=T, d=d, f=f, E=E, k=k, rel_err=rel,
        dense_ms=t_dense, dense_tflops=tf(t_dense),
        naive_fwd_ms=t_naive, naive_fwd_tflops=tf(t_naive),
        grouped_fwd_ms=t_grp, grouped_fwd_tflops=tf(t_grp),
        naive_fb_ms=t_naive_b, naive_fb_tflops=tf(t_naive_b, 3),
        grouped_fb_ms=t_grp_b, grouped_fb_tflops=tf(t_grp_b, 3), grouped_fb_peak_gib=peak_fb / 2**30))
    print(json.dumps(rows[-1]), flush=True)

print("\ncfg       dense(TF/s) naive-fwd grouped-fwd naive-f+b grouped-f+b  (TFLOP/s, bf16)  peak f+b")
for r in rows:
    print(f"{r['cfg']:9s} {r['dense_tflops']:10.0f} {r['naive_fwd_tflops']:9.0f} {r['grouped_fwd_tflops']:11.0f} {r['naive_fb_tflops']:9.0f} {r['grouped_fb_tflops']:11.0f}  {r['grouped_fb_peak_gib']:6.2f} GiB  rel_err={r['rel_err']:.1e}")
