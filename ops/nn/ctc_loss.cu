// CUDA kernels of ctc_loss and ctc_loss_grad: one block per sequence. The block's threads share
// the positions s of the extended target and step through time together (a barrier per step).
// The forward writes alpha as its second output (f32 for 16-bit inputs: log probabilities of
// long paths need its precision); the gradient reads it and keeps beta in scratch memory. The math
// is ctc.h's, as on the CPU (ops/nn/ctc_loss.cc).
#include <algorithm>
#include <limits>

#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/nn/ctc.h"

namespace kiln::ops::cuda_nn {

using namespace kiln::ops::cuda;

constexpr int kCtcThreads = 256;

struct CtcArgs {
  CtcLayout layout;
  const int64_t* input_lengths;
  int64_t time, batch, classes, blank;
  bool zero_infinity;
};

// Checks sequence n's lengths and labels (data), its labels starting at `start` (-1 where a
// length before it is bad: that sequence reports it); true when all threads may go on.
__device__ bool ctc_sequence_valid(const CtcArgs& a, int64_t n, int64_t start,
                                   ErrorReporter errors) {
  __shared__ int bad;
  if (threadIdx.x == 0) {
    bad = 0;
    const int64_t steps = a.input_lengths[n], length = a.layout.target_lengths[n];
    if (start < 0) {
      bad = 1;
    } else if (steps < 0 || steps > a.time) {
      errors.report(DataErrorKind::length_out_of_range, steps, n, 0, a.time + 1);
      bad = 1;
    } else if (length < 0 || length > a.layout.room(start)) {
      errors.report(DataErrorKind::length_out_of_range, length, n, 0, a.layout.room(start) + 1);
      bad = 1;
    } else if (a.layout.concatenated && n == a.batch - 1 && length != a.layout.room(start)) {
      // The lengths must sum to the labels there are: the last sequence takes the rest.
      errors.report(DataErrorKind::length_out_of_range, length, n, a.layout.room(start),
                    a.layout.room(start) + 1);
      bad = 1;
    }
  }
  __syncthreads();
  if (!bad) {
    const int64_t length = a.layout.target_lengths[n];
    for (int64_t i = threadIdx.x; i < length; i += blockDim.x) {
      const int64_t label = a.layout.targets[start + i];
      if (label == a.blank) {
        errors.report(DataErrorKind::label_is_blank, label, start + i, 0, a.classes);
        bad = 1;
      } else if (label < 0 || label >= a.classes) {
        errors.report(DataErrorKind::label_out_of_range, label, start + i, 0, a.classes);
        bad = 1;
      }
    }
  }
  __syncthreads();
  return bad == 0;
}

// Each block is one sequence. Forward (kGrad false): its loss into `out` [N] and alpha into
// `alpha_all` (laid out as CtcLayout says; -inf where no path reaches). Gradient: d log_probs
// [T, N, C] into `out` from alpha (read) and dloss, with beta in `beta_all` (scratch laid out
// like alpha). `labels_all`: scratch for each sequence's l' (table_entries), and for the gradient
// after them whether each position is its class's first (as many: decided once, not per step).
template <typename T, bool kGrad>
__global__ void ctc_sequences(const T* log_probs, const T* dloss, T* out, int64_t* labels_all,
                              Compute<T>* alpha_all, Compute<T>* beta_all, CtcArgs a,
                              ErrorReporter errors) {
  using C = Compute<T>;
  constexpr C kInf = std::numeric_limits<C>::infinity();
  const int64_t n = blockIdx.x;
  const int64_t start = a.layout.target_start(n);
  if (!ctc_sequence_valid(a, n, start, errors)) return;  // the same for every thread of the block
  const int64_t steps = a.input_lengths[n], extended = 2 * a.layout.target_lengths[n] + 1;
  const int64_t widest = a.layout.row_width(n), table = a.layout.table_start(n, start);
  int64_t* labels = labels_all + table;
  for (int64_t s = threadIdx.x; s < extended; s += blockDim.x)
    labels[s] = ctc_extended_label(a.layout.targets + start, s, a.blank);
  const int64_t step_stride = a.batch * a.classes;
  const T* seq = log_probs + n * a.classes;  // step t's row: seq + t * step_stride
  C* alpha = alpha_all + a.time * table;
  if constexpr (!kGrad) {
    for (int64_t i = threadIdx.x; i < a.time * widest; i += blockDim.x) alpha[i] = -kInf;
  }
  __syncthreads();
  if constexpr (!kGrad) {
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t s = threadIdx.x; s < extended; s += blockDim.x)
        alpha[t * widest + s] =
            t == 0 ? ctc_alpha_first<C>(seq, labels, s, extended)
                   : ctc_alpha_next(alpha + (t - 1) * widest, seq + t * step_stride, labels, s);
      __syncthreads();
    }
  }
  const C nll = ctc_nll(alpha + (steps > 0 ? steps - 1 : 0) * widest, steps, extended);
  const bool infinite = nll == kInf;
  if constexpr (!kGrad) {
    if (threadIdx.x == 0) out[n] = static_cast<T>(a.zero_infinity && infinite ? C(0) : nll);
  } else {
    // Rows past the input length get 0; an infinite loss 0 with zero_infinity, else NaN.
    const C fill_undefined =
        infinite && !a.zero_infinity ? std::numeric_limits<C>::quiet_NaN() : C(0);
    for (int64_t t = 0; t < a.time; ++t) {
      T* row = out + t * step_stride + n * a.classes;
      const T fill = static_cast<T>(t < steps ? fill_undefined : C(0));
      for (int64_t c = threadIdx.x; c < a.classes; c += blockDim.x) row[c] = fill;
    }
    if (infinite) return;
    int64_t* first_of_class = labels_all + a.layout.table_entries(a.batch) + table;
    for (int64_t s = threadIdx.x; s < extended; s += blockDim.x)
      first_of_class[s] = ctc_first_of_class(labels, s);  // read after the barriers below
    C* beta = beta_all + a.time * table;
    for (int64_t t = steps - 1; t >= 0; --t) {
      for (int64_t s = threadIdx.x; s < extended; s += blockDim.x)
        beta[t * widest + s] = t == steps - 1
                                   ? ctc_beta_last<C>(seq + t * step_stride, labels, s, extended)
                                   : ctc_beta_next(beta + (t + 1) * widest, seq + t * step_stride,
                                                   labels, s, extended);
      __syncthreads();
    }
    // The zero fill above and these writes touch the same rows: order them.
    __syncthreads();
    const C g = static_cast<C>(dloss[n]);
    for (int64_t t = 0; t < steps; ++t) {
      const T* lp_t = seq + t * step_stride;
      T* row = out + t * step_stride + n * a.classes;
      // One thread per class of l' (its first position) adds up that class's positions: no two
      // threads write one entry.
      for (int64_t s = threadIdx.x; s < extended; s += blockDim.x) {
        if (!first_of_class[s]) continue;
        row[labels[s]] = static_cast<T>(-ctc_class_posterior(alpha + t * widest, beta + t * widest,
                                                             lp_t, labels, s, extended, nll) *
                                        g);
      }
    }
  }
}

