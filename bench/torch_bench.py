#!/usr/bin/env python3
"""PyTorch's side of the benchmarks: the same cases, sizes and thread count as kiln_bench.

    OMP_NUM_THREADS=N python torch_bench.py CASE [--threads N]

Cases: mlp_step, mlp_memory, matmul, dispatch, chain_eager, chain_out, chain_compiled (2.x),
cnn_step, transformer_step, llama_step, lstm_step, decode_step, decode_long_step,
attention_window_step; by hand: gru_step, upsample_step, ctc_step, lbfgs_step, stack_step,
stack_recompute_step, stack_products_step. With --compile the model cases run their module through
torch.compile (forward and, through AOTAutograd, backward; the optimizer step stays eager).
Prints "CASE <seconds per iteration> [extra]" like kiln_bench.
"""
import resource
import sys

import torch
from bench_timing import time_it  # noqa: E402




COMPILE = "--compile" in sys.argv


def compiled(model):
    if not COMPILE:
        return model
    if not hasattr(torch, "compile"):
        sys.exit(f"torch {torch.__version__} has no torch.compile")
    return torch.compile(model)


def mlp(batch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model = compiled(model)
    x = (torch.arange(batch * 784, dtype=torch.float32) * 7919 % 255 / 255).reshape(batch, 784)
    y = torch.arange(batch) % 10
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def ramp(*shape):
    n = 1
    for d in shape:
        n *= d
    return (torch.arange(n, dtype=torch.float32) * 7919 % 255 / 255).reshape(*shape)


def cnn_step():
    """kiln_bench's cnn_step: two conv 3x3 + batch norm + ReLU + max-pool blocks, FC; Adam."""
    torch.manual_seed(0)
    nn = torch.nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(3136, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model = compiled(model)
    x, y = ramp(64, 1, 28, 28), torch.arange(64) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


class Block(torch.nn.Module):
    """kiln::nn::TransformerBlock: pre-norm, causal attention, exact GELU, no dropout."""

    def __init__(self, d, heads, ffn):
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ffn_in, self.ffn_out = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda v: v.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = torch.nn.functional.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.ffn_out(torch.nn.functional.gelu(self.ffn_in(self.norm2(x))))


def block_step(make_block):
    """A block's training step, kiln_bench's transformer_step and llama_step: x [16, 128, 256],
    mean(square(block(x))), Adam 1e-4."""
    torch.manual_seed(0)
    block = make_block()
    opt = torch.optim.Adam(block.parameters(), lr=1e-4)
    block = compiled(block)
    x = ramp(16, 128, 256)

    def step():
        opt.zero_grad(set_to_none=True)
        block(x).square().mean().backward()
        opt.step()
    return step


def transformer_step():
    return block_step(lambda: Block(256, 4, 1024))


def save_products_contexts():
    """Selective checkpointing that keeps the products (matmuls and attention), Kiln's
    save_products(): torch's create_selective_checkpoint_contexts with such a policy."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention")
    saved = {getattr(aten, n).default for n in names if hasattr(aten, n)}

    def policy(ctx, op, *args, **kwargs):
        return (CheckpointPolicy.MUST_SAVE if op in saved
                else CheckpointPolicy.PREFER_RECOMPUTE)
    return create_selective_checkpoint_contexts(policy)


def stack_step(recompute, save_products=False):
    """kiln_bench's stack_step, stack_recompute_step and stack_products_step: four of
    transformer_step's blocks in a row, each recomputed in the backward pass
    (torch.utils.checkpoint) when `recompute`, keeping the products when `save_products`; x
    [16, 128, 256], mean(square(blocks(x))), Adam 1e-4."""
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(Block(256, 4, 1024) for _ in range(4))
    opt = torch.optim.Adam(blocks.parameters(), lr=1e-4)
    x = ramp(16, 128, 256)
    kwargs = {"context_fn": save_products_contexts} if save_products else {}

    def step():
        opt.zero_grad(set_to_none=True)
        h = x
        for block in blocks:
            h = (torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False, **kwargs)
                 if recompute else block(h))
        h.square().mean().backward()
        opt.step()
    return step


class LlamaBlock(torch.nn.Module):
    """kiln_bench's llama_step block, as LLaMA's code writes it: RMS norms, rotary embedding
    (rotate-half, cos and sin tables made once), 2 key-value heads for 4 query heads (SDPA's
    enable_gqa where this torch has it), a SwiGLU FFN, no biases."""

    def __init__(self, d, heads, kv_heads, ffn, length):
        super().__init__()
        nn = torch.nn
        self.heads, self.kv_heads, self.depth = heads, kv_heads, d // heads
        norm = getattr(nn, "RMSNorm", None)
        self.norm1, self.norm2 = ((norm(d, eps=1e-5) if norm else RmsNorm(d)) for _ in range(2))
        self.q, self.o = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.k, self.v = (nn.Linear(d, kv_heads * self.depth, bias=False) for _ in range(2))
        self.gate_up, self.down = nn.Linear(d, 2 * ffn, bias=False), nn.Linear(ffn, d, bias=False)
        frequencies = 10000.0 ** (-torch.arange(0, self.depth, 2).float() / self.depth)
        angles = torch.arange(length).float()[:, None] * frequencies[None, :]
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, -1))
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, -1))

    def rotate(self, x):  # [B, H, T, D]
        half = self.depth // 2
        return x * self.cos + torch.cat([-x[..., half:], x[..., :half]], -1) * self.sin

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda v, n: v.view(b, t, n, self.depth).transpose(1, 2)
        q = self.rotate(split(self.q(h), self.heads))
        k = self.rotate(split(self.k(h), self.kv_heads))
        v = split(self.v(h), self.kv_heads)
        try:
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                 enable_gqa=True)
        except TypeError:  # before 2.5
            group = self.heads // self.kv_heads
            a = torch.nn.functional.scaled_dot_product_attention(
                q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, -1)
        return x + self.down(torch.nn.functional.silu(gate) * up)


class RmsNorm(torch.nn.Module):
    """torch.nn.RMSNorm, for a torch before 2.4."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


def llama_step():
    return block_step(lambda: LlamaBlock(256, 4, 2, 704, 128))


def decode_step(device="cpu", length=256, pos=200):
    """One token through 4 blocks with a KV cache, kiln_bench's decode_step: batch 1, position
    200 of 256-entry caches (decode_long_step: 100 of 2,048), written in place; the attention
    reads the entries so far. Returns the step (which returns the output; torch_gpu_bench.py
    times it on a GPU too)."""
    torch.manual_seed(0)
    blocks = [Block(256, 4, 1024).to(device) for _ in range(4)]
    caches = [(ramp(1, 4, length, 64).to(device), ramp(1, 4, length, 64).to(device))
              for _ in blocks]
    token = ramp(1, 1, 256).to(device)
    F = torch.nn.functional

    def block_step(block, x, keys, values):
        split = lambda v: v.view(1, 1, block.heads, -1).transpose(1, 2)
        h = block.norm1(x)
        keys[:, :, pos] = split(block.k(h))[:, :, 0]
        values[:, :, pos] = split(block.v(h))[:, :, 0]
        a = F.scaled_dot_product_attention(split(block.q(h)), keys[:, :, :pos + 1],
                                           values[:, :, :pos + 1])
        x = x + block.o(a.transpose(1, 2).reshape(1, 1, -1))
        return x + block.ffn_out(F.gelu(block.ffn_in(block.norm2(x))))

    def forward(x):
        for block, (keys, values) in zip(blocks, caches):
            x = block_step(block, x, keys, values)
        return x
    forward = compiled(forward)

    def step():
        with torch.no_grad():
            return forward(token)
    return step


def attention_window_step():
    """kiln_bench's attention_window_step: causal sliding-window attention (window 256) over
    [2, 4, 2048, 64] (heads first, as scaled_dot_product_attention takes them), forward and
    backward of sum(out * dout). PyTorch's SDPA has no window: the window is its bool mask (as
    transformers' Mistral builds it); flex_attention, which skips blocks, has no CPU backward."""
    length, window = 2048, 256
    q, k, v = (ramp(2, 4, length, 64).requires_grad_(True) for _ in range(3))
    dout = ramp(2, 4, length, 64)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    mask = (j <= i) & (j > i - window)
    attend = compiled(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask))

    def step():
        return torch.autograd.grad((attend(q, k, v) * dout).sum(), (q, k, v))
    return step


def lstm_step(kind="LSTM"):
    """kiln::nn::LSTM(128, 256, batch first) over [32, 32, 128]; mean(square(output)); Adam.
    kind "GRU": the same with nn.GRU (gru_step, run by hand)."""
    torch.manual_seed(0)
    lstm = getattr(torch.nn, kind)(128, 256, batch_first=True)
    opt = torch.optim.Adam(lstm.parameters(), lr=1e-3)
    forward = compiled(lambda x: lstm(x)[0])
    x = ramp(32, 32, 128)

    def step():
        opt.zero_grad(set_to_none=True)
        forward(x).square().mean().backward()
        opt.step()
    return step


def upsample_step():
    """kiln_bench's upsample_step: nearest and bilinear 2x of [16, 64, 32, 32], forward and the
    input gradient of sum((nearest + bilinear) * dy) (run by hand)."""
    x = ramp(16, 64, 32, 32).requires_grad_(True)
    dy = ramp(16, 64, 64, 64)

    def step():
        nearest = torch.nn.functional.interpolate(x, scale_factor=2)
        bilinear = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
        return torch.autograd.grad(((nearest + bilinear) * dy).sum(), x)
    return step


def ctc_step():
    """kiln_bench's ctc_step: F.ctc_loss (mean) of log_softmax([200, 32, 32] logits) against
    targets [32, 40] (labels 1..31), input lengths 165..200, target lengths 30..40; the loss and
    the logits' gradient (run by hand)."""
    T, N, C, S = 200, 32, 32, 40
    x = ramp(T, N, C).requires_grad_(True)
    targets = torch.tensor([[1 + (n * 7 + i * 3) % (C - 1) for i in range(S)] for n in range(N)])
    input_lengths = torch.tensor([T - (n % 8) * 5 for n in range(N)])
    target_lengths = torch.tensor([S - n % 11 for n in range(N)])
    loss_of = compiled(lambda x: torch.nn.functional.ctc_loss(
        x.log_softmax(-1), targets, input_lengths, target_lengths))

    def step():
        loss = loss_of(x)
        return loss, torch.autograd.grad(loss, x)
    return step


def lbfgs_step():
    """kiln_bench's lbfgs_step: torch.optim.LBFGS (strong Wolfe, history 10, 20 iterations) on an
    MLP 64 -> 256 (tanh) -> 10 over 2,048 examples, full batch, each timed step from the same
    values as Kiln's (weights and history put back first). Returns the step and a function giving
    the evaluations one step took."""
    def centered(*shape, scale):
        return (ramp(*shape) - 0.5) * scale

    x = centered(2048, 64, scale=1.0)
    y = torch.arange(2048) * 7 % 10
    start = [centered(64, 256, scale=0.25), torch.zeros(256), centered(256, 10, scale=0.25),
             torch.zeros(10)]
    params = [torch.nn.Parameter(t.clone()) for t in start]
    evaluations = [0]

    def step():
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        optimizer = torch.optim.LBFGS(params, max_iter=20, history_size=10,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = torch.tanh(x @ params[0] + params[1]) @ params[2] + params[3]
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            return loss
        optimizer.step(closure)
        evaluations[0] = optimizer.state[params[0]]["func_evals"]
    return step, lambda: evaluations[0]


def optimizer_step(name):
    """kiln_bench's optimizer_step_<name>: one step of a [4096, 1024] weight on sum((w-1)^2) under
    torch.optim's `name` with its defaults (foreach where torch picks it), run by hand."""
    w = torch.nn.Parameter(torch.empty(4096, 1024).uniform_(-1, 1))
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=1e-3), "adam": torch.optim.Adam,
            "amsgrad": lambda p: torch.optim.Adam(p, amsgrad=True), "adamax": torch.optim.Adamax,
            "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam,
            "adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta,
            "muon": torch.optim.Muon, "adafactor": torch.optim.Adafactor,
            "rmsprop": torch.optim.RMSprop,
            "rprop": torch.optim.Rprop, "asgd": torch.optim.ASGD,
            "sgd_one_cycle": lambda p: torch.optim.SGD(p, lr=1e-3)}
    if name not in make:
        sys.exit(f"unknown optimizer {name}")
    optimizer = make[name]([w])
    # sgd_one_cycle: OneCycleLR, stepped with the optimizer, cycles the rate and the momentum.
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=1000)
                 if name == "sgd_one_cycle" else None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        ((w - 1) ** 2).sum().backward()
        optimizer.step()
        if scheduler:
            scheduler.step()
    return step


