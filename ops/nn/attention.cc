// attention: fused scaled dot-product attention over q [B, H, Tq, D], k [B, Hk, Tk, D],
// v [B, Hk, Tk, Dv] and an optional mask broadcast to [B, H, Tq, Tk]: bool (true: attend) or a
// bias of q's dtype added to the scaled scores (PyTorch's float attn_mask). Hk divides H: with
// fewer key-value heads (grouped-query attention) query head h reads key-value head h / (H / Hk)
// in place (AttentionShape::kv_row_offset; nothing is repeated):
//   s[i, j] = scale q[i] . k[j] (+ bias[i, j])   (-inf where masked, or out of reach: j > p when
//                                                causal, j <= p - window with a sliding window,
//                                                at query i's position p = offset + i)
// The offset is 0, or the optional int64 scalar input after the mask (read when the graph runs:
// a KV cache's position; Tk - Tq for PyTorch's bottom-right causal alignment).
// or, with a softcap c (Gemma 2's attention logit soft-capping), c tanh(scale q[i] . k[j] / c)
// (+ bias[i, j]): the scores bounded to (-c, c) before the mask.
//   lse[i]  = log sum_j exp s[i, j],   p[i, j] = exp(s[i, j] - lse[i])
//   out[i]  = sum_j p[i, j] v[j]
// With layout "bthd" q, k, v and out are [B, T, H, D] instead: the heads of a [B, T, H * D]
// projection, read and written in place (no transposes around the op; the gemms step over
// rows H * D apart).
// Outputs out and lse [B, H, Tq] (kept for the backward op, which recomputes p from it). A row with
// no key to attend has out = 0 and lse = -inf. The score matrix never exists as a graph value: the
// CPU kernel works on blocks of query rows (query_block) with gemm (the matmul path), so its memory
// is O(block x Tk) per thread.
//
// attention_backward, with dout and D[i] = dout[i] . out[i]:
//   dv = p^T dout,   dp = dout v^T,   ds = p (dp - D),   dq = scale ds k,   dk = scale ds^T q
// (with a softcap, scale (1 - tanh^2) in place of scale: the derivative of c tanh(scale x / c))
// Its dk and dv are per query head ([B, H, Tk, D]); with grouped heads the gradient of k and v
// sums each group's (sum_head_groups). A bias's gradient, ds / scale summed to its shape, is a
// composition (bias_gradient): it is the [B, H, Tq, Tk] matrix the op exists to avoid, built
// only where something reads it (a learned bias: T5's, Swin's).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/blas.h"
#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/attention.h"
#include "kiln/ops/nn/attention_scores.h"

