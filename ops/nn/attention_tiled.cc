// attention and attention_backward in f32 on the CPU, on register-blocked tiles (small_gemm.h):
// the math of attention.cc, with every product done where its operands sit in L1 or L2.
//
// One (b, h) per task. Its keys are packed once: K^T [D, Tk] (the scores' right operand, rows
// of keys contiguous), K [Tk, D] and V [Tk, Dv] contiguous (the [B, T, H, D] layout puts a
// head's rows 1 KiB apart, which crowds L1's sets), and for the backward V^T [Dv, Tk].
// Query rows go in tiles of small_gemm::kRows. A tile's products span only the keys its rows
// reach (AttentionShape: causal, a sliding window): with causal masking they stop at its last
// row's last key, so only a 6-row sliver of the masked triangle is ever computed (blocks of 64
// rows through a library gemm computed half of each diagonal block); a window starts them at
// its first row's first key (rounded down to a vector).
//
// The backward takes query rows in chunks of kChunk: each tile of the chunk computes its own
// p, ds and dq; the chunk then adds p^T dout to dv and ds^T q to dk (products of depth
// kChunk). dk and dv are summed in packed per-task buffers and written out once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kiln/framework/kernel.h"
#include "kiln/ops/math/small_gemm.h"
#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn/attention.h"
#include "kiln/ops/nn/attention_scores.h"

namespace kiln::ops {

#if defined(KILN_HAS_SMALL_GEMM)

bool attention_tiles_available() {
  return true;
}

namespace {

constexpr int64_t kTile = small_gemm::kRows;
constexpr int64_t kChunk = 36;  // query rows per chunk of the backward: 6 tiles
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// rows x cols (row stride ld) into dst [rows, cols].
void pack(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  for (int64_t i = 0; i < rows; ++i) small_gemm::copy_row(src + i * ld, cols, dst + i * cols);
}

// rows x cols (row stride ld) transposed into dst [cols, rows] with row stride ldd: blocks of a
// vector's lanes square in registers, the edges element by element.
void pack_transposed(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst,
                     int64_t ldd) {
  constexpr int64_t kBlock = small_gemm::Simd::kLanes;
  const int64_t full_rows = rows / kBlock * kBlock, full_cols = cols / kBlock * kBlock;
  for (int64_t i0 = 0; i0 < full_rows; i0 += kBlock)
    for (int64_t j0 = 0; j0 < full_cols; j0 += kBlock)
      small_gemm::transpose_block(src + i0 * ld + j0, ld, dst + j0 * ldd + i0, ldd);
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t i = j < full_cols ? full_rows : 0; i < rows; ++i)
      dst[j * ldd + i] = src[i * ld + j];
}

// n rounded up to whole vectors of 16 floats.
int64_t whole_vectors(int64_t n) {
  return (n + 15) / 16 * 16;
}

// The row stride of a packed transpose of `keys` columns: a multiple of 16 floats, and not of
// 64 (rows a multiple of 256 bytes apart would crowd into a quarter of L1's sets or fewer).
int64_t transposed_stride(int64_t keys) {
  const int64_t padded = whole_vectors(keys);
  return padded % 64 == 0 ? padded + 16 : padded;
}

// The keys a tile of query rows [i0, i0 + rows) computes: those its rows reach together, the
// first rounded down to a whole vector (so the score rows' vectors stay aligned to the buffer's).
KeySpan tile_keys(const AttentionShape& a, int64_t i0, int64_t rows) {
  return a.keys_reached(i0, rows, small_gemm::Simd::kLanes);
}

// kv rounded up to whole vectors, at most `limit` (a score buffer's row stride): the columns the
// score products compute, so that no tile ends in a masked vector (a masked store costs ~12
// cycles on Zen 3). The columns past kv hold products of padding, never read.
int64_t whole_vector_columns(int64_t kv, int64_t limit) {
  constexpr int64_t kLanes = small_gemm::Simd::kLanes;
  return std::min(limit, (kv + kLanes - 1) / kLanes * kLanes);
}

using Vec = small_gemm::Simd::Vec;

// Folds positions [0, n) of a row into two vectors of lanes (two chains, for the latency):
// step(acc, j) takes the whole vector at j, last(acc, j, mask) the partial one at the end; the
// two vectors are then joined lane by lane.
template <typename Step, typename Last, typename Join>
Vec fold_row(int64_t n, Vec init, const Step& step, const Last& last, const Join& join) {
  using Simd = small_gemm::Simd;
  constexpr int64_t kLanes = Simd::kLanes;
  Vec a = init, b = init;
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    a = step(a, j);
    b = step(b, j + kLanes);
  }
  if (j + kLanes <= n) {
    a = step(a, j);
    j += kLanes;
  }
  if (j < n) b = last(b, j, Simd::first(n - j));
  return join(a, b);
}

