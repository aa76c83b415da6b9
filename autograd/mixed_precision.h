// Mixed precision as a graph transform: the same computation with its matrix products in bf16
// (or f16) and f32 master weights, as torch.autocast does eagerly.
#pragma once

#include "kiln/framework/graph.h"

namespace kiln {

/// Rebuilds the computation of `y` (in y's graph, sharing its placeholders, variables and
/// constants) under an autocast policy, and returns the new y in its original dtype. Each op's
/// declared Precision (OpDef::precision) decides:
///   - low (matmul, matmul_bias): floating inputs cast to `compute` (bf16 or f16); tensor
///     cores do the products with f32 accumulation;
///   - keep_f32 (softmax, log_softmax, softmax_cross_entropy, sum, mean, exp, log, pow, sqrt,
///     rsqrt): floating inputs cast back to their f32 dtype;
///   - follow_inputs (every other op): runs in the widest floating dtype among its inputs.
/// Variables stay f32 (the master weights): gradients() of the returned value with respect to
/// them are f32, and optimizers update them in f32. For f16, pair it with
/// Optimizer::with_loss_scaling(). Throws kiln::GraphError when `compute` is not 16-bit.
Value autocast(const Value& y, DType compute = DType::bf16);

}  // namespace kiln
