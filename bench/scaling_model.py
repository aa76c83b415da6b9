"""The step time of data-parallel training at 8 to 1,024 GPUs, modelled from measured per-layer
backward times and published NCCL bus bandwidths (docs/SCALING.md explains the model).

  scaling_model.py kiln-trace TRACE.json      gradient timeline from Kiln's Chrome trace of a
                                             data-parallel step (bench/distributed.sh writes one)
  scaling_model.py transformer               a BERT-large-shaped stack (24 layers, d=1024) timed
                                             per layer with PyTorch 2.x on this CPU (hooks)

Each prints the timeline it measured, then the modelled step time and scaling efficiency for
n = 8 ... 1024 GPUs, for several bucket sizes and bus bandwidths.
"""
import json
import math
import sys
import time

# NCCL's all-reduce, as nccl-tests reports it: busbw = (S / t) * 2 (n - 1) / n. Published
# large-message figures we model with (GB/s): intra-node NVLink on DGX H100 about 450; across
# nodes with 8 x 400 Gb/s InfiniBand per node about 350 on tens of nodes, falling at scale;
# a 100 Gb/s Ethernet cluster about 10. The latency term: about 10 us per level of NCCL's
# double binary tree (ceil(log2 n) levels), 25 us base.
BANDWIDTHS = {"IB 8x400G (350 GB/s)": 350e9, "IB 8x100G (90 GB/s)": 90e9, "Ethernet 100G (10 GB/s)": 10e9}


def allreduce_seconds(size, n, busbw):
    if n == 1:
        return 0.0
    return 25e-6 + 10e-6 * math.ceil(math.log2(n)) + size * 2 * (n - 1) / n / busbw


def step_seconds(timeline, forward, optimizer, n, busbw, bucket_bytes):
    """timeline: [(seconds after backward starts when the gradient exists, bytes)] in backward
    order. Buckets close at bucket_bytes (0: one bucket for everything, after backward); each
    all-reduce starts when its bucket is full and the one before it is done."""
    buckets, size, ready = [], 0, 0.0
    for t, b in timeline:
        size += b
        ready = t
        if bucket_bytes and size >= bucket_bytes:
            buckets.append((ready, size))
            size = 0
    if size:
        buckets.append((ready, size))
    comm_end = 0.0
    for ready, size in buckets:
        comm_end = max(comm_end, ready) + allreduce_seconds(size, n, busbw)
    backward = timeline[-1][0]
    return forward + max(backward, comm_end) + optimizer, len(buckets)


def report(name, timeline, forward, optimizer):
    total = sum(b for _, b in timeline)
    print(f"== {name}: {len(timeline)} gradients, {total / 1e6:.1f} MB, forward {forward * 1e3:.2f} ms, "
          f"backward {timeline[-1][0] * 1e3:.2f} ms, optimizer {optimizer * 1e3:.2f} ms")
    single = forward + timeline[-1][0] + optimizer
    for label, busbw in BANDWIDTHS.items():
        print(f"-- {label}: step ms (efficiency = 1-GPU step / step)")
        header = "bucket".ljust(14) + "".join(f"{n:>14d}" for n in (8, 32, 128, 256, 1024))
        print(header)
        for bucket in (1 << 20, 5 << 20, 25 << 20, 100 << 20, 0):
            cells = []
            for n in (8, 32, 128, 256, 1024):
                t, _ = step_seconds(timeline, forward, optimizer, n, busbw, bucket)
                cells.append(f"{t * 1e3:8.2f} {single / t:4.0%}")
            label_b = f"{bucket >> 20} MB" if bucket else "none (after)"
            print(label_b.ljust(14) + "".join(f"{c:>14s}" for c in cells))


def kiln_trace(path):
    events = json.load(open(path))["traceEvents"]
    # Steps end with the optimizer's group node; the last whole step is modelled.
    ends = [i for i, e in enumerate(events) if e["name"] == "optimizer/group"]
    step = events[ends[-2] + 1: ends[-1] + 1]
    start = step[0]["ts"]
    forward_end = next(e["ts"] + e["dur"] for e in step if e["cat"] == "mean")
    # The weight gradients (dW = x^T dy, the second product of each layer's backward), from
    # the last layer to the first; each layer's bias gradient is ready before its dW.
    sizes = [(512 * 10 + 10) * 4, (512 * 512 + 512) * 4, (784 * 512 + 512) * 4]
    weight_grads = [e for e in step if e["cat"] == "matmul" and e["name"].endswith("/matmul_1")]
    timeline = [((e["ts"] + e["dur"] - forward_end) * 1e-6, b) for e, b in zip(weight_grads, sizes)]
    update_time = sum(e["dur"] for e in step if e["cat"].endswith("_update"))
    return timeline, (forward_end - start) * 1e-6, update_time * 1e-6


def transformer():
    import torch
    torch.manual_seed(0)
    layers = [torch.nn.TransformerEncoderLayer(1024, 16, 4096, dropout=0.0, batch_first=True)
              for _ in range(24)]
    model = torch.nn.Sequential(*layers)
    x = torch.randn(2, 128, 1024)
    ready = {}

    def hook(index):  # when parameter `index`'s gradient exists
        def record(_):
            ready.setdefault(index, time.perf_counter())
        return record

    params = list(model.parameters())
    for i, p in enumerate(params):
        p.register_post_accumulate_grad_hook(hook(i))
    for _ in range(2):  # the second run is timed
        ready.clear()
        t0 = time.perf_counter()
        loss = model(x).square().mean()
        t1 = time.perf_counter()
        loss.backward()
        model.zero_grad(set_to_none=True)
    timeline = sorted((ready[i] - t1, params[i].numel() * 4) for i in ready)
    return timeline, t1 - t0


def main():
    if sys.argv[1] == "kiln-trace":
        timeline, forward, optimizer = kiln_trace(sys.argv[2])
        report("Kiln MLP 784-512-512-10, measured on this CPU (batch 64 per rank)", timeline,
               forward, optimizer)
    else:
        timeline, forward = transformer()
        print(f"measured on this CPU: forward {forward * 1e3:.0f} ms, backward "
              f"{timeline[-1][0] * 1e3:.0f} ms (24 layers, 2 x 128 tokens)")
        # The same per-layer shape at GPU speed: one H100 runs a BERT-large step of 32 x 512
        # tokens in about 0.3 s (bf16); the measured CPU times are scaled so that backward takes
        # 2/3 of that, keeping each layer's share as measured.
        scale = 0.2 / timeline[-1][0]
        gpu = [(t * scale, b) for t, b in timeline]
        report("BERT-large-shaped stack (335 M parameters), per-layer times measured on the CPU, "
               "scaled to one H100 step of 32 x 512 tokens", gpu, 0.1, 0.004)


if __name__ == "__main__":
    main()
