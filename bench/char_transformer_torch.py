"""The char_transformer example (examples/char_transformer.cc) in PyTorch: the same model
(layers initialized by the same distributions: PyTorch's defaults, which Kiln's layers follow),
the same data split, the same training batches and validation windows (splitmix64 from the
seed), the same optimizer, schedule and clipping. Prints `val_loss: x.xxx`.

    python bench/char_transformer_torch.py [--steps N] [--threads N] ...   (flags as the example)
"""
import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK64 = (1 << 64) - 1


class SplitMix:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def load_corpus(directory):
    names = sorted(n for n in os.listdir(directory)
                   if os.path.isfile(os.path.join(directory, n)) and not n.endswith((".dat", ".u8")))
    text = b"".join(open(os.path.join(directory, n), "rb").read() for n in names)
    vocab = sorted(set(text))
    index = {b: i for i, b in enumerate(vocab)}
    return vocab, torch.tensor([index[b] for b in text], dtype=torch.int64)


def windows(ids, begin, end, count, context, rng):
    span = end - begin - context - 1
    starts = [begin + rng.next() % span for _ in range(count)]
    x = torch.stack([ids[s:s + context] for s in starts])
    y = torch.stack([ids[s + 1:s + context + 1] for s in starts])
    return x, y


class Block(nn.Module):
    """Kiln's nn::TransformerBlock: pre-norm, causal attention, exact GELU."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query, self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(4))
        self.ffn_in, self.ffn_out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def attention(self, x):
        b, t, d = x.shape
        split = lambda v: v.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.output(a.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        h = x + self.drop1(self.attention(self.norm1(x)))
        return h + self.drop2(self.ffn_out(F.gelu(self.ffn_in(self.norm2(h)))))


class Model(nn.Module):
    def __init__(self, vocab, a):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, a.dim), nn.Embedding(a.context, a.dim)
        self.drop = nn.Dropout(a.dropout)
        self.blocks = nn.ModuleList(Block(a.dim, a.heads, a.dropout) for _ in range(a.layers))
        self.final_norm, self.head = nn.LayerNorm(a.dim), nn.Linear(a.dim, vocab)

    def forward(self, ids):
        h = self.drop(self.tokens(ids) + self.positions.weight[: ids.shape[1]])
        for block in self.blocks:
            h = block(h)
        return self.head(self.final_norm(h))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/usr/share/games/fortunes")
    for name, default in [("steps", 4000), ("batch", 32), ("context", 128), ("dim", 128),
                          ("heads", 4), ("layers", 4), ("eval-every", 250), ("eval-batches", 32),
                          ("threads", 2), ("seed", 0)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    vocab, ids = load_corpus(a.data)
    split = len(ids) * 9 // 10
    model = Model(len(vocab), a)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    warmup, floor = min(100, a.steps // 10 + 1), a.lr / 10

    def factor(t):  # Kiln's Schedule::cosine(steps, lr / 10).with_warmup(warmup), over lr
        lr = floor + (math.cos(math.pi * min(t, a.steps) / a.steps) + 1) * 0.5 * (a.lr - floor)
        return lr * min(1.0, (t + 1) / warmup) / a.lr

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng, running, val = SplitMix(a.seed), 0.0, 0.0
    for s in range(1, a.steps + 1):
        model.train()
        x, y = windows(ids, 0, split, a.batch, a.context, rng)
        loss = F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if s == 1 else 0.98 * running + 0.02 * loss.item()
        if s % a.eval_every == 0 or s == a.steps:
            model.eval()
            vrng, total = SplitMix(a.seed + 1), 0.0
            with torch.no_grad():
                for _ in range(a.eval_batches):
                    x, y = windows(ids, split, len(ids), a.batch, a.context, vrng)
                    total += F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1)).item()
            val = total / a.eval_batches
            print(f"step {s}/{a.steps}  train_loss {running:.4f}  val_loss {val:.4f}", flush=True)
    print(f"val_loss: {val:.3f}")


if __name__ == "__main__":
    main()