// The largest of row[0, n), NaNs passed over (as max_of); -inf when there is none. A row's max
// costs a few cycles past its loads, where max_of's 16 scalar lanes cost ~60 (as much as the
// row's exponentials: the forward's softmax was 28% of its time).
float row_max(const float* row, int64_t n) {
  using Simd = small_gemm::Simd;
  return Simd::reduce_max(fold_row(
      n, Simd::broadcast(kMinusInf),
      [&](Vec acc, int64_t j) { return Simd::max(Simd::load(row + j), acc); },
      [&](Vec acc, int64_t j, Simd::Mask m) {
        return Simd::max(Simd::load_first_or(row + j, m, kMinusInf), acc);
      },
      [](Vec a, Vec b) { return Simd::max(a, b); }));
}

// The sum of a[j] b[j] over [0, n).
float row_dot(const float* a, const float* b, int64_t n) {
  using Simd = small_gemm::Simd;
  return Simd::reduce_add(fold_row(
      n, Simd::zero(),
      [&](Vec acc, int64_t j) { return Simd::fma(Simd::load(a + j), Simd::load(b + j), acc); },
      [&](Vec acc, int64_t j, Simd::Mask m) {
        return Simd::fma(Simd::load_first(a + j, m), Simd::load_first(b + j, m), acc);
      },
      [](Vec x, Vec y) { return Simd::add(x, y); }));
}

// The sum of row[0, n).
float row_sum(const float* row, int64_t n) {
  using Simd = small_gemm::Simd;
  return Simd::reduce_add(fold_row(
      n, Simd::zero(), [&](Vec acc, int64_t j) { return Simd::add(acc, Simd::load(row + j)); },
      [&](Vec acc, int64_t j, Simd::Mask m) {
        return Simd::add(acc, Simd::load_first(row + j, m));
      },
      [](Vec x, Vec y) { return Simd::add(x, y); }));
}

// The packed keys of one (b, h), and the backward's sums and chunk buffers: one per pool
// thread, kept between calls (freeing ~200 KiB per call made glibc trim its heap, and every
// trim cost a TLB shootdown across the cores).
struct HeadBuffers {
  std::vector<float> kt, k, v, vt;    // K^T [D, Tk], K [Tk, D], V [Tk, Dv], V^T [Dv, Tk]
  std::vector<float> dk_sum, dv_sum;  // [Tk, D], [Tk, Dv]
  std::vector<float> p, ds;  // the forward's s [kTile, Tk]; the backward's p, ds of a chunk
  std::vector<float> slope;  // the backward's d s / d(q k^T) of a tile, under a softcap

  static HeadBuffers& of_this_thread() {
    thread_local HeadBuffers buffers;
    return buffers;
  }
};

// Scores of query rows [i0, i0 + rows) (q at the head's first row, rows ldq apart) against
// keys `span`: s [rows, ...] with row stride lds, key j in column j (columns past span.end up to
// a whole vector hold products of padding, never read), -inf where the mask hides a key. Raw
// q k^T (the callers' exponentials scale them), except with a bias or a softcap: then
// softcap(scale q k^T) + bias, and `slope` (when given, row stride lds) receives d s / d(q k^T),
// scale (1 - tanh^2), as attention.cc's block_scores.
void tile_scores(const AttentionShape& a, const float* qh, int64_t ldq, const float* kt,
                 int64_t ldkt, const ScoreTerms<float>& terms, float scale, int64_t bh, int64_t i0,
                 int64_t rows, KeySpan span, float* s, int64_t lds, float* slope = nullptr) {
  small_gemm::multiply(rows, whole_vector_columns(span.size(), lds - span.begin), a.depth,
                       qh + i0 * ldq, ldq, 1, kt + span.begin, ldkt, s + span.begin, lds, false);
  if (!terms.scaled_here() && terms.keep == nullptr) return;
  for (int64_t r = 0; r < rows; ++r)
    apply_score_terms(terms, a, scale, bh / a.heads, bh % a.heads, i0 + r, span.begin, span.end,
                      s + r * lds, slope != nullptr ? slope + r * lds : nullptr);
}

}  // namespace

