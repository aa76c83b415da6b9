// The tensor-core attention kernels (ops/nn/attention_flash.h: the bodies attention.cu runs on
// the GPU) run on the CPU through the thread-block emulator, against attention in double
// precision on the same inputs: out, lse, dq, dk and dv for f16, bf16 and f32 (3xTF32), depths
// 32, 64 and 128, causal and masked problems, a query row that sees no key, both layouts, and
// sizes that leave a block or a step partly past the end. The forward and dq kernels with 32
// query rows a warp (where T and D allow it) must give the bits of those with 16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "kiln/ops/nn/attention_flash.h"
#include "ops/simt_emulator.h"

namespace kiln {
namespace {

namespace flash = ops::flash;
using testing::CopyTiming;
using testing::EmulatedEnv;
using testing::run_emulated_grid;

struct Case {
  int64_t batch, heads, queries, keys;
  bool causal = false;
  bool bthd = false;
  bool mask = false;         // a [Tq, Tk] mask over every (b, h); query row 3 sees no key
  int64_t kv_heads = 0;      // of k and v: 0 for `heads`, or a divisor (grouped-query attention)
  int64_t window = 0;        // a sliding window: query i sees keys j > i - window (0: none)
  int64_t query_offset = 0;  // query i stands at key position query_offset + i (i above)
  bool bias = false;         // an additive [Tq, Tk] bias over every (b, h) instead of the mask;
                             // query row 3 gets -inf everywhere (it sees no key)
  double softcap = 0;        // scores capped to c tanh(s / c) (0: none)

  int64_t key_value_heads() const { return kv_heads > 0 ? kv_heads : heads; }
};

template <typename T>
using Element = flash::Element<T>;

// What the kernels read and write of a T (16-bit bits, or the float), as a number.
template <typename T>
double value_of(Element<T> e) {
  if constexpr (std::is_same_v<T, float>)
    return e;
  else
    return T::to_float(e);
}
template <typename T>
Element<T> element_of(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return T(x).bits;
}
// An element that is NaN: outputs start as it, so one never written fails the comparison.
template <typename T>
Element<T> poison() {
  if constexpr (std::is_same_v<T, float>)
    return NAN;
  else
    return 0xffff;
}

// A problem's tensors: elements for the kernels, their values for the reference.
template <typename T>
struct Tensors {
  std::vector<Element<T>> q, k, v, dout;
  std::vector<double> qd, kd, vd, doutd;
  std::vector<char> mask;        // [Tq][Tk]
  std::vector<Element<T>> bias;  // [Tq][Tk]
  std::vector<double> biasd;
};

template <typename T>
void fill(std::vector<Element<T>>& elements, std::vector<double>& values, size_t n, double range,
          std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(static_cast<float>(-range), static_cast<float>(range));
  elements.resize(n);
  values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    elements[i] = element_of<T>(dist(rng));
    values[i] = value_of<T>(elements[i]);
  }
}

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// Attention and its gradients in double: p = softmax(s) over the visible keys with
// s = c tanh(scale q k^T / c) + bias (or scale q k^T: no softcap, no bias), out = p v,
// ds = p (dout . v - dout . out) slope (slope = 1 - tanh^2 under the cap, else 1),
// dq = scale ds k, dk = scale ds^T q, dv = p^T dout.
// Query head h reads key-value head h / (heads / kv_heads); dk and dv are per query head.
template <typename T>
Reference reference(const Case& c, int64_t depth, const Tensors<T>& t) {
  const int64_t tq = c.queries, tk = c.keys, d = depth, kvh = c.key_value_heads();
  auto at = [&](int64_t b, int64_t h, int64_t i, int64_t length) {
    return c.bthd ? ((b * length + i) * c.heads + h) * d : ((b * c.heads + h) * length + i) * d;
  };
  auto kv_at = [&](int64_t b, int64_t h, int64_t j) {
    const int64_t hk = h / (c.heads / kvh);
    return c.bthd ? ((b * tk + j) * kvh + hk) * d : ((b * kvh + hk) * tk + j) * d;
  };
  const double scale = 1 / std::sqrt(static_cast<double>(d));
  Reference r;
  r.out.assign(t.qd.size(), 0);
  r.dq.assign(t.qd.size(), 0);
  r.dk.assign(static_cast<size_t>(c.batch * c.heads * tk * d), 0);
  r.dv.assign(r.dk.size(), 0);
  r.lse.assign(static_cast<size_t>(c.batch * c.heads * tq), -INFINITY);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < tq; ++i) {
        std::vector<double> p(static_cast<size_t>(tk), 0.0), slope(static_cast<size_t>(tk), 1.0);
        std::vector<char> visible(static_cast<size_t>(tk), 0);
        double top = -INFINITY;
        for (int64_t j = 0; j < tk; ++j) {
          const int64_t position = c.query_offset + i;
          visible[j] = !(c.causal && j > position) && !(c.window > 0 && j <= position - c.window) &&
                       (!c.mask || t.mask[i * tk + j]);
          if (!visible[j]) continue;
          double dot = 0;
          for (int64_t e = 0; e < d; ++e)
            dot += t.qd[at(b, h, i, tq) + e] * t.kd[kv_at(b, h, j) + e];
          p[j] = dot * scale;
          if (c.softcap > 0) {
            const double capped = std::tanh(p[j] / c.softcap);
            p[j] = c.softcap * capped;
            slope[j] = 1 - capped * capped;
          }
          if (c.bias) p[j] += t.biasd[i * tk + j];
          if (p[j] == -INFINITY) visible[j] = 0;
          top = std::max(top, p[j]);
        }
        if (top == -INFINITY) continue;  // no visible key: out, dq 0, lse -inf
        double sum = 0;
        for (int64_t j = 0; j < tk; ++j) sum += p[j] = visible[j] ? std::exp(p[j] - top) : 0.0;
        r.lse[(b * c.heads + h) * tq + i] = top + std::log(sum);
        double delta = 0;
        for (int64_t e = 0; e < d; ++e) {
          double o = 0;
          for (int64_t j = 0; j < tk; ++j) o += p[j] / sum * t.vd[kv_at(b, h, j) + e];
          r.out[at(b, h, i, tq) + e] = o;
          delta += o * t.doutd[at(b, h, i, tq) + e];
        }
        for (int64_t j = 0; j < tk; ++j) {
          if (!visible[j]) continue;
          const double pj = p[j] / sum;
          double dp = 0;
          for (int64_t e = 0; e < d; ++e)
            dp += t.doutd[at(b, h, i, tq) + e] * t.vd[kv_at(b, h, j) + e];
          const double ds = pj * (dp - delta) * slope[j];
          for (int64_t e = 0; e < d; ++e) {
            r.dq[at(b, h, i, tq) + e] += scale * ds * t.kd[kv_at(b, h, j) + e];
            r.dk[at(b, h, j, tk) + e] += scale * ds * t.qd[at(b, h, i, tq) + e];
            r.dv[at(b, h, j, tk) + e] += pj * t.doutd[at(b, h, i, tq) + e];
          }
        }
      }
  return r;
}

