// matmul: C = op(A) @ op(B) over the last two dims, batch dims broadcast.
//   A is [..., M, K] (transpose_a: [..., K, M]); B is [..., K, N] (transpose_b: [..., N, K]).
// CPU kernel: single-threaded gemms (ops/math/blas.h) on blocks of C spread over the pool.
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/blocked_product.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_matmul(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_same_dtype(0, 1);
  const Shape& a = ctx.shape(0);
  const Shape& b = ctx.shape(1);
  if (a.rank() < 2 || b.rank() < 2)
    ctx.fail("both inputs need rank >= 2 (matmul() itself also takes vectors); a is ", a, ", b is ",
             b);
  bool ta = ctx.attr<bool>("transpose_a"), tb = ctx.attr<bool>("transpose_b");
  int64_t m = ta ? a[-1] : a[-2], ka = ta ? a[-2] : a[-1];
  int64_t kb = tb ? b[-1] : b[-2], n = tb ? b[-2] : b[-1];
  if (ka >= 0 && kb >= 0 && ka != kb)
    ctx.fail("inner dimensions differ: a is ", a, (ta ? " (transposed)" : ""), ", b is ", b,
             (tb ? " (transposed)" : ""));
  Shape batch_a(std::vector<int64_t>(a.begin(), a.end() - 2));
  Shape batch_b(std::vector<int64_t>(b.begin(), b.end() - 2));
  Shape batch;
  if (!broadcast_shapes(batch_a, batch_b, &batch))
    ctx.fail("batch dims ", batch_a, " and ", batch_b, " do not broadcast (a is ", a, ", b is ", b,
             ")");
  std::vector<int64_t> dims = batch.dims();
  dims.push_back(m);
  dims.push_back(n);
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

template <typename T>
void matmul_typed(KernelContext& ctx) {
  Tensor& c = ctx.output(0);
  const Tensor &a = ctx.input(0), &b = ctx.input(1);
  const bool ta = ctx.attr<bool>("transpose_a"), tb = ctx.attr<bool>("transpose_b");
  // [B, T, K] times a [K, N] matrix: one product of B T rows, not B products of T rows each
  // (where BLAS's 32-bit rows reach).
  const int64_t rows = rows_of_matrix(a.shape());
  if (product_folds_rows(a.shape(), b.shape(), ta) && rows < (int64_t{1} << 31)) {
    const Shape flat{rows, c.shape()[-1]};
    blocked_product<T>(ctx, a.reshaped(Shape{rows, a.shape()[-1]}), b, false, tb, flat,
                       c.data<T>());
    return;
  }
  blocked_product<T>(ctx, a, b, ta, tb, c.shape(), c.data<T>());
}

void matmul_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { matmul_typed<decltype(tag)>(ctx); });
}

// C = op(A) op(B). With dC the output gradient:
//   C = A B:      dA = dC B^T,   dB = A^T dC
//   C = A^T B:    dA = B dC^T,   dB = A dC
//   C = A B^T:    dA = dC B,     dB = dC^T A
//   C = A^T B^T:  dA = B^T dC^T, dB = dC^T A^T
// then summed over batch dims that were broadcast.
GradList matmul_grads(const Value& a, const Value& b, const Value& dc, bool ta, bool tb) {
  Value da, db;
  if (product_folds_rows(a.shape(), b.shape(), ta)) {
    // A [..., M, K] times a matrix: B's gradient is one product over all of A's rows (flat
    // as [rows, K], dC as [rows, N]), not one per batch entry summed after.
    const Value rows_a = flatten(a, 0, -2), rows_dc = flatten(dc, 0, -2);
    return {matmul(dc, b, false, !tb),
            tb ? matmul(rows_dc, rows_a, true, false) : matmul(rows_a, rows_dc, true, false)};
  }
  if (!ta && !tb) {
    da = matmul(dc, b, false, true);
    db = matmul(a, dc, true, false);
  } else if (ta && !tb) {
    da = matmul(b, dc, false, true);
    db = matmul(a, dc, false, false);
  } else if (!ta && tb) {
    da = matmul(dc, b, false, false);
    db = matmul(dc, a, true, false);
  } else {
    da = matmul(b, dc, true, true);
    db = matmul(dc, a, true, true);
  }
  auto fit = [](const Value& g, const Value& like) {
    return g.shape() == like.shape() && like.shape().is_known() ? g : sum_to(g, like);
  };
  return {fit(da, a), fit(db, b)};
}

