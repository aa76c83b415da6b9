// The CUDA kernels of recurrence and recurrence_grad (ops/nn/recurrence.cc): per step, one
// cuBLASLt product (h_prev W_hh + b_hh forward, dhg W_hh^T added to the state's gradient
// backward) and one elementwise kernel, a thread per element of h, with recurrence.h's math;
// 16-bit floats compute in f32 and keep the state in their own dtype, as the unrolled cells.
// After the backward's steps, W_hh's gradient is one product over all of them.
#include "kiln/framework/cuda/device_memory.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/cuda_product.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/nn/recurrence.h"

namespace kiln::ops::cuda_recurrence {

using namespace kiln::ops::cuda;
using cuda_matmul::Product;
using cuda_matmul::run_product;

struct DeviceActivations {
  template <typename C>
  KILN_HOST_DEVICE C sigmoid(C x) const {
    return sigmoid_of(x);
  }
  template <typename C>
  KILN_HOST_DEVICE C tanh(C x) const {
    return std::tanh(x);
  }
};

// The lengths input `i` when there is one (nullptr otherwise), checked on the device: a
// negative one is reported through the error block (one above T counts as T).
const int64_t* checked_lengths(const KernelContext& ctx, int i, int64_t time) {
  if (i >= ctx.num_inputs()) return nullptr;
  const int64_t* lengths = ctx.input(i).data<int64_t>();
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, ctx.input(i).numel(), [=] __device__(int64_t b) {
    if (lengths[b] < 0)
      errors.report(DataErrorKind::length_out_of_range, lengths[b], b, 0, time + 1);
  });
  return lengths;
}

void copy_on_device(const KernelContext& ctx, void* dst, const Tensor& src) {
  copy_bytes(dst, src.raw_data(), src.nbytes(), ctx.stream(), ctx.where());
}

// The initial state [B, H] from `initial`: [B, H], or one row [1, H] for every sequence (its
// rows' stride is then 0).
template <typename T>
void copy_initial(const KernelContext& ctx, T* state, const Tensor& initial, int64_t batch,
                  int64_t hidden) {
  const T* from = initial.data<T>();
  const int64_t stride = initial.shape()[0] == 1 ? 0 : hidden;
  for_each(ctx, batch * hidden,
           [=] __device__(int64_t e) { state[e] = from[e / hidden * stride + e % hidden]; });
}

template <RecurrentCell kCell, typename T>
void recurrence_forward(KernelContext& ctx) {
  using C = Compute<T>;
  constexpr bool kLstm = kCell == RecurrentCell::lstm;
  const RecurrenceInputs in = forward_inputs(kCell, ctx.attr<bool>("projected"));
  const bool projected = in.weight_hr >= 0;
  const DType dtype = ctx.input(0).dtype();
  const Shape& xs = ctx.input(0).shape();
  const int64_t time = xs[0], batch = xs[1], width = xs[2];
  const int64_t hidden = width / recurrent_gates(kCell), state = ctx.input(1).shape()[0];
  const bool reverse = ctx.attr<bool>("reverse");
  const int li = in.lengths(ctx.num_inputs());
  const int64_t* lengths = li < 0 ? nullptr : checked_lengths(ctx, li, time);
  const T* x = ctx.input(0).data<T>();
  T* y = ctx.output(0).data<T>();
  T* h = ctx.output(1).data<T>();  // the state, updated in place: h_last at the end
  T* act = ctx.output(2).data<T>();
  T* aux = recurrent_has_aux(kCell) ? ctx.output(3).data<T>() : nullptr;
  T* c = kLstm ? ctx.output(4).data<T>() : nullptr;
  if (batch == 0 || hidden == 0) return;
  copy_initial(ctx, h, ctx.input(3), batch, state);
  if (kLstm) copy_initial(ctx, c, ctx.input(in.c0), batch, hidden);
  if (time == 0) return;
  std::shared_ptr<Storage> scratch = ctx.scratch(sizeof(T) * static_cast<size_t>(batch * width));
  T* hg = static_cast<T*>(scratch->data());
  // A projected LSTM's o tanh(c) per step, and its product with W_hr.
  std::shared_ptr<Storage> raw_storage =
      projected ? ctx.scratch(sizeof(T) * static_cast<size_t>(batch * (hidden + state))) : nullptr;
  T* raw = projected ? static_cast<T*>(raw_storage->data()) : nullptr;
  T* projection = projected ? raw + batch * hidden : nullptr;
  for (int64_t i = 0; i < time; ++i) {
    const int64_t t = recurrence_step(i, time, reverse);
    Product p{dtype, false, false, batch, width, state, h, ctx.input(1).raw_data(), hg};
    p.bias = ctx.input(2).raw_data();
    run_product(ctx, p);
    for_each(ctx, batch * hidden, [=] __device__(int64_t e) {
      const int64_t r = e / hidden, j = e % hidden, row = t * batch + r;
      if (lengths && t >= lengths[r]) {  // past the sequence: its state stays
        if (j < state) y[row * state + j] = T(0);
        for (int64_t k = 0; k < width / hidden; ++k) act[row * width + k * hidden + j] = T(0);
        if (aux) aux[row * hidden + j] = T(0);
        return;
      }
      C cell = kLstm ? static_cast<C>(c[e]) : C(0);
      // h_prev is read by the GRU alone (never projected): element e of the state.
      const C next = recurrence_forward_element<kCell>(
          DeviceActivations{}, hidden, x + row * width + j, hg + r * width + j,
          projected ? C(0) : static_cast<C>(h[e]), cell, act + row * width + j,
          aux ? aux + row * hidden + j : nullptr);
      if (kLstm) c[e] = static_cast<T>(cell);
      if (projected) {
        raw[e] = static_cast<T>(next);
      } else {
        h[e] = static_cast<T>(next);
        y[row * hidden + j] = static_cast<T>(next);
      }
    });
    if (!projected) continue;
    run_product(ctx, {dtype, false, false, batch, state, hidden, raw,
                      ctx.input(in.weight_hr).raw_data(), projection});
    for_each(ctx, batch * state, [=] __device__(int64_t e) {
      const int64_t r = e / state;
      if (lengths && t >= lengths[r]) return;
      h[e] = projection[e];
      y[t * batch * state + e] = projection[e];
    });
  }
}

