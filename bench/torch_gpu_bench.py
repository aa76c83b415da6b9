"""PyTorch's side of the GPU benchmarks, on the same device as kiln_gpu_bench, and the summary.

    python3 bench/torch_gpu_bench.py KILN_RESULTS_FILE
    python3 bench/torch_gpu_bench.py --cnn-steps N   (the eager CNN step, for a profiler)

Measures torch.matmul bf16 8192^3, the same 8-op elementwise chain eagerly, a device-to-device
copy (the card's practical memory bandwidth), and the MLP training step at batch 128 in eager
mode (batch copied from the host, loss read back, as Kiln does), the CNN step, attention, the
LLaMA-style block's training step, and one token of KV-cached decoding (bench/torch_bench.py's decode_step). Then prints one table with
Kiln's numbers (read from KILN_RESULTS_FILE, lines "case seconds key=value ...") beside them.
"""
import statistics
import sys
import time

import torch
from torch_bench import LlamaBlock, decode_step  # noqa: E402  (the CPU benchmarks' models)


def time_cuda(fn, warmup=3, reps=20):
    """Median seconds per call, timed with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_host(fn, warmup=20, reps=300):
    """Median seconds per call of a function that synchronizes itself (wall clock)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cnn_model_on(dev):
    """The CNN of bench/nn_models.h."""
    nn = torch.nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(3136, 128),
                         nn.ReLU(), nn.Linear(128, 10)).to(dev)


