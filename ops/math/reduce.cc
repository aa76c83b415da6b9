// Reductions: sum, mean, max, min over any set of axes; argmax and argmin along one axis; the
// running sum cumsum.
// Every reduction is cast as x viewed as [outer, r, inner] with the reduced dims in the middle
// (when they are not adjacent, x is first permuted so that they are).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/permute.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/elementwise.h"

namespace kiln {
namespace ops {
namespace {

// Sorted, distinct, non-negative reduced axes (all of them when `axes` is empty).
std::vector<int64_t> reduced_axes(const InferContext* ctx, const std::vector<int64_t>& axes,
                                  int64_t rank, const std::string& where) {
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int64_t i = 0; i < rank; ++i) out.push_back(i);
    return out;
  }
  for (int64_t a : axes) {
    int64_t axis = ctx ? ctx->axis(a, rank) : normalize_axis(a, rank, where);
    if (std::find(out.begin(), out.end(), axis) != out.end()) {
      if (ctx) ctx->fail("axis ", a, " is listed twice");
      throw GraphError(str(where, ": axis ", a, " is listed twice"));
    }
    out.push_back(axis);
  }
  std::sort(out.begin(), out.end());
  return out;
}

enum class Reduction { sum, mean, max, min };

std::vector<TensorType> infer_reduce(const InferContext& ctx, Reduction kind) {
  ctx.expect_dtype(0,
                   dtypes_of(kind == Reduction::mean ? DTypeClass::floating : DTypeClass::numeric));
  const Shape& x = ctx.shape(0);
  std::vector<int64_t> axes =
      reduced_axes(&ctx, ctx.attr<std::vector<int64_t>>("axes"), x.rank(), "");
  bool keepdims = ctx.attr<bool>("keepdims");
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.rank(); ++i) {
    bool reduced = std::binary_search(axes.begin(), axes.end(), i);
    if (reduced && x[i] == 0 && (kind == Reduction::max || kind == Reduction::min))
      ctx.fail("cannot take the ", kind == Reduction::max ? "max" : "min", " over axis ", i, " of ",
               x, ": it is empty");
    if (!reduced)
      dims.push_back(x[i]);
    else if (keepdims)
      dims.push_back(1);
  }
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

// Accumulation type: integers sum in int64, floats in their own type.
template <typename T>
using Acc = std::conditional_t<std::is_integral_v<T>, int64_t, T>;

template <typename T>
struct Reducer {
  Reduction kind;
  Acc<T> init() const {
    if (kind == Reduction::max) return std::numeric_limits<T>::lowest();
    if (kind == Reduction::min) return std::numeric_limits<T>::max();
    return 0;
  }
  // NaN wins max and min, as in torch.
  Acc<T> combine(Acc<T> acc, Acc<T> v) const {
    if (kind == Reduction::max) return (v != v || v > acc) ? v : acc;
    if (kind == Reduction::min) return (v != v || v < acc) ? v : acc;
    return wrapping_add(acc, v);  // integers wrap, as every integer op does
  }
  T finish(Acc<T> acc, int64_t r) const {
    if (kind == Reduction::mean) return static_cast<T>(acc / static_cast<Acc<T>>(r));
    return static_cast<T>(acc);
  }
};

// Reduces `n` contiguous elements with 8 independent accumulators (vectorizes, and keeps
// float sums more accurate than one running total).
template <typename T>
Acc<T> reduce_contiguous(const T* x, int64_t n, const Reducer<T>& red) {
  Acc<T> acc[8];
  for (auto& a : acc) a = red.init();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] = red.combine(acc[j], x[i + j]);
  for (; i < n; ++i) acc[0] = red.combine(acc[0], x[i]);
  for (int j = 1; j < 8; ++j) acc[0] = red.combine(acc[0], acc[j]);
  return acc[0];
}

// reduce_3d's column sums go in blocks of this many rows where a slab has at least
// kSplitElements elements.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kSplitElements = 1 << 16;