void attention_forward_tiles(KernelContext& ctx, const AttentionShape& a, float scale,
                             const float* q, const float* k, const float* v,
                             const ScoreTerms<float>& terms, float* out, float* lse) {
  const float exp_scale = terms.exp_scale(scale);
  const int64_t ldq = a.row_stride(a.depth), ldo = a.row_stride(a.value_depth);  // q; out
  const int64_t ldk = a.kv_row_stride(a.depth), ldv = a.kv_row_stride(a.value_depth);
  ctx.parallel_for(
      a.batch * a.heads, a.queries * a.keys * (a.depth + a.value_depth) * 2,
      [&](int64_t t0, int64_t t1) {
        HeadBuffers& buffers = HeadBuffers::of_this_thread();
        const int64_t ldkt = transposed_stride(a.keys);
        float* kt = small_gemm::at_least(buffers.kt, a.depth * ldkt);
        float* vp = small_gemm::at_least(buffers.v, a.keys * a.value_depth);
        const int64_t lds = whole_vectors(a.keys);
        float* s = small_gemm::at_least(buffers.p, kTile * lds);
        float inverse_sums[kTile];
        // Every tile's keys lie within the first tile's first and the last tile's end (the
        // reach is monotone): a cached step's past the position are never packed.
        const KeySpan reach = a.queries > 0 ? tile_keys(a, 0, a.queries) : KeySpan{};
        int64_t packed = -1;  // the key-value head in kt and vp: a group's heads pack it once
        for (int64_t bh = t0; bh < t1; ++bh) {
          const float* qh = q + a.row_offset(bh, 0, a.queries, a.depth);
          if (a.kv_of(bh) != packed) {  // the keys some tile reaches, in their places
            pack_transposed(k + a.kv_row_offset(bh, reach.begin, a.depth), reach.size(), a.depth,
                            ldk, kt + reach.begin, ldkt);
            pack(v + a.kv_row_offset(bh, reach.begin, a.value_depth), reach.size(), a.value_depth,
                 ldv, vp + reach.begin * a.value_depth);
            packed = a.kv_of(bh);
          }
          for (int64_t i0 = 0; i0 < a.queries; i0 += kTile) {
            const int64_t rows = std::min(kTile, a.queries - i0);
            const KeySpan span = tile_keys(a, i0, rows);
            float* out_tile = out + a.row_offset(bh, i0, a.queries, a.value_depth);
            if (span.size() == 0) {  // no row reaches a key: out 0, lse -inf
              for (int64_t r = 0; r < rows; ++r) {
                std::fill_n(out_tile + r * ldo, a.value_depth, 0.0f);
                lse[bh * a.queries + i0 + r] = kMinusInf;
              }
              continue;
            }
            tile_scores(a, qh, ldq, kt, ldkt, terms, scale, bh, i0, rows, span, s, lds);
            // p = e^(scale (s - max)) unnormalized, 0 outside the row's reach; out = (p v) / sum p.
            for (int64_t r = 0; r < rows; ++r) {
              float* row = s + r * lds;
              const int64_t first = a.first_key(i0 + r), end = a.key_end(i0 + r);
              const float m = row_max(row + first, end - first);
              float* lse_at = lse + bh * a.queries + i0 + r;
              std::fill(row + span.begin, row + first, 0.0f);
              if (m == kMinusInf) {  // nothing to attend: out 0
                std::fill(row + first, row + span.end, 0.0f);
                inverse_sums[r] = 0;
                *lse_at = m;
                continue;
              }
              exp_scaled_shifted_each(row + first, end - first, exp_scale, exp_scale * m);
              const float sum = row_sum(row + first, end - first);
              std::fill(row + end, row + span.end, 0.0f);
              inverse_sums[r] = 1 / sum;
              *lse_at = exp_scale * m + std::log(sum);
            }
            small_gemm::multiply(rows, a.value_depth, span.size(), s + span.begin, lds, 1,
                                 vp + span.begin * a.value_depth, a.value_depth, out_tile, ldo,
                                 false);
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < a.value_depth; ++c) out_tile[r * ldo + c] *= inverse_sums[r];
          }
        }
      });
}