template <RecurrentCell kCell, typename T>
void recurrence_backward(KernelContext& ctx) {
  using C = Compute<T>;
  constexpr bool kLstm = kCell == RecurrentCell::lstm, kAux = recurrent_has_aux(kCell);
  constexpr bool kOwnDhg = kCell == RecurrentCell::gru;  // else dhg is dx
  const RecurrenceInputs in = grad_inputs(kCell, ctx.attr<bool>("projected"));
  const bool projected = in.weight_hr >= 0;
  const DType dtype = ctx.input(0).dtype();
  const Shape& as = ctx.input(3).shape();
  const int64_t time = as[0], batch = as[1], width = as[2];
  const int64_t hidden = width / recurrent_gates(kCell), state = ctx.input(0).shape()[0];
  const T* h0 = ctx.input(1).data<T>();
  const int64_t h0_stride = ctx.input(1).shape()[0] == 1 ? 0 : state;
  const T* y = ctx.input(2).data<T>();
  const T* act = ctx.input(3).data<T>();
  const T* dy = ctx.input(4).data<T>();
  const T* aux = kAux ? ctx.input(in.aux).data<T>() : nullptr;
  const T* c0 = kLstm ? ctx.input(in.c0).data<T>() : nullptr;
  const int64_t c0_stride = kLstm && ctx.input(in.c0).shape()[0] != 1 ? hidden : 0;
  const int li = in.lengths(ctx.num_inputs());
  const RecurrencePrevious previous{time, batch, ctx.attr<bool>("reverse"),
                                    li < 0 ? nullptr : checked_lengths(ctx, li, time)};
  T* dx = ctx.output(0).data<T>();
  T* dbias = ctx.output(2).data<T>();
  T* dh = ctx.output(3).data<T>();  // the gradient reaching the state: d h0 at the end
  T* dc = kLstm ? ctx.output(4).data<T>() : nullptr;
  copy_on_device(ctx, dh, ctx.input(5));
  if (kLstm) copy_on_device(ctx, dc, ctx.input(in.dc_last));
  const int64_t rows = time * batch;
  if (rows == 0 || hidden == 0) {
    for (int o : {1, 2, 5}) {  // d W_hh, d b_hh, d W_hr: sums over no step
      if (o >= ctx.num_outputs()) continue;
      Tensor& out = ctx.output(o);
      zero_device_bytes(out.raw_data(), out.nbytes(), ctx.stream(), ctx.where());
    }
    return;
  }
  // Each step's d hg (dx itself where the two are equal) and h_prev, for W_hh's gradient; a
  // projected LSTM's per-step state gradient, o tanh(c) and its gradient, for W_hr's.
  std::shared_ptr<Storage> own_dhg =
      kOwnDhg ? ctx.scratch(sizeof(T) * static_cast<size_t>(rows * width)) : nullptr;
  T* dhg = kOwnDhg ? static_cast<T*>(own_dhg->data()) : dx;
  std::shared_ptr<Storage> h_prev_storage =
      ctx.scratch(sizeof(T) * static_cast<size_t>(rows * state));
  T* h_prev_all = static_cast<T*>(h_prev_storage->data());
  std::shared_ptr<Storage> projection_storage =
      projected
          ? ctx.scratch(sizeof(T) * static_cast<size_t>(rows * (state + hidden) + batch * hidden))
          : nullptr;
  T* d_state_all = projected ? static_cast<T*>(projection_storage->data()) : nullptr;
  T* raw_all = projected ? d_state_all + rows * state : nullptr;
  T* d_raw = projected ? raw_all + rows * hidden : nullptr;
  const int64_t gates = width / hidden;
  for (int64_t i = 0; i < time; ++i) {
    const int64_t t = recurrence_step(time - 1 - i, time, previous.reverse);  // backwards
    if (projected) {
      // d state = dh + dy (0 past a length); o tanh(c)'s gradient is its product with W_hr^T.
      T* d_state = d_state_all + t * batch * state;
      for_each(ctx, batch * state, [=] __device__(int64_t e) {
        const int64_t r = e / state;
        d_state[e] =
            previous.lengths && t >= previous.lengths[r]
                ? T(0)
                : static_cast<T>(static_cast<C>(dh[e]) + static_cast<C>(dy[t * batch * state + e]));
      });
      run_product(ctx, {dtype, false, true, batch, hidden, state, d_state,
                        ctx.input(in.weight_hr).raw_data(), d_raw});
    }
    for_each(ctx, batch * hidden, [=] __device__(int64_t e) {
      const int64_t r = e / hidden, j = e % hidden, row = t * batch + r;
      if (previous.lengths && t >= previous.lengths[r]) {  // the state passed through
        for (int64_t k = 0; k < gates; ++k) {
          dx[row * width + k * hidden + j] = T(0);
          if (kOwnDhg) dhg[row * width + k * hidden + j] = T(0);
        }
        if (j < state) h_prev_all[row * state + j] = T(0);
        if (projected) raw_all[row * hidden + j] = T(0);
        return;
      }
      const int64_t before = previous.row(t, r);
      // Element j of h_prev (the state is H wide here, or P <= H with a projection).
      const auto h_prev_at = [&](int64_t k) {
        return before < 0 ? h0[r * h0_stride + k] : y[before * state + k];
      };
      const C c_prev =
          kLstm ? static_cast<C>(before < 0 ? c0[r * c0_stride + j] : aux[before * hidden + j])
                : C(0);
      C d_cell = kLstm ? static_cast<C>(dc[e]) : C(0);
      // Without a projection, h's gradient is dh + dy; with one it is d_raw (dy is in it).
      const C d_h = projected ? static_cast<C>(d_raw[e])
                              : static_cast<C>(dh[e]) + static_cast<C>(dy[row * hidden + j]);
      const C direct = recurrence_backward_element<kCell>(
          DeviceActivations{}, hidden, act + row * width + j,
          aux ? aux + row * hidden + j : nullptr, projected ? C(0) : static_cast<C>(h_prev_at(j)),
          c_prev, d_h, d_cell, dx + row * width + j, dhg + row * width + j);
      if (kLstm) dc[e] = static_cast<T>(d_cell);
      if (projected) {
        raw_all[row * hidden + j] =
            static_cast<T>(static_cast<C>(act[row * width + 3 * hidden + j]) *
                           DeviceActivations{}.tanh(static_cast<C>(aux[row * hidden + j])));
        if (j < state) {
          dh[r * state + j] = T(0);  // it went into d_raw
          h_prev_all[row * state + j] = h_prev_at(j);
        }
      } else {
        dh[e] = static_cast<T>(direct);
        h_prev_all[row * hidden + j] = h_prev_at(j);
      }
    });
    // dh_prev += dhg W_hh^T (rows past their length have dhg 0), in place.
    Product p{
        dtype, false, true, batch, state, width, dhg + t * batch * width, ctx.input(0).raw_data(),
        dh};
    p.addend = dh;
    run_product(ctx, p);
  }
  // d W_hh = h_prev^T dhg over all steps: [S, T B] x [T B, G H]; d W_hr likewise.
  run_product(ctx,
              {dtype, true, false, state, width, rows, h_prev_all, dhg, ctx.output(1).raw_data()});
  if (projected)
    run_product(ctx, {dtype, true, false, hidden, state, rows, raw_all, d_state_all,
                      ctx.output(5).raw_data()});
  // d bias_hh: dhg summed over steps and sequences, a thread per column.
  for_each(ctx, width, [=] __device__(int64_t j) {
    C total = 0;
    for (int64_t row = 0; row < rows; ++row) total += static_cast<C>(dhg[row * width + j]);
    dbias[j] = static_cast<T>(total);
  });
}

template <bool kGrad>
void recurrence_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_recurrent_cell(kernel_cell(ctx), [&](auto cell) {
      if constexpr (kGrad)
        recurrence_backward<decltype(cell)::value, T>(ctx);
      else
        recurrence_forward<decltype(cell)::value, T>(ctx);
    });
  });
}
KILN_CUDA_KERNEL(recurrence, recurrence_cuda<false>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(recurrence_grad, recurrence_cuda<true>, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_recurrence
