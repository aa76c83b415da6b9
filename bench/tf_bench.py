#!/usr/bin/env python3
"""TensorFlow 2's side of the benchmarks: kiln_bench's model cases with the same sizes, each
training step one tf.function (with --xla: jit_compile=True), variables updated in place.

    python tf_bench.py CASE [--xla] [--threads N]
    (CASE: mlp_step, cnn_step, transformer_step, lstm_step, matmul)

Prints "CASE <seconds per iteration>" like kiln_bench.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402
from bench_timing import report_case  # noqa: E402




def ramp(*shape):
    n = 1
    for d in shape:
        n *= d
    return tf.reshape(tf.range(n, dtype=tf.float32) * 7919 % 255 / 255, shape)


def uniform(shape, bound, seed):
    return tf.Variable(tf.random.stateless_uniform(shape, (seed, 0), -bound, bound))


def linear(fan_in, fan_out, seed):
    bound = 1 / fan_in**0.5
    return {"w": uniform((fan_in, fan_out), bound, seed), "b": uniform((fan_out,), bound, seed + 1)}


def flat(tree):
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in flat(tree[k])]
    if isinstance(tree, list):
        return [v for item in tree for v in flat(item)]
    return [tree]


def cross_entropy(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


class Adam:
    def __init__(self, variables, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.vars, self.lr, self.b1, self.b2, self.eps = variables, lr, b1, b2, eps
        self.m = [tf.Variable(tf.zeros_like(v)) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in variables]
        self.t = tf.Variable(0.0)

    def apply(self, grads):
        self.t.assign_add(1.0)
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for var, g, m, v in zip(self.vars, grads, self.m, self.v):
            m.assign(self.b1 * m + (1 - self.b1) * g)
            v.assign(self.b2 * v + (1 - self.b2) * g * g)
            var.assign_sub(self.lr * (m / c1) / (tf.sqrt(v / c2) + self.eps))


class Momentum:
    def __init__(self, variables, lr, momentum):
        self.vars, self.lr, self.momentum = variables, lr, momentum
        self.buf = [tf.Variable(tf.zeros_like(v)) for v in variables]

    def apply(self, grads):
        for var, g, b in zip(self.vars, grads, self.buf):
            b.assign(self.momentum * b + g)
            var.assign_sub(self.lr * b)


def trainer(loss_fn, variables, optimizer, xla, *batch):
    @tf.function(jit_compile=xla)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(*batch)
        optimizer.apply(tape.gradient(loss, variables))
        return loss

    return lambda: step().numpy()


def mlp_step(xla):
    layers = [linear(784, 512, 1), linear(512, 512, 3), linear(512, 10, 5)]
    variables = flat(layers)

    def loss(x, y):
        h = x
        for i, layer in enumerate(layers):
            h = h @ layer["w"] + layer["b"]
            if i < 2:
                h = tf.nn.relu(h)
        return cross_entropy(h, y)
    return trainer(loss, variables, Momentum(variables, 0.01, 0.9), xla, ramp(128, 784),
                   tf.range(128) % 10)


def cnn_step(xla):
    """Two conv 3x3 + batch norm (batch statistics) + ReLU + 2x2 max-pool blocks, FC; Adam.
    NHWC: TensorFlow's CPU convolutions take no other layout."""
    def conv(cin, cout, seed):
        bound = 1 / (cin * 9) ** 0.5
        return {"w": uniform((3, 3, cin, cout), bound, seed), "b": uniform((cout,), bound, seed + 1),
                "gamma": tf.Variable(tf.ones((cout,))), "beta": tf.Variable(tf.zeros((cout,)))}
    params = {"c1": conv(1, 32, 1), "c2": conv(32, 64, 3), "f1": linear(3136, 128, 5),
              "f2": linear(128, 10, 7)}
    variables = flat(params)

    def block(p, x):
        y = tf.nn.conv2d(x, p["w"], 1, "SAME") + p["b"]
        mean, var = tf.nn.moments(y, axes=[0, 1, 2])
        y = tf.nn.relu(tf.nn.batch_normalization(y, mean, var, p["beta"], p["gamma"], 1e-5))
        return tf.nn.max_pool2d(y, 2, 2, "VALID")

    def loss(x, y):
        h = block(params["c2"], block(params["c1"], x))
        h = tf.reshape(h, (-1, 3136))
        h = tf.nn.relu(h @ params["f1"]["w"] + params["f1"]["b"])
        return cross_entropy(h @ params["f2"]["w"] + params["f2"]["b"], y)
    return trainer(loss, variables, Adam(variables, 1e-3), xla, ramp(64, 28, 28, 1),
                   tf.range(64) % 10)