template <typename T>
void reduce_3d(const KernelContext& ctx, const T* x, T* y, int64_t outer, int64_t r, int64_t inner,
               const Reducer<T>& red) {
  if (inner == 1 && outer == 1) {
    // One long row: fixed-size blocks reduced in parallel, then combined in order, so the
    // result does not depend on the number of threads.
    constexpr int64_t kBlock = 16384;
    int64_t blocks = std::max<int64_t>(1, (r + kBlock - 1) / kBlock);
    std::vector<Acc<T>> partial(blocks);
    ctx.pool().parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        partial[b] = reduce_contiguous(x + b * kBlock, std::min(kBlock, r - b * kBlock), red);
    });
    Acc<T> acc = red.init();
    for (Acc<T> p : partial) acc = red.combine(acc, p);
    y[0] = red.finish(acc, r);
  } else if (inner == 1) {
    ctx.parallel_for(outer, r, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) y[o] = red.finish(reduce_contiguous(x + o * r, r, red), r);
    });
  } else if (outer == 1 && r >= 2 * kRowBlock && r * inner >= kSplitElements) {
    // One [r, inner] slab (column sums: a bias's or a norm parameter's gradient): blocks of
    // kRowBlock rows summed in parallel into partial rows, then the partials in order, so the
    // result does not depend on the number of threads (one thread over all the rows left the
    // other cores idle: 0.39 ms for 2048 x 1024 on Zen 3).
    const int64_t blocks = (r + kRowBlock - 1) / kRowBlock;
    std::vector<Acc<T>> partial(static_cast<size_t>(blocks * inner));
    ctx.pool().parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        Acc<T>* acc = partial.data() + b * inner;
        std::fill_n(acc, inner, red.init());
        for (int64_t j = b * kRowBlock; j < std::min(r, (b + 1) * kRowBlock); ++j)
          for (int64_t i = 0; i < inner; ++i) acc[i] = red.combine(acc[i], x[j * inner + i]);
      }
    });
    // The partials of block b join block 0's row, in the order of b.
    ctx.parallel_for(inner, blocks, [&](int64_t i0, int64_t i1) {
      Acc<T>* acc = partial.data();
      for (int64_t b = 1; b < blocks; ++b)
        for (int64_t i = i0; i < i1; ++i) acc[i] = red.combine(acc[i], partial[b * inner + i]);
      for (int64_t i = i0; i < i1; ++i) y[i] = red.finish(acc[i], r);
    });
  } else {
    // Rows of `inner` elements accumulate into a buffer (vectorizes over inner).
    ctx.parallel_for(outer, r * inner, [&](int64_t o0, int64_t o1) {
      std::vector<Acc<T>> acc(inner);
      for (int64_t o = o0; o < o1; ++o) {
        std::fill(acc.begin(), acc.end(), red.init());
        const T* base = x + o * r * inner;
        for (int64_t j = 0; j < r; ++j)
          for (int64_t i = 0; i < inner; ++i) acc[i] = red.combine(acc[i], base[j * inner + i]);
        for (int64_t i = 0; i < inner; ++i) y[o * inner + i] = red.finish(acc[i], r);
      }
    });
  }
}

