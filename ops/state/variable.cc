// variable, assign, assign_add. A variable's value lives in the session's VariableStore; the
// variable op outputs it (shared storage, no copy), and ops declared with mutates_input(0)
// write into that storage. The plan runs such writes after every other reader of the
// variable in the same run.
#include <cmath>
#include <cstring>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array/philox.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/elementwise_cpu.h"
#include "kiln/ops/state.h"

namespace kiln {
namespace ops {
namespace {

// fan_in, fan_out as PyTorch computes them: [in, out] for a matrix; for higher ranks
// (convolution kernels [out, in, k...]) the receptive field multiplies both.
std::pair<double, double> fans(const Shape& shape) {
  if (shape.rank() == 0) return {1, 1};
  if (shape.rank() == 1) return {double(shape[0]), double(shape[0])};
  if (shape.rank() == 2) return {double(shape[0]), double(shape[1])};
  double field = 1;
  for (int64_t d = 2; d < shape.rank(); ++d) field *= shape[d];
  return {shape[1] * field, shape[0] * field};
}

// A standard normal sample from Philox block `counter` (Box-Muller).
double normal_sample(uint64_t counter, uint64_t seed) {
  auto w = philox4x32(counter, seed);
  double u1 = 1.0 - unit_double(w[0], w[1]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * unit_double(w[2], w[3]));
}

// The first value of a variable, as its attributes describe.
Tensor initial_value(const Node& node) {
  const DType dtype = node.attr<DType>("dtype");
  const Shape& shape = node.attr<Shape>("shape");
  const std::string& kind = node.attr<std::string>("init");
  const auto& args = node.attr<std::vector<double>>("init_args");
  const uint64_t seed = static_cast<uint64_t>(node.attr<int64_t>("seed"));
  const int64_t n = shape.numel();
  std::vector<double> values(static_cast<size_t>(n), 0.0);
  auto [fan_in, fan_out] = fans(shape);
  auto uniform = [&](double low, double high) {
    for (int64_t i = 0; i < n; ++i) {
      auto w = philox4x32(static_cast<uint64_t>(i), seed);
      values[i] = low + (high - low) * unit_double(w[0], w[1]);
    }
  };
  auto normal = [&](double mean, double stddev, bool truncated) {
    for (int64_t i = 0; i < n; ++i) {
      // Truncated: redraw from later counters (i + k n) until within two deviations.
      double z = normal_sample(static_cast<uint64_t>(i), seed);
      for (uint64_t k = 1; truncated && std::abs(z) > 2.0; ++k)
        z = normal_sample(static_cast<uint64_t>(i) + k * static_cast<uint64_t>(n), seed);
      values[i] = mean + stddev * z;
    }
  };
  if (kind == "zeros") {
  } else if (kind == "constant") {
    std::fill(values.begin(), values.end(), args[0]);
  } else if (kind == "uniform") {
    uniform(args[0], args[1]);
  } else if (kind == "normal" || kind == "truncated_normal") {
    normal(args[0], args[1], kind == "truncated_normal");
  } else if (kind == "normal_zero_row") {
    // The row is checked against the first dim when the graph is built or loaded.
    normal(args[0], args[1], false);
    const int64_t row_size = n / shape[0];
    const auto row = static_cast<int64_t>(args[2]);
    std::fill_n(values.begin() + row * row_size, row_size, 0.0);
  } else if (kind == "glorot_uniform") {
    double limit = std::sqrt(6.0 / (fan_in + fan_out));
    uniform(-limit, limit);
  } else if (kind == "glorot_normal") {
    normal(0, std::sqrt(2.0 / (fan_in + fan_out)), false);
  } else if (kind == "he_uniform") {
    double limit = std::sqrt(6.0 / fan_in);
    uniform(-limit, limit);
  } else if (kind == "he_normal") {
    normal(0, std::sqrt(2.0 / fan_in), false);
  }
  if (kind == "tensor") return node.attr<Tensor>("init_value").clone();
  Tensor t = Tensor::empty(dtype, shape);
  dispatch_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) t.data<T>()[i] = convert<T>(values[i]);
  });
  return t;
}

// Outputs the stored value (initializing it first), moved to the kernel's device if it was set
// from elsewhere (a checkpoint restored on the host, say).
void variable_kernel(KernelContext& ctx) {
  VariableStore& store = ctx.variables();
  const std::string& name = ctx.node().name();
  const Device device = ctx.cuda() ? ctx.cuda()->device : Device::cpu();
  if (!store.contains(name)) store.set(name, initial_value(ctx.node()).to(device));
  Tensor value = store.get(name);
  KILN_CHECK(value.dtype() == ctx.output_type(0).dtype && value.shape() == ctx.output_type(0).shape,
             Error, ctx.where(), ": stored value ", value.dtype(), value.shape(),
             " does not match the variable's ", ctx.output_type(0).dtype, ctx.output_type(0).shape);
  if (value.device() != device) {
    value = value.to(device);
    store.set(name, value);
  }
  ctx.set_output(0, value);
}