// The largest |got - want| over the largest |want| (one number per tensor: rounded outputs and
// probabilities rounded for the products make errors scale with the tensor, not the element);
// infinite where a value is not finite (or was never written: NaN).
template <typename T>
double relative_error(const std::vector<Element<T>>& got, const std::vector<double>& want) {
  double error = 0, size = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    const double value = value_of<T>(got[i]);
    if (!std::isfinite(value)) return INFINITY;
    error = std::max(error, std::abs(value - want[i]));
    size = std::max(size, std::abs(want[i]));
  }
  return error / size;
}

template <typename T, int D>
void check(const Case& c, double tolerance) {
  SCOPED_TRACE(::testing::Message()
               << "batch " << c.batch << " heads " << c.heads << " queries " << c.queries
               << " keys " << c.keys << " depth " << D << (c.causal ? " causal" : "")
               << (c.bthd ? " bthd" : "") << (c.mask ? " mask" : "") << " kv heads "
               << c.key_value_heads() << " window " << c.window << " query offset "
               << c.query_offset << (c.bias ? " bias" : "") << " softcap " << c.softcap);
  std::mt19937 rng(static_cast<unsigned>(c.queries * 131 + c.keys * 7 + D));
  Tensors<T> t;
  const size_t nq = static_cast<size_t>(c.batch * c.heads * c.queries * D);
  const size_t nk = static_cast<size_t>(c.batch * c.key_value_heads() * c.keys * D);
  const size_t nkq = static_cast<size_t>(c.batch * c.heads * c.keys * D);  // dk, dv
  fill<T>(t.q, t.qd, nq, 2.0, rng);
  fill<T>(t.k, t.kd, nk, 2.0, rng);
  fill<T>(t.v, t.vd, nk, 1.0, rng);
  fill<T>(t.dout, t.doutd, nq, 1.0, rng);
  if (c.mask) {
    t.mask.resize(static_cast<size_t>(c.queries * c.keys));
    std::bernoulli_distribution visible(0.7);
    for (char& m : t.mask) m = visible(rng);
    std::fill_n(t.mask.begin() + 3 * c.keys, c.keys, 0);  // row 3: no key
  }
  if (c.bias) {
    fill<T>(t.bias, t.biasd, static_cast<size_t>(c.queries * c.keys), 3.0, rng);
    for (int64_t j = 0; j < c.keys && c.queries > 3; ++j) {
      t.bias[3 * c.keys + j] = element_of<T>(-INFINITY);
      t.biasd[3 * c.keys + j] = -INFINITY;
    }
  }
  const Reference want = reference(c, D, t);

  flash::Params p;
  p.a.batch = c.batch;
  p.a.heads = c.heads;
  p.a.kv_heads = c.key_value_heads();
  p.a.queries = c.queries;
  p.a.keys = c.keys;
  p.a.depth = p.a.value_depth = D;
  p.a.bthd = c.bthd;
  static_assert(sizeof(bool) == sizeof(char));
  if (c.mask) {
    p.a.mask_strides[2] = c.keys;
    p.a.mask_strides[3] = 1;
    p.mask = reinterpret_cast<const bool*>(t.mask.data());
  }
  if (c.bias) {
    p.a.mask_strides[2] = c.keys;
    p.a.mask_strides[3] = 1;
    p.bias = t.bias.data();
  }
  p.softcap = static_cast<float>(c.softcap);
  p.a.causal = c.causal;
  p.a.window = c.window;
  p.a.set_query_offset(c.query_offset);
  p.scale = static_cast<float>(1 / std::sqrt(static_cast<double>(D)));
  p.scale_log2 = p.scale * flash::kLog2e;
  p.q = t.q.data();
  p.k = t.k.data();
  p.v = t.v.data();
  // Bodies with the score terms where the problem has them (as attention.cu's kernels): not the
  // wide ones, nor dq summed in the dk/dv kernel.
  const bool terms = flash::has_score_terms(p);
  // Copies landing late (a missing wait reads garbage) and early (a buffer refilled while read).
  for (CopyTiming timing : {CopyTiming::deferred, CopyTiming::eager}) {
    SCOPED_TRACE(timing == CopyTiming::eager ? "copies land at once" : "copies land when waited");
    std::vector<Element<T>> out(nq, poison<T>());
    std::vector<float> lse(static_cast<size_t>(c.batch * c.heads * c.queries), NAN);
    p.out = out.data();
    p.lse_out = lse.data();
    const int64_t heads = c.batch * c.heads;
    run_emulated_grid(
        heads * flash::blocks_of(c.queries), flash::kThreads, flash::forward_shared_bytes<T, D>(),
        [&](EmulatedEnv& env, int64_t block, void* shared) {
          if (terms)
            flash::forward_block<T, D, 1, true>(env, p, block, shared);
          else
            flash::forward_block<T, D, 1, false>(env, p, block, shared);
        },
        timing);
    EXPECT_LT(relative_error<T>(out, want.out), tolerance) << "out";
    const bool wide_takes_it = !terms;
    if constexpr (flash::kWideQueryBlocks<T, D>)
      if (wide_takes_it) {
        // 32 query rows a warp: each row's sums in the same order, so the same bits.
        std::vector<Element<T>> wide_out(nq, poison<T>());
        std::vector<float> wide_lse(lse.size(), NAN);
        flash::Params wide = p;
        wide.out = wide_out.data();
        wide.lse_out = wide_lse.data();
        run_emulated_grid(
            heads * flash::blocks_of(c.queries, flash::kQueryRows<2>), flash::kThreads,
            flash::forward_shared_bytes<T, D, 2>(),
            [&](EmulatedEnv& env, int64_t block, void* shared) {
              flash::forward_block<T, D, 2, false>(env, wide, block, shared);
            },
            timing);
        EXPECT_EQ(wide_out, out) << "out with 32 query rows a warp";
        EXPECT_EQ(0, std::memcmp(wide_lse.data(), lse.data(), sizeof(float) * lse.size()))
            << "lse with 32 query rows a warp";
      }
    for (size_t i = 0; i < lse.size(); ++i) {
      if (want.lse[i] == -INFINITY)
        ASSERT_EQ(lse[i], -INFINITY) << "lse of row " << i;
      else
        ASSERT_NEAR(lse[i], want.lse[i], 1e-3 * std::max(1.0, std::abs(want.lse[i])))
            << "lse of row " << i;
    }

    // Backward, with D = dout . out from the kernel's own out (as attention.cu's delta kernel).
    std::vector<float> delta(lse.size(), 0.0f);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t h = 0; h < c.heads; ++h)
        for (int64_t i = 0; i < c.queries; ++i) {
          const int64_t row = p.a.row_offset(b * c.heads + h, i, c.queries, D);
          double sum = 0;
          for (int64_t e = 0; e < D; ++e) sum += value_of<T>(out[row + e]) * t.doutd[row + e];
          delta[(b * c.heads + h) * c.queries + i] = static_cast<float>(sum);
        }
    p.lse = lse.data();
    p.delta = delta.data();
    p.dout = t.dout.data();
    // dq by a kernel of its own, then summed in the dk/dv kernel's turns (attention.cu's
    // default; with no keys no dk/dv block runs, and the dq kernel writes its zeros).
    for (bool separate_dq : {true, false}) {
      // (attention.cu sums dq in turns only without a query offset, a bias or a softcap.)
      if (!separate_dq &&
          (!flash::every_query_block_reaches_a_key(p.a) || c.query_offset != 0 || terms))
        continue;
      SCOPED_TRACE(separate_dq ? "dq kernel" : "dq summed in the dk/dv kernel");
      std::vector<Element<T>> dq(nq, poison<T>()), dk(nkq, poison<T>()), dv(nkq, poison<T>());
      std::vector<float> dq_sums(nq, NAN);
      std::vector<int> dq_turns(static_cast<size_t>(heads * flash::blocks_of(c.queries)), 0);
      p.dq = dq.data();
      p.dk = dk.data();
      p.dv = dv.data();
      p.dq_sums = dq_sums.data();
      p.dq_turns = dq_turns.data();
      if (separate_dq) {
        run_emulated_grid(
            heads * flash::blocks_of(c.queries), flash::kThreads, flash::dq_shared_bytes<T, D>(),
            [&](EmulatedEnv& env, int64_t block, void* shared) {
              if (terms)
                flash::dq_block<T, D, 1, true>(env, p, block, shared);
              else
                flash::dq_block<T, D, 1, false>(env, p, block, shared);
            },
            timing);
        if constexpr (flash::kWideQueryBlocks<T, D>)
          if (wide_takes_it) {
            std::vector<Element<T>> wide_dq(nq, poison<T>());
            flash::Params wide = p;
            wide.dq = wide_dq.data();
            run_emulated_grid(
                heads * flash::blocks_of(c.queries, flash::kQueryRows<2>), flash::kThreads,
                flash::dq_shared_bytes<T, D, 2>(),
                [&](EmulatedEnv& env, int64_t block, void* shared) {
                  flash::dq_block<T, D, 2, false>(env, wide, block, shared);
                },
                timing);
            EXPECT_EQ(wide_dq, dq) << "dq with 32 query rows a warp";
          }
        run_emulated_grid(
            heads * flash::blocks_of(c.keys), flash::kThreads, flash::dkv_shared_bytes<T, D>(),
            [&](EmulatedEnv& env, int64_t block, void* shared) {
              if (terms)
                flash::dkv_block<T, D, false, true>(env, p, block, shared);
              else
                flash::dkv_block<T, D, false, false>(env, p, block, shared);
            },
            timing);
      } else {
        run_emulated_grid(
            heads * flash::blocks_of(c.keys), flash::kThreads, flash::dkvq_shared_bytes<T, D>(),
            [&](EmulatedEnv& env, int64_t block, void* shared) {
              flash::dkv_block<T, D, true, false>(env, p, block, shared);
            },
            timing);
      }
      EXPECT_LT(relative_error<T>(dq, want.dq), tolerance) << "dq";
      EXPECT_LT(relative_error<T>(dk, want.dk), tolerance) << "dk";
      EXPECT_LT(relative_error<T>(dv, want.dv), tolerance) << "dv";
    }
  }
}