// y = reduce(x) over `axes` (sorted, distinct): y holds x's kept dims in order.
template <typename T>
void reduce_axes(const KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& axes, T* y,
                 const Reducer<T>& red) {
  const Shape& shape = x.shape();
  // Collapse x into runs of reduced and kept dims (size-1 dims join either).
  std::vector<std::pair<bool, int64_t>> runs;  // (reduced, size)
  for (int64_t i = 0; i < shape.rank(); ++i) {
    if (shape[i] == 1) continue;
    const bool reduced = std::binary_search(axes.begin(), axes.end(), i);
    if (!runs.empty() && runs.back().first == reduced)
      runs.back().second *= shape[i];
    else
      runs.emplace_back(reduced, shape[i]);
  }
  if (runs.size() == 3 && runs[0].first && runs[2].first) {
    // [a, k, i] reduced over a and i (batch norm's parameter gradients, sum_to of [N, C, H, W]
    // to [C, 1, 1]): each output sums `a` contiguous rows of `i`, in a fixed order.
    const int64_t a = runs[0].second, k = runs[1].second, inner = runs[2].second;
    ctx.parallel_for(k, a * inner, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        Acc<T> acc = red.init();
        for (int64_t o = 0; o < a; ++o)
          acc = red.combine(acc, reduce_contiguous(x.data<T>() + (o * k + c) * inner, inner, red));
        y[c] = red.finish(acc, a * inner);
      }
    });
    return;
  }
  int reduced_runs = 0, at = -1;  // at: the (last) reduced run
  for (int i = 0; i < static_cast<int>(runs.size()); ++i)
    if (runs[i].first) ++reduced_runs, at = i;
  int64_t outer = 1, r = 1, inner = 1;
  if (reduced_runs <= 1) {
    // x is [outer, r, inner] as it lies (r = 1 when nothing is reduced).
    for (int i = 0; i < static_cast<int>(runs.size()); ++i)
      (at < 0 || i < at ? outer : i > at ? inner : r) *= runs[i].second;
    reduce_3d(ctx, x.data<T>(), y, outer, r, inner, red);
    return;
  }
  // Move the reduced axes last: [kept..., reduced...].
  std::vector<int64_t> perm, dims;
  for (int64_t i = 0; i < shape.rank(); ++i)
    if (!std::binary_search(axes.begin(), axes.end(), i)) perm.push_back(i), outer *= shape[i];
  for (int64_t axis : axes) perm.push_back(axis), r *= shape[axis];
  for (int64_t p : perm) dims.push_back(shape[p]);
  Tensor source = Tensor::empty(x.dtype(), Shape(dims));
  permute_copy(ctx, x, perm, source);
  reduce_3d(ctx, source.data<T>(), y, outer, r, 1, red);
}

// y = reduce(x) over `axes` (sorted, distinct), for every CPU dtype but bool.
void reduce_into(const KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& axes,
                 Tensor& y, Reduction kind) {
  if (y.numel() == 0) return;
  dispatch_cpu(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>)
      reduce_axes(ctx, x, axes, y.data<T>(), Reducer<T>{kind});
  });
}

template <Reduction kKind>
void reduce_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  reduce_into(
      ctx, x,
      reduced_axes(nullptr, ctx.attr<std::vector<int64_t>>("axes"), x.shape().rank(), ctx.where()),
      ctx.output(0), kKind);
}

// Gradients. dy has y's shape; with keepdims off it first gets the reduced dims back (size 1)
// and is then broadcast to x's shape.
Value expand_like_input(GradContext& c, const Value& dy) {
  const Value x = c.input(0);
  if (c.attr<bool>("keepdims")) return broadcast_like(dy, x);
  std::vector<int64_t> axes = reduced_axes(nullptr, c.attr<std::vector<int64_t>>("axes"),
                                           x.shape().rank(), "[grad] " + c.node().name());
  return broadcast_like(axes.empty() ? dy : expand_dims(dy, axes), x);
}
// y = sum x        dx = dy (broadcast)
GradList grad_sum(GradContext& c) {
  return {expand_like_input(c, c.grad_output())};
}
// y = mean x       dx = dy / n, n = elements per output = numel(x) / numel(y)
GradList grad_mean(GradContext& c) {
  Value x = c.input(0), y = c.output();
  Value n = numel(x, x.dtype()) / numel(y, x.dtype());
  return {expand_like_input(c, c.grad_output() / n)};
}
// y = max x        dx = dy / k at the k elements equal to the maximum, 0 elsewhere (as
//                  torch.amax); min alike.
GradList grad_extreme(GradContext& c) {
  Value x = c.input(0);
  Value mask = cast(equal(x, expand_like_input(c, c.output())), x.dtype());
  Value count = c.graph().add(
      "sum", {mask},
      {{"axes", c.attr<std::vector<int64_t>>("axes")}, {"keepdims", c.attr<bool>("keepdims")}});
  return {mask * expand_like_input(c, c.grad_output() / count)};
}
GradFn grad_max = grad_extreme, grad_min = grad_extreme;