namespace kiln {
namespace ops {

bool attention_layout_is_bthd(const std::string& layout) {
  return layout == "bthd";
}

AttentionShape attention_shape(const Shape& q, const Shape& k, const Shape& v, const Shape* mask,
                               const std::string& layout, bool causal, int64_t window,
                               const std::string& where) {
  AttentionShape a;
  a.bthd = attention_layout_is_bthd(layout);
  a.causal = causal;
  a.window = window;
  const int heads_dim = a.bthd ? 2 : 1, length_dim = a.bthd ? 1 : 2;
  a.batch = q[0];
  a.heads = q[heads_dim];
  a.queries = q[length_dim];
  a.keys = k[length_dim];
  a.depth = q[3];
  a.value_depth = v[3];
  a.kv_heads = k[heads_dim];
  const bool divides = a.kv_heads == 0 ? a.heads == 0 : a.heads % a.kv_heads == 0;
  if (!divides || v[heads_dim] != a.kv_heads)
    throw Error(str(where, ": k ", k, " and v ", v, " must have the same number of heads, ",
                    "dividing q's ", a.heads, " (q ", q, ")"));
  if (mask != nullptr) {
    // Strides of the mask in elements, 0 along broadcast dims.
    const int64_t scores[4] = {a.batch, a.heads, a.queries, a.keys};
    int64_t stride = 1;
    for (int d = 3; d >= 0; --d) {
      if ((*mask)[d] != 1 && (*mask)[d] != scores[d])
        throw Error(str(where, ": the mask ", *mask, " does not broadcast to the scores [",
                        scores[0], ", ", scores[1], ", ", scores[2], ", ", scores[3], "]"));
      a.mask_strides[d] = (*mask)[d] == 1 ? 0 : stride;
      stride *= (*mask)[d];
    }
  }
  return a;
}

AttentionExtras attention_extras(int inputs, int first, DType last) {
  AttentionExtras e;
  if (inputs <= first) return e;
  if (last == DType::i64) e.query_offset = inputs - 1;
  if (e.query_offset != first) e.mask = first;
  return e;
}

AttentionShape attention_shape(const KernelContext& ctx, int first) {
  const int inputs = ctx.num_inputs();
  const AttentionExtras e = attention_extras(inputs, first, ctx.input(inputs - 1).dtype());
  return attention_shape(ctx.input(0).shape(), ctx.input(1).shape(), ctx.input(2).shape(),
                         e.mask >= 0 ? &ctx.input(e.mask).shape() : nullptr,
                         ctx.attr<std::string>("layout"), ctx.attr<bool>("causal"),
                         ctx.attr<int64_t>("window"), ctx.where());
}

void read_query_offset(const KernelContext& ctx, int first, AttentionShape& a) {
  const int inputs = ctx.num_inputs();
  const int at = attention_extras(inputs, first, ctx.input(inputs - 1).dtype()).query_offset;
  if (at >= 0) a.set_query_offset(ctx.input(at).data<int64_t>()[0]);
}

namespace {

constexpr int64_t kQueryBlock = 128;

// The query rows of a CPU block: kQueryBlock, or half of it where the keys reached move with
// the rows (causal, a window), as a block's products span the keys of all its rows (smaller
// blocks skip more of what is out of reach). The products of 128 rows ran 5-10% faster than of
// 64 (head depth 64).
int64_t query_block(const AttentionShape& a) {
  return a.causal || a.window > 0 ? kQueryBlock / 2 : kQueryBlock;
}

// The dims of heads and of length in q, k, v for the node's layout attribute (checked here).
std::pair<int, int> heads_and_length_dims(const InferContext& ctx) {
  const std::string& layout = ctx.attr<std::string>("layout");
  if (layout != "bhtd" && layout != "bthd")
    ctx.fail("layout must be bhtd ([batch, heads, length, depth]) or bthd, got '", layout, "'");
  return attention_layout_is_bthd(layout) ? std::pair{2, 1} : std::pair{1, 2};
}

void check_attention(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_same_dtype(0, 1);
  ctx.expect_same_dtype(0, 2);
  const auto [hd, ld] = heads_and_length_dims(ctx);
  const Shape& q = ctx.shape(0);
  const Shape& k = ctx.shape(1);
  const Shape& v = ctx.shape(2);
  for (int i : {0, 1, 2})
    if (ctx.shape(i).rank() != 4)
      ctx.fail("q, k and v must be ",
               hd == 1 ? "[batch, heads, length, depth]" : "[batch, length, heads, depth]",
               "; input ", i, " is ", ctx.shape(i));
  auto same = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
  if (!same(q[0], k[0]) || !same(q[0], v[0]))
    ctx.fail("batch differs: q ", q, ", k ", k, ", v ", v);
  // Grouped-query attention: k and v may have fewer heads, a divisor of q's.
  const bool divides = q[hd] < 0 || k[hd] < 0 || (k[hd] == 0 ? q[hd] == 0 : q[hd] % k[hd] == 0);
  if (!same(k[hd], v[hd]) || !divides)
    ctx.fail("k and v must have the same number of heads, dividing q's: q ", q, ", k ", k, ", v ",
             v);
  if (!same(k[ld], v[ld])) ctx.fail("k ", k, " and v ", v, " hold different numbers of keys");
  if (!same(q[3], k[3])) ctx.fail("q ", q, " and k ", k, " have different depths");
  if (ctx.attr<double>("scale") < 0) ctx.fail("scale ", ctx.attr<double>("scale"), " < 0");
  if (ctx.attr<int64_t>("window") < 0)
    ctx.fail("window ", ctx.attr<int64_t>("window"), " must be positive (or 0 for none)");
  const double softcap = ctx.attr<double>("softcap");
  if (!(softcap >= 0 && std::isfinite(softcap)))
    ctx.fail("softcap ", softcap, " must be positive (or 0 for none)");
}

// The optional inputs after input `first`: a mask, bool or a bias of q's dtype, rank 4, each
// dim 1 or the scores' dim (dims unknown now are checked when the graph runs); then a query
// offset, an int64 scalar.
void check_extras(const InferContext& ctx, int first) {
  const int inputs = ctx.num_inputs();
  if (inputs <= first) return;
  const AttentionExtras e = attention_extras(inputs, first, ctx.dtype(inputs - 1));
  if (inputs - first > 2 || (inputs - first == 2 && (e.mask < 0 || e.query_offset < 0)))
    ctx.fail("takes at most a mask (bool, or a bias of q's dtype) and a query offset (an int64 ",
             "scalar), in that order; got ", inputs - first, " inputs after the first ", first);
  if (e.query_offset >= 0 && ctx.shape(e.query_offset).rank() != 0)
    ctx.fail("the query offset must be an int64 scalar, got shape ", ctx.shape(e.query_offset));
  if (e.mask < 0) return;
  const int index = e.mask;
  if (ctx.dtype(index) != DType::boolean && ctx.dtype(index) != ctx.dtype(0))
    ctx.fail("the mask must be bool (true: attend) or an additive bias of q's dtype ", ctx.dtype(0),
             ", got ", ctx.dtype(index));
  const Shape& m = ctx.shape(index);
  const auto [hd, ld] = heads_and_length_dims(ctx);
  const Shape scores{ctx.shape(0)[0], ctx.shape(0)[hd], ctx.shape(0)[ld], ctx.shape(1)[ld]};
  if (m.rank() != 4) ctx.fail("the mask must be 4-D (broadcast to ", scores, "), got ", m);
  for (int64_t d = 0; d < 4; ++d)
    if (m[d] != 1 && m[d] >= 0 && scores[d] >= 0 && m[d] != scores[d])
      ctx.fail("the mask ", m, " does not broadcast to the scores ", scores, " (dim ", d, ")");
}

std::vector<TensorType> infer_attention(const InferContext& ctx) {
  check_attention(ctx);
  check_extras(ctx, 3);
  const Shape& q = ctx.shape(0);
  const Shape& v = ctx.shape(2);
  const auto [hd, ld] = heads_and_length_dims(ctx);
  // The logsumexp stays f32 for 16-bit inputs (the backward op exponentiates against it); it
  // is [B, H, Tq] in both layouts.
  const DType stats = ctx.dtype(0) == f64 ? f64 : f32;
  return {{ctx.dtype(0), Shape{q[0], q[1], q[2], v[3]}}, {stats, Shape{q[0], q[hd], q[ld]}}};
}

// Inputs q, k, v, out, lse, dout[, mask][, query offset]: dq, and dk, dv per query head: k's and
// v's shapes with q's heads (with grouped heads the gradient sums each group's).
std::vector<TensorType> infer_attention_backward(const InferContext& ctx) {
  check_attention(ctx);
  check_extras(ctx, 6);
  for (int i : {3, 5}) ctx.expect_same_dtype(0, i);
  ctx.expect_dtype(4, {ctx.dtype(0) == f64 ? f64 : f32});
  const int hd = heads_and_length_dims(ctx).first;
  TensorType dk = ctx.input(1), dv = ctx.input(2);
  dk.shape[hd] = dv.shape[hd] = ctx.shape(0)[hd];
  return {ctx.input(0), dk, dv};
}

// The gemm sizes fit BLAS's 32-bit ints.
void check_blas_sizes(const KernelContext& ctx, const AttentionShape& a) {
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  KILN_CHECK(a.keys <= kMax && a.row_stride(a.depth) <= kMax &&
                 a.row_stride(a.value_depth) <= kMax && a.keys * kQueryBlock <= (int64_t{1} << 40),
             Error, ctx.where(), ": ", a.keys, " keys of depth ", a.depth,
             " exceed the CPU kernel's limits");
}

double scale_of(const KernelContext& ctx, int64_t depth) {
  const double scale = ctx.attr<double>("scale");
  return scale > 0 ? scale : 1 / std::sqrt(static_cast<double>(depth));
}

template <typename T>
ScoreTerms<T> score_terms(const KernelContext& ctx, int first) {
  ScoreTerms<T> terms;
  terms.softcap = static_cast<T>(ctx.attr<double>("softcap"));
  const int inputs = ctx.num_inputs();
  const int mask = attention_extras(inputs, first, ctx.input(inputs - 1).dtype()).mask;
  if (mask < 0) return terms;
  const Tensor& m = ctx.input(mask);
  if (m.dtype() == DType::boolean)
    terms.keep = m.data<bool>();
  else
    terms.bias = m.data<T>();
  return terms;
}

// Raw scores q k^T of query rows [i0, i0 + rows) of one (b, h) (q and k at its first rows,
// rows ldq and ldk apart) against keys `span` into s [rows, Tk] (row stride Tk, key j in column
// j; the other columns untouched), -inf where the mask hides a key. The scale is applied by the
// callers inside their exponentials (e^(terms.exp_scale(scale) s - shift), scale > 0), except
// with a bias or a softcap: then s = softcap(scale q k^T) + bias here, and `slope` (when given,
// [rows, Tk] as s) receives d s / d(q k^T): scale (1 - tanh^2) under a softcap, else scale. The
// reach (causal, window) is the callers' row ranges: entries outside a row's are not read.
template <typename T>
void block_scores(const AttentionShape& a, const T* q, int ldq, const T* k, int ldk,
                  const ScoreTerms<T>& terms, T scale, int64_t b, int64_t h, int64_t i0,
                  int64_t rows, KeySpan span, T* s, T* slope = nullptr) {
  const int d = static_cast<int>(a.depth), keys = static_cast<int>(a.keys);
  gemm(false, true, static_cast<int>(rows), static_cast<int>(span.size()), d, q + i0 * ldq, ldq,
       k + span.begin * ldk, ldk, s + span.begin, keys);
  if (!terms.scaled_here() && terms.keep == nullptr) return;
  for (int64_t r = 0; r < rows; ++r)
    apply_score_terms(terms, a, scale, b, h, i0 + r, span.begin, span.end, s + r * a.keys,
                      slope != nullptr ? slope + r * a.keys : nullptr);
}

template <typename T>
void attention_typed(KernelContext& ctx) {
  single_threaded_blas();
  AttentionShape a = attention_shape(ctx, 3);
  read_query_offset(ctx, 3, a);
  check_blas_sizes(ctx, a);
  const T scale = static_cast<T>(scale_of(ctx, a.depth));
  const T* q = ctx.input(0).data<T>();
  const T* k = ctx.input(1).data<T>();
  const T* v = ctx.input(2).data<T>();
  const ScoreTerms<T> terms = score_terms<T>(ctx, 3);
  const T exp_scale = terms.exp_scale(scale);
  T* out = ctx.output(0).data<T>();
  T* lse = ctx.output(1).data<T>();
  if constexpr (std::is_same_v<T, float>)
    if (attention_tiles_available())
      return attention_forward_tiles(ctx, a, scale, q, k, v, terms, out, lse);
  const int64_t block = query_block(a);
  const int64_t blocks = (a.queries + block - 1) / block;
  const int dvd = static_cast<int>(a.value_depth);
  const int ldq = static_cast<int>(a.row_stride(a.depth));           // q
  const int ldo = static_cast<int>(a.row_stride(a.value_depth));     // out
  const int ldk = static_cast<int>(a.kv_row_stride(a.depth));        // k
  const int ldv = static_cast<int>(a.kv_row_stride(a.value_depth));  // v
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  ctx.parallel_for(
      a.batch * a.heads * blocks, block * a.keys * (a.depth + a.value_depth) * 2,
      [&](int64_t t0, int64_t t1) {
        std::vector<T> s(static_cast<size_t>(block * a.keys));
        T inverse_sums[kQueryBlock];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t bh = t / blocks, i0 = (t % blocks) * block;
          const int64_t b = bh / a.heads, h = bh % a.heads;
          const int64_t rows = std::min(block, a.queries - i0);
          const KeySpan span = a.keys_reached(i0, rows);
          const T* qh = q + a.row_offset(bh, 0, a.queries, a.depth);
          const T* kh = k + a.kv_row_offset(bh, 0, a.depth);
          const T* vh = v + a.kv_row_offset(bh, 0, a.value_depth);
          T* out_blk = out + a.row_offset(bh, i0, a.queries, a.value_depth);
          if (span.size() == 0) {  // no row reaches a key: out 0, lse -inf
            for (int64_t r = 0; r < rows; ++r) {
              std::fill_n(out_blk + r * ldo, dvd, T(0));
              lse[bh * a.queries + i0 + r] = kMinusInf;
            }
            continue;
          }
          block_scores(a, qh, ldq, kh, ldk, terms, scale, b, h, i0, rows, span, s.data());
          // p = e^(scale (s - max)) unnormalized, 0 outside the row's reach; out = (p v) / sum p,
          // the division on the product's Dv columns rather than on p's keys.
          for (int64_t r = 0; r < rows; ++r) {
            T* row = s.data() + r * a.keys;
            const int64_t first = a.first_key(i0 + r), end = a.key_end(i0 + r);
            const T m = max_of(row + first, end - first);
            T* lse_at = lse + bh * a.queries + i0 + r;
            std::fill(row + span.begin, row + first, T(0));
            if (m == kMinusInf) {  // nothing to attend: out 0
              std::fill(row + first, row + span.end, T(0));
              inverse_sums[r] = 0;
              *lse_at = m;
              continue;
            }
            const T sum = exp_scaled_shifted(row + first, end - first, exp_scale, exp_scale * m);
            std::fill(row + end, row + span.end, T(0));
            inverse_sums[r] = T(1) / sum;
            *lse_at = exp_scale * m + std::log(sum);
          }
          gemm(false, false, static_cast<int>(rows), dvd, static_cast<int>(span.size()),
               s.data() + span.begin, static_cast<int>(a.keys), vh + span.begin * ldv, ldv, out_blk,
               ldo);
          for (int64_t r = 0; r < rows; ++r)
            for (int c = 0; c < dvd; ++c) out_blk[r * ldo + c] *= inverse_sums[r];
        }
      });
}

template <typename T>
void attention_backward_typed(KernelContext& ctx) {
  single_threaded_blas();
  AttentionShape a = attention_shape(ctx, 6);
  read_query_offset(ctx, 6, a);
  check_blas_sizes(ctx, a);
  const int64_t block = query_block(a);
  const T scale = static_cast<T>(scale_of(ctx, a.depth));
  const T* q = ctx.input(0).data<T>();
  const T* k = ctx.input(1).data<T>();
  const T* v = ctx.input(2).data<T>();
  const T* out = ctx.input(3).data<T>();
  const T* lse = ctx.input(4).data<T>();
  const T* dout = ctx.input(5).data<T>();
  const ScoreTerms<T> terms = score_terms<T>(ctx, 6);
  const T exp_scale = terms.exp_scale(scale);
  T* dq = ctx.output(0).data<T>();
  T* dk = ctx.output(1).data<T>();
  T* dv = ctx.output(2).data<T>();
  if constexpr (std::is_same_v<T, float>)
    if (attention_tiles_available())
      return attention_backward_tiles(ctx, a, scale, q, k, v, out, lse, dout, terms, dq, dk, dv);
  const int d = static_cast<int>(a.depth), dvd = static_cast<int>(a.value_depth);
  const int keys = static_cast<int>(a.keys);
  // Row strides: of q, dq and dk; of out, dout and dv; of k; of v.
  const int ldq = static_cast<int>(a.row_stride(a.depth));
  const int ldo = static_cast<int>(a.row_stride(a.value_depth));
  const int ldk = static_cast<int>(a.kv_row_stride(a.depth));
  const int ldv = static_cast<int>(a.kv_row_stride(a.value_depth));
  // One (b, h) per task: dk and dv sum over every query block, in order.
  ctx.parallel_for(
      a.batch * a.heads, a.queries * a.keys * (a.depth + a.value_depth) * 4,
      [&](int64_t t0, int64_t t1) {
        std::vector<T> p(static_cast<size_t>(block * a.keys));
        std::vector<T> dp(p.size());
        // d s / d(q k^T) per score under a softcap; the scale everywhere otherwise.
        std::vector<T> slope(terms.softcap > 0 ? p.size() : 0);
        for (int64_t bh = t0; bh < t1; ++bh) {
          const int64_t b = bh / a.heads, h = bh % a.heads;
          const T* qh = q + a.row_offset(bh, 0, a.queries, a.depth);
          const T* kh = k + a.kv_row_offset(bh, 0, a.depth);
          const T* vh = v + a.kv_row_offset(bh, 0, a.value_depth);
          const T* outh = out + a.row_offset(bh, 0, a.queries, a.value_depth);
          const T* douth = dout + a.row_offset(bh, 0, a.queries, a.value_depth);
          T* dqh = dq + a.row_offset(bh, 0, a.queries, a.depth);
          T* dkh = dk + a.row_offset(bh, 0, a.keys, a.depth);
          T* dvh = dv + a.row_offset(bh, 0, a.keys, a.value_depth);
          for (int64_t j = 0; j < a.keys; ++j) {
            std::fill_n(dkh + j * ldq, d, T(0));
            std::fill_n(dvh + j * ldo, dvd, T(0));
          }
          for (int64_t i0 = 0; i0 < a.queries; i0 += block) {
            const int rows = static_cast<int>(std::min(block, a.queries - i0));
            const KeySpan span = a.keys_reached(i0, rows);
            const int kv = static_cast<int>(span.size());
            if (kv == 0) {  // no row reaches a key: dq 0
              for (int r = 0; r < rows; ++r) std::fill_n(dqh + (i0 + r) * ldq, d, T(0));
              continue;
            }
            block_scores(a, qh, ldq, kh, ldk, terms, scale, b, h, i0, rows, span, p.data(),
                         slope.empty() ? nullptr : slope.data());
            const T* dout_blk = douth + i0 * ldo;
            const T* out_blk = outh + i0 * ldo;
            for (int r = 0; r < rows; ++r) {  // p = e^(scale s - lse), 0 outside the row's reach
              const T l = lse[bh * a.queries + i0 + r];
              T* row = p.data() + r * a.keys;
              const int64_t first = a.first_key(i0 + r);
              const int64_t end =
                  l == -std::numeric_limits<T>::infinity() ? first : a.key_end(i0 + r);
              std::fill(row + span.begin, row + first, T(0));
              exp_scaled_shifted(row + first, end - first, exp_scale, l);
              std::fill(row + end, row + span.end, T(0));
            }
            // Over the block's keys (p, dp and ds at their first column): dv += p^T dout;
            // dp = dout v^T
            T* pb = p.data() + span.begin;
            T* dpb = dp.data() + span.begin;
            gemm(true, false, kv, dvd, rows, pb, keys, dout_blk, ldo, dvh + span.begin * ldo, ldo,
                 T(1));
            gemm(false, true, rows, kv, dvd, dout_blk, ldo, vh + span.begin * ldv, ldv, dpb, keys);
            for (int r = 0; r < rows; ++r) {
              const T delta = dot_of(dout_blk + r * ldo, out_blk + r * ldo, dvd);  // dout . out
              const T* pr = pb + r * a.keys;
              T* dpr = dpb + r * a.keys;
              if (slope.empty()) {
                for (int64_t j = 0; j < kv; ++j) dpr[j] = pr[j] * (dpr[j] - delta) * scale;  // ds
              } else {
                const T* sr = slope.data() + r * a.keys + span.begin;
                for (int64_t j = 0; j < kv; ++j) dpr[j] = pr[j] * (dpr[j] - delta) * sr[j];
              }
            }
            // dq = ds k;  dk += ds^T q
            gemm(false, false, rows, d, kv, dpb, keys, kh + span.begin * ldk, ldk, dqh + i0 * ldq,
                 ldq);
            gemm(true, false, kv, d, rows, dpb, keys, qh + i0 * ldq, ldq, dkh + span.begin * ldq,
                 ldq, T(1));
          }
        }
      });
}

void attention_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { attention_typed<decltype(tag)>(ctx); });
}
void attention_backward_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(),
                 [&](auto tag) { attention_backward_typed<decltype(tag)>(ctx); });
}

