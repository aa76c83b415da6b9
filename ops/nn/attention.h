// The sizes of an attention problem (see attention.cc), shared by its CPU and CUDA kernels.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/framework/dtype.h"
#include "kiln/framework/shape.h"

namespace kiln {
class KernelContext;
}

namespace kiln::ops {

/// Keys [begin, end) of an attention problem.
struct KeySpan {
  int64_t begin = 0, end = 0;
  KILN_HOST_DEVICE int64_t size() const { return end - begin; }
};

struct AttentionShape {
  int64_t batch = 0, heads = 0, queries = 0, keys = 0, depth = 0, value_depth = 0;
  /// The heads of k and v: `heads`, or a divisor of it (grouped-query attention: the `heads /
  /// kv_heads` consecutive query heads of a group read one key-value head).
  int64_t kv_heads = 0;
  /// Element strides of the bool mask along [B, H, Tq, Tk] (0 where it broadcasts).
  int64_t mask_strides[4] = {0, 0, 0, 0};
  /// Layout "bthd": q, k, v, out (and their gradients) are [B, T, H, D], the heads of a
  /// [B, T, H * D] projection read in place; otherwise "bhtd", [B, H, T, D].
  bool bthd = false;
  /// The keys a query reaches by position, query i standing at key position query_offset + i
  /// (0: top-left aligned, as PyTorch's is_causal; Tk - Tq: bottom-right; a KV cache's position
  /// in cached decoding): with `causal` keys j <= position, with a sliding `window` > 0 keys
  /// j > position - window. The kernels compute no product outside the reach (beyond the edges
  /// of their blocks); a mask narrows it further.
  bool causal = false;
  int64_t window = 0;
  /// Set through set_query_offset (which bounds it), from the op's query_offset input.
  int64_t query_offset = 0;

  /// Takes an offset read from a tensor: any value, bounded to [-queries, keys + window], which
  /// reaches the same keys from every query as the value itself (below, every position is
  /// negative; above, every causal query reaches all keys and every windowed one none) and
  /// keeps the positions' arithmetic far from overflow.
  KILN_HOST_DEVICE void set_query_offset(int64_t offset) {
    const int64_t low = -queries, high = keys + window;
    query_offset = offset < low ? low : offset > high ? high : offset;
  }
  /// The key position query i stands at.
  KILN_HOST_DEVICE int64_t position(int64_t i) const { return query_offset + i; }
  /// The first key query i reaches (keys where it reaches none past the end).
  KILN_HOST_DEVICE int64_t first_key(int64_t i) const {
    const int64_t p = position(i);
    const int64_t first = window > 0 && p >= window ? p - window + 1 : 0;
    return first < keys ? first : keys;
  }
  /// One past the last key query i reaches: first_key(i) <= key_end(i) <= keys.
  KILN_HOST_DEVICE int64_t key_end(int64_t i) const {
    const int64_t end = causal && position(i) + 1 < keys ? position(i) + 1 : keys;
    return end > first_key(i) ? end : first_key(i);
  }
  /// The keys query rows [i0, i0 + rows) reach together (first_key and key_end are monotone in
  /// the row; rows past the queries reach what the last one does), begin rounded down to a
  /// multiple of `align` (a vector's lanes, a kernel's step): the keys a block multiplies.
  KILN_HOST_DEVICE KeySpan keys_reached(int64_t i0, int64_t rows, int64_t align = 1) const {
    const int64_t last = (i0 + rows < queries ? i0 + rows : queries) - 1;
    return {first_key(i0) / align * align, key_end(last)};
  }
  /// Whether query i reaches key j (j < keys).
  KILN_HOST_DEVICE bool reaches(int64_t i, int64_t j) const {
    return j >= first_key(i) && j < key_end(i);
  }
  /// The first query that reaches key j (queries where none does past the end).
  KILN_HOST_DEVICE int64_t first_query(int64_t j) const {
    if (!causal) return 0;
    const int64_t first = j - query_offset;  // position(first) == j
    return first < 0 ? 0 : first < queries ? first : queries;
  }
  /// One past the last query that reaches key j: first_query(j) <= query_end(j) <= queries.
  KILN_HOST_DEVICE int64_t query_end(int64_t j) const {
    const int64_t last_reaching = j + window - query_offset;  // position(i) < j + window
    const int64_t end = window > 0 && last_reaching < queries ? last_reaching : queries;
    return end > first_query(j) ? end : first_query(j);
  }