def main():
    case = sys.argv[1]
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
    torch.set_num_threads(threads)
    if case in ("mlp_step", "mlp_memory"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time_it(mlp(128 if case == "mlp_step" else 1024), 10, 200 if case == "mlp_step" else 20)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"{case} {t:.9f} peak_rss_kib={peak} growth_kib={peak - before}")
    elif case == "matmul":
        a = torch.full((1024, 1024), 0.5)
        b = torch.full((1024, 1024), 0.25)
        t = time_it(lambda: torch.matmul(a, b), 3, 20)
        print(f"matmul {t:.9f} gflops={2 * 1024**3 / t / 1e9:.1f}")
    elif case == "dispatch":
        x = torch.ones(4)

        def chain():
            v = x
            for _ in range(500):
                v = v.reshape(4, 1).sum(1).reshape(4)
            return v
        t = time_it(chain, 20, 200)
        print(f"dispatch {t:.9f} per_step_us={t / 1500 * 1e6:.3f} steps=1500")
    elif case == "decode_step":
        print(f"decode_step {time_it(decode_step(), 10, 200):.9f}")
    elif case == "decode_long_step":
        print(f"decode_long_step {time_it(decode_step(length=2048, pos=100), 10, 200):.9f}")
    elif case == "attention_window_step":
        print(f"attention_window_step {time_it(attention_window_step(), 2, 10):.9f}")
    elif case in ("cnn_step", "transformer_step", "llama_step", "lstm_step", "gru_step",
                  "upsample_step", "ctc_step"):
        steps = {"cnn_step": cnn_step, "transformer_step": transformer_step,
                 "llama_step": llama_step, "lstm_step": lstm_step,
                 "gru_step": lambda: lstm_step("GRU"), "upsample_step": upsample_step,
                 "ctc_step": ctc_step}
        t = time_it(steps[case](), 3, 20)
        print(f"{case} {t:.9f}")
    elif case in ("stack_step", "stack_recompute_step", "stack_products_step"):
        t = time_it(stack_step(case != "stack_step", case == "stack_products_step"), 2, 10)
        print(f"{case} {t:.9f}")
    elif case == "lbfgs_step":
        step, evaluations = lbfgs_step()
        print(f"lbfgs_step {time_it(step, 1, 10):.9f} evaluations={evaluations()}")
    elif case.startswith("optimizer_step_"):
        print(f"{case} {time_it(optimizer_step(case[len('optimizer_step_'):]), 3, 20):.9f}")
    elif case.startswith("chain"):
        # The 8-op chain three ways: eager (each op allocates its 64 MiB result), into
        # preallocated outputs (the same ops, out= and in place), and torch.compile (fused).
        x = torch.full((16 << 20,), 0.1)

        def eager():
            return -(torch.relu(torch.abs(x * 1.5 + 0.25) - 0.1) * 0.9 + 1.0)
        buf, out = torch.empty_like(x), torch.empty_like(x)

        def preallocated():
            torch.mul(x, 1.5, out=buf)
            buf.add_(0.25).abs_().sub_(0.1).relu_().mul_(0.9).add_(1.0)
            return torch.neg(buf, out=out)
        fn = {"chain_eager": eager, "chain_out": preallocated}.get(case)
        if case == "chain_compiled":
            if not hasattr(torch, "compile"):
                sys.exit(f"torch {torch.__version__} has no torch.compile")
            fn = torch.compile(eager)
        if fn is None:
            sys.exit(f"unknown case {case}")
        t = time_it(fn, 2, 10)
        print(f"{case} {t:.9f} gbps={2 * (16 << 20) * 4 / t / 1e9:.1f}")
    else:
        sys.exit(f"unknown case {case}")


if __name__ == "__main__":
    main()