// dk or dv per query head (attention_backward's) summed over each group of heads / kv_heads
// consecutive query heads sharing a key-value head: the gradient of k or v itself. Group member
// r of every group is the heads r, r + G, r + 2G, ... (a strided slice along the heads dim).
Value sum_head_groups(const Value& per_query_head, int64_t heads, int64_t kv_heads, int heads_dim) {
  if (heads < 0 || kv_heads < 0 || heads == kv_heads) return per_query_head;
  const int64_t group = heads / kv_heads;
  std::vector<Value> members;
  for (int64_t r = 0; r < group; ++r) {
    std::vector<int64_t> begin(4, 0), end(4, std::numeric_limits<int64_t>::max()), step(4, 1);
    begin[heads_dim] = r;
    step[heads_dim] = group;
    members.push_back(slice(per_query_head, begin, end, step));
  }
  return add_n(members);
}

// k or v [B, Hk, T, D] with each key-value head repeated for its group of query heads: [B, H,
// T, D] (query head h reads key-value head h / (H / Hk)).
Value heads_repeated(const Value& kv, int64_t heads) {
  const int64_t kv_heads = kv.shape()[1];
  if (kv_heads == heads) return kv;
  std::vector<int64_t> of_head(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) of_head[static_cast<size_t>(h)] = h / (heads / kv_heads);
  return gather(kv, constant(*kv.graph(), Tensor::from_vector(of_head, {heads})), 1);
}