  /// Element offset of row i of batch-and-head bh (b * heads + h) in a tensor of `length` rows
  /// of `depth` per head.
  KILN_HOST_DEVICE int64_t row_offset(int64_t bh, int64_t i, int64_t length, int64_t depth) const {
    if (!bthd) return (bh * length + i) * depth;
    return ((bh / heads * length + i) * heads + bh % heads) * depth;
  }
  /// Elements from one row of a head to the next.
  KILN_HOST_DEVICE int64_t row_stride(int64_t depth) const { return bthd ? heads * depth : depth; }

  /// The batch-and-head of k and v that batch-and-head bh of q reads: query head h reads
  /// key-value head h / (heads / kv_heads) (PyTorch's enable_gqa, repeat_interleave's order).
  KILN_HOST_DEVICE int64_t kv_of(int64_t bh) const {
    return bh / heads * kv_heads + bh % heads / (heads / kv_heads);
  }
  /// Element offset of key row j, `depth` per head, that batch-and-head bh of q reads in k or v.
  /// The gradients dk and dv are per query head (row_offset): a gradient sums their groups.
  KILN_HOST_DEVICE int64_t kv_row_offset(int64_t bh, int64_t j, int64_t depth) const {
    const int64_t bk = kv_of(bh);
    if (!bthd) return (bk * keys + j) * depth;
    return ((bk / kv_heads * keys + j) * kv_heads + bk % kv_heads) * depth;
  }
  /// Elements from one row of a key-value head to the next.
  KILN_HOST_DEVICE int64_t kv_row_stride(int64_t depth) const {
    return bthd ? kv_heads * depth : depth;
  }
};

/// What the CPU kernels do to the scores beyond q k^T: the mask input (a bool mask or an
/// additive bias, at most one non-null) and the softcap (0: none).
template <typename T>
struct ScoreTerms {
  const bool* keep = nullptr;
  const T* bias = nullptr;
  T softcap = 0;
  /// Whether the score computation scales the scores itself (to add a bias or cap them).
  bool scaled_here() const { return bias != nullptr || softcap > 0; }
  /// The factor the kernels' exponentials apply to the scores they are given: the scale, or 1
  /// where the score computation applied it.
  T exp_scale(T scale) const { return scaled_here() ? T(1) : scale; }
};

/// Whether the layout attribute says [B, T, H, D] ("bthd") rather than [B, H, T, D] ("bhtd").
bool attention_layout_is_bthd(const std::string& layout);

/// The problem of q, k, v in `layout` ("bhtd": [B, H, Tq, D], [B, H, Tk, D], [B, H, Tk, Dv];
/// "bthd": [B, Tq, H, D] etc.) and the mask's shape (or nullptr), reaching keys as `causal`
/// and `window` say. Throws kiln::Error naming `where` when the mask, known only now, does not
/// broadcast to the scores [B, H, Tq, Tk].
AttentionShape attention_shape(const Shape& q, const Shape& k, const Shape& v, const Shape* mask,
                               const std::string& layout, bool causal, int64_t window,
                               const std::string& where);

/// Where an attention (or attention_backward) node's optional inputs are, after its `first` 3
/// (6): a mask (bool, or a bias of q's dtype) and then a query offset (an int64 scalar), each
/// -1 where absent.
struct AttentionExtras {
  int mask = -1, query_offset = -1;
};
/// The extras of a node with `inputs` inputs, the last of dtype `last`.
AttentionExtras attention_extras(int inputs, int first, DType last);

/// The problem of an attention or attention_backward node's kernel (its optional inputs after
/// input `first`): its inputs' shapes and its attributes. The query offset is not read (it may
/// be in device memory): read_query_offset sets it on the CPU.
AttentionShape attention_shape(const KernelContext& ctx, int first);
/// Sets a.query_offset from the node's query offset input, if it has one (host memory).
void read_query_offset(const KernelContext& ctx, int first, AttentionShape& a);

/// Whether this build has the f32 CPU kernels on register-blocked tiles (attention_tiled.cc:
/// AVX-512, or AVX2 and FMA); the others run attention's products through the gemm path.
bool attention_tiles_available();

/// attention in f32 on the CPU through register-blocked tiles: out and lse (see attention.cc)
/// for problem `a`, with `scale` resolved. Only where attention_tiles_available().
void attention_forward_tiles(KernelContext& ctx, const AttentionShape& a, float scale,
                             const float* q, const float* k, const float* v,
                             const ScoreTerms<float>& terms, float* out, float* lse);

/// attention_backward in f32 on the CPU through register-blocked tiles: dq, dk, dv.
void attention_backward_tiles(KernelContext& ctx, const AttentionShape& a, float scale,
                              const float* q, const float* k, const float* v, const float* out,
                              const float* lse, const float* dout, const ScoreTerms<float>& terms,
                              float* dq, float* dk, float* dv);

}  // namespace kiln::ops
