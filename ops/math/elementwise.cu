// CUDA kernels of the elementwise ops: the rows of KILN_UNARY_OPS, KILN_BINARY_OPS and
// KILN_COMPARE_OPS (the same functors as the CPU loops), where, cast, add_n, broadcasts,
// fills and the random sources. 16-bit floats compute in f32.
#include "kiln/ops/array/philox.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/elementwise.h"

namespace kiln::ops::cuda_elementwise {

using namespace kiln::ops::cuda;

template <typename F, typename T>
void unary_typed(KernelContext& ctx) {
  map1<T, T>(ctx, ctx.input(0), ctx.output(0),
             [] __device__(T x) { return static_cast<T>(F{}(static_cast<Compute<T>>(x))); });
}

template <typename F, typename T>
void binary_typed(KernelContext& ctx) {
  if constexpr (!std::is_same_v<T, bool>)
    map2<T, T, T>(ctx, ctx.input(0), ctx.input(1), ctx.output(0), [] __device__(T a, T b) {
      return static_cast<T>(F{}(static_cast<Compute<T>>(a), static_cast<Compute<T>>(b)));
    });
}

template <typename F, typename T>
void compare_typed(KernelContext& ctx) {
  map2<bool, T, T>(ctx, ctx.input(0), ctx.input(1), ctx.output(0), [] __device__(T a, T b) {
    return F{}(static_cast<Compute<T>>(a), static_cast<Compute<T>>(b));
  });
}

// Each instantiation is limited to the dtypes of the op's class: exp of an integer, say, is
// never compiled.
#define KILN_CUDA_UNARY(name, cls, expr)                                          \
  void name##_cuda(KernelContext& ctx) {                                          \
    dispatch_all(ctx.input(0).dtype(), [&](auto tag) {                            \
      using T = decltype(tag);                                                    \
      if constexpr (in_class<T>(DTypeClass::cls)) unary_typed<name##_fn, T>(ctx); \
    });                                                                           \
  }                                                                               \
  KILN_CUDA_KERNEL(name, name##_cuda, cuda_dtypes(DTypeClass::cls));
KILN_UNARY_OPS(KILN_CUDA_UNARY)
#undef KILN_CUDA_UNARY

#define KILN_CUDA_BINARY(name, cls, expr)                                          \
  void name##_cuda(KernelContext& ctx) {                                           \
    dispatch_all(ctx.input(0).dtype(), [&](auto tag) {                             \
      using T = decltype(tag);                                                     \
      if constexpr (in_class<T>(DTypeClass::cls)) binary_typed<name##_fn, T>(ctx); \
    });                                                                            \
  }                                                                                \
  KILN_CUDA_KERNEL(name, name##_cuda, cuda_dtypes(DTypeClass::cls));
KILN_BINARY_OPS(KILN_CUDA_BINARY)
#undef KILN_CUDA_BINARY

#define KILN_CUDA_COMPARE(name, expr)                                              \
  void name##_cuda(KernelContext& ctx) {                                           \
    dispatch_all(ctx.input(0).dtype(),                                             \
                 [&](auto tag) { compare_typed<name##_fn, decltype(tag)>(ctx); }); \
  }                                                                                \
  KILN_CUDA_KERNEL(name, name##_cuda, cuda_dtypes(DTypeClass::any));
KILN_COMPARE_OPS(KILN_CUDA_COMPARE)
#undef KILN_CUDA_COMPARE

template <typename T>
void where_typed(KernelContext& ctx) {
  map3<T, bool, T, T>(ctx, ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0),
                      [] __device__(bool c, T a, T b) { return c ? a : b; });
}
void where_cuda(KernelContext& ctx) {
  dispatch_all(ctx.input(1).dtype(), [&](auto tag) { where_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(where, where_cuda);

template <typename From, typename To>
void cast_typed(KernelContext& ctx) {
  map1<To, From>(ctx, ctx.input(0), ctx.output(0),
                 [] __device__(From v) { return convert<To>(v); });
}
void cast_cuda(KernelContext& ctx) {
  dispatch_all(ctx.input(0).dtype(), [&](auto from) {
    dispatch_all(ctx.output(0).dtype(),
                 [&](auto to) { cast_typed<decltype(from), decltype(to)>(ctx); });
  });
}
KILN_CUDA_KERNEL(cast, cast_cuda);

// broadcast_to / broadcast_like: a copy through the broadcast index (a view when nothing is
// stretched).
template <typename T>
void broadcast_typed(KernelContext& ctx) {
  map1<T, T>(ctx, ctx.input(0), ctx.output(0), [] __device__(T v) { return v; });
}
void broadcast_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Shape& target = ctx.output_type(0).shape;
  if (ctx.num_inputs() == 2 && x.numel() == target.numel()) {
    ctx.set_output(0, x.reshaped(target));
    return;
  }
  // Words of the element size: the copy does not care what the bits mean.
  switch (dtype_size(x.dtype())) {
    case 1:
      return broadcast_typed<uint8_t>(ctx);
    case 2:
      return broadcast_typed<uint16_t>(ctx);
    case 4:
      return broadcast_typed<uint32_t>(ctx);
    default:
      return broadcast_typed<uint64_t>(ctx);
  }
}
KILN_CUDA_KERNEL(broadcast_to, broadcast_cuda);
KILN_CUDA_KERNEL(broadcast_like, broadcast_cuda);

// add_n: every input has the output's shape; one pass, up to kMaxAddN inputs per launch.
constexpr int kMaxAddN = 8;
template <typename T>
struct Operands {
  const T* p[kMaxAddN];
};
template <typename T>
void add_n_typed(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  T* out = static_cast<T*>(y.raw_data());
  for (int first = 0; first < ctx.num_inputs(); first += kMaxAddN) {
    Operands<T> in{};
    const int count = std::min(kMaxAddN, ctx.num_inputs() - first);
    for (int k = 0; k < count; ++k) in.p[k] = ctx.input(first + k).template data<T>();
    const bool accumulate = first > 0;
    for_each(ctx, y.numel(), [=] __device__(int64_t i) {
      Compute<T> sum = accumulate ? static_cast<Compute<T>>(out[i]) : Compute<T>(0);
      for (int k = 0; k < count; ++k) sum = wrapping_add(sum, static_cast<Compute<T>>(in.p[k][i]));
      out[i] = static_cast<T>(sum);
    });
  }
}
void add_n_cuda(KernelContext& ctx) {
  dispatch_all(ctx.output(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) add_n_typed<T>(ctx);
  });
}
KILN_CUDA_KERNEL(add_n, add_n_cuda, cuda_dtypes(DTypeClass::numeric));

// fill, full_like, numel, group: constant outputs.
template <typename T>
void fill_value(KernelContext& ctx, Tensor& y, double value) {
  const T v = convert<T>(value);
  T* out = static_cast<T*>(y.raw_data());
  for_each(ctx, y.numel(), [=] __device__(int64_t i) { out[i] = v; });
}
void fill_with(KernelContext& ctx, double value) {
  Tensor& y = ctx.output(0);
  dispatch_all(y.dtype(), [&](auto tag) { fill_value<decltype(tag)>(ctx, y, value); });
}
void fill_cuda(KernelContext& ctx) {
  fill_with(ctx, ctx.attr<double>("value"));
}
KILN_CUDA_KERNEL(fill, fill_cuda);
KILN_CUDA_KERNEL(full_like, fill_cuda);
void numel_cuda(KernelContext& ctx) {
  fill_with(ctx, static_cast<double>(ctx.input(0).numel()));
}
KILN_CUDA_KERNEL(numel, numel_cuda);
void group_cuda(KernelContext& ctx) {
  fill_with(ctx, 1.0);
}
KILN_CUDA_KERNEL(group, group_cuda);

template <typename T>
void iota_typed(KernelContext& ctx, int64_t inner, int64_t dim) {
  T* out = static_cast<T*>(ctx.output(0).raw_data());
  for_each(ctx, ctx.output(0).numel(),
           [=] __device__(int64_t i) { out[i] = convert<T>((i / inner) % dim); });
}
void iota_cuda(KernelContext& ctx) {
  const Shape& s = ctx.output_type(0).shape;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), s.rank(), ctx.where());
  int64_t inner = 1;
  for (int64_t i = axis + 1; i < s.rank(); ++i) inner *= s[i];
  dispatch_all(ctx.output(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) iota_typed<T>(ctx, inner, s[axis]);
  });
}
KILN_CUDA_KERNEL(iota, iota_cuda, cuda_dtypes(DTypeClass::numeric));