// The gradient of attention's additive bias (its mask input) given dout: dz summed to the
// bias's shape, where z = scale q k^T + bias are the scores and, with p = e^(z - lse) and
// D = dout . out per row, dz = p (dout v^T - D). Composed of products in the stats dtype (f32
// for 16-bit inputs): it is the [B, H, Tq, Tk] matrix the fused op never forms, so it is built
// only when the bias's gradient is read.
Value bias_gradient(GradContext& c, const Value& dout) {
  const Node& node = c.node();
  const AttentionExtras extras =
      attention_extras(c.num_inputs(), 3, c.input(c.num_inputs() - 1).dtype());
  const Value bias = c.input(extras.mask), lse = c.output(1);
  const bool bthd = attention_layout_is_bthd(node.attr<std::string>("layout"));
  const Shape& q_shape = c.input(0).shape();
  const int64_t heads = q_shape[bthd ? 2 : 1], kv_heads = c.input(1).shape()[bthd ? 2 : 1];
  const int64_t queries = q_shape[bthd ? 1 : 2], keys = c.input(1).shape()[bthd ? 1 : 2];
  const bool causal = node.attr<bool>("causal");
  const int64_t window = node.attr<int64_t>("window");
  const bool positional = causal || window > 0;
  double scale = node.attr<double>("scale");
  KILN_CHECK((scale > 0 || q_shape[3] > 0) && heads >= 0 && kv_heads >= 0 &&
                 (!positional || (queries >= 0 && keys >= 0)),
             GraphError, "[attention] ", node.name(),
             ": the gradient of its bias needs q's depth (or a scale), the heads",
             positional ? " and, causal or windowed, the lengths" : "",
             " known as the graph is built; q ", q_shape, ", k ", c.input(1).shape());
  if (scale == 0) scale = 1 / std::sqrt(static_cast<double>(q_shape[3]));
  auto prepared = [&](Value t) {  // [B, H, T, D] in the stats dtype
    if (bthd) t = transpose(t, {0, 2, 1, 3});
    return t.dtype() == lse.dtype() ? t : cast(t, lse.dtype());
  };
  const Value q = prepared(c.input(0)), k = heads_repeated(prepared(c.input(1)), heads),
              v = heads_repeated(prepared(c.input(2)), heads), out = prepared(c.output(0)),
              dy = prepared(dout);
  Value z = matmul(q, k, false, true) * scale;
  if (const double cap = node.attr<double>("softcap"); cap > 0) z = tanh(z / cap) * cap;
  z = z + (bias.dtype() == lse.dtype() ? bias : cast(bias, lse.dtype()));
  if (positional) {  // key j for query i where i reaches it: j <= p, j > p - window at the
                     // position p = query offset + i
    Graph& g = c.graph();
    const Value key = iota(g, Shape{1, 1, 1, keys}, 3, i64);
    Value query = iota(g, Shape{1, 1, queries, 1}, 2, i64);
    if (extras.query_offset >= 0) {  // bounded as AttentionShape::set_query_offset bounds it
      const Value offset =
          minimum(maximum(c.input(extras.query_offset), -double(queries)), double(keys + window));
      query = query + offset;
    }
    Value reached;
    if (causal) reached = less_equal(key, query);
    if (window > 0) reached = attention_mask_and(reached, greater(key, query - double(window)));
    z = where(reached, z, -std::numeric_limits<double>::infinity());
  }
  // A row that attends nothing has lse -inf and every z -inf: its p is 0, not NaN.
  const Value shift =
      expand_dims(where(equal(lse, -std::numeric_limits<double>::infinity()), 0.0, lse), {3});
  const Value p = exp(z - shift);
  const Value dz = p * (matmul(dy, v, false, true) - sum(dy * out, {3}, true));
  const Value summed = sum_to(dz, bias);
  return summed.dtype() == bias.dtype() ? summed : cast(summed, bias.dtype());
}