// Autocast policy: sums and means accumulate in f32; max and min are exact in any dtype.
constexpr Precision precision_sum = Precision::keep_f32;
constexpr Precision precision_mean = Precision::keep_f32;
constexpr Precision precision_max = Precision::follow_inputs;
constexpr Precision precision_min = Precision::follow_inputs;

#define KILN_REGISTER_REDUCTION(name, cls)                                           \
  KILN_OP(name)                                                                      \
      .input("x")                                                                    \
      .precision(precision_##name)                                                   \
      .grad(grad_##name)                                                             \
      .attr("axes", std::vector<int64_t>{})                                          \
      .attr("keepdims", false)                                                       \
      .infer([](const InferContext& c) { return infer_reduce(c, Reduction::name); }) \
      .kernel(DeviceKind::cpu, reduce_cpu<Reduction::name>, cpu_dtypes_of(DTypeClass::cls));
KILN_REGISTER_REDUCTION(sum, numeric)
KILN_REGISTER_REDUCTION(mean, floating)
KILN_REGISTER_REDUCTION(max, numeric)
KILN_REGISTER_REDUCTION(min, numeric)
#undef KILN_REGISTER_REDUCTION

// argmax / argmin along one axis; ties go to the first index, NaN counts as the extreme.
std::vector<TensorType> infer_arg(const InferContext& ctx) {
  ctx.expect_dtype(0, dtypes_of(DTypeClass::numeric));
  const Shape& x = ctx.shape(0);
  if (x.rank() == 0) ctx.fail("needs an input of rank >= 1, got a scalar");
  int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), x.rank());
  if (x[axis] == 0) ctx.fail("axis ", axis, " of ", x, " is empty");
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.rank(); ++i) {
    if (i != axis)
      dims.push_back(x[i]);
    else if (ctx.attr<bool>("keepdims"))
      dims.push_back(1);
  }
  return {{DType::i64, Shape(std::move(dims))}};
}

template <bool kMax>
void arg_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  int64_t outer = 1, inner = 1, r = x.shape()[axis];
  for (int64_t i = 0; i < axis; ++i) outer *= x.shape()[i];
  for (int64_t i = axis + 1; i < x.rank(); ++i) inner *= x.shape()[i];
  int64_t* out = y.data<int64_t>();
  dispatch_cpu(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    ctx.parallel_for(outer * inner, r, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const T* row = in + (p / inner) * r * inner + p % inner;
        int64_t best = 0;
        T best_value = row[0];
        for (int64_t j = 1; j < r && best_value == best_value; ++j) {
          T v = row[j * inner];
          if (v != v || (kMax ? v > best_value : v < best_value)) best = j, best_value = v;
        }
        out[p] = best;
      }
    });
  });
}

KILN_OP(argmax)
    .input("x")
    .attr("axis", AttrType::integer)
    .attr("keepdims", false)
    .no_gradient()
    .infer(infer_arg)
    .kernel(DeviceKind::cpu, arg_cpu<true>, cpu_dtypes_of(DTypeClass::numeric));
KILN_OP(argmin)
    .input("x")
    .attr("axis", AttrType::integer)
    .attr("keepdims", false)
    .no_gradient()
    .infer(infer_arg)
    .kernel(DeviceKind::cpu, arg_cpu<false>, cpu_dtypes_of(DTypeClass::numeric));

// ---- cumsum: running sums along one axis, x viewed as [outer, n, inner]. Floats add in double
// (PyTorch's CPU accumulator), integers in unsigned 64 bits (wrapping, as the other integer
// arithmetic here). Exclusive: each output leaves its own element out; reverse: sums from the end.
std::vector<TensorType> infer_cumsum(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16, i32, i64});
  if (ctx.shape(0).rank() == 0) ctx.fail("needs an input of rank >= 1, got a scalar");
  ctx.axis(ctx.attr<int64_t>("axis"), ctx.shape(0).rank());
  return {ctx.input(0)};
}

