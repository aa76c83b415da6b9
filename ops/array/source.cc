// Ops without inputs: placeholder, constant, fill, iota, random_uniform, random_normal.
#include <cmath>
#include <cstring>

#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/fill.h"
#include "kiln/ops/array/philox.h"
#include "kiln/ops/dtypes.h"

namespace kiln {
namespace ops {
namespace {

// A placeholder's value comes from the feeds; the executor never runs a kernel for it.
KILN_OP(placeholder)
    .output_source(OutputSource::feed)
    .stateful()
    .attr("dtype", AttrType::dtype)
    .attr("shape", AttrType::shape)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& shape = ctx.attr<Shape>("shape");
      for (int64_t d : shape)
        if (d < -1) ctx.fail("shape ", shape, " has a negative dim");
      return {{ctx.attr<DType>("dtype"), shape}};
    });

KILN_OP(constant)
    .output_source(OutputSource::attribute)
    .attr("value", AttrType::tensor)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Tensor& v = ctx.attr<Tensor>("value");
      return {{v.dtype(), v.shape()}};
    })
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              ctx.set_output(0, ctx.attr<Tensor>("value"));  // shared, never written
            })
    // The CUDA executor uploads each constant once per plan and does not call this; other
    // callers get a fresh device copy.
    .kernel(DeviceKind::cuda, [](KernelContext& ctx) {
      ctx.set_output(0, ctx.attr<Tensor>("value").to(ctx.cuda()->device));
    });

}  // namespace

// Output 0 = the "value" attribute everywhere (fill, full_like).
void fill_cpu(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  const double value = ctx.attr<double>("value");
  dispatch_all(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T v = convert<T>(value);
    T* out = y.data<T>();
    ctx.parallel_for(y.numel(), 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = v;
    });
  });
}

namespace {

const Shape& known_shape(const InferContext& ctx) {
  const Shape& shape = ctx.attr<Shape>("shape");
  if (!shape.is_known()) ctx.fail("shape ", shape, " must be fully known (no -1)");
  return shape;
}

KILN_OP(fill)
    .attr("shape", AttrType::shape)
    .attr("value", 0.0)
    .attr("dtype", DType::f32)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      return {{ctx.attr<DType>("dtype"), known_shape(ctx)}};
    })
    .kernel(DeviceKind::cpu, fill_cpu);

KILN_OP(iota)
    .attr("shape", AttrType::shape)
    .attr("axis", int64_t{0})
    .attr("dtype", DType::f32)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& shape = known_shape(ctx);
      if (shape.rank() == 0) ctx.fail("needs a shape of rank >= 1");
      ctx.axis(ctx.attr<int64_t>("axis"), shape.rank());
      if (ctx.attr<DType>("dtype") == DType::boolean) ctx.fail("dtype bool is not supported");
      return {{ctx.attr<DType>("dtype"), shape}};
    })
    .kernel(
        DeviceKind::cpu,
        [](KernelContext& ctx) {
          Tensor& y = ctx.output(0);
          const Shape& s = y.shape();
          int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), s.rank(), ctx.where());
          int64_t inner = 1;
          for (int64_t i = axis + 1; i < s.rank(); ++i) inner *= s[i];
          const int64_t dim = s[axis];
          dispatch_all(y.dtype(), [&](auto tag) {
            using T = decltype(tag);
            T* out = y.data<T>();
            ctx.parallel_for(y.numel(), 1, [&](int64_t b, int64_t e) {
              for (int64_t i = b; i < e; ++i) out[i] = convert<T>((i / inner) % dim);
            });
          });
        },
        cpu_dtypes_of(DTypeClass::numeric));

// Random ops: element i uses Philox block i under key `seed`.
std::vector<TensorType> infer_random(const InferContext& ctx) {
  DType dtype = ctx.attr<DType>("dtype");
  if (!is_floating(dtype)) ctx.fail("dtype ", dtype, " is not a floating dtype");
  return {{dtype, known_shape(ctx)}};
}