AttrMap attention_attrs(const Node& node) {
  return {{"causal", node.attr<bool>("causal")},
          {"window", node.attr<int64_t>("window")},
          {"scale", node.attr<double>("scale")},
          {"softcap", node.attr<double>("softcap")},
          {"layout", node.attr<std::string>("layout")}};
}

KILN_OP(attention)
    .precision(Precision::low)
    .input("q")
    .input("k")
    .input("v")
    .variadic_input("mask_and_query_offset", 0)
    .attr("causal", false)
    .attr("window", int64_t{0})
    .attr("scale", 0.0)
    .attr("softcap", 0.0)
    .attr("layout", std::string("bhtd"))
    .infer(infer_attention)
    .kernel(DeviceKind::cpu, attention_cpu, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      KILN_CHECK(!c.has_grad_output(1), GraphError, "[attention] ", c.node().name(),
                 ": its logsumexp output is not differentiable");
      std::vector<Value> inputs{c.input(0),  c.input(1),  c.input(2),
                                c.output(0), c.output(1), c.grad_output(0)};
      for (int extra = 3; extra < c.num_inputs(); ++extra) inputs.push_back(c.input(extra));
      std::vector<Value> grads =
          c.graph().add_node("attention_backward", inputs, attention_attrs(c.node()));
      const int hd = attention_layout_is_bthd(c.node().attr<std::string>("layout")) ? 2 : 1;
      const int64_t heads = c.input(0).shape()[hd], kv_heads = c.input(1).shape()[hd];
      GradList out{grads[0], sum_head_groups(grads[1], heads, kv_heads, hd),
                   sum_head_groups(grads[2], heads, kv_heads, hd)};
      const AttentionExtras extras =
          attention_extras(c.num_inputs(), 3, c.input(c.num_inputs() - 1).dtype());
      if (extras.mask >= 0) {
        const bool bias = c.input(extras.mask).dtype() != DType::boolean;
        out.push_back(bias && c.wants_grad_input(extras.mask) ? bias_gradient(c, c.grad_output(0))
                                                              : Value());
      }
      if (extras.query_offset >= 0) out.push_back(Value());  // an integer: no gradient
      return out;
    });