def eager_step(model, dev, x, y):
    """One eager Adam step of `model` on host batch (x, y), loss read back (as Kiln's)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
        loss.backward()
        opt.step()
        return loss.item()
    return step


def main():
    if sys.argv[1] == "--cnn-steps":
        # Under a profiler (tools/gpu-check run profile): 2 warm-up steps, then N.
        dev = torch.device("cuda")
        step = eager_step(cnn_model_on(dev), dev, torch.rand(64, 1, 28, 28),
                          torch.randint(0, 10, (64,)))
        for _ in range(2 + int(sys.argv[2])):
            step()
        return
    kiln = {}
    for line in open(sys.argv[1]):
        parts = line.split()
        try:
            seconds = float(parts[1])
        except (IndexError, ValueError):  # not a result line (a message from a failed case)
            continue
        extra = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        kiln[parts[0]] = (seconds, extra)
    dev = torch.device("cuda")
    n = 8192
    a = torch.rand(n, n, device=dev, dtype=torch.bfloat16) * 2 - 1
    b = torch.rand(n, n, device=dev, dtype=torch.bfloat16) * 2 - 1
    t_mm = time_cuda(lambda: torch.matmul(a, b))
    del a, b

    m = 1 << 28
    x = torch.rand(m, device=dev) * 2 - 1

    def chain():  # the same 8 ops as Kiln's chain_fused
        return -(torch.relu(torch.abs(x * 1.5 + 0.25) - 0.1) * 0.9 + 1.0)

    t_chain = time_cuda(chain)
    big = torch.empty(1 << 28, device=dev)  # 1 GiB
    t_copy = time_cuda(lambda: big.clone(), reps=10)
    copy_gbps = 2 * big.numel() * 4 / t_copy / 1e9
    del big

    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10)).to(dev)
    step = eager_step(model, dev, torch.rand(128, 784), torch.randint(0, 10, (128,)))
    t_step = time_host(step)

    # The CNN step (bench/nn_models.h): eager, and replayed as a captured CUDA Graph (static
    # input buffers, the documented whole-network capture).
    def cnn():
        return cnn_model_on(dev)
    cnn_x, cnn_y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    t_cnn = time_host(eager_step(cnn(), dev, cnn_x, cnn_y))

    def time_cnn_graph():
        """The CNN step captured as one CUDA Graph, its median seconds per replay."""
        graph_model = cnn()
        graph_opt = torch.optim.Adam(graph_model.parameters(), lr=1e-3, capturable=True)
        static_x = torch.rand(64, 1, 28, 28, device=dev)
        static_y = torch.randint(0, 10, (64,), device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream before capture
                graph_opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(graph_model(static_x), static_y).backward()
                graph_opt.step()
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        graph_opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(cuda_graph):
            static_loss = torch.nn.functional.cross_entropy(graph_model(static_x), static_y)
            static_loss.backward()
            graph_opt.step()

        def cnn_graph_step():
            static_x.copy_(cnn_x.to(dev, non_blocking=True))
            static_y.copy_(cnn_y.to(dev, non_blocking=True))
            cuda_graph.replay()
            return static_loss.item()
        return time_host(cnn_graph_step)
    # PyTorch's default lets cuDNN convolve f32 in TF32 (torch.backends.cudnn.allow_tf32); Kiln's
    # default is f32. Both ways, each against Kiln's like setting (--tf32: SessionOptions::allow_tf32,
    # which also puts Kiln's two small products in TF32; PyTorch's matmuls stay f32).
    t_cnn_graph = time_cnn_graph()
    torch.backends.cudnn.allow_tf32 = False
    t_cnn_graph_f32 = time_cnn_graph()
    torch.backends.cudnn.allow_tf32 = True

    # Attention forward + backward at sequence 2,048, bf16, causal.
    qkv = [(torch.rand(4, 16, 2048, 64, device=dev, dtype=torch.bfloat16) * 2 - 1).requires_grad_()
           for _ in range(3)]
    r = torch.rand(4, 16, 2048, 64, device=dev, dtype=torch.bfloat16) * 2 - 1

    def attention():
        out = torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True)
        return torch.autograd.grad((out * r).float().sum(), qkv)
    t_attention = time_cuda(attention)

    # The LLaMA-style block's training step (the CPU benchmark's llama_step), f32, eager, the
    # input on the device and the loss read back, as Kiln's.
    torch.manual_seed(0)
    llama = LlamaBlock(256, 4, 2, 704, 128).to(dev)
    llama_adam = torch.optim.Adam(llama.parameters(), lr=1e-4)
    llama_x = torch.rand(16, 128, 256, device=dev) * 2 - 1

    def llama_step():
        llama_adam.zero_grad(set_to_none=True)
        loss = llama(llama_x).square().mean()
        loss.backward()
        llama_adam.step()
        return loss.item()
    t_llama = time_host(llama_step, 5, 50)

    # One token through 4 blocks with KV caches (the CPU benchmark's decode_step), eager; the
    # output read back to the host each step, as Kiln's is.
    decode = decode_step(dev)
    t_decode = time_host(lambda: decode().cpu())
    decode_long = decode_step(dev, length=2048, pos=100)
    t_decode_long = time_host(lambda: decode_long().cpu())

    name = torch.cuda.get_device_name()
    print(f"\nKiln vs PyTorch {torch.__version__} on {name}, {time.strftime('%Y-%m-%d')}")
    print(f"{'case':34s}{'Kiln':>14s}{'PyTorch':>14s}{'ratio':>9s}  target")
    rows = []
    if "matmul_bf16" in kiln:
        k = kiln["matmul_bf16"][0]
        f = 2 * n ** 3
        rows.append(("matmul bf16 8192^3 (TFLOP/s)", f / k / 1e12, f / t_mm / 1e12,
                     t_mm / k, ">= 0.90 of torch"))
    for key, label in (("chain_fused", "fused chain 256M f32 (GB/s)"),
                       ("chain_fused_graphs", "  the same, CUDA Graphs (GB/s)")):
        if key in kiln:
            gbps = float(kiln[key][1].get("gbps", 0))
            rows.append((label, gbps, 2 * m * 4 / t_chain / 1e9, gbps / copy_gbps,
                         f">= 0.80 of copy {copy_gbps:.0f} GB/s"))
    for key, label in (("mlp_step_graphs", "MLP step b128, CUDA Graphs (ms)"),
                       ("mlp_step", "MLP step b128, eager (ms)")):
        if key in kiln:
            k = kiln[key][0]
            rows.append((label, k * 1e3, t_step * 1e3, t_step / k,
                         ">= 2x faster than torch eager" if key == "mlp_step_graphs" else ""))
    for key, label, torch_time, target in (
            ("cnn_step", "CNN step b64, eager (ms)", t_cnn, ""),
            ("cnn_step_graphs", "CNN step b64, CUDA Graphs (ms)", t_cnn_graph,
             ">= 1.0x torch with CUDA Graphs"),
            ("attention_bf16", "attention fwd+bwd T2048 bf16 (ms)", t_attention,
             ">= 0.9x torch SDPA"),
            ("attention_bf16_summed_dq", "  the same, dq summed in turns (ms)", t_attention, ""),
            ("attention_bf16_wide", "  the same, 32 query rows a warp (ms)", t_attention, ""),
            ("attention_bf16_cudnn", "  the same, cuDNN's fused attention (ms)", t_attention,
             ">= 0.9x torch SDPA"),
            ("attention_bf16_cudnn_nondeterministic", "  the same, cuDNN with atomics (ms)",
             t_attention, ">= 0.9x torch SDPA"),
            ("llama_step", "LLaMA-style block step f32 (ms)", t_llama, ""),
            ("llama_step_graphs", "  the same, CUDA Graphs (ms)", t_llama, ""),
            ("decode_step", "decode 1 token, 4 blocks, KV cache (ms)", t_decode, ""),
            ("decode_step_graphs", "  the same, CUDA Graphs (ms)", t_decode, ""),
            ("decode_long_step_graphs", "  at 100 of 2,048, CUDA Graphs (ms)", t_decode_long,
             "")):
        if key in kiln:
            k = kiln[key][0]
            rows.append((label, k * 1e3, torch_time * 1e3, torch_time / k, target))
    if "cnn_step_graphs" in kiln:
        k = kiln["cnn_step_graphs"][0]
        rows.append(("  CNN, Kiln graphs vs torch eager", k * 1e3, t_cnn * 1e3, t_cnn / k,
                     ">= 2x faster than torch eager"))
        rows.append(("  CNN graphs, f32 both (no TF32)", k * 1e3, t_cnn_graph_f32 * 1e3,
                     t_cnn_graph_f32 / k, ""))
    if "cnn_step_graphs_tf32" in kiln:
        k = kiln["cnn_step_graphs_tf32"][0]
        rows.append(("  CNN graphs, TF32 both", k * 1e3, t_cnn_graph * 1e3, t_cnn_graph / k,
                     ">= 1.0x torch with CUDA Graphs"))
    # Kiln's convolutions with cuDNN's first choice whatever its determinism, as PyTorch's default
    # (torch.backends.cudnn.deterministic = False; Kiln's SessionOptions::deterministic off).
    for key, label, torch_time, target in (
            ("cnn_step_graphs_nondeterministic", "  CNN graphs, f32, any order both",
             t_cnn_graph_f32, ""),
            ("cnn_step_graphs_tf32_nondeterministic", "  CNN graphs, PyTorch's defaults both",
             t_cnn_graph, ">= 1.0x torch with CUDA Graphs")):
        if key in kiln:
            k = kiln[key][0]
            rows.append((label, k * 1e3, torch_time * 1e3, torch_time / k, target))
    for label, kv, tv, ratio, target in rows:
        print(f"{label:34s}{kv:14.2f}{tv:14.2f}{ratio:9.2f}  {target}")


if __name__ == "__main__":
    main()