// bf16 keeps 8 bits of mantissa, f16 11: the probabilities, score gradients and outputs are
// rounded to them, so errors of a few parts in 2^8 (2^11) of the tensor's largest value. f32 on
// 3xTF32 keeps ~21 bits in every product (one tf32 product alone, 11, would miss this by far).
constexpr double kBf16 = 1e-2, kF16 = 2e-3, kF32 = 1e-5;

TEST(FlashAttention, OneBlockMatchesTheReference) {
  check<BFloat16, 64>({.batch = 1, .heads = 1, .queries = 64, .keys = 64}, kBf16);
  check<Half, 64>({.batch = 1, .heads = 1, .queries = 64, .keys = 64}, kF16);
  // No keys at all: out 0, lse -inf, dq 0, and nothing staged from the empty k and v.
  check<Half, 64>({.batch = 1, .heads = 1, .queries = 10, .keys = 0}, kF16);
  check<float, 64>({.batch = 1, .heads = 1, .queries = 64, .keys = 64}, kF32);
}

TEST(FlashAttention, PartialBlocksAndStepsMatchTheReference) {
  // Two query blocks (the second of 6 rows) and two key steps (the second of 36 keys).
  check<BFloat16, 64>({.batch = 1, .heads = 2, .queries = 70, .keys = 100}, kBf16);
  check<Half, 128>({.batch = 1, .heads = 1, .queries = 30, .keys = 70}, kF16);
  check<BFloat16, 32>({.batch = 1, .heads = 2, .queries = 70, .keys = 70, .causal = true}, kBf16);
  // f32 at 128 reads its q fragments from shared memory in the forward; at 32 dq keeps them.
  check<float, 128>({.batch = 1, .heads = 1, .queries = 30, .keys = 70}, kF32);
  check<float, 32>({.batch = 1, .heads = 1, .queries = 70, .keys = 70, .causal = true}, kF32);
  // Four key blocks add to one query block's dq (two in the middle read and write the sums); and
  // causal, a third query block summed over three key blocks.
  check<Half, 32>({.batch = 1, .heads = 1, .queries = 20, .keys = 200}, kF16);
  check<BFloat16, 32>({.batch = 1, .heads = 1, .queries = 150, .keys = 150, .causal = true}, kBf16);
}

