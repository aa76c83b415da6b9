// The math of connectionist temporal classification (Graves et al., 2006), shared by the CPU
// kernels (ops/nn/ctc_loss.cc) and the CUDA ones (ops/nn/ctc_loss.cu). Everything is in log
// space, for one sequence: lp[t][c] its log probabilities at step t < T (its input length), and
// its L labels extended to l' of length S' = 2L + 1 with a blank before, between and after them
// (blanks at even positions s, label (s - 1) / 2 at odd ones).
//
// Forward variables, alpha[t][s]: the log probability of the paths' prefixes that end at (t, s):
//   alpha[0][0] = lp[0][blank],  alpha[0][1] = lp[0][l'(1)],  alpha[0][s > 1] = -inf
//   alpha[t][s] = lp[t][l'(s)] + lse(alpha[t-1][s], alpha[t-1][s-1], alpha[t-1][s-2])
// where the s - 2 term (skipping a blank) exists only when l'(s) is a label other than l'(s-2);
//   nll = -lse(alpha[T-1][S'-1], alpha[T-1][S'-2]).
// Backward variables, beta[t][s]: the same for the suffixes that start at (t, s), lp[t] included:
//   beta[T-1][S'-1] = lp[T-1][blank],  beta[T-1][S'-2] = lp[T-1][l'(S'-2)]
//   beta[t][s] = lp[t][l'(s)] + lse(beta[t+1][s], beta[t+1][s+1], beta[t+1][s+2])
// (the s + 2 term when l'(s + 2) may be reached by a skip). alpha[t][s] + beta[t][s] - lp[t][l'(s)]
// is the log probability of all paths through (t, s), so
//   d nll / d lp[t][c] = -sum_{s: l'(s) = c} exp(alpha[t][s] + beta[t][s] - lp[t][c] + nll)
// (minus the probability that the path is at class c at step t), and 0 for classes not in l'.
// PyTorch's backward adds exp(lp[t][c]), which vanishes through log_softmax (whose Jacobian removes
// what each row's gradient adds in proportion to exp(lp)): the gradients reaching the logits agree;
// those reaching lp itself differ by that term.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "kiln/framework/dtype.h"

namespace kiln::ops {

/// log(exp(a) + exp(b)), exact when either is -inf.
template <typename C>
KILN_HOST_DEVICE C log_add(C a, C b) {
  using std::exp, std::log1p;
  if (a < b) {
    const C larger = b;
    b = a;
    a = larger;
  }
  if (b == -std::numeric_limits<C>::infinity()) return a;
  return a + log1p(exp(b - a));
}

/// log(exp(a) + exp(b) + exp(c)): one logarithm after shifting by the largest (-inf when all
/// three are).
template <typename C>
KILN_HOST_DEVICE C log_sum_exp3(C a, C b, C c) {
  using std::exp, std::log;
  const C m = a > b ? (a > c ? a : c) : (b > c ? b : c);
  if (m == -std::numeric_limits<C>::infinity()) return m;
  return m + log(exp(a - m) + exp(b - m) + exp(c - m));
}

/// Where sequence n's labels and its rows of alpha (and beta) lie, for either form of targets:
/// padded [N, S] (sequence n's labels at n S), or concatenated [L] as PyTorch's 1-D form (sequence
/// n's at the sum of the lengths before it). A sequence's table of T rows starts at T *
/// table_start(n) and its rows are row_width(n) apart: padded, 2 S + 1 (every row as wide as the
/// widest target); concatenated, 2 L_n + 1 (tables packed, T (2 L + N) entries in all).
struct CtcLayout {
  const int64_t* targets;
  const int64_t* target_lengths;
  /// Padded: S. Concatenated: L, the number of labels the targets hold.
  int64_t extent;
  bool concatenated;

