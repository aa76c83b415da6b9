// Neural-network functions built from other ops (no kernels of their own): their gradients
// are the ops' gradients, and they run wherever those ops do (fusion merges the elementwise
// parts into one kernel).
#include "ops/array.h"
#include "ops/math.h"
#include "ops/nn.h"

namespace kiln {

namespace {

Value scalar_like(const Value& x, double value) {
  return x.graph()->scalar(value, x.dtype());
}

}  // namespace

// y = x where x >= 0, slope x below (NaN: every comparison is false, so NaN passes)
Value leaky_relu(const Value& x, double slope) {
  return where(less(x, scalar_like(x, 0)), x * slope, x);
}

// y = min(max(x, low), high); NaN passes (maximum and minimum let NaN win)
Value clamp(const Value& x, double low, double high) {
  KILN_CHECK(low <= high, GraphError, "[clamp] ", x.name(), ": low ", low, " is above high ", high);
  return minimum(maximum(x, scalar_like(x, low)), scalar_like(x, high));
}

// mean((a - b)^2)
Value mse_loss(const Value& a, const Value& b) {
  return mean(square(a - b));
}

// d = |a - b|;  0.5 d^2 where d < delta, delta (d - delta / 2) beyond; averaged
Value huber_loss(const Value& a, const Value& b, double delta) {
  KILN_CHECK(delta > 0, GraphError, "[huber_loss] delta ", delta, " must be positive");
  Value d = abs(a - b);
  return mean(where(less(d, scalar_like(d, delta)), square(d) * 0.5, (d - delta * 0.5) * delta));
}

// -(y log s + (1 - y) log(1 - s)), s = sigmoid x, = softplus(x) - x y: no log of 0, no overflow
Value binary_cross_entropy_with_logits(const Value& logits, const Value& targets) {
  return softplus(logits) - logits * targets;
}

Value squeeze(const Value& x, std::vector<int64_t> axes) {
  const Shape& shape = x.shape();
  const int64_t rank = shape.rank();
  std::vector<bool> drop(static_cast<size_t>(rank), false);
  if (axes.empty()) {
    for (int64_t d = 0; d < rank; ++d) drop[d] = shape[d] == 1;
  } else {
    for (int64_t axis : axes) {
      const int64_t a = axis < 0 ? axis + rank : axis;
      KILN_CHECK(a >= 0 && a < rank, GraphError, "[squeeze] ", x.name(), ": axis ", axis,
                 " is outside a shape of rank ", rank);
      KILN_CHECK(shape[a] == 1, GraphError, "[squeeze] ", x.name(), ": dim ", axis, " of ", shape,
                 " is not 1");
      drop[a] = true;
    }
  }
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < rank; ++d)
    if (!drop[d]) dims.push_back(shape[d]);
  return reshape(x, Shape(dims));
}

Value stack(const std::vector<Value>& values, int64_t axis) {
  KILN_CHECK(!values.empty(), GraphError, "[stack] needs at least one value");
  const int64_t rank = values[0].shape().rank() + 1;
  const int64_t a = axis < 0 ? axis + rank : axis;
  KILN_CHECK(a >= 0 && a < rank, GraphError, "[stack] axis ", axis,
             " is outside the result's rank ", rank);
  std::vector<Value> expanded;
  for (const Value& v : values) expanded.push_back(expand_dims(v, {a}));
  return concat(expanded, a);
}

}  // namespace kiln