KILN_OP(attention_backward)
    .precision(Precision::low)
    .input("q")
    .input("k")
    .input("v")
    .input("out")
    .input("lse")
    .input("dout")
    .variadic_input("mask_and_query_offset", 0)
    .attr("causal", false)
    .attr("window", int64_t{0})
    .attr("scale", 0.0)
    .attr("softcap", 0.0)
    .attr("layout", std::string("bhtd"))
    .infer(infer_attention_backward)
    .kernel(DeviceKind::cpu, attention_backward_cpu, {f32, f64});

}  // namespace
}  // namespace ops

Value attention_mask_and(const Value& mask, const Value& keep) {
  if (!mask.defined()) return keep;
  if (mask.dtype() == DType::boolean) return where(mask, keep, 0.0);
  return where(keep, mask, -std::numeric_limits<double>::infinity());
}

std::vector<double> alibi_slopes(int64_t heads) {
  KILN_CHECK(heads > 0, GraphError, "[alibi] heads must be positive, not ", heads);
  int64_t power = 1;
  while (power * 2 <= heads) power *= 2;
  std::vector<double> slopes;
  for (int64_t h = 1; h <= power; ++h)
    slopes.push_back(std::exp2(-8.0 * double(h) / double(power)));
  for (int64_t k = 1; static_cast<int64_t>(slopes.size()) < heads; k += 2)
    slopes.push_back(std::exp2(-4.0 * double(k) / double(power)));
  return slopes;
}

