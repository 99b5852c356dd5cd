"""NCCL's own figures through PyTorch, for the sizes and definitions NcclCheck prints: all-reduce and all-to-all of 1, 16
and 256 MiB per rank, 5 warm-up calls then 20 timed between CUDA events, bus bandwidth as nccl-tests defines it (all-reduce
2(n-1)/n of the buffer per rank, all-to-all (n-1)/n).

    torchrun --nproc_per_node N bench/gpu/torch_collectives.py
"""
import os

import torch
import torch.distributed as dist


def timed(op):
    for _ in range(5):
        op()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        op()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / 20  # microseconds per call


def main():
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    n, rank = dist.get_world_size(), dist.get_rank()
    if rank == 0:
        print(f"torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, {n} rank(s) on {torch.cuda.get_device_name()}")
        print(f"  {'collective':<12} {'bytes/rank':>12} {'time (us)':>10} {'algbw GB/s':>12} {'busbw GB/s':>12}")
    for size in (1 << 20, 16 << 20, 256 << 20):
        elems = size // 4 // n * n
        a = torch.zeros(elems, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)
        ar = timed(lambda: dist.all_reduce(a))
        aa = timed(lambda: dist.all_to_all_single(b, a))
        if rank == 0:
            alg = elems * 4 / ar / 1e3
            print(f"  {'all-reduce':<12} {elems * 4:>12} {ar:>10.1f} {alg:>12.1f} {alg * 2 * (n - 1) / n:>12.1f}")
            alg = elems * 4 / aa / 1e3
            print(f"  {'all-to-all':<12} {elems * 4:>12} {aa:>10.1f} {alg:>12.1f} {alg * (n - 1) / n:>12.1f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
