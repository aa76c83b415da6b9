// The op-case table's attention and rotary-embedding cases (see op_cases.h), with direct f64
// references: softmax(q k^T) v with every mask written out, and each pair of rotary elements
// turned by its angle.
#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "cases/op_cases.h"

namespace kiln::testing {

namespace {

// softmax(scale q k^T, masked) v, direct, with q [B, H, Tq, D], k [B, Hk, Tk, D] etc. (with
// `bthd`, [B, Tq, H, D] etc.; Hk divides H, query head h reading key-value head h / (H / Hk));
// `key_valid` masks keys per batch entry (empty: none); input `bias_input` (if >= 0), broadcast
// to [B, H, Tq, Tk], is added to the scaled scores, after a `softcap` (> 0) has made each
// softcap tanh(score / softcap).
Reference attention_reference(bool causal, std::vector<std::vector<bool>> key_valid,
                              bool bthd = false, int bias_input = -1, double softcap = 0,
                              int64_t window = 0, int64_t query_offset = 0) {
  return [=](const std::vector<Tensor>& in) {
    const Shape& qs = in[0].shape();
    const int hd = bthd ? 2 : 1, ld = bthd ? 1 : 2;
    const int64_t batch = qs[0], heads = qs[hd], tq = qs[ld], d = qs[3];
    const int64_t tk = in[1].shape()[ld], dv = in[2].shape()[3], kv_heads = in[1].shape()[hd];
    // Offset of element c of row i of (b, h) in a tensor of `n` heads of `length` rows of
    // `depth`.
    auto at_in = [&](int64_t b, int64_t h, int64_t i, int64_t c, int64_t length, int64_t depth,
                     int64_t n) {
      return bthd ? ((b * length + i) * n + h) * depth + c : ((b * n + h) * length + i) * depth + c;
    };
    auto at = [&](int64_t b, int64_t h, int64_t i, int64_t c, int64_t length, int64_t depth) {
      return at_in(b, h, i, c, length, depth, heads);
    };
    // The same of k or v, for query head h.
    auto kv_at = [&](int64_t b, int64_t h, int64_t j, int64_t c, int64_t depth) {
      return at_in(b, h / (heads / kv_heads), j, c, tk, depth, kv_heads);
    };
    const double scale = 1 / std::sqrt(static_cast<double>(d));
    std::vector<double> out(static_cast<size_t>(batch * heads * tq * dv));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < tq; ++i) {
          std::vector<double> s(static_cast<size_t>(tk), -INFINITY);
          double m = -INFINITY;
          for (int64_t j = 0; j < tk; ++j) {
            const int64_t position = query_offset + i;  // query i's among the keys
            if (causal && j > position) continue;
            if (window > 0 && j <= position - window) continue;
            if (!key_valid.empty() && !key_valid[static_cast<size_t>(b)][j]) continue;
            double dot = 0;
            for (int64_t c = 0; c < d; ++c)
              dot += in[0].element(at(b, h, i, c, tq, d)) * in[1].element(kv_at(b, h, j, c, d));
            s[j] = dot * scale;
            if (softcap > 0) s[j] = softcap * std::tanh(s[j] / softcap);
            if (bias_input >= 0) {
              const Tensor& bias = in[static_cast<size_t>(bias_input)];
              const Shape& bs = bias.shape();
              const int64_t at[4] = {b, h, i, j};
              int64_t offset = 0;
              for (int d4 = 0; d4 < 4; ++d4) offset = offset * bs[d4] + (bs[d4] == 1 ? 0 : at[d4]);
              s[j] += bias.element(offset);
            }
            m = std::max(m, s[j]);
          }
          double sum = 0;
          for (double& e : s) sum += e = std::exp(e - m);
          for (int64_t c = 0; c < dv; ++c) {
            double o = 0;
            for (int64_t j = 0; j < tk; ++j) o += s[j] / sum * in[2].element(kv_at(b, h, j, c, dv));
            out[static_cast<size_t>(at(b, h, i, c, tq, dv))] = o;
          }
        }
    return out;
  };
}

}  // namespace