// Random sources: element i from Philox block i under `seed`, exactly as on the CPU (the
// math runs in double), so CPU and GPU draw the same numbers.
template <typename T, bool kNormal>
void random_typed(KernelContext& ctx, uint64_t seed, double a, double b) {
  T* out = static_cast<T*>(ctx.output(0).raw_data());
  for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t i) {
    const auto w = philox4x32(static_cast<uint64_t>(i), seed);
    if (kNormal) {
      const double u1 = 1.0 - unit_double(w[0], w[1]);
      const double u2 = unit_double(w[2], w[3]);
      out[i] = static_cast<T>(a + b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    } else {
      const T v = static_cast<T>(a + (b - a) * unit_double(w[0], w[1]));
      out[i] = static_cast<double>(v) < b ? v : static_cast<T>(a);
    }
  });
}
template <bool kNormal>
void random_cuda(KernelContext& ctx) {
  const uint64_t seed = static_cast<uint64_t>(ctx.attr<int64_t>("seed"));
  const double a = ctx.attr<double>(kNormal ? "mean" : "low");
  const double b = ctx.attr<double>(kNormal ? "stddev" : "high");
  dispatch_cuda_float(ctx.output(0).dtype(),
                      [&](auto tag) { random_typed<decltype(tag), kNormal>(ctx, seed, a, b); });
}
KILN_CUDA_KERNEL(random_uniform, random_cuda<false>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(random_normal, random_cuda<true>, cuda_dtypes(DTypeClass::floating));

// assign / assign_add: write (or add) the value, broadcast, into the variable's storage.
template <typename T, bool kAdd>
void assign_typed(KernelContext& ctx) {
  const Tensor& var = ctx.input(0);
  Tensor target = var;
  if constexpr (kAdd) {
    map2<T, T, T>(ctx, var, ctx.input(1), target, [] __device__(T a, T b) {
      return static_cast<T>(wrapping_add(static_cast<Compute<T>>(a), static_cast<Compute<T>>(b)));
    });
  } else {
    map1<T, T>(ctx, ctx.input(1), target, [] __device__(T v) { return v; });
  }
}
template <bool kAdd>
void assign_cuda(KernelContext& ctx) {
  if (!kAdd && same_elements(ctx.input(0), ctx.input(1))) {  // a cache written in place
    ctx.set_output(0, ctx.input(0));
    return;
  }
  dispatch_all(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!(kAdd && std::is_same_v<T, bool>)) assign_typed<T, kAdd>(ctx);
  });
  ctx.set_output(0, ctx.input(0));
}
KILN_CUDA_KERNEL(assign, assign_cuda<false>);
KILN_CUDA_KERNEL(assign_add, assign_cuda<true>, cuda_dtypes(DTypeClass::numeric));

}  // namespace kiln::ops::cuda_elementwise