TEST(FlashAttention, CausalMatchesTheReference) {
  check<Half, 64>({.batch = 1, .heads = 1, .queries = 100, .keys = 100, .causal = true}, kF16);
  // More keys than queries (top-left aligned) and more queries than keys.
  check<BFloat16, 128>({.batch = 1, .heads = 1, .queries = 40, .keys = 90, .causal = true}, kBf16);
  check<BFloat16, 64>({.batch = 1, .heads = 1, .queries = 90, .keys = 40, .causal = true}, kBf16);
  check<float, 64>({.batch = 1, .heads = 1, .queries = 100, .keys = 100, .causal = true}, kF32);
}

// Fewer key-value heads than query heads: staged k and v rows are their key-value head's, in
// both layouts; dk and dv come out per query head.
TEST(FlashAttention, GroupedKeyValueHeadsMatchTheReference) {
  check<BFloat16, 64>({.batch = 1, .heads = 2, .queries = 70, .keys = 70, .kv_heads = 1}, kBf16);
  check<Half, 32>({.batch = 2,
                   .heads = 3,
                   .queries = 20,
                   .keys = 70,
                   .causal = true,
                   .bthd = true,
                   .kv_heads = 1},
                  kF16);
  check<float, 32>({.batch = 1,
                    .heads = 4,
                    .queries = 20,
                    .keys = 40,
                    .causal = false,
                    .bthd = true,
                    .mask = true,
                    .kv_heads = 2},
                   kF32);
}