template <typename T, bool kGrad>
void ctc_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const Shape& shape = ctx.input(0).shape();
  const Shape& targets = ctx.input(1).shape();
  const CtcArgs args{{ctx.input(1).data<int64_t>(), ctx.input(3).data<int64_t>(),
                      targets[targets.rank() - 1], targets.rank() == 1},
                     ctx.input(2).data<int64_t>(),
                     shape[0],
                     shape[1],
                     shape[2],
                     ctx.attr<int64_t>("blank"),
                     ctx.attr<bool>("zero_infinity")};
  if (args.blank >= args.classes)
    throw Error(str(ctx.where(), ": blank ", args.blank, " is not a class of log_probs ", shape));
  if (args.batch == 0) return;
  const int64_t entries = args.layout.table_entries(args.batch);
  const size_t table = static_cast<size_t>(std::max<int64_t>(args.time * entries, 1));
  std::shared_ptr<Storage> labels =
      ctx.scratch(sizeof(int64_t) * static_cast<size_t>((kGrad ? 2 : 1) * entries));
  std::shared_ptr<Storage> beta = kGrad ? ctx.scratch(sizeof(C) * table) : nullptr;
  // The forward's output, or the gradient's input (read only).
  C* alpha = kGrad ? const_cast<C*>(ctx.input(4).data<C>()) : ctx.output(1).data<C>();
  ctc_sequences<T, kGrad><<<static_cast<unsigned>(args.batch), kCtcThreads, 0, stream_of(ctx)>>>(
      ctx.input(0).data<T>(), kGrad ? ctx.input(5).data<T>() : nullptr, ctx.output(0).data<T>(),
      static_cast<int64_t*>(labels->data()), alpha, kGrad ? static_cast<C*>(beta->data()) : nullptr,
      args, error_reporter(ctx));
  check_launch(ctx);
}

template <bool kGrad>
void ctc_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { ctc_typed<decltype(tag), kGrad>(ctx); });
}
KILN_CUDA_KERNEL(ctc_loss, ctc_cuda<false>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(ctc_loss_grad, ctc_cuda<true>, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_nn
