"""PyTorch's side of bench/distributed.sh, run under torchrun with the Gloo backend:
  torch_ddp_bench.py busbw     dist.all_reduce of f32 buffers from 4 KiB to 64 MiB, then
                               dist.reduce_scatter_tensor ("rsbw" lines)
  torch_ddp_bench.py dp_step [bf16|f16|powersgdR]   DistributedDataParallel MLP 784-512-512-10,
                               SGD + momentum, global batch 128 split over the ranks,
                               bucket_cap_mb=1; with bf16 or f16, DDP's compress hook for the
                               all-reduces; powersgdR: powerSGD_hook of rank R
  torch_ddp_bench.py adam_step [HIDDEN BUCKET_MB]   the MLP (or HIDDEN layers of 512) with Adam:
                               DDP, ZeroRedundancyOptimizer, FSDP2 without resharding after
                               forward
Prints the same lines as distributed_bench (rank 0 only), so the script can set them side by side.
"""
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def median_ms(warmup, reps, fn):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def busbw(rank, world):
    if rank == 0:
        print(f"# all_reduce f32 on cpu (gloo), {world} ranks")
    size = 4096
    while size <= 64 << 20:
        t = torch.ones(size // 4)
        ms = median_ms(3, 10 if size >= 16 << 20 else 30, lambda: dist.all_reduce(t))
        algbw = size / (ms * 1e-3) / 1e9
        bus = algbw * 2 * (world - 1) / world
        if rank == 0:
            print(f"busbw {size:12d} {ms * 1e3:12.1f} {algbw:12.3f} {bus:12.3f}")
        size *= 4
    size = 4096 * world
    while size <= 64 << 20:
        t = torch.ones(size // 4)
        out = torch.empty(size // 4 // world)
        ms = median_ms(3, 10 if size >= 16 << 20 else 30,
                       lambda: dist.reduce_scatter_tensor(out, t))
        algbw = size / (ms * 1e-3) / 1e9
        bus = algbw * (world - 1) / world
        if rank == 0:
            print(f"rsbw {size:12d} {ms * 1e3:12.1f} {algbw:12.3f} {bus:12.3f}")
        size *= 4


def dp_step(rank, world, threads, compress=None):
    torch.manual_seed(0)
    batch = 128 // world
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10))
    # powerSGD_hook over Gloo with several buckets aborts: each bucket's hook chains its own
    # asynchronous all-reduces, the buckets' chains interleave in different orders on the
    # ranks, and Gloo meets messages of different sizes (torch 2.15: "op.preamble.length <=
    # op.nbytes. 524 vs 512"). One bucket avoids that; bench/distributed.sh gives Kiln the same.
    one_bucket = bool(compress and compress.startswith("powersgd"))
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=25 if one_bucket else 1)
    if one_bucket:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
        # Compressed from the second step on (the hook needs one uncompressed step first).
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=int(compress[len("powersgd"):]),
            start_powerSGD_iter=2)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    elif compress:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        hook = {"bf16": default_hooks.bf16_compress_hook,
                "f16": default_hooks.fp16_compress_hook}[compress]
        ddp.register_comm_hook(None, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    i = torch.arange(batch * 784)
    x = (((i + rank) * 7919) % 255).float().reshape(batch, 784) / 255
    y = torch.arange(batch) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()

    ms = median_ms(10, 60, step)
    if rank == 0:
        wire = compress or "f32"
        print(f"dp_step world={world} threads={threads} batch_per_rank={batch} wire={wire} "
              f"{ms:.3f} ms")


def adam_step(rank, world, threads, hidden=2, bucket_mb=1):
    """DDP with Adam (sharded=0), with ZeroRedundancyOptimizer(Adam) (sharded=1: ZeRO stage 1),
    and FSDP2's fully_shard with reshard_after_forward=False (sharded=2: gradients
    reduce-scattered, parameters all-gathered once a step, as ZeRO stage 2 moves them): the
    median step and rank 0's optimizer state bytes."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh
    batch = 128 // world
    i = torch.arange(batch * 784)
    x = (((i + rank) * 7919) % 255).float().reshape(batch, 784) / 255
    y = torch.arange(batch) % 10
    for sharded in (0, 1, 2):
        torch.manual_seed(0)
        layers, width = [], 784
        for _ in range(hidden):
            layers += [torch.nn.Linear(width, 512), torch.nn.ReLU()]
            width = 512
        model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
        if sharded == 2:
            mesh = init_device_mesh("cpu", (world,))
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh, reshard_after_forward=False)
            ddp = fully_shard(model, mesh=mesh, reshard_after_forward=False)
        else:
            ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
        if sharded == 1:
            opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.Adam,
                                          lr=1e-3)
        else:
            opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()

        ms = median_ms(10, 60, step)
        local = opt.optim if sharded == 1 else opt
        # FSDP2's moments are DTensors: this rank's shard is to_local().
        state = sum(getattr(t, "to_local", lambda: t)().numel() * t.element_size()
                    for s in local.state.values()
                    for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
        if rank == 0:
            print(f"adam_step world={world} sharded={sharded} state_bytes={state} "
                  f"{ms:.3f} ms", flush=True)
        # ZeroRedundancyOptimizer's last broadcasts finish before the group goes (without this
        # wait one rank aborted at exit: "terminate called without an active exception").
        del opt, ddp
        dist.barrier()


def main():
    what = sys.argv[1]
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if what == "busbw":
        busbw(rank, world)
    elif what == "adam_step":
        adam_step(rank, world, threads, *(int(a) for a in sys.argv[2:4]))
    else:
        dp_step(rank, world, threads, sys.argv[2] if len(sys.argv) > 2 else None)
    sys.stdout.flush()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