void attention_backward_tiles(KernelContext& ctx, const AttentionShape& a, float scale,
                              const float* q, const float* k, const float* v, const float* out,
                              const float* lse, const float* dout, const ScoreTerms<float>& terms,
                              float* dq, float* dk, float* dv) {
  const int64_t d = a.depth, dvd = a.value_depth, keys = a.keys;
  const float exp_scale = terms.exp_scale(scale);
  const int64_t ldq = a.row_stride(d), ldo = a.row_stride(dvd);        // q, dq, dk; out, dout, dv
  const int64_t ldk = a.kv_row_stride(d), ldv = a.kv_row_stride(dvd);  // k; v
  ctx.parallel_for(
      a.batch * a.heads, a.queries * keys * (d + dvd) * 4, [&](int64_t t0, int64_t t1) {
        HeadBuffers& buffers = HeadBuffers::of_this_thread();
        const int64_t ldkt = transposed_stride(keys);  // of K^T and V^T
        float* kt = small_gemm::at_least(buffers.kt, d * ldkt);
        float* kp = small_gemm::at_least(buffers.k, keys * d);
        float* vt = small_gemm::at_least(buffers.vt, dvd * ldkt);
        float* dk_sum = small_gemm::at_least(buffers.dk_sum, keys * d);
        float* dv_sum = small_gemm::at_least(buffers.dv_sum, keys * dvd);
        const int64_t lds = whole_vectors(keys);  // of p and ds
        float* p = small_gemm::at_least(buffers.p, kChunk * lds);
        float* ds = small_gemm::at_least(buffers.ds, kChunk * lds);
        float* slope =
            terms.softcap > 0 ? small_gemm::at_least(buffers.slope, kTile * lds) : nullptr;
        // Every tile's keys (as the forward's).
        const KeySpan reach = a.queries > 0 ? tile_keys(a, 0, a.queries) : KeySpan{};
        int64_t packed = -1;  // the key-value head in kt, kp and vt
        for (int64_t bh = t0; bh < t1; ++bh) {
          const float* qh = q + a.row_offset(bh, 0, a.queries, d);
          const float* outh = out + a.row_offset(bh, 0, a.queries, dvd);
          const float* douth = dout + a.row_offset(bh, 0, a.queries, dvd);
          float* dqh = dq + a.row_offset(bh, 0, a.queries, d);
          if (a.kv_of(bh) != packed) {  // the keys some tile reaches, in their places
            const float* kr = k + a.kv_row_offset(bh, reach.begin, d);
            pack_transposed(kr, reach.size(), d, ldk, kt + reach.begin, ldkt);
            pack(kr, reach.size(), d, ldk, kp + reach.begin * d);
            pack_transposed(v + a.kv_row_offset(bh, reach.begin, dvd), reach.size(), dvd, ldv,
                            vt + reach.begin, ldkt);
            packed = a.kv_of(bh);
          }
          std::fill_n(dk_sum, keys * d, 0.0f);
          std::fill_n(dv_sum, keys * dvd, 0.0f);
          for (int64_t c0 = 0; c0 < a.queries; c0 += kChunk) {
            const int64_t chunk_rows = std::min(kChunk, a.queries - c0);
            const KeySpan chunk_span = tile_keys(a, c0, chunk_rows);
            for (int64_t i0 = c0; i0 < c0 + chunk_rows; i0 += kTile) {
              const int64_t rows = std::min(kTile, c0 + chunk_rows - i0);
              const KeySpan span = tile_keys(a, i0, rows);  // within chunk_span
              float* pt = p + (i0 - c0) * lds;
              float* dst = ds + (i0 - c0) * lds;
              if (span.size() == 0) {  // no row reaches a key: dq 0, nothing for dk and dv
                for (int64_t r = 0; r < rows; ++r) {
                  std::fill_n(dqh + (i0 + r) * ldq, d, 0.0f);
                  std::fill(pt + r * lds + chunk_span.begin, pt + r * lds + chunk_span.end, 0.0f);
                  std::fill(dst + r * lds + chunk_span.begin, dst + r * lds + chunk_span.end, 0.0f);
                }
                continue;
              }
              tile_scores(a, qh, ldq, kt, ldkt, terms, scale, bh, i0, rows, span, pt, lds, slope);
              // p = e^(scale s - lse), 0 outside the row's reach (over the chunk's keys)
              for (int64_t r = 0; r < rows; ++r) {
                const float l = lse[bh * a.queries + i0 + r];
                float* row = pt + r * lds;
                const int64_t first = a.first_key(i0 + r);
                const int64_t end = l == kMinusInf ? first : a.key_end(i0 + r);
                std::fill(row + chunk_span.begin, row + first, 0.0f);
                exp_scaled_shifted_each(row + first, end - first, exp_scale, l);
                std::fill(row + end, row + chunk_span.end, 0.0f);
              }
              // dp = dout v^T over the tile's keys, then ds = p (dp - D) scale in its place
              // (the slope for scale under a softcap), with D = dout . out; 0 over the rest of
              // the chunk's keys.
              small_gemm::multiply(rows, whole_vector_columns(span.size(), lds - span.begin), dvd,
                                   douth + i0 * ldo, ldo, 1, vt + span.begin, ldkt,
                                   dst + span.begin, lds, false);
              for (int64_t r = 0; r < rows; ++r) {
                const float* dout_row = douth + (i0 + r) * ldo;
                const float* out_row = outh + (i0 + r) * ldo;
                const float delta = row_dot(dout_row, out_row, dvd);
                const float* pr = pt + r * lds;
                float* dsr = dst + r * lds;
                if (slope == nullptr) {
                  for (int64_t j = span.begin; j < span.end; ++j)
                    dsr[j] = pr[j] * (dsr[j] - delta) * scale;
                } else {
                  const float* sr = slope + r * lds;
                  for (int64_t j = span.begin; j < span.end; ++j)
                    dsr[j] = pr[j] * (dsr[j] - delta) * sr[j];
                }
                std::fill(dsr + chunk_span.begin, dsr + span.begin, 0.0f);
                std::fill(dsr + span.end, dsr + chunk_span.end, 0.0f);
              }
              small_gemm::multiply(rows, d, span.size(), dst + span.begin, lds, 1,
                                   kp + span.begin * d, d, dqh + i0 * ldq, ldq, false);
            }
            if (chunk_span.size() == 0) continue;
            // Over the chunk's keys: dv += p^T dout;  dk += ds^T q
            small_gemm::multiply(chunk_span.size(), dvd, chunk_rows, p + chunk_span.begin, 1, lds,
                                 douth + c0 * ldo, ldo, dv_sum + chunk_span.begin * dvd, dvd, true);
            small_gemm::multiply(chunk_span.size(), d, chunk_rows, ds + chunk_span.begin, 1, lds,
                                 qh + c0 * ldq, ldq, dk_sum + chunk_span.begin * d, d, true);
          }
          float* dkh = dk + a.row_offset(bh, 0, keys, d);
          float* dvh = dv + a.row_offset(bh, 0, keys, dvd);
          for (int64_t j = 0; j < keys; ++j) {
            small_gemm::copy_row(dk_sum + j * d, d, dkh + j * ldq);
            small_gemm::copy_row(dv_sum + j * dvd, dvd, dvh + j * ldo);
          }
        }
      });
}

#else

bool attention_tiles_available() {
  return false;
}

void attention_forward_tiles(KernelContext&, const AttentionShape&, float, const float*,
                             const float*, const float*, const ScoreTerms<float>&, float*, float*) {
  throw Error("attention_forward_tiles: this build has no register-blocked tiles");
}

void attention_backward_tiles(KernelContext&, const AttentionShape&, float, const float*,
                              const float*, const float*, const float*, const float*, const float*,
                              const ScoreTerms<float>&, float*, float*, float*) {
  throw Error("attention_backward_tiles: this build has no register-blocked tiles");
}

#endif  // KILN_HAS_SMALL_GEMM

}  // namespace kiln::ops