template <bool kNormal>
void random_cpu(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  const uint64_t seed = static_cast<uint64_t>(ctx.attr<int64_t>("seed"));
  const double a = ctx.attr<double>(kNormal ? "mean" : "low");
  const double b = ctx.attr<double>(kNormal ? "stddev" : "high");
  dispatch_cpu(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      T* out = y.data<T>();
      ctx.parallel_for(y.numel(), 32, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          std::array<uint32_t, 4> w = philox4x32(static_cast<uint64_t>(i), seed);
          if constexpr (kNormal) {
            // Box-Muller: u1 in (0, 1] so the log is finite.
            double u1 = 1.0 - unit_double(w[0], w[1]);
            double u2 = unit_double(w[2], w[3]);
            out[i] = static_cast<T>(a + b * std::sqrt(-2.0 * std::log(u1)) *
                                            std::cos(6.283185307179586 * u2));
          } else {
            T v = static_cast<T>(a + (b - a) * unit_double(w[0], w[1]));
            out[i] = v < static_cast<T>(b) ? v : static_cast<T>(a);  // rounding could hit b
          }
        }
      });
    }
  });
}

KILN_OP(random_uniform)
    .attr("shape", AttrType::shape)
    .attr("low", 0.0)
    .attr("high", 1.0)
    .attr("seed", int64_t{0})
    .attr("dtype", DType::f32)
    .infer([](const InferContext& ctx) {
      if (!(ctx.attr<double>("low") < ctx.attr<double>("high")))
        ctx.fail("low ", ctx.attr<double>("low"), " must be below high ", ctx.attr<double>("high"));
      return infer_random(ctx);
    })
    .kernel(DeviceKind::cpu, random_cpu<false>, {f32, f64});

KILN_OP(random_normal)
    .attr("shape", AttrType::shape)
    .attr("mean", 0.0)
    .attr("stddev", 1.0)
    .attr("seed", int64_t{0})
    .attr("dtype", DType::f32)
    .infer([](const InferContext& ctx) {
      if (!(ctx.attr<double>("stddev") >= 0))
        ctx.fail("stddev ", ctx.attr<double>("stddev"), " must be >= 0");
      return infer_random(ctx);
    })
    .kernel(DeviceKind::cpu, random_cpu<true>, {f32, f64});

}  // namespace
}  // namespace ops

Value fill(Graph& graph, const Shape& shape, double value, DType dtype) {
  return graph.add("fill", {}, {{"shape", shape}, {"value", value}, {"dtype", dtype}});
}
Value iota(Graph& graph, const Shape& shape, int64_t axis, DType dtype) {
  return graph.add("iota", {}, {{"shape", shape}, {"axis", axis}, {"dtype", dtype}});
}
Value random_uniform(Graph& graph, const Shape& shape, double low, double high, int64_t seed,
                     DType dtype) {
  return graph.add(
      "random_uniform", {},
      {{"shape", shape}, {"low", low}, {"high", high}, {"seed", seed}, {"dtype", dtype}});
}
Value random_counter(Graph& graph) {
  if (const Node* node = graph.find_node("random_counter")) {
    KILN_CHECK(node->op().source() == OutputSource::state && node->outputs()[0].dtype == i64 &&
                   node->outputs()[0].shape.rank() == 0,
               GraphError, "[random] the node 'random_counter' is not an i64 scalar variable");
    return graph.value("random_counter");
  }
  return graph.add("variable", {},
                   {{"dtype", i64},
                    {"shape", Shape{}},
                    {"init", std::string("zeros")},
                    {"init_args", std::vector<double>{}},
                    {"seed", int64_t{0}},
                    {"trainable", false}},
                   {.name = "random_counter", .exact_name = true, .absolute_name = true});
}

Value random_normal(Graph& graph, const Shape& shape, double mean, double stddev, int64_t seed,
                    DType dtype) {
  return graph.add(
      "random_normal", {},
      {{"shape", shape}, {"mean", mean}, {"stddev", stddev}, {"seed", seed}, {"dtype", dtype}});
}

}  // namespace kiln