Value positions_along(const Value& x, int64_t axis, DType dtype, const Value& start) {
  const int64_t rank = x.shape().rank();
  KILN_CHECK(axis >= -rank && axis < rank && is_floating(dtype), GraphError, "[positions_along] ",
             x.name(), ": axis ", axis, " of ", x.shape(), " in a float dtype (", dtype_name(dtype),
             ")");
  if (axis < 0) axis += rank;
  // x's first element along every other dim, as a vector: a ramp of its length by cumsum.
  Value line = x;
  for (int64_t d = 0; d < rank; ++d)
    if (d != axis) line = line.slice(d, 0, 1);
  line = reshape(line, Shape{x.shape()[axis]});
  Value ramp = cumsum(full_like(cast(line, dtype), 1.0), 0, /*exclusive=*/true);
  if (!start.defined()) return ramp;
  KILN_CHECK(is_integer(start.dtype()) && start.shape().numel() == 1, GraphError,
             "[positions_along] ", x.name(),
             ": the start must be an integer scalar (rank 0 or [1]), "
             "got ",
             dtype_name(start.dtype()), " ", start.shape());
  return ramp + cast(reshape(start, Shape{}), dtype);
}

Value alibi_bias(int64_t heads, const Value& query_positions, const Value& key_positions,
                 DType dtype, bool symmetric) {
  Graph& graph = common_graph("alibi_bias", {&query_positions, &key_positions});
  KILN_CHECK(query_positions.shape().rank() == 1 && key_positions.shape().rank() == 1 &&
                 is_floating(dtype),
             GraphError, "[alibi] needs positions as vectors and a float dtype: queries ",
             query_positions.shape(), ", keys ", key_positions.shape(), ", ", dtype_name(dtype));
  const Tensor slopes =
      Tensor::from_vector<double>(alibi_slopes(heads), Shape{heads, 1, 1}).cast(dtype);
  const auto as_dtype = [&](const Value& v) { return v.dtype() == dtype ? v : cast(v, dtype); };
  // distance[i, j] = key j's position - query i's, [1, Tq, Tk].
  Value distance =
      expand_dims(as_dtype(key_positions), {0, 1}) - expand_dims(as_dtype(query_positions), {0, 2});
  if (symmetric) distance = -abs(distance);
  return graph.constant(slopes, "alibi_slopes") * distance;
}

