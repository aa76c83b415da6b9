#!/usr/bin/python3
"""PyTorch parity suite: rebuilds every case that parity_cases wrote with torch, runs the
forward pass and torch.autograd, and compares the values and gradients with Kiln's.

    /usr/bin/python3 torch_parity.py DIR

Prints how many cases and values it compared; exits 1 on any mismatch.
"""
import os
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the suite is part of the test command: missing torch is a failure
    print(f"[torch-parity] cannot import torch/numpy ({e}); install python3-torch "
          "(tools/kiln-dev test does)")
    sys.exit(1)

INT64_MAX = 2**63 - 1
TOLERANCE = {"f64": (1e-9, 1e-11), "f32": (2e-4, 2e-5)}  # (rtol, atol)


DTYPES = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
          "i32": torch.int32, "i64": torch.int64, "u8": torch.uint8, "bool": torch.bool}


def ints(text):
    return [] if text == "none" else [int(v) for v in text.split(",")]


def normal_pdf(x):
    return torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5


def sum_to(x, shape):
    """Sums x down to `shape` (the reverse of broadcasting)."""
    lead = x.dim() - len(shape)
    if lead:
        x = x.sum(dim=list(range(lead)))
    dims = [d for d, n in enumerate(shape) if n == 1 and x.shape[d] != 1]
    return x.sum(dim=dims, keepdim=True) if dims else x


def slices(attrs):
    begin, end, step = ints(attrs["begin"]), ints(attrs["end"]), ints(attrs["step"])
    step = step or [1] * len(begin)
    return tuple(slice(b, None if e == INT64_MAX else e, s) for b, e, s in zip(begin, end, step))


def window(attrs, *names):
    return {name: ints(attrs[name]) for name in names}


def pool_input_grad(pool, dy, size):
    """The gradient of pool(x) for x of `size`, at upstream dy (differentiable in dy)."""
    x = torch.zeros(size, dtype=dy.dtype, requires_grad=True)
    return torch.autograd.grad(pool(x), x, dy, create_graph=True)[0]


def normalize(x, attrs, scale=None, shift=None):
    """normalize's (y, mean, rstd) (ops/nn/normalization.cc), with its optional affine step."""
    axes = [a % x.dim() for a in ints(attrs["axes"])]
    eps = float(attrs["eps"])
    if attrs["center"] == "1":
        mean = x.mean(dim=axes, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    else:
        mean = torch.zeros_like(x.sum(dim=axes, keepdim=True))
        var = (x * x).mean(dim=axes, keepdim=True)
    rstd = torch.rsqrt(var + eps)

    def kept(t):
        for axis in sorted(axes, reverse=True):
            t = t.squeeze(axis)
        return t
    y = (x - mean) * rstd
    if scale is not None and attrs.get("affine") == "elements":  # shaped like the trailing dims
        y = y * scale + shift
    elif scale is not None:  # shaped like the statistics: put back the normalized dims
        for axis in sorted(axes):
            scale, shift = scale.unsqueeze(axis), shift.unsqueeze(axis)
        y = y * scale + shift
    if attrs.get("activation") == "relu":
        y = torch.relu(y)
    return y, kept(mean), kept(rstd)


def heads_repeated(q, kv, attrs):
    """k or v with each key-value head repeated for its group of query heads (grouped-query
    attention: PyTorch's enable_gqa, whose order is repeat_interleave's)."""
    dim = 2 if attrs.get("layout") == "bthd" else 1
    if kv.shape[dim] in (0, q.shape[dim]):
        return kv
    return kv.repeat_interleave(q.shape[dim] // kv.shape[dim], dim=dim)


def attention(q, k, v, extras, attrs):
    """attention's (out, logsumexp) (ops/nn/attention.cc); extras: the inputs after v, a mask
    and then a query offset (an int64 scalar), either absent."""
    offset = 0
    if extras and extras[-1].dtype == torch.int64:
        offset, extras = int(extras[-1]), extras[:-1]
    mask = extras[0] if extras else None
    k, v = heads_repeated(q, k, attrs), heads_repeated(q, v, attrs)
    if attrs.get("layout") == "bthd":  # [B, T, H, D]: the math on [B, H, T, D], out back
        out, lse = attention(*(t.transpose(1, 2) for t in (q, k, v)),
                             ([mask] if mask is not None else []) + [torch.tensor(offset)],
                             {**attrs, "layout": "bhtd"})
        return out.transpose(1, 2), lse
    scale = float(attrs["scale"]) or q.shape[-1] ** -0.5
    s = q @ k.transpose(-1, -2) * scale
    cap = float(attrs.get("softcap", 0))
    if cap:  # Gemma 2's soft-capping, before the mask
        s = cap * torch.tanh(s / cap)
    # Query i stands at key position offset + i (triu's and tril's diagonals move with it).
    if attrs["causal"] == "1":
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1 + offset),
                          float("-inf"))
    window = int(attrs.get("window", 0))
    if window:  # a sliding window: query i reaches keys j > i + offset - window
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).tril(offset - window),
                          float("-inf"))
    if mask is not None:  # bool: true attends; float: a bias added to the scores
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def lstm_cell(gates, c_prev):
    """PyTorch's LSTM cell arithmetic (torch.nn.LSTMCell after its products)."""
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = i * g if c_prev is None else f * c_prev + i * g
    return o * torch.tanh(c), c, torch.cat([i, f, g, o], 1)