  /// Where sequence n's labels start in `targets`. Concatenated, the sum of the lengths before n
  /// (a length outside [0, L] makes it -1: that sequence reports the error, not this one).
  KILN_HOST_DEVICE int64_t target_start(int64_t n) const {
    if (!concatenated) return n * extent;
    int64_t start = 0;
    for (int64_t m = 0; m < n; ++m) {
      if (target_lengths[m] < 0 || target_lengths[m] > extent - start) return -1;
      start += target_lengths[m];
    }
    return start;
  }
  /// The labels sequence n may hold from `start` (its target_start): S padded, L - start
  /// concatenated.
  KILN_HOST_DEVICE int64_t room(int64_t start) const {
    return concatenated ? extent - start : extent;
  }
  /// The entries of one step's row of sequence n.
  KILN_HOST_DEVICE int64_t row_width(int64_t n) const {
    return concatenated ? 2 * target_lengths[n] + 1 : 2 * extent + 1;
  }
  /// Where sequence n's extended labels (and, times T, its table) start, from `start`.
  KILN_HOST_DEVICE int64_t table_start(int64_t n, int64_t start) const {
    return concatenated ? 2 * start + n : n * (2 * extent + 1);
  }
  /// The entries of every sequence's extended labels: T times it is alpha's size.
  KILN_HOST_DEVICE int64_t table_entries(int64_t batch) const {
    return concatenated ? 2 * extent + batch : batch * (2 * extent + 1);
  }
};

/// l'(s): the blank at even s, label (s - 1) / 2 at odd s. The recursions below read l' from an
/// array made with it once per sequence (`labels`, S' entries).
KILN_HOST_DEVICE int64_t ctc_extended_label(const int64_t* target, int64_t s, int64_t blank) {
  return s % 2 == 0 ? blank : target[s / 2];
}

/// Whether a path reaches s from s - 2 (skipping the blank between two different labels).
KILN_HOST_DEVICE bool ctc_can_skip_to(const int64_t* labels, int64_t s) {
  return s % 2 == 1 && s >= 3 && labels[s] != labels[s - 2];
}

/// alpha[0][s]; `lp` is step 0's row, `extended` is S'.
template <typename C, typename T>
KILN_HOST_DEVICE C ctc_alpha_first(const T* lp, const int64_t* labels, int64_t s,
                                   int64_t extended) {
  if (s >= 2 || s >= extended) return -std::numeric_limits<C>::infinity();
  return static_cast<C>(lp[labels[s]]);
}

/// alpha[t][s] from the row before (`prev`) and step t's log probabilities (`lp`).
template <typename C, typename T>
KILN_HOST_DEVICE C ctc_alpha_next(const C* prev, const T* lp, const int64_t* labels, int64_t s) {
  constexpr C kNone = -std::numeric_limits<C>::infinity();
  return log_sum_exp3(prev[s], s >= 1 ? prev[s - 1] : kNone,
                      ctc_can_skip_to(labels, s) ? prev[s - 2] : kNone) +
         static_cast<C>(lp[labels[s]]);
}

/// beta[T-1][s]; `lp` is the last step's row.
template <typename C, typename T>
KILN_HOST_DEVICE C ctc_beta_last(const T* lp, const int64_t* labels, int64_t s, int64_t extended) {
  if (s < extended - 2) return -std::numeric_limits<C>::infinity();
  return static_cast<C>(lp[labels[s]]);
}

/// beta[t][s] from the row after (`next`) and step t's log probabilities.
template <typename C, typename T>
KILN_HOST_DEVICE C ctc_beta_next(const C* next, const T* lp, const int64_t* labels, int64_t s,
                                 int64_t extended) {
  constexpr C kNone = -std::numeric_limits<C>::infinity();
  return log_sum_exp3(next[s], s + 1 < extended ? next[s + 1] : kNone,
                      s + 2 < extended && ctc_can_skip_to(labels, s + 2) ? next[s + 2] : kNone) +
         static_cast<C>(lp[labels[s]]);
}

/// The sequence's negative log likelihood from alpha's last row (`steps` = T > 0), or with no
/// steps at all: 0 for an empty target, +inf otherwise (no path).
template <typename C>
KILN_HOST_DEVICE C ctc_nll(const C* last_alpha, int64_t steps, int64_t extended) {
  if (steps == 0) return extended == 1 ? C(0) : std::numeric_limits<C>::infinity();
  if (extended == 1) return -last_alpha[0];
  return -log_add(last_alpha[extended - 1], last_alpha[extended - 2]);
}

/// Whether position s (0, the blank, or odd) holds the first occurrence of its class in l' (the
/// class's gradient is then written for s and every later position with the same class).
KILN_HOST_DEVICE bool ctc_first_of_class(const int64_t* labels, int64_t s) {
  if (s == 0) return true;
  if (s % 2 == 0) return false;
  for (int64_t earlier = 1; earlier < s; earlier += 2)
    if (labels[earlier] == labels[s]) return false;
  return true;
}

/// The probability that a path of the target is at position s at step t, from alpha[t][s] +
/// beta[t][s] (both hold lp[t][l'(s)], so it is taken off once) and the sequence's nll. These
/// sum to 1 over s at every step, so they are summed as they are (no shift): what underflows is
/// below 1e-38 of that sum. (PyTorch's gradient is NaN where a label's lp is -inf; this is 0.)
template <typename C>
KILN_HOST_DEVICE C ctc_posterior(C alpha, C beta, C lp, C nll) {
  using std::exp;
  // No path through s: 0, also where lp is -inf (alpha + beta - lp would be NaN).
  constexpr C kNone = -std::numeric_limits<C>::infinity();
  if (alpha == kNone || beta == kNone) return C(0);
  return exp(alpha + beta - lp + nll);
}

/// The probability that a path is at s's class at step t: ctc_posterior summed over the
/// positions s' >= s of that class (s is the class's first position: ctc_first_of_class).
/// d nll / d lp[t][c] is minus it.
template <typename C, typename T>
KILN_HOST_DEVICE C ctc_class_posterior(const C* alpha, const C* beta, const T* lp,
                                       const int64_t* labels, int64_t s, int64_t extended, C nll) {
  const C lp_c = static_cast<C>(lp[labels[s]]);
  C total = 0;
  for (int64_t other = s; other < extended; other += 2)
    if (labels[other] == labels[s]) total += ctc_posterior(alpha[other], beta[other], lp_c, nll);
  return total;
}

}  // namespace kiln::ops