KILN_OP(matmul)
    .precision(Precision::low)
    .input("a")
    .input("b")
    .attr("transpose_a", false)
    .attr("transpose_b", false)
    .infer(infer_matmul)
    .grad([](GradContext& c) -> GradList {
      return matmul_grads(c.input(0), c.input(1), c.grad_output(), c.attr<bool>("transpose_a"),
                          c.attr<bool>("transpose_b"));
    })
    .kernel(DeviceKind::cpu, matmul_cpu, {f32, f64});

// ---- matmul_bias: y = act(op(A) op(B) + bias) for matrices, act none or relu; bias [N] added
// to every row, or an addend [M, N] (a residual, the input projection of a recurrent step).
// Made by the matmul_epilogue pass from matmul + add (+ relu): cuBLASLt adds the bias, or starts
// from the addend, as it writes C; on the CPU each block of C starts as its rows of the addend
// (the gemm adds the product to them), or gets the bias and the ReLU right after its gemm wrote
// it, in cache.
std::vector<TensorType> infer_matmul_bias(const InferContext& ctx) {
  std::vector<TensorType> out = infer_matmul(ctx);
  ctx.expect_same_dtype(0, 2);
  const Shape& y = out[0].shape;
  if (y.rank() != 2) ctx.fail("takes matrices, got a product of shape ", y);
  const Shape& bias = ctx.shape(2);
  // A dim matches when it is equal or either side is unknown.
  auto matches = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
  const bool row = bias.rank() == 1 && matches(bias[0], y[1]);
  const bool addend = bias.rank() == 2 && matches(bias[0], y[0]) && matches(bias[1], y[1]);
  if (!row && !addend)
    ctx.fail("bias must be [", y[1], "] or [", y[0], ", ", y[1], "], got ", bias);
  const std::string& act = ctx.attr<std::string>("activation");
  if (act != "none" && act != "relu") ctx.fail("activation must be none or relu, got '", act, "'");
  return out;
}

// relu's rule (ops/math/elementwise.h): NaN, for which every comparison is false, stays NaN.
template <typename T>
T relu_value(T v) {
  return v < T(0) ? T(0) : v;
}

// y[j] += bias[j], then relu.
template <typename T>
void bias_row(T* __restrict y, const T* __restrict bias, int64_t n, bool relu) {
  if (relu) {
    for (int64_t j = 0; j < n; ++j) y[j] = relu_value(y[j] + bias[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] += bias[j];
  }
}

// y = A B + addend: each block of C starts as its rows of the addend and the gemm adds the
// product to them (beta 1), then the ReLU (if any) runs over the block.
template <typename T>
void matmul_addend(KernelContext& ctx, bool relu) {
  Tensor& y = ctx.output(0);
  const T* addend = ctx.input(2).data<T>();
  const int64_t n = y.shape()[1];
  auto start = [=](int64_t, int64_t r0, int64_t rows, int64_t c0, int64_t cols, T* block,
                   int64_t ld) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(addend + (r0 + r) * n + c0, cols, block + r * ld);
  };
  const Tensor &a = ctx.input(0), &b = ctx.input(1);
  const bool ta = ctx.attr<bool>("transpose_a"), tb = ctx.attr<bool>("transpose_b");
  if (!relu)
    return blocked_product<T>(ctx, a, b, ta, tb, y.shape(), y.data<T>(), NoEpilogue{}, start);
  blocked_product<T>(
      ctx, a, b, ta, tb, y.shape(), y.data<T>(),
      [](int64_t, int64_t, int64_t rows, int64_t, int64_t cols, T* block, int64_t ld) {
        for (int64_t r = 0; r < rows; ++r)
          for (T* v = block + r * ld; v < block + r * ld + cols; ++v) *v = relu_value(*v);
      },
      start);
}