// A sliding window: the walks start at the step holding a block's first reached key (the
// query side) or end past the last key's window (the key side), and the summed dq's turns
// start at the first key block that sees a query block.
TEST(FlashAttention, SlidingWindowMatchesTheReference) {
  // Causal, the window inside a block, across blocks, and wider than the problem.
  check<Half, 64>(
      {.batch = 1, .heads = 1, .queries = 200, .keys = 200, .causal = true, .window = 10}, kF16);
  check<BFloat16, 32>(
      {.batch = 1, .heads = 1, .queries = 200, .keys = 200, .causal = true, .window = 100}, kBf16);
  check<float, 64>(
      {.batch = 1, .heads = 1, .queries = 150, .keys = 150, .causal = true, .window = 64}, kF32);
  check<Half, 32>(
      {.batch = 1, .heads = 1, .queries = 70, .keys = 70, .causal = true, .window = 500}, kF16);
  // Not causal: keys ahead stay visible; with more queries than keys past the window, the last
  // rows and a whole query block see no key (out 0, lse -inf, dq 0).
  check<BFloat16, 64>({.batch = 1, .heads = 1, .queries = 130, .keys = 100, .window = 40}, kBf16);
  check<Half, 32>({.batch = 1, .heads = 1, .queries = 200, .keys = 60, .window = 30}, kF16);
  // With a mask, grouped heads and the bthd layout.
  check<Half, 64>({.batch = 1,
                   .heads = 2,
                   .queries = 140,
                   .keys = 140,
                   .causal = true,
                   .bthd = true,
                   .mask = true,
                   .kv_heads = 1,
                   .window = 70},
                  kF16);
}

