#!/usr/bin/env python3
"""JAX's side of the benchmarks: kiln_bench's model cases with the same sizes, each training
step one jax.jit-compiled function (parameters and optimizer state donated, so XLA updates
them in place).

    python jax_bench.py CASE        (CASE: mlp_step, cnn_step, transformer_step, lstm_step, matmul)

Threads: run under `taskset -c 0` for one (bench/run.sh tries one and all cores). Prints
"CASE <seconds per iteration>" like kiln_bench.
"""
import sys

import jax
import jax.numpy as jnp
from bench_timing import report_case  # noqa: E402




def ramp(*shape):
    n = 1
    for d in shape:
        n *= d
    return (jnp.arange(n, dtype=jnp.float32) * 7919 % 255 / 255).reshape(shape)


def linear(key, fan_in, fan_out):
    # PyTorch's Linear initialisation: uniform in +-1/sqrt(fan_in), w stored [in, out].
    bound = 1 / fan_in**0.5
    kw, kb = jax.random.split(key)
    return {"w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
            "b": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)}


def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    def init(params):
        # Two trees of their own: donated buffers must be distinct.
        return {"m": jax.tree_util.tree_map(jnp.zeros_like, params),
                "v": jax.tree_util.tree_map(jnp.zeros_like, params),
                "t": jnp.zeros((), jnp.int32)}

    def update(params, grads, state):
        t = state["t"] + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        c1, c2 = 1 - b1**t, 1 - b2**t
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return params, {"m": m, "v": v, "t": t}
    return init, update


def sgd_momentum(lr, momentum):
    def init(params):
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(params, grads, buf):
        buf = jax.tree_util.tree_map(lambda b, g: momentum * b + g, buf, grads)
        return jax.tree_util.tree_map(lambda p, b: p - lr * b, params, buf), buf
    return init, update


def trainer(loss_fn, params, opt, *batch):
    init, update = opt
    state = init(params)

    @jax.jit
    def step(params, state, *batch):
        grads = jax.grad(loss_fn)(params, *batch)
        return update(params, grads, state)
    step = jax.jit(step, donate_argnums=(0, 1))
    holder = [params, state]

    def run():
        holder[0], holder[1] = step(holder[0], holder[1], *batch)
        jax.block_until_ready(holder[0])
    return run


def mlp_step():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = [linear(keys[0], 784, 512), linear(keys[1], 512, 512), linear(keys[2], 512, 10)]

    def loss(params, x, y):
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if i < 2:
                h = jax.nn.relu(h)
        return cross_entropy(h, y)
    return trainer(loss, params, sgd_momentum(0.01, 0.9), ramp(128, 784), jnp.arange(128) % 10)


def cnn_step():
    """Two conv 3x3 + batch norm (batch statistics) + ReLU + 2x2 max-pool blocks, FC; Adam.
    NHWC, XLA's preferred layout on the CPU."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4)

    def conv_params(key, cin, cout):
        bound = 1 / (cin * 9) ** 0.5
        kw, kb = jax.random.split(key)
        return {"w": jax.random.uniform(kw, (3, 3, cin, cout), jnp.float32, -bound, bound),
                "b": jax.random.uniform(kb, (cout,), jnp.float32, -bound, bound),
                "gamma": jnp.ones((cout,)), "beta": jnp.zeros((cout,))}
    params = {"c1": conv_params(keys[0], 1, 32), "c2": conv_params(keys[1], 32, 64),
              "f1": linear(keys[2], 3136, 128), "f2": linear(keys[3], 128, 10)}

    def block(p, x):
        y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
        mean = jnp.mean(y, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
        y = (y - mean) * jax.lax.rsqrt(var + 1e-5) * p["gamma"] + p["beta"]
        y = jax.nn.relu(y)
        return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def loss(params, x, y):
        h = block(params["c2"], block(params["c1"], x))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ params["f1"]["w"] + params["f1"]["b"])
        return cross_entropy(h @ params["f2"]["w"] + params["f2"]["b"], y)
    return trainer(loss, params, adam(1e-3), ramp(64, 28, 28, 1), jnp.arange(64) % 10)


def transformer_step():
    """kiln::nn::TransformerBlock: pre-norm, causal attention (4 heads), exact GELU; Adam."""
    d, heads, ffn = 256, 4, 1024
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    params = {"q": linear(keys[0], d, d), "k": linear(keys[1], d, d), "v": linear(keys[2], d, d),
              "o": linear(keys[3], d, d), "f1": linear(keys[4], d, ffn),
              "f2": linear(keys[5], ffn, d),
              "n1": {"g": jnp.ones((d,)), "b": jnp.zeros((d,))},
              "n2": {"g": jnp.ones((d,)), "b": jnp.zeros((d,))}}

    def norm(p, x):
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]

    def dense(p, x):
        return x @ p["w"] + p["b"]

    def loss(params, x):
        b, t, _ = x.shape
        h = norm(params["n1"], x)
        split = lambda v: v.reshape(b, t, heads, d // heads)
        a = jax.nn.dot_product_attention(split(dense(params["q"], h)),
                                         split(dense(params["k"], h)),
                                         split(dense(params["v"], h)), is_causal=True)
        x = x + dense(params["o"], a.reshape(b, t, d))
        y = x + dense(params["f2"], jax.nn.gelu(dense(params["f1"], norm(params["n2"], x)),
                                                approximate=False))
        return jnp.mean(jnp.square(y))
    return trainer(loss, params, adam(1e-4), ramp(16, 128, 256))


def lstm_step():
    """kiln::nn::LSTM(128, 256, batch first) over [32, 32, 128] as a lax.scan over time (PyTorch's
    gate order, zero initial state); mean(square(output)); Adam."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    bound = 1 / 256**0.5
    params = {"ih": jax.random.uniform(keys[0], (128, 1024), jnp.float32, -bound, bound),
              "hh": jax.random.uniform(keys[1], (256, 1024), jnp.float32, -bound, bound),
              "b": jax.random.uniform(keys[2], (1024,), jnp.float32, -bound, bound)}

    def loss(params, x):
        projected = jnp.swapaxes(x @ params["ih"] + params["b"], 0, 1)  # [T, B, 4H]

        def cell(state, p):
            h, c = state
            i, f, g, o = jnp.split(p + h @ params["hh"], 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        zeros = jnp.zeros((x.shape[0], 256), jnp.float32)
        _, hs = jax.lax.scan(cell, (zeros, zeros), projected)
        return jnp.mean(jnp.square(hs))
    return trainer(loss, params, adam(1e-3), ramp(32, 32, 128))


def main():
    a = jnp.full((1024, 1024), 0.5, jnp.float32)
    b = jnp.full((1024, 1024), 0.25, jnp.float32)
    mm = jax.jit(jnp.matmul)
    report_case(sys.argv[1], lambda: mm(a, b).block_until_ready(),
                {"mlp_step": mlp_step, "cnn_step": cnn_step, "transformer_step": transformer_step,
                 "lstm_step": lstm_step})


if __name__ == "__main__":
    main()
