// embedding_bag (PyTorch's F.embedding_bag), built from gather and its scatter-add
// (gather_grad), with two ops of its own for bags given by offsets: segment_ids, which turns the
// offsets into each id's bag, and bag_argmax, each bag's maximum per column. Both check the
// offsets first (they come from data: a wrong one would otherwise move ids between bags
// silently, since the scatter-add skips what it cannot place).
#include <algorithm>
#include <limits>
#include <vector>

#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/embedding_bag.h"

namespace kiln {
namespace ops {
namespace {

// Throws unless the bag offsets `at` [segments] start at 0, never decrease and stay within the n
// ids (what segment_ids and bag_argmax read).
void check_offsets(const KernelContext& ctx, const int64_t* at, int64_t segments, int64_t n) {
  if (segments == 0 && n > 0)
    throw Error(str(ctx.where(), ": ", n, " ids and no offsets: each id needs a bag"));
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t low = s == 0 ? 0 : at[s - 1], high = s == 0 ? 0 : n;
    if (at[s] < low || at[s] > high)
      throw Error(str(ctx.where(), ": offset ", at[s], " at position ", s, " is outside [", low,
                      ", ", high, "]", s == 0 ? " (the first bag starts at 0)" : "",
                      " (offsets must be non-decreasing and at most the ", n, " ids)"));
  }
}

// segment_ids(offsets [S] i64, ids [N]): for each of the N positions, the index of the last
// offset at or before it.
void segment_ids_cpu(KernelContext& ctx) {
  const int64_t segments = ctx.input(0).numel(), n = ctx.input(1).numel();
  const int64_t* at = ctx.input(0).data<int64_t>();
  check_offsets(ctx, at, segments, n);
  int64_t* out = ctx.output(0).data<int64_t>();
  int64_t s = 0;
  for (int64_t j = 0; j < n; ++j) {
    while (s + 1 < segments && at[s + 1] <= j) ++s;
    out[j] = s;
  }
}

// bag_argmax(rows [N, D], offsets [S] i64, kept [N] bool): per bag and column, the row of the
// bag's largest kept value (the first of equal ones; a NaN counts as largest, the first NaN),
// or N where the bag keeps no row. Bag b is rows [offsets[b], offsets[b + 1]), the last one
// running to N, or with include_last_offset to offsets[S - 1] (S - 1 bags).
void bag_argmax_cpu(KernelContext& ctx) {
  const Tensor& rows = ctx.input(0);
  const int64_t n = rows.shape()[0], width = rows.shape()[1];
  const int64_t segments = ctx.input(1).numel();
  const int64_t* at = ctx.input(1).data<int64_t>();
  check_offsets(ctx, at, segments, n);
  const bool* kept = ctx.input(2).data<bool>();
  const int64_t bags = ctx.output(0).shape()[0];
  int64_t* out = ctx.output(0).data<int64_t>();
  dispatch_float(rows.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = rows.data<T>();
    const int64_t per_bag = width * std::max<int64_t>(n / std::max<int64_t>(bags, 1), 1);
    ctx.parallel_for(bags, per_bag, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t* best = out + b * width;
        std::fill(best, best + width, n);
        const int64_t end = b + 1 < segments ? at[b + 1] : n;
        for (int64_t i = at[b]; i < end; ++i) {
          if (!kept[i]) continue;
          for (int64_t d = 0; d < width; ++d)
            if (bag_max_replaces(best[d] == n, best[d] == n ? T(0) : x[best[d] * width + d],
                                 x[i * width + d]))
              best[d] = i;
        }
      }
    });
  });
}

KILN_OP(bag_argmax)
    .input("rows")
    .input("offsets")
    .input("kept")
    .attr("include_last_offset", false)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      ctx.expect_dtype(0, {f32, f64, f16, bf16});
      ctx.expect_dtype(1, {i64});
      ctx.expect_dtype(2, {boolean});
      const Shape& rows = ctx.shape(0);
      if (rows.rank() != 2) ctx.fail("rows must be [ids, width], got ", rows);
      if (ctx.shape(1).rank() != 1) ctx.fail("offsets must be 1-D, got ", ctx.shape(1));
      if (ctx.shape(2).rank() != 1 || !ctx.shape(2).compatible_with(Shape{rows[0]}))
        ctx.fail("kept must be [ids] for rows ", rows, ", got ", ctx.shape(2));
      const int64_t segments = ctx.shape(1)[0];
      const bool last = ctx.attr<bool>("include_last_offset");
      if (last && segments == 0) ctx.fail("include_last_offset needs at least one offset");
      return {{i64, Shape{segments < 0 ? -1 : segments - (last ? 1 : 0), rows[1]}}};
    })
    .kernel(DeviceKind::cpu, bag_argmax_cpu, {f32, f64})
    .no_gradient();

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
      // Padding rows never win; a bag with nothing in it is zeros. The first maximum per column
      // is picked, so its gradient goes to one row, as over offsets (bag_argmax) and PyTorch's.
      Value candidates = kept.defined() ? where(expand_dims(kept, {-1}) > 0.0, rows,
                                                -std::numeric_limits<double>::infinity())
                                        : rows;
      Value best = take_along_axis(candidates, argmax(candidates, 1, true), 1);
      return where(count > 0.0, squeeze(best, {1}), 0.0);
    }
    Value weight = psw.defined() ? (kept.defined() ? psw * kept : psw) : kept;
    Value total = sum(weight.defined() ? rows * expand_dims(weight, {-1}) : rows, {1});
    return o.mode == BagMode::sum ? total : total / maximum(count, 1.0);
  }

  Value offsets = o.offsets.dtype() == i64 ? o.offsets : cast(o.offsets, i64);
  if (o.mode == BagMode::max) {
    // Each bag's maximum row per column, picked from the rows with a zero row appended: the
    // pick of a bag with nothing in it (index N). The gradient reaches the maxima through
    // take_along_axis.
    Value kept_ids = o.padding_index ? ids != static_cast<double>(*o.padding_index)
                                     : full_like(cast(ids, DType::boolean), 1.0);
    Value best = g.add("bag_argmax", {rows, offsets, kept_ids},
                       {{"include_last_offset", o.include_last_offset}});
    Value zero_row = full_like(slice(table, {0, 0}, {1, std::numeric_limits<int64_t>::max()}), 0.0);
    return take_along_axis(concat({rows, zero_row}, 0), best, 0);
  }
  // Bags from offsets: each id's bag, then a scatter-add of the rows into the bags.
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