// A query offset: query i stands at key position offset + i (a KV cache's position, or Tk - Tq
// for bottom-right alignment), so the walks, the mask tests at the diagonal and the window's
// edge, and the key side's query range all move with it.
TEST(FlashAttention, QueryOffsetMatchesTheReference) {
  // One query against a cache (a decoding step) and a chunk of 20 past position 100.
  check<Half, 64>(
      {.batch = 1, .heads = 2, .queries = 1, .keys = 200, .causal = true, .query_offset = 150},
      kF16);
  check<BFloat16, 32>(
      {.batch = 1, .heads = 1, .queries = 20, .keys = 200, .causal = true, .query_offset = 100},
      kBf16);
  // Bottom-right alignment with more keys than queries, a window across blocks, grouped heads.
  check<float, 64>({.batch = 1,
                    .heads = 2,
                    .queries = 70,
                    .keys = 150,
                    .causal = true,
                    .bthd = true,
                    .kv_heads = 1,
                    .window = 50,
                    .query_offset = 80},
                   kF32);
  // More queries than keys (offset Tk - Tq < 0): the first rows and a whole block see no key;
  // and whole steps of keys that a block's rows reach only in part (the diagonal moved below
  // the block's first row).
  check<Half, 32>(
      {.batch = 1, .heads = 1, .queries = 150, .keys = 40, .causal = true, .query_offset = -110},
      kF16);
  check<BFloat16, 64>(
      {.batch = 1, .heads = 1, .queries = 200, .keys = 130, .causal = true, .query_offset = -70},
      kBf16);
  // Past the keys: every causal row reaches them all; with a mask.
  check<BFloat16, 64>({.batch = 1,
                       .heads = 1,
                       .queries = 70,
                       .keys = 70,
                       .causal = true,
                       .mask = true,
                       .query_offset = 1000},
                      kBf16);
}

// An additive bias and a softcap (T5's and ALiBi's biases, Gemma 2's cap): the scores' terms in
// every kernel, the cap's slope in the score gradients, and a row whose bias is -inf everywhere
// (it sees no key: out 0, lse -inf, no NaN in any gradient).
TEST(FlashAttention, BiasAndSoftcapMatchTheReference) {
  check<BFloat16, 64>({.batch = 1, .heads = 2, .queries = 70, .keys = 100, .bias = true}, kBf16);
  check<Half, 32>({.batch = 1, .heads = 1, .queries = 70, .keys = 70, .causal = true, .softcap = 5},
                  kF16);
  check<float, 64>({.batch = 1,
                    .heads = 1,
                    .queries = 70,
                    .keys = 90,
                    .causal = true,
                    .bthd = true,
                    .bias = true,
                    .softcap = 3},
                   kF32);
  check<Half, 128>({.batch = 1,
                    .heads = 2,
                    .queries = 40,
                    .keys = 70,
                    .kv_heads = 1,
                    .window = 30,
                    .bias = true,
                    .softcap = 2},
                   kF16);
}

TEST(FlashAttention, MaskedAndBthdMatchTheReference) {
  check<BFloat16, 64>({.batch = 2,
                       .heads = 2,
                       .queries = 20,
                       .keys = 70,
                       .causal = false,
                       .bthd = true,
                       .mask = true},
                      kBf16);
  check<Half, 64>({.batch = 1,
                   .heads = 2,
                   .queries = 66,
                   .keys = 66,
                   .causal = true,
                   .bthd = true,
                   .mask = true},
                  kF16);
  check<float, 64>({.batch = 2,
                    .heads = 1,
                    .queries = 20,
                    .keys = 70,
                    .causal = false,
                    .bthd = true,
                    .mask = true},
                   kF32);
}

}  // namespace
}  // namespace kiln