namespace {

// rotary in PyTorch terms: x [B, T, H, D], frequencies [D/2], an optional start; angles in f32
// as Kiln's, the rotation in x's dtype.
const char* const kTorchRotary =
    "(lambda x, f, s, interleaved, sign: (lambda w: (lambda cos, sin, a, b: "
    "torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2) if interleaved else "
    "torch.cat([a * cos - b * sin, b * cos + a * sin], -1))("
    "w.cos().to(x.dtype)[None, :, None, :], (sign * w.sin()).to(x.dtype)[None, :, None, :], "
    "x[..., 0::2] if interleaved else x[..., :x.shape[-1] // 2], "
    "x[..., 1::2] if interleaved else x[..., x.shape[-1] // 2:]))("
    "(torch.arange(x.shape[1]).float() + float(s))[:, None] * f.float()[None, :]))("
    "a, args[1], int(args[2]) if len(args) > 2 else 0, attrs['interleaved'] == '1', "
    "-1.0 if attrs['inverse'] == '1' else 1.0)";

// rotary's f64 reference of x [B, T, H, D] at positions start.. (frequency and angle rounded to
// f32 as the op computes them), turned by -w with `inverse`.
Reference rotary_reference(double base, int64_t start, bool interleaved, bool inverse) {
  return [=](const std::vector<Tensor>& in) {
    const Shape& s = in[0].shape();
    const int64_t pairs = s[3] / 2;
    std::vector<double> y(static_cast<size_t>(in[0].numel()));
    for (int64_t row = 0; row < s[0] * s[1] * s[2]; ++row)
      for (int64_t c = 0; c < pairs; ++c) {
        const float f = static_cast<float>(std::pow(base, -2.0 * c / static_cast<double>(s[3])));
        const float w = (static_cast<float>(row / s[2] % s[1]) + static_cast<float>(start)) * f;
        const double cos_w = std::cos(w), sin_w = (inverse ? -1 : 1) * double(std::sin(w));
        const int64_t i = row * s[3] + (interleaved ? 2 * c : c);
        const int64_t j = i + (interleaved ? 1 : pairs);
        const double a = in[0].element(i), b = in[0].element(j);
        y[static_cast<size_t>(i)] = a * cos_w - b * sin_w;
        y[static_cast<size_t>(j)] = b * cos_w + a * sin_w;
      }
    return y;
  };
}

}  // namespace

void add_rotary_cases(const std::function<void(OpCase)>& add) {
  add({.op = "rotary",
       .name = "rotary_half_from_start",
       .build =
           [](CaseGraph& c) {
             Value x = c.input({2, 5, 3, 8});  // fed first: the reference reads in[0]
             return rotary_embedding(x, c.ints({3}, {}), {.base = 100});
           },
       // The angles' cos and sin are f32 (libm's and PyTorch's differ by an ulp, 6e-8).
       .parity_tolerance = 1e-6,
       .torch = kTorchRotary,
       .reference = rotary_reference(100, 3, false, false)});
  add({.op = "rotary",
       .name = "rotary_interleaved",
       .build =
           [](CaseGraph& c) {
             return rotary_embedding(c.input({1, 4, 2, 6}), {}, {.interleaved = true});
           },
       // The angles' cos and sin are f32 (libm's and PyTorch's differ by an ulp, 6e-8).
       .parity_tolerance = 1e-6,
       .torch = kTorchRotary,
       .reference = rotary_reference(10000, 0, true, false)});
  // The inverse turn (the gradient's), with an i32 start [1].
  add({.op = "rotary",
       .name = "rotary_inverse_i32_start",
       .build =
           [](CaseGraph& c) {
             Value x = c.input({2, 3, 1, 4});
             std::vector<float> f = {1.0f, static_cast<float>(std::pow(50.0, -0.5))};
             return c.g.add(
                 "rotary",
                 {x, c.g.constant(Tensor::from_vector(f, {2})), cast(c.ints({7}, {1}), i32)},
                 {{"interleaved", false}, {"inverse", true}});
           },
       // The angles' cos and sin are f32 (libm's and PyTorch's differ by an ulp, 6e-8).
       .parity_tolerance = 1e-6,
       .torch = kTorchRotary,
       .reference = rotary_reference(50, 7, false, true)});
}