Value alibi_bias(Graph& graph, int64_t heads, int64_t queries, int64_t keys, DType dtype,
                 bool symmetric) {
  KILN_CHECK(queries >= 0 && keys >= 0 && is_floating(dtype), GraphError,
             "[alibi] needs known lengths and a float dtype: ", queries, " queries, ", keys,
             " keys, ", dtype);
  return alibi_bias(heads, iota(graph, Shape{queries}, 0, dtype),
                    iota(graph, Shape{keys}, 0, dtype), dtype, symmetric);
}

int64_t relative_position_bucket(int64_t relative, bool bidirectional, int64_t buckets,
                                 int64_t max_distance) {
  const int64_t per_side = bidirectional ? buckets / 2 : buckets, exact = per_side / 2;
  KILN_CHECK(exact >= 1 && max_distance > exact, GraphError, "[relative_position_bucket] ", buckets,
             " buckets (", bidirectional ? "bidirectional" : "one direction", ") need at least ",
             bidirectional ? 4 : 2, ", and max_distance ", max_distance, " must exceed the ", exact,
             " exact distances");
  int64_t bucket = 0, distance = 0;
  if (bidirectional) {
    if (relative > 0) bucket = per_side;
    distance = relative < 0 ? -relative : relative;
  } else {
    distance = relative < 0 ? -relative : 0;
  }
  if (distance < exact) return bucket + distance;
  // exact + (per_side - exact) log(distance / exact) / log(max_distance / exact), truncated, in
  // f32 as transformers computes it (its log's argument and the quotient are f32 tensors).
  const float logarithmic =
      std::log(static_cast<float>(distance) / static_cast<float>(exact)) /
      static_cast<float>(std::log(static_cast<double>(max_distance) / static_cast<double>(exact))) *
      static_cast<float>(per_side - exact);
  return bucket + std::min(exact + static_cast<int64_t>(logarithmic), per_side - 1);
}

Value relative_position_buckets(Graph& graph, int64_t queries, int64_t keys, bool bidirectional,
                                int64_t buckets, int64_t max_distance) {
  KILN_CHECK(queries >= 0 && keys >= 0, GraphError,
             "[relative_position_buckets] needs known lengths: ", queries, " queries, ", keys,
             " keys");
  std::vector<int64_t> table(static_cast<size_t>(queries * keys));
  for (int64_t i = 0; i < queries; ++i)
    for (int64_t j = 0; j < keys; ++j)
      table[static_cast<size_t>(i * keys + j)] =
          relative_position_bucket(j - i, bidirectional, buckets, max_distance);
  return graph.constant(Tensor::from_vector(table, {queries, keys}), "relative_position_buckets");
}

Value scaled_dot_product_attention(const Value& q, const Value& k, const Value& v,
                                   const AttentionOptions& options) {
  Graph& graph = options.mask.defined()
                     ? common_graph("scaled_dot_product_attention", {&q, &k, &v, &options.mask})
                     : common_graph("scaled_dot_product_attention", {&q, &k, &v});
  Value mask = options.mask;
  if (mask.defined()) {
    // A mask of lower rank broadcasts from the right, as NumPy's and PyTorch's: [Tq, Tk] is
    // [1, 1, Tq, Tk].
    const int64_t rank = mask.shape().rank();
    std::vector<int64_t> leading;
    for (int64_t d = 0; d < 4 - rank; ++d) leading.push_back(d);
    if (rank >= 1 && rank < 4) mask = expand_dims(mask, leading);
  }
  KILN_CHECK(options.window >= 0, GraphError, "[attention] a sliding window (", options.window,
             ") must be positive (or 0 for none)");
  std::vector<Value> inputs{q, k, v};
  if (mask.defined()) inputs.push_back(mask);
  if (options.query_offset.defined()) {
    const Value& offset = options.query_offset;
    KILN_CHECK(offset.graph() == &graph, GraphError,
               "[attention] the query offset belongs to another graph");
    KILN_CHECK(is_integer(offset.dtype()) && offset.shape().rank() == 0, GraphError,
               "[attention] the query offset must be an integer scalar, got ", offset.dtype(), " ",
               offset.shape());
    inputs.push_back(offset.dtype() == DType::i64 ? offset : cast(offset, DType::i64));
  }
  return graph.add_node("attention", inputs,
                        {{"causal", options.causal},
                         {"window", options.window},
                         {"scale", options.scale},
                         {"softcap", options.softcap},
                         {"layout", options.layout}})[0];
}

}  // namespace kiln