def transformer_step(xla):
    """kiln::nn::TransformerBlock: pre-norm, causal attention (4 heads), exact GELU; Adam."""
    d, heads, ffn = 256, 4, 1024
    params = {"q": linear(d, d, 1), "k": linear(d, d, 3), "v": linear(d, d, 5),
              "o": linear(d, d, 7), "f1": linear(d, ffn, 9), "f2": linear(ffn, d, 11),
              "n1": {"g": tf.Variable(tf.ones((d,))), "b": tf.Variable(tf.zeros((d,)))},
              "n2": {"g": tf.Variable(tf.ones((d,))), "b": tf.Variable(tf.zeros((d,)))}}
    variables = flat(params)
    causal = tf.linalg.band_part(tf.ones((128, 128), tf.bool), -1, 0)

    def norm(p, x):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-5) * p["g"] + p["b"]

    def dense(p, x):
        return x @ p["w"] + p["b"]

    def loss(x):
        b, t = 16, 128
        h = norm(params["n1"], x)
        split = lambda v: tf.transpose(tf.reshape(v, (b, t, heads, d // heads)), (0, 2, 1, 3))
        q, k, v = (split(dense(params[n], h)) for n in "qkv")
        scores = tf.matmul(q, k, transpose_b=True) / (d // heads) ** 0.5
        scores = tf.where(causal, scores, tf.fill(tf.shape(scores), -1e30))
        a = tf.matmul(tf.nn.softmax(scores), v)
        x = x + dense(params["o"], tf.reshape(tf.transpose(a, (0, 2, 1, 3)), (b, t, d)))
        y = x + dense(params["f2"], tf.nn.gelu(dense(params["f1"], norm(params["n2"], x)),
                                                approximate=False))
        return tf.reduce_mean(tf.square(y))
    return trainer(loss, variables, Adam(variables, 1e-4), xla, ramp(16, 128, 256))


def lstm_step(xla):
    """kiln::nn::LSTM(128, 256, batch first) over [32, 32, 128], unrolled (T is static; PyTorch's
    gate order, zero initial state); mean(square(output)); Adam."""
    bound = 1 / 256**0.5
    w_ih, w_hh, b = (uniform((128, 1024), bound, 1), uniform((256, 1024), bound, 2),
                     uniform((1024,), bound, 3))

    def loss(x):
        projected = x @ w_ih + b
        h = c = tf.zeros((32, 256))
        outputs = []
        for t in range(32):
            i, f, g, o = tf.split(projected[:, t] + h @ w_hh, 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            outputs.append(h)
        return tf.reduce_mean(tf.square(tf.stack(outputs, 1)))
    weights = [w_ih, w_hh, b]
    return trainer(loss, weights, Adam(weights, 1e-3), xla, ramp(32, 32, 128))


def main():
    case = sys.argv[1]
    xla = "--xla" in sys.argv
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 0
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    a = tf.fill((1024, 1024), 0.5)
    b = tf.fill((1024, 1024), 0.25)
    mm = tf.function(lambda: tf.matmul(a, b), jit_compile=xla)
    steps = {"mlp_step": mlp_step, "cnn_step": cnn_step, "transformer_step": transformer_step,
             "lstm_step": lstm_step}
    report_case(case, lambda: mm().numpy(), {k: (lambda f=f: f(xla)) for k, f in steps.items()})


if __name__ == "__main__":
    main()