template <typename T>
void matmul_bias_typed(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  const bool relu = ctx.attr<std::string>("activation") == "relu";
  if (ctx.input(2).shape().rank() == 2) return matmul_addend<T>(ctx, relu);
  const T* bias = ctx.input(2).data<T>();
  // Without the relu, where OpenBLAS multiplies (f64; f32 where it is the library), each block
  // starts as the bias rows and the gemm adds the product to them: the product's last rounding
  // is the sum's, as the add after it would round (bits as before at one slice of k), and C is
  // neither zeroed by OpenBLAS nor read again after it (transformer step: 0.4 ms of 70). Kiln's
  // own gemm adds each term to C in turn, and oneDNN's was not measured: the epilogue there.
  const bool openblas = !std::is_same_v<T, float> || f32_gemm_openblas();
  if (!relu && openblas) {
    blocked_product<T>(
        ctx, ctx.input(0), ctx.input(1), ctx.attr<bool>("transpose_a"),
        ctx.attr<bool>("transpose_b"), y.shape(), y.data<T>(), NoEpilogue{},
        [=](int64_t, int64_t, int64_t rows, int64_t c0, int64_t cols, T* block, int64_t ld) {
          for (int64_t r = 0; r < rows; ++r) std::copy_n(bias + c0, cols, block + r * ld);
        });
    return;
  }
  blocked_product<T>(
      ctx, ctx.input(0), ctx.input(1), ctx.attr<bool>("transpose_a"), ctx.attr<bool>("transpose_b"),
      y.shape(), y.data<T>(),
      [=](int64_t, int64_t, int64_t rows, int64_t c0, int64_t cols, T* block, int64_t ld) {
        for (int64_t r = 0; r < rows; ++r) bias_row(block + r * ld, bias + c0, cols, relu);
      });
}

KILN_OP(matmul_bias)
    .precision(Precision::low)
    .input("a")
    .input("b")
    .input("bias")
    .attr("transpose_a", false)
    .attr("transpose_b", false)
    .attr("activation", std::string("none"))
    .infer(infer_matmul_bias)
    // y = act(z), z = op(A) op(B) + bias:  dz = dy (relu: where y > 0), then matmul's
    // gradients for A and B, and dbias = dz summed over rows (an addend's: dz itself).
    .grad([](GradContext& c) -> GradList {
      Value dz = c.grad_output();
      if (c.attr<std::string>("activation") == "relu")
        dz = where(greater(c.output(), c.graph().scalar(0, dz.dtype())), dz,
                   c.graph().scalar(0, dz.dtype()));
      GradList grads = matmul_grads(c.input(0), c.input(1), dz, c.attr<bool>("transpose_a"),
                                    c.attr<bool>("transpose_b"));
      grads.push_back(c.input(2).shape().rank() == 2 ? dz : sum(dz, {0}));
      return grads;
    })
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              dispatch_float(ctx.input(0).dtype(),
                             [&](auto tag) { matmul_bias_typed<decltype(tag)>(ctx); });
            },
            {f32, f64});

}  // namespace
}  // namespace ops

Value matmul(const Value& a, const Value& b, bool transpose_a, bool transpose_b) {
  Graph& g = common_graph("matmul", {&a, &b});
  const bool vector_a = a.shape().rank() == 1, vector_b = b.shape().rank() == 1;
  if (!vector_a && !vector_b)
    return g.add("matmul", {a, b}, {{"transpose_a", transpose_a}, {"transpose_b", transpose_b}});
  // NumPy's rule for vectors: a [K] acts as [1, K], b [K] as [K, 1], and the added dim is
  // removed from the result. Built from reshapes, so gradients come for free.
  Value a2 = vector_a ? reshape(a, {1, -1}) : a;
  Value b2 = vector_b ? reshape(b, {-1, 1}) : b;
  Value c =
      g.add("matmul", {a2, b2},
            {{"transpose_a", !vector_a && transpose_a}, {"transpose_b", !vector_b && transpose_b}});
  std::vector<int64_t> dims = c.shape().dims();
  if (vector_b) dims.erase(dims.end() - 1);
  if (vector_a) dims.erase(dims.end() - (vector_b ? 1 : 2));
  int64_t unknown = 0;
  for (int64_t d : dims) unknown += d < 0;
  KILN_CHECK(unknown <= 1, GraphError, "[matmul] ", c.name(), ": a vector operand with ", unknown,
             " unknown batch dims cannot be squeezed back; reshape the operands to matrices");
  return reshape(c, Shape(dims));
}

}  // namespace kiln