std::vector<TensorType> infer_variable(const InferContext& ctx) {
  const Shape& shape = ctx.attr<Shape>("shape");
  if (!shape.is_known()) ctx.fail("variable shape ", shape, " must be fully known");
  const std::string& kind = ctx.attr<std::string>("init");
  const auto& args = ctx.attr<std::vector<double>>("init_args");
  size_t want = kind == "constant"                                                      ? 1
                : (kind == "uniform" || kind == "normal" || kind == "truncated_normal") ? 2
                : kind == "normal_zero_row"                                             ? 3
                                                                                        : 0;
  bool known = kind == "zeros" || kind == "constant" || kind == "uniform" || kind == "normal" ||
               kind == "normal_zero_row" || kind == "truncated_normal" ||
               kind == "glorot_uniform" || kind == "glorot_normal" || kind == "he_uniform" ||
               kind == "he_normal" || kind == "tensor";
  if (!known) ctx.fail("unknown initializer '", kind, "'");
  const Tensor& value = ctx.attr<Tensor>("init_value");
  if (kind == "tensor" && (value.dtype() != ctx.attr<DType>("dtype") || !(value.shape() == shape)))
    ctx.fail("init::from_tensor value ", value.dtype(), value.shape(),
             " does not match the variable's ", ctx.attr<DType>("dtype"), shape);
  if (args.size() != want)
    ctx.fail("initializer '", kind, "' takes ", want, " argument(s), got ", args.size());
  if (kind == "uniform" && !(args[0] < args[1]))
    ctx.fail("uniform initializer needs low < high, got ", args[0], " and ", args[1]);
  // A file's row is untrusted: initial_value writes the row it names.
  if (kind == "normal_zero_row" &&
      (shape.rank() == 0 || !(args[2] >= 0 && args[2] < static_cast<double>(shape[0])) ||
       args[2] != std::floor(args[2])))
    ctx.fail("initializer 'normal_zero_row' row ", args[2], " is not a row of shape ", shape);
  return {{ctx.attr<DType>("dtype"), shape}};
}

KILN_OP(variable)
    .output_source(OutputSource::state)
    .stateful()
    .attr("dtype", DType::f32)
    .attr("shape", AttrType::shape)
    .attr("init", std::string("zeros"))
    .attr("init_args", std::vector<double>{})
    .attr("seed", int64_t{0})
    // The starting value of init "tensor" (init::from_tensor); empty otherwise.
    .attr("init_value", Tensor::zeros(DType::f32, {0}))
    .attr("trainable", true)
    // false: session state that checkpoints and variable_values() leave out (a KV cache).
    .attr("persistent", true)
    // true: this rank's own state (a sharded optimizer's slots), which broadcast_variables
    // leaves alone.
    .attr("rank_local", false)
    .infer(infer_variable)
    .kernel(DeviceKind::cpu, variable_kernel)
    .kernel(DeviceKind::cuda, variable_kernel);

std::vector<TensorType> infer_assign(const InferContext& ctx) {
  ctx.expect_same_dtype(0, 1);
  Shape out;
  if (!broadcast_shapes(ctx.shape(1), ctx.shape(0), &out) || !(out == ctx.shape(0)))
    ctx.fail("cannot write a ", ctx.shape(1), " value into variable of shape ", ctx.shape(0));
  return {ctx.input(0)};
}

template <bool kAdd>
void assign_cpu(KernelContext& ctx) {
  const Tensor& var = ctx.input(0);
  const Tensor& value = ctx.input(1);
  if (!kAdd && same_elements(var, value)) {  // a cache written in place
    ctx.set_output(0, var);
    return;
  }
  dispatch_cpu(var.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = var.data<T>();
    if constexpr (kAdd && !std::is_same_v<T, bool>) {
      elementwise_loop(
          ctx, p, var.shape(), [](T a, T b) { return wrapping_add(a, b); },
          {var.shape(), value.shape()}, static_cast<const T*>(p), value.data<T>());
    } else {
      elementwise_loop(
          ctx, p, var.shape(), [](T v) { return v; }, {value.shape()}, value.data<T>());
    }
  });
  ctx.set_output(0, var);
}

KILN_OP(assign)
    .input("var")
    .input("value")
    .mutates_input(0)
    .no_gradient()
    .infer(infer_assign)
    .kernel(DeviceKind::cpu, assign_cpu<false>);

KILN_OP(assign_add)
    .input("var")
    .input("delta")
    .mutates_input(0)
    .no_gradient()
    .infer(infer_assign)
    .kernel(DeviceKind::cpu, assign_cpu<true>, cpu_dtypes_of(DTypeClass::numeric));

}  // namespace
}  // namespace ops

Value assign(const Value& var, const Value& value) {
  return common_graph("assign", {&var, &value}).add("assign", {var, value});
}
Value assign_add(const Value& var, const Value& delta) {
  return common_graph("assign_add", {&var, &delta}).add("assign_add", {var, delta});
}

}  // namespace kiln