def gru_cell(x_gates, h_gates, h_prev):
    """PyTorch's GRU cell arithmetic (torch.nn.GRUCell after its products)."""
    x_r, x_z, x_n = x_gates.chunk(3, dim=1)
    h_r, h_z, h_n = h_gates.chunk(3, dim=-1) if h_gates is not None else (0, 0, 0)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h = (1 - z) * n + (z * h_prev if h_prev is not None else 0)
    return h, torch.cat([r, z, n], 1)


def conv_and_pool(op, args, attrs):
    """The convolution and pooling ops (ops/nn/conv.cc, pool.cc), or None."""
    if not args:
        return None
    a = args[0]
    if op.startswith("conv2d"):
        conv = dict(window(attrs, "stride", "padding", "dilation"), groups=int(attrs["groups"]))
        if op == "conv2d":
            return F.conv2d(a, args[1], args[2] if len(args) > 2 else None, **conv)
        if op == "conv2d_backward_input":  # (dy, w)
            w = args[1]
            size = [a.shape[0], w.shape[1] * conv["groups"]] + ints(attrs["input_size"])
            return torch.nn.grad.conv2d_input(size, w, a, **conv)
        if op == "conv2d_backward_filter":  # (x, dy)
            dy = args[1]
            size = [dy.shape[1], a.shape[1] // conv["groups"]] + ints(attrs["kernel_size"])
            return torch.nn.grad.conv2d_weight(a, size, dy, **conv)
    if op.startswith("adaptive_max_pool2d"):
        size = ints(attrs["output_size"])
        if op == "adaptive_max_pool2d":
            return F.adaptive_max_pool2d(a, size)
        if op == "adaptive_max_pool2d_backward":  # (x, dy)
            x = a.detach().requires_grad_(True)
            return torch.autograd.grad(F.adaptive_max_pool2d(x, size), x, args[1],
                                       create_graph=True)[0]
        if op == "adaptive_max_pool2d_select":  # (x, v): v at each window's maximum
            y, idx = F.adaptive_max_pool2d(a.detach(), size, return_indices=True)
            return args[1].flatten(2).gather(2, idx.flatten(2)).view_as(y)
    if op == "max_unpool2d":  # (x, indices)
        # PyTorch wants output_size within a stride of the window's own size: a window as wide
        # as its stride, ceil(size / in), covers the case's sizes.
        size = ints(attrs["output_size"])
        spread = [-(-size[d] // a.shape[2 + d]) for d in range(2)]
        return F.max_unpool2d(a, args[1], kernel_size=spread, stride=spread, output_size=size)
    if "pool2d" in op:
        win = window(attrs, "kernel_size", "stride", "padding")
        win["ceil_mode"] = attrs.get("ceil_mode") == "1"
        if "dilation" in attrs:  # the max ops
            win.update(window(attrs, "dilation"))
        if op == "max_pool2d":
            return F.max_pool2d(a, **win)
        if op == "max_pool2d_indices":
            return F.max_pool2d(a, **win, return_indices=True)[1]
        # positive_only: relu's gradient folded in, windows whose maximum is not > 0 give 0.
        positive = attrs.get("positive_only") == "1"
        if op == "max_pool2d_backward":  # (x, dy)
            x = a.detach().requires_grad_(True)
            y = F.max_pool2d(F.relu(x) if positive else x, **win)
            return torch.autograd.grad(y, x, args[1], create_graph=True)[0]
        if op == "max_pool2d_select":  # (x, v): v at each window's maximum
            y, idx = F.max_pool2d(a.detach(), **win, return_indices=True)
            selected = args[1].flatten(2).gather(2, idx.flatten(2)).view_as(y)
            return selected * (y > 0) if positive else selected
        include = attrs["count_include_pad"] == "1"
        def avg(x):
            return F.avg_pool2d(x, **win, count_include_pad=include)
        if op == "avg_pool2d":
            return avg(a)
        if op == "avg_pool2d_backward":  # (dy)
            return pool_input_grad(avg, a, list(a.shape[:2]) + ints(attrs["input_size"]))
    return None


def apply(op, args, attrs, dtype, custom):
    """One Kiln op in torch terms (a tuple for ops with several outputs). `custom`: ops whose
    case gave its own torch expression (OpCase::torch)."""
    a = args[0] if args else None
    if op in custom:
        return eval(custom[op], {"torch": torch, "F": F, "a": a, "args": args, "attrs": attrs})
    unary = {
        "neg": torch.neg, "abs": torch.abs, "square": torch.square, "relu": torch.relu,
        "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu, "sin": torch.sin,
        "cos": torch.cos, "sign": torch.sign, "identity": lambda x: x * 1,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "erf": torch.erf, "log1p": torch.log1p, "softplus": F.softplus,
        "expm1": torch.expm1, "stop_gradient": torch.Tensor.detach,
    }
    binary = {
        "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
        "pow": torch.pow, "maximum": torch.maximum, "minimum": torch.minimum,
        "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
        "greater": torch.gt, "greater_equal": torch.ge,
    }
    if op in unary:
        return unary[op](a)
    if op == "normalize":
        return normalize(a, attrs, *args[1:])
    if op == "normalize_backward":  # (x, mean, rstd, dy[, scale]): the statistics come from x
        x = a.detach().requires_grad_(True)
        if len(args) == 4:
            return torch.autograd.grad(normalize(x, attrs)[0], x, args[3], create_graph=True)[0]
        scale = args[4].detach().requires_grad_(True)
        shift = torch.zeros_like(scale, requires_grad=True)
        y = normalize(x, attrs, scale, shift)[0]
        grads = torch.autograd.grad(y, (x, scale, shift), args[3], create_graph=True)
        return grads[1:] if attrs.get("input_gradient") == "0" else grads
    if op == "attention":
        return attention(a, args[1], args[2], args[3:], attrs)
    if op == "attention_backward":  # (q, k, v, out, lse, dout[, mask][, offset]): dq, dk, dv
        # dk and dv per query head: the gradients of k and v repeated for their groups.
        qkv = [a] + [heads_repeated(a, t, attrs) for t in args[1:3]]
        qkv = [t.detach().requires_grad_(True) for t in qkv]
        out = attention(*qkv, args[6:], attrs)[0]
        return torch.autograd.grad(out, qkv, args[5], create_graph=True)
    if op == "lstm_cell":  # (gates[, c_prev]): h, c, activated gates
        return lstm_cell(a, args[1] if len(args) > 1 else None)
    if op == "lstm_cell_grad":  # (act, c, dh, dc[, c_prev]): d gates[, d c_prev], from autograd
        i, f, g, o = a.detach().chunk(4, dim=1)
        pre = torch.cat([torch.logit(i), torch.logit(f), torch.atanh(g), torch.logit(o)], 1)
        pre.requires_grad_(True)
        wrt = [pre] + ([args[4].detach().requires_grad_(True)] if len(args) > 4 else [])
        h, c, _ = lstm_cell(pre, wrt[1] if len(wrt) > 1 else None)
        return torch.autograd.grad((h, c), wrt, (args[2], args[3]))
    if op == "gru_cell":  # (x_gates[, h_gates[, h_prev]]): h, activated gates
        return gru_cell(a, *(list(args[1:]) + [None, None])[:2])
    if op == "gru_cell_grad":  # (act, dh[, h_gates[, h_prev]]): from autograd, in f64
        more = [t.detach().double() for t in args[2:]]
        r, z, n = a.detach().double().chunk(3, dim=1)
        h_r, h_z, h_n = more[0].chunk(3, dim=-1) if more else (0, 0, 0)
        x = torch.cat([torch.logit(r) - h_r, torch.logit(z) - h_z, torch.atanh(n) - r * h_n], 1)
        wrt = [x.requires_grad_(True)] + [t.requires_grad_(True) for t in more]
        h, _ = gru_cell(*(wrt + [None, None])[:3])
        grads = torch.autograd.grad(h, wrt, args[1].double())
        # d h_gates is per row, as the op gives it (not summed over a one-row h_gates)
        if more and more[0].dim() == 1:
            rr = r
            h_gates_grad = torch.cat([grads[0][:, :2 * r.shape[1]], grads[0][:, 2 * r.shape[1]:] * rr], 1)
            grads = (grads[0], h_gates_grad) + tuple(grads[2:])
        return tuple(g.to(a.dtype) for g in grads)
    if op == "after":
        return a * 1
    nn_result = conv_and_pool(op, args, attrs)
    if nn_result is not None:
        return nn_result
    if op in binary:
        return binary[op](a, args[1])
    if op == "gelu_grad":  # gelu'(x) dy
        x, dy = args
        return (0.5 * torch.erfc(-x / 2 ** 0.5) + x * normal_pdf(x)) * dy
    if op == "where":
        return torch.where(a, args[1], args[2])
    if op == "cast":
        return a.to(DTYPES[attrs["dtype"]])
    if op == "add_n":
        return sum(args[1:], args[0])
    if op in ("matmul", "matmul_bias"):
        b = args[1]
        if attrs.get("transpose_a") == "1":
            a = a.transpose(-1, -2)
        if attrs.get("transpose_b") == "1":
            b = b.transpose(-1, -2)
        y = torch.matmul(a, b)
        if op == "matmul_bias":
            y = y + args[2]
            if attrs["activation"] == "relu":
                y = torch.relu(y)
        return y
    if op in ("sum", "mean", "max", "min"):
        axes = ints(attrs["axes"]) or list(range(a.dim()))
        keep = attrs["keepdims"] == "1"
        if a.dim() == 0:
            return a.clone()
        fn = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}[op]
        return fn(a, dim=axes, keepdim=keep)
    if op in ("argmax", "argmin"):
        return (torch.argmax if op == "argmax" else torch.argmin)(a, dim=int(attrs["axis"]))
    if op == "cumsum":
        axis = int(attrs["axis"])
        reverse = attrs["reverse"] == "1"
        v = a.flip(axis) if reverse else a
        y = torch.cumsum(v, axis)
        if attrs["exclusive"] == "1":
            y = y - v
        return y.flip(axis) if reverse else y
    if op == "topk":
        axis, k = int(attrs["axis"]), int(attrs["k"])
        largest = attrs["largest"] == "1"
        if k < 0:
            return tuple(torch.sort(a, dim=axis, descending=largest, stable=True))
        return tuple(torch.topk(a, k, dim=axis, largest=largest, sorted=True))
    if op == "numel":
        return torch.tensor(float(a.numel()), dtype=DTYPES[attrs["dtype"]])
    if op == "reshape":
        return a.reshape(ints(attrs["shape"]))
    if op == "flatten":
        return torch.flatten(a, int(attrs["start_axis"]), int(attrs["end_axis"]))
    if op == "unflatten":
        return a.unflatten(int(attrs["axis"]), ints(attrs["sizes"]))
    if op == "transpose":
        return a.permute(ints(attrs["perm"]))
    if op == "broadcast_to":
        return a.broadcast_to(ints(attrs["shape"]))
    if op == "expand_dims":
        rank = a.dim() + len(ints(attrs["axes"]))
        for axis in sorted(x % rank for x in ints(attrs["axes"])):
            a = a.unsqueeze(axis)
        return a
    if op == "concat":
        return torch.cat(args, dim=int(attrs["axis"]))
    if op == "split":
        return torch.split(a, ints(attrs["sizes"]), dim=int(attrs["axis"]))
    if op == "split_like":
        axis = int(attrs["axis"])
        return torch.split(a, [like.shape[axis] for like in args[1:]], dim=axis)
    if op == "slice":
        return a[slices(attrs)]
    if op == "slice_grad":  # dy into zeros shaped like x
        out = torch.zeros_like(args[1])
        out[slices(attrs)] = a
        return out
    if op == "gather":
        axis = int(attrs["axis"])
        idx = args[1] % a.shape[axis]
        picked = a.index_select(axis, idx.flatten())
        return picked.reshape(a.shape[:axis] + idx.shape + a.shape[axis + 1:])
    if op == "gather_grad":  # scatter-add of dy into zeros shaped like params
        dy, idx, params = args
        axis = int(attrs["axis"])
        idx = idx % params.shape[axis]
        flat = dy.reshape(params.shape[:axis] + (idx.numel(),) + params.shape[axis + 1:])
        return torch.zeros_like(params).index_add(axis, idx.flatten(), flat)
    if op == "take_along_axis":
        return torch.gather(a, int(attrs["axis"]), args[1])
    if op == "take_along_axis_grad":  # scatter-add of dy into zeros shaped like params
        dy, idx, params = args
        return torch.zeros_like(params).scatter_add(int(attrs["axis"]), idx, dy)
    if op == "sum_to":
        return sum_to(a, args[1].shape)
    if op == "broadcast_like":
        return a.broadcast_to(args[1].shape)
    if op == "reshape_like":
        return a.reshape(args[1].shape)
    if op == "full_like":
        return torch.full_like(a, float(attrs["value"]))
    if op == "softmax":
        return torch.softmax(a, dim=int(attrs["axis"]))
    if op == "log_softmax":
        return torch.log_softmax(a, dim=int(attrs["axis"]))
    if op == "softmax_cross_entropy":
        return F.cross_entropy(a, args[1], reduction="none", ignore_index=int(attrs["ignore_index"]),
                               label_smoothing=float(attrs["label_smoothing"]))
    if op == "softmax_cross_entropy_grad":  # dloss (softmax(z) - target), 0 on ignored rows
        z, labels, dloss = args
        ignore, e = int(attrs["ignore_index"]), float(attrs["label_smoothing"])
        kept = labels != ignore
        onehot = F.one_hot(torch.where(kept, labels, 0), z.shape[1]).to(z.dtype)
        target = (1 - e) * onehot + e / z.shape[1]
        return (dloss * kept).unsqueeze(1) * (torch.softmax(z, dim=1) - target)
    if op == "fill":
        return torch.full(ints(attrs["shape"]), float(attrs["value"]), dtype=DTYPES[attrs["dtype"]])
    if op == "iota":
        shape, axis = ints(attrs["shape"]), int(attrs["axis"])
        view = [1] * len(shape)
        view[axis] = shape[axis]
        ramp = torch.arange(shape[axis], dtype=DTYPES[attrs["dtype"]]).reshape(view)
        return ramp.broadcast_to(shape).clone()
    raise ValueError(f"unknown op {op}")


def lookup(values, ref):
    node, _, index = ref.partition(":")
    value = values[node]
    if isinstance(value, tuple):
        return value[int(index or 0)]
    return value


def run_case(case_dir):
    """Returns (number of values compared, list of mismatch messages)."""
    lines = open(os.path.join(case_dir, "spec.txt")).read().split("\n")
    dtype_name = lines[0].split()[1]
    dtype = DTYPES[dtype_name]
    values, inputs, grads_wanted, output, custom = {}, {}, [], None, {}
    rtol, atol = TOLERANCE[dtype_name]
    for line in lines[1:]:
        if not line:
            continue
        parts = line.split()
        if parts[0] == "output":
            output = parts[1]
            continue
        if parts[0] == "grad":
            grads_wanted.append(parts[1])
            continue
        if parts[0] == "tolerance":
            rtol = atol = float(parts[1])
            continue
        if parts[0] == "torch":
            custom[parts[1]] = line.split(None, 2)[2]
            continue
        node, op = parts[0], parts[1]
        args = [lookup(values, p) for p in parts[2:] if "=" not in p]
        attrs = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        if op in ("input", "const"):
            t = torch.from_numpy(np.load(os.path.join(case_dir, attrs["file"])))
            if op == "input":
                t = t.clone().requires_grad_(True)
                inputs[node] = t
            values[node] = t
        else:
            values[node] = apply(op, args, attrs, dtype, custom)
    y = lookup(values, output)
    compared, problems = 0, []

    def compare(what, ours, theirs):
        nonlocal compared
        theirs = theirs.detach().numpy()
        if ours.shape != theirs.shape:
            problems.append(f"{what}: shape {ours.shape} vs torch {theirs.shape}")
            return
        compared += ours.size
        ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(theirs))) if theirs.size else 1.0)
        if not np.allclose(ours, theirs, rtol=rtol, atol=atol * scale, equal_nan=True):
            worst = np.max(np.abs(ours - theirs))
            problems.append(f"{what}: max abs difference {worst:.3g}")

    compare("forward", np.load(os.path.join(case_dir, "kiln_y.npy")), y)
    if grads_wanted:
        r = torch.from_numpy(np.load(os.path.join(case_dir, "r.npy")))
        loss = (y * r).sum()
        grads = torch.autograd.grad(loss, [inputs[g] for g in grads_wanted], allow_unused=True)
        for name, grad in zip(grads_wanted, grads):
            if grad is None:
                grad = torch.zeros_like(inputs[name])
            compare(f"d/d{name}", np.load(os.path.join(case_dir, f"kiln_grad_{name}.npy")), grad)
    return compared, problems


def main():
    root = sys.argv[1]
    torch.set_num_threads(1)
    cases = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not cases:  # a suite that compares nothing must not pass
        print(f"[torch-parity] no cases in {root}")
        sys.exit(1)
    total_values, failures = 0, []
    for case in cases:
        try:
            compared, problems = run_case(os.path.join(root, case))
        except Exception as e:  # a case torch cannot build is a failure too
            compared, problems = 0, [f"error: {e}"]
        total_values += compared
        failures += [f"{case}: {p}" for p in problems]
    for f in failures[:40]:
        print(f"[torch-parity] MISMATCH {f}")
    print(f"[torch-parity] torch {torch.__version__}: compared {len(cases)} cases, "
          f"{total_values} values (forward and gradients): "
          f"{len(cases) - len({f.split(':')[0] for f in failures})} passed, "
          f"{len({f.split(':')[0] for f in failures})} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