void add_attention_cases(const std::function<void(OpCase)>& add) {
  add({.op = "attention",
       .name = "attention",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 3, 5, 4}), k = c.input({2, 3, 7, 4}), v = c.input({2, 3, 7, 6});
             return scaled_dot_product_attention(q, k, v);
           },
       .reference = attention_reference(false, {})});
  add({.op = "attention",
       .name = "attention_causal",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 2, 6, 8}), k = c.input({1, 2, 6, 8}), v = c.input({1, 2, 6, 8});
             return scaled_dot_product_attention(q, k, v, {.causal = true});
           },
       .reference = attention_reference(true, {})});
  // More queries than one block (64): each block's products stop at its last visible key.
  add({.op = "attention",
       .name = "attention_causal_blocks",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 1, 66, 2}), k = c.input({1, 1, 68, 2}),
                   v = c.input({1, 1, 68, 2});
             return scaled_dot_product_attention(q, k, v, {.causal = true});
           },
       .reference = attention_reference(true, {})});
  // More queries than one block (128 without causal masking): a block of 2 rows after 128.
  add({.op = "attention",
       .name = "attention_blocks",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 1, 130, 2}), k = c.input({1, 1, 129, 2}),
                   v = c.input({1, 1, 129, 3});
             return scaled_dot_product_attention(q, k, v);
           },
       .reference = attention_reference(false, {})});
  const std::vector<std::vector<bool>> valid = {{true, true, false, true, false},
                                                {false, true, true, true, true}};
  add({.op = "attention",
       .name = "attention_key_padding",
       .build =
           [valid](CaseGraph& c) {
             Tensor mask = Tensor::zeros(DType::boolean, {2, 1, 1, 5});
             for (int64_t b = 0; b < 2; ++b)
               for (int64_t j = 0; j < 5; ++j) mask.data<bool>()[b * 5 + j] = valid[b][j];
             Value q = c.input({2, 2, 3, 4}), k = c.input({2, 2, 5, 4}), v = c.input({2, 2, 5, 3});
             return scaled_dot_product_attention(q, k, v, {.mask = c.g.constant(mask)});
           },
       .reference = attention_reference(false, valid)});
  // Heads read in place from [B, T, H, D] (MultiHeadAttention's layout), with a key mask and
  // causal masking: rows of q, k, v, out and their gradients are H * D apart.
  const std::vector<std::vector<bool>> valid_keys = {{true, true, false, true, true, true},
                                                     {true, false, true, true, false, true}};
  add({.op = "attention",
       .name = "attention_bthd",
       .build =
           [valid_keys](CaseGraph& c) {
             Tensor mask = Tensor::zeros(DType::boolean, {2, 1, 1, 6});
             for (int64_t b = 0; b < 2; ++b)
               for (int64_t j = 0; j < 6; ++j) mask.data<bool>()[b * 6 + j] = valid_keys[b][j];
             Value q = c.input({2, 6, 3, 4}), k = c.input({2, 6, 3, 4}), v = c.input({2, 6, 3, 5});
             return scaled_dot_product_attention(
                 q, k, v, {.mask = c.g.constant(mask), .causal = true, .layout = "bthd"});
           },
       .reference = attention_reference(true, valid_keys, true)});
  // Sizes where the f32 kernel's tiles all take part (attention_tiled.cc): depth and keys past
  // 16 (transposes in whole 16 x 16 blocks and at the edges), keys past 64 (two column blocks
  // of a tile), queries past one backward chunk (36), and rows of every tile height. Too large
  // for finite differences; the f32 kernels' gradients are held against the f64 ones
  // (OpCases.SecondF32KernelsMatchTheF64Kernels) and PyTorch's.
  add({.op = "attention",
       .name = "attention_tiles",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 2, 45, 19}), k = c.input({1, 2, 83, 19}),
                   v = c.input({1, 2, 83, 18});
             return scaled_dot_product_attention(q, k, v);
           },
       .fd_step = 0,
       .reference = attention_reference(false, {})});
  add({.op = "attention",
       .name = "attention_tiles_causal_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 50, 2, 32}), k = c.input({2, 70, 2, 32}),
                   v = c.input({2, 70, 2, 20});
             return scaled_dot_product_attention(q, k, v, {.causal = true, .layout = "bthd"});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true)});
  // Depths 64 and 128 in f16 and bf16 run on the GPU's tensor-core kernels
  // (ops/nn/attention_flash.h): two query blocks, a partial key step, causal masking and a key
  // mask, both layouts.
  add({.op = "attention",
       .name = "attention_flash_causal_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 70, 2, 64}), k = c.input({1, 70, 2, 64}),
                   v = c.input({1, 70, 2, 64});
             return scaled_dot_product_attention(q, k, v, {.causal = true, .layout = "bthd"});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true)});
  add({.op = "attention",
       .name = "attention_flash_key_padding",
       .build =
           [valid](CaseGraph& c) {
             Tensor mask = Tensor::zeros(DType::boolean, {2, 1, 1, 5});
             for (int64_t b = 0; b < 2; ++b)
               for (int64_t j = 0; j < 5; ++j) mask.data<bool>()[b * 5 + j] = valid[b][j];
             Value q = c.input({2, 1, 67, 128}), k = c.input({2, 1, 5, 128}),
                   v = c.input({2, 1, 5, 128});
             return scaled_dot_product_attention(q, k, v, {.mask = c.g.constant(mask)});
           },
       .fd_step = 0,
       .reference = attention_reference(false, valid)});
  // Grouped-query attention: fewer key-value heads (2 for 4 query heads; 1 for 3, multi-query),
  // read in place; the gradients of k and v sum their groups' (sum_head_groups).
  add({.op = "attention",
       .name = "attention_grouped_heads",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 4, 5, 4}), k = c.input({2, 2, 7, 4}), v = c.input({2, 2, 7, 3});
             return scaled_dot_product_attention(q, k, v);
           },
       .reference = attention_reference(false, {})});
  add({.op = "attention",
       .name = "attention_one_key_value_head_bthd",
       .build =
           [valid_keys](CaseGraph& c) {
             Tensor mask = Tensor::zeros(DType::boolean, {2, 1, 1, 6});
             for (int64_t b = 0; b < 2; ++b)
               for (int64_t j = 0; j < 6; ++j) mask.data<bool>()[b * 6 + j] = valid_keys[b][j];
             Value q = c.input({2, 6, 3, 4}), k = c.input({2, 6, 1, 4}), v = c.input({2, 6, 1, 5});
             return scaled_dot_product_attention(
                 q, k, v, {.mask = c.g.constant(mask), .causal = true, .layout = "bthd"});
           },
       .reference = attention_reference(true, valid_keys, true)});
  add({.op = "attention",
       .name = "attention_tiles_grouped_heads_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 50, 6, 32}), k = c.input({1, 70, 2, 32}),
                   v = c.input({1, 70, 2, 20});
             return scaled_dot_product_attention(q, k, v, {.causal = true, .layout = "bthd"});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true)});
  add({.op = "attention",
       .name = "attention_flash_grouped_heads",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 4, 70, 64}), k = c.input({1, 2, 70, 64}),
                   v = c.input({1, 2, 70, 64});
             return scaled_dot_product_attention(q, k, v, {.causal = true});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {})});
  // A float mask is a bias added to the scaled scores (PyTorch's float attn_mask), here
  // differentiable: its gradient is a composition of the scores' (bias_gradient).
  add({.op = "attention",
       .name = "attention_bias",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 3, 5, 4}), k = c.input({2, 3, 7, 4}), v = c.input({2, 3, 7, 6});
             return scaled_dot_product_attention(q, k, v, {.mask = c.input({1, 3, 5, 7})});
           },
       .reference = attention_reference(false, {}, false, 3)});
  add({.op = "attention",
       .name = "attention_bias_causal_grouped_heads_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 6, 4, 4}), k = c.input({2, 6, 2, 4}), v = c.input({2, 6, 2, 5});
             return scaled_dot_product_attention(
                 q, k, v, {.mask = c.input({2, 1, 1, 6}), .causal = true, .layout = "bthd"});
           },
       .reference = attention_reference(true, {}, true, 3)});
  // -inf in a bias hides a key, as false in a bool mask does; the f32 kernel takes the gemm path
  // (its tiles take bool masks only).
  add({.op = "attention",
       .name = "attention_bias_hides_keys",
       .build =
           [valid](CaseGraph& c) {
             std::vector<float> bias(10);
             for (size_t i = 0; i < 10; ++i)
               bias[i] = valid[i / 5][i % 5] ? 0.0f : -std::numeric_limits<float>::infinity();
             Value q = c.input({2, 2, 3, 4}), k = c.input({2, 2, 5, 4}), v = c.input({2, 2, 5, 3});
             Value mask = cast(c.g.constant(Tensor::from_vector(bias, {2, 1, 1, 5})), q.dtype());
             return scaled_dot_product_attention(q, k, v, {.mask = mask});
           },
       .reference = attention_reference(false, valid)});
  // Gemma 2's soft-capped scores, c tanh(s / c): with a cap near the scores' size the tanh
  // bends, so the gradient's 1 - tanh^2 matters. With causal masking and a bool key mask, and
  // with a differentiable bias in the bthd layout.
  add({.op = "attention",
       .name = "attention_softcap_causal_key_padding",
       .build =
           [valid_keys](CaseGraph& c) {
             Tensor mask = Tensor::zeros(DType::boolean, {2, 1, 1, 6});
             for (int64_t b = 0; b < 2; ++b)
               for (int64_t j = 0; j < 6; ++j) mask.data<bool>()[b * 6 + j] = valid_keys[b][j];
             Value q = c.input({2, 2, 6, 4}), k = c.input({2, 2, 6, 4}), v = c.input({2, 2, 6, 3});
             return scaled_dot_product_attention(
                 q, k, v, {.mask = c.g.constant(mask), .causal = true, .softcap = 0.5});
           },
       .reference = attention_reference(true, valid_keys, false, -1, 0.5)});
  add({.op = "attention",
       .name = "attention_softcap_bias_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 6, 3, 4}), k = c.input({2, 7, 3, 4}), v = c.input({2, 7, 3, 5});
             return scaled_dot_product_attention(
                 q, k, v, {.mask = c.input({1, 3, 6, 7}), .softcap = 0.3, .layout = "bthd"});
           },
       .reference = attention_reference(false, {}, true, 3, 0.3)});
  // A sliding window (Mistral's, Gemma's local layers): query i reaches keys j > i - window.
  // Small, with a differentiable bias (whose gradient composition masks the window too); past a
  // CPU block of 64 rows, whose products start at its first row's first key; on the f32 tiles
  // (spans rounded down to a vector, backward chunks), not causal too; and on the GPU's
  // tensor-core kernels (walks starting past key 0, key blocks whose queries end early).
  add({.op = "attention",
       .name = "attention_window_bias",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 2, 6, 4}), k = c.input({1, 2, 8, 4}), v = c.input({1, 2, 8, 3});
             return scaled_dot_product_attention(q, k, v,
                                                 {.mask = c.input({1, 2, 6, 8}), .window = 3});
           },
       .reference = attention_reference(false, {}, false, 3, 0, 3)});
  add({.op = "attention",
       .name = "attention_window_causal_blocks",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 1, 100, 2}), k = c.input({1, 1, 100, 2}),
                   v = c.input({1, 1, 100, 2});
             return scaled_dot_product_attention(q, k, v, {.causal = true, .window = 30});
           },
       .reference = attention_reference(true, {}, false, -1, 0, 30)});
  add({.op = "attention",
       .name = "attention_tiles_window_causal_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 90, 2, 19}), k = c.input({1, 90, 2, 19}),
                   v = c.input({1, 90, 2, 18});
             return scaled_dot_product_attention(q, k, v,
                                                 {.causal = true, .window = 40, .layout = "bthd"});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true, -1, 0, 40)});
  add({.op = "attention",
       .name = "attention_tiles_window",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 1, 45, 8}), k = c.input({1, 1, 83, 8}),
                   v = c.input({1, 1, 83, 8});
             return scaled_dot_product_attention(q, k, v, {.window = 20});
           },
       .fd_step = 0,
       .reference = attention_reference(false, {}, false, -1, 0, 20)});
  add({.op = "attention",
       .name = "attention_flash_window_causal_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({1, 150, 2, 64}), k = c.input({1, 150, 2, 64}),
                   v = c.input({1, 150, 2, 64});
             return scaled_dot_product_attention(q, k, v,
                                                 {.causal = true, .window = 70, .layout = "bthd"});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true, -1, 0, 70)});
  // A query offset (read when the graph runs): query i stands at key position offset + i, as a
  // KV cache's entries are (its position) or PyTorch's bottom-right alignment (Tk - Tq). Each
  // row reaches a key. Small with a differentiable bias (whose gradient masks the reach at the
  // offset); one query row against a cache (the gemm path); past a CPU block of 64 rows; on
  // the f32 tiles; and on the GPU's tensor-core forward (its kernel reading the offset).
  auto offset_of = [](CaseGraph& c, int64_t offset) {
    return c.g.constant(Tensor::scalar<int64_t>(offset));
  };
  add({.op = "attention",
       .name = "attention_query_offset_window_bias",
       .build =
           [offset_of](CaseGraph& c) {
             Value q = c.input({1, 2, 4, 4}), k = c.input({1, 2, 9, 4}), v = c.input({1, 2, 9, 3});
             return scaled_dot_product_attention(q, k, v,
                                                 {.mask = c.input({1, 2, 4, 9}),
                                                  .causal = true,
                                                  .window = 3,
                                                  .query_offset = offset_of(c, 4)});
           },
       .reference = attention_reference(true, {}, false, 3, 0, 3, 4)});
  add({.op = "attention",
       .name = "attention_query_offset_one_row",
       .build =
           [offset_of](CaseGraph& c) {
             Value q = c.input({1, 2, 1, 8}), k = c.input({1, 2, 50, 8}),
                   v = c.input({1, 2, 50, 8});
             return scaled_dot_product_attention(
                 q, k, v, {.causal = true, .query_offset = offset_of(c, 20)});
           },
       .reference = attention_reference(true, {}, false, -1, 0, 0, 20)});
  add({.op = "attention",
       .name = "attention_query_offset_window_blocks",
       .build =
           [offset_of](CaseGraph& c) {
             Value q = c.input({1, 1, 100, 2}), k = c.input({1, 1, 130, 2}),
                   v = c.input({1, 1, 130, 2});
             return scaled_dot_product_attention(
                 q, k, v, {.causal = true, .window = 40, .query_offset = offset_of(c, 30)});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, false, -1, 0, 40, 30)});
  add({.op = "attention",
       .name = "attention_tiles_query_offset_bthd",
       .build =
           [offset_of](CaseGraph& c) {
             Value q = c.input({1, 40, 2, 19}), k = c.input({1, 90, 2, 19}),
                   v = c.input({1, 90, 2, 18});
             return scaled_dot_product_attention(
                 q, k, v, {.causal = true, .layout = "bthd", .query_offset = offset_of(c, 50)});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true, -1, 0, 0, 50)});
  add({.op = "attention",
       .name = "attention_flash_query_offset_window_bthd",
       .build =
           [offset_of](CaseGraph& c) {
             Value q = c.input({1, 70, 2, 64}), k = c.input({1, 200, 2, 64}),
                   v = c.input({1, 200, 2, 64});
             return scaled_dot_product_attention(q, k, v,
                                                 {.causal = true,
                                                  .window = 90,
                                                  .layout = "bthd",
                                                  .query_offset = offset_of(c, 100)});
           },
       .fd_step = 0,
       .reference = attention_reference(true, {}, true, -1, 0, 90, 100)});
  add({.op = "attention_backward",
       .name = "attention_backward_grouped_heads_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 4, 4, 4}), k = c.input({2, 6, 2, 4}), v = c.input({2, 6, 2, 3});
             const AttrMap attrs = {{"causal", true}, {"layout", std::string("bthd")}};
             std::vector<Value> fwd = c.g.add_node("attention", {q, k, v}, attrs);
             std::vector<Value> grads = c.g.add_node(
                 "attention_backward", {q, k, v, fwd[0], fwd[1], c.input({2, 4, 4, 3})}, attrs);
             // Every element of dq, and of dk and dv per query head ([2, 6, 4, *]).
             return concat(
                 {reshape(grads[0], {-1}), reshape(grads[1], {-1}), reshape(grads[2], {-1})}, 0);
           },
       .gradients = false});
  add({.op = "attention_backward",
       .name = "attention_backward_bthd",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 4, 2, 4}), k = c.input({2, 6, 2, 4}), v = c.input({2, 6, 2, 3});
             const AttrMap attrs = {{"causal", true}, {"layout", std::string("bthd")}};
             std::vector<Value> fwd = c.g.add_node("attention", {q, k, v}, attrs);
             std::vector<Value> grads = c.g.add_node(
                 "attention_backward", {q, k, v, fwd[0], fwd[1], c.input({2, 4, 2, 3})}, attrs);
             return grads[0] * 2.0 + sum(grads[1]) + sum(grads[2]);
           },
       .gradients = false});
  add({.op = "attention_backward",
       .name = "attention_backward",
       .build =
           [](CaseGraph& c) {
             Value q = c.input({2, 2, 4, 4}), k = c.input({2, 2, 6, 4}), v = c.input({2, 2, 6, 3});
             std::vector<Value> fwd = c.g.add_node("attention", {q, k, v}, {{"causal", true}});
             std::vector<Value> grads =
                 c.g.add_node("attention_backward",
                              {q, k, v, fwd[0], fwd[1], c.input({2, 2, 4, 3})}, {{"causal", true}});
             return grads[0] * 2.0 + sum(grads[1]) + sum(grads[2]);
           },
       .gradients = false});
}

}  // namespace kiln::testing
