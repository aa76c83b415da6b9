// embedding_bag (PyTorch's F.embedding_bag), built from gather and its scatter-add
// (gather_grad), and segment_ids, the op that turns bag offsets into each id's bag after
// checking them (offsets come from data: a wrong one would otherwise move ids between bags
// silently, since the scatter-add skips what it cannot place).
#include <algorithm>
#include <limits>
#include <vector>

#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

// segment_ids(offsets [S] i64, ids [N]): for each of the N positions, the index of the last
// offset at or before it. offsets[0] must be 0, the offsets non-decreasing and at most N.
void segment_ids_cpu(KernelContext& ctx) {
  const Tensor& offsets = ctx.input(0);
  const int64_t segments = offsets.numel(), n = ctx.input(1).numel();
  const int64_t* at = offsets.data<int64_t>();
  if (segments == 0 && n > 0)
    throw Error(str(ctx.where(), ": ", n, " ids and no offsets: each id needs a bag"));
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t low = s == 0 ? 0 : at[s - 1], high = s == 0 ? 0 : n;
    if (at[s] < low || at[s] > high)
      throw Error(str(ctx.where(), ": offset ", at[s], " at position ", s, " is outside [", low,
                      ", ", high, "]", s == 0 ? " (the first bag starts at 0)" : "",
                      " (offsets must be non-decreasing and at most the ", n, " ids)"));
  }
  int64_t* out = ctx.output(0).data<int64_t>();
  int64_t s = 0;
  for (int64_t j = 0; j < n; ++j) {
    while (s + 1 < segments && at[s + 1] <= j) ++s;
    out[j] = s;
  }
}

KILN_OP(segment_ids)
    .input("offsets")
    .input("ids")
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      ctx.expect_dtype(0, {i64});
      if (ctx.shape(0).rank() != 1) ctx.fail("offsets must be 1-D, got ", ctx.shape(0));
      if (ctx.shape(1).rank() != 1) ctx.fail("ids must be 1-D, got ", ctx.shape(1));
      return {{i64, ctx.shape(1)}};
    })
    .kernel(DeviceKind::cpu, segment_ids_cpu)
    .no_gradient();

}  // namespace
}  // namespace ops

namespace {

[[noreturn]] void bag_error(const Value& ids, const std::string& message) {
  throw GraphError(str("[embedding_bag] ", ids.name(), ": ", message));
}

}  // namespace

Value embedding_bag(const Value& table, const Value& ids, const EmbeddingBagOptions& o) {
  Graph& g = common_graph("embedding_bag", {&table, &ids});
  const int64_t rank = ids.shape().rank();
  if (table.shape().rank() != 2)
    bag_error(ids, str("the table must be [rows, dim], got ", table.shape()));
  if (!is_integer(ids.dtype()))
    bag_error(ids, str("ids must be integers, got ", dtype_name(ids.dtype())));
  if (rank == 2 && o.offsets.defined())
    bag_error(ids, str("2-D ids ", ids.shape(), " are the bags: offsets must be left out"));
  if (rank == 1 && !o.offsets.defined())
    bag_error(ids, "1-D ids need offsets (where each bag starts)");
  if (rank != 1 && rank != 2)
    bag_error(ids, str("ids must be [bags, length], or [n] with offsets, got ", ids.shape()));
  if (o.offsets.defined() && (o.offsets.shape().rank() != 1 || !is_integer(o.offsets.dtype())))
    bag_error(ids, str("offsets must be 1-D integers, got ", dtype_name(o.offsets.dtype()), " ",
                       o.offsets.shape()));
  if (o.include_last_offset && !o.offsets.defined())
    bag_error(ids, "include_last_offset needs offsets");
  const Value& psw = o.per_sample_weights;
  if (psw.defined()) {
    if (o.mode != BagMode::sum) bag_error(ids, "per_sample_weights need mode sum (as PyTorch's)");
    if (psw.dtype() != table.dtype() || !psw.shape().compatible_with(ids.shape()))
      bag_error(ids, str("per_sample_weights ", dtype_name(psw.dtype()), " ", psw.shape(),
                         " must be shaped like the ids ", ids.shape(), " in the table's ",
                         dtype_name(table.dtype())));
  }
  if (o.mode == BagMode::max && rank == 1)
    bag_error(ids,
              "mode max needs 2-D ids [bags, length]; bags given by offsets take sum and mean");
  if (o.padding_index &&
      (*o.padding_index < 0 || (table.shape()[0] >= 0 && *o.padding_index >= table.shape()[0])))
    bag_error(
        ids, str("padding index ", *o.padding_index, " is not a row of the table ", table.shape()));

  const DType dtype = table.dtype();
  Value rows = gather(table, ids, 0);  // [B, L, D] or [N, D]
  // What each id counts for: 0 for padding, else 1 (undefined when every id counts 1).
  Value kept;
  if (o.padding_index) kept = cast(ids != static_cast<double>(*o.padding_index), dtype);
  const Value counted = kept.defined() ? kept : full_like(cast(ids, dtype), 1.0);

  if (rank == 2) {
    Value count = expand_dims(sum(counted, {1}), {1});  // [B, 1]
    if (o.mode == BagMode::max) {
      // Padding rows never win; a bag with nothing in it is zeros.
      Value candidates = kept.defined() ? where(expand_dims(kept, {-1}) > 0.0, rows,
                                                -std::numeric_limits<double>::infinity())
                                        : rows;
      return where(count > 0.0, max(candidates, {1}), 0.0);
    }
    Value weight = psw.defined() ? (kept.defined() ? psw * kept : psw) : kept;
    Value total = sum(weight.defined() ? rows * expand_dims(weight, {-1}) : rows, {1});
    return o.mode == BagMode::sum ? total : total / maximum(count, 1.0);
  }

  // Bags from offsets: each id's bag, then a scatter-add of the rows into the bags.
  Value offsets = o.offsets.dtype() == i64 ? o.offsets : cast(o.offsets, i64);
  Value bag = g.add("segment_ids", {offsets, ids});
  // The scatter-add's shape: one slot per offset (with include_last_offset the last holds the
  // ids after the end, dropped below), the table's width.
  Value slots = expand_dims(cast(offsets, dtype), {1}) *
                slice(table, {0, 0}, {1, std::numeric_limits<int64_t>::max()});
  Value weight = psw.defined() ? (kept.defined() ? psw * kept : psw) : kept;
  Value total =
      g.add("gather_grad", {weight.defined() ? rows * expand_dims(weight, {-1}) : rows, bag, slots},
            {{"axis", int64_t{0}}});
  if (o.mode == BagMode::mean) {
    Value count =
        g.add("gather_grad", {counted, bag, cast(offsets, dtype)}, {{"axis", int64_t{0}}});
    total = total / expand_dims(maximum(count, 1.0), {1});
  }
  if (!o.include_last_offset) return total;
  return slice(total, {0}, {-1});
}

}  // namespace kiln