template <typename T>
void cumsum_lines(const T* in, T* out, int64_t n, int64_t inner, int64_t p0, int64_t p1,
                  bool exclusive, bool reverse) {
  using Acc = std::conditional_t<std::is_integral_v<T>, uint64_t, double>;
  std::vector<Acc> acc;
  // Lines p = o inner + k; the lines of one `o` run side by side, so each step of the scan reads
  // a contiguous stretch of inner.
  for (int64_t p = p0; p < p1;) {
    const int64_t o = p / inner, k0 = p % inner, k1 = std::min(inner, k0 + (p1 - p));
    acc.assign(static_cast<size_t>(k1 - k0), Acc(0));
    for (int64_t step = 0; step < n; ++step) {
      const int64_t j = reverse ? n - 1 - step : step;
      const T* src = in + (o * n + j) * inner;
      T* dst = out + (o * n + j) * inner;
      for (int64_t k = k0; k < k1; ++k) {
        Acc& a = acc[static_cast<size_t>(k - k0)];
        const Acc v = static_cast<Acc>(src[k]);
        if (exclusive) {
          dst[k] = static_cast<T>(a);
          a += v;
        } else {
          a += v;
          dst[k] = static_cast<T>(a);
        }
      }
    }
    p += k1 - k0;
  }
}

void cumsum_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (x.numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  const bool exclusive = ctx.attr<bool>("exclusive"), reverse = ctx.attr<bool>("reverse");
  int64_t outer = 1, inner = 1;
  const int64_t n = x.shape()[axis];
  for (int64_t i = 0; i < axis; ++i) outer *= x.shape()[i];
  for (int64_t i = axis + 1; i < x.rank(); ++i) inner *= x.shape()[i];
  dispatch_cpu(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> ||
                  std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>) {
      const T* in = x.data<T>();
      T* out = y.data<T>();
      ctx.parallel_for(outer * inner, n, [&](int64_t p0, int64_t p1) {
        cumsum_lines(in, out, n, inner, p0, p1, exclusive, reverse);
      });
    }
  });
}

KILN_OP(cumsum)
    .input("x")
    .attr("axis", AttrType::integer)
    .attr("exclusive", false)
    .attr("reverse", false)
    .infer(infer_cumsum)
    .kernel(DeviceKind::cpu, cumsum_cpu, {f32, f64, i32, i64})
    // y_j = sum over i <= j of x_i, so dx_i = sum over j >= i of dy_j: the scan run the other
    // way (exclusive stays exclusive).
    .grad([](GradContext& c) -> GradList {
      return {cumsum(c.grad_output(), c.attr<int64_t>("axis"), c.attr<bool>("exclusive"),
                     !c.attr<bool>("reverse"))};
    });

}  // namespace

void sum_into(const KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& axes,
              Tensor& y) {
  reduce_into(ctx, x, axes, y, Reduction::sum);
}

}  // namespace ops

namespace {
Value reduce(const char* op, const Value& x, std::vector<int64_t> axes, bool keepdims) {
  return common_graph(op, {&x}).add(op, {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}
}  // namespace

Value sum(const Value& x, Axes axes, bool keepdims) {
  return reduce("sum", x, std::move(axes), keepdims);
}
Value mean(const Value& x, Axes axes, bool keepdims) {
  return reduce("mean", x, std::move(axes), keepdims);
}
Value max(const Value& x, Axes axes, bool keepdims) {
  return reduce("max", x, std::move(axes), keepdims);
}
Value min(const Value& x, Axes axes, bool keepdims) {
  return reduce("min", x, std::move(axes), keepdims);
}
Value argmax(const Value& x, int64_t axis, bool keepdims) {
  return common_graph("argmax", {&x}).add("argmax", {x}, {{"axis", axis}, {"keepdims", keepdims}});
}
Value argmin(const Value& x, int64_t axis, bool keepdims) {
  return common_graph("argmin", {&x}).add("argmin", {x}, {{"axis", axis}, {"keepdims", keepdims}});
}

Value cumsum(const Value& x, int64_t axis, bool exclusive, bool reverse) {
  return common_graph("cumsum", {&x})
      .add("cumsum", {x}, {{"axis", axis}, {"exclusive", exclusive}, {"reverse", reverse}});
}

}  // namespace kiln
