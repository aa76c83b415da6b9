// The CUDA kernels of the fused recurrent cells (ops/nn/recurrent_cells.cc): one thread per
// element of h, the math of ops/nn/recurrent_cells.h; 16-bit floats compute in f32.
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/nn/recurrent_cells.h"

namespace kiln::ops::cuda_recurrent {

using namespace kiln::ops::cuda;

template <typename T>
void lstm_cell_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const Tensor& gates_tensor = ctx.input(0);
  const int64_t hidden = gates_tensor.shape()[1] / 4;
  const T* gates = gates_tensor.data<T>();
  const T* c_prev = ctx.num_inputs() > 1 ? ctx.input(1).data<T>() : nullptr;
  T* h = ctx.output(0).data<T>();
  T* c = ctx.output(1).data<T>();
  T* act = ctx.output(2).data<T>();
  for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t e) {
    const int64_t r = e / hidden, j = e % hidden;
    const T* x = gates + r * 4 * hidden + j;
    const C i = sigmoid_of(static_cast<C>(x[0])), f = sigmoid_of(static_cast<C>(x[hidden]));
    const C g = tanh(static_cast<C>(x[2 * hidden])), o = sigmoid_of(static_cast<C>(x[3 * hidden]));
    const C cell = c_prev ? f * static_cast<C>(c_prev[e]) + i * g : i * g;
    T* a = act + r * 4 * hidden + j;
    a[0] = static_cast<T>(i);
    a[hidden] = static_cast<T>(f);
    a[2 * hidden] = static_cast<T>(g);
    a[3 * hidden] = static_cast<T>(o);
    c[e] = static_cast<T>(cell);
    h[e] = static_cast<T>(o * tanh(cell));
  });
}

void lstm_cell_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) { lstm_cell_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(lstm_cell, lstm_cell_cuda, cuda_dtypes(DTypeClass::floating));

template <typename T>
void lstm_cell_grad_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const Tensor& act_tensor = ctx.input(0);
  const int64_t hidden = act_tensor.shape()[1] / 4;
  const T* act = act_tensor.data<T>();
  const T* c = ctx.input(1).data<T>();
  const T* dh = ctx.input(2).data<T>();
  const T* dc = ctx.input(3).data<T>();
  const T* c_prev = ctx.num_inputs() > 4 ? ctx.input(4).data<T>() : nullptr;
  T* dgates = ctx.output(0).data<T>();
  T* dc_prev = c_prev ? ctx.output(1).data<T>() : nullptr;
  for_each(ctx, ctx.input(1).numel(), [=] __device__(int64_t e) {
    const int64_t r = e / hidden, j = e % hidden;
    const T* a = act + r * 4 * hidden + j;
    C d_i, d_f, d_g, d_o, d_prev;
    lstm_cell_backward_element<C>(static_cast<C>(a[0]), static_cast<C>(a[hidden]),
                                  static_cast<C>(a[2 * hidden]), static_cast<C>(a[3 * hidden]),
                                  tanh(static_cast<C>(c[e])),
                                  c_prev ? static_cast<C>(c_prev[e]) : C(0), static_cast<C>(dh[e]),
                                  static_cast<C>(dc[e]), d_i, d_f, d_g, d_o, d_prev);
    T* d = dgates + r * 4 * hidden + j;
    d[0] = static_cast<T>(d_i);
    d[hidden] = static_cast<T>(d_f);
    d[2 * hidden] = static_cast<T>(d_g);
    d[3 * hidden] = static_cast<T>(d_o);
    if (dc_prev) dc_prev[e] = static_cast<T>(d_prev);
  });
}

void lstm_cell_grad_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { lstm_cell_grad_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(lstm_cell_grad, lstm_cell_grad_cuda, cuda_dtypes(DTypeClass::floating));

template <typename T>
void gru_cell_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const Tensor& x_tensor = ctx.input(0);
  const int64_t hidden = x_tensor.shape()[1] / 3;
  const T* x_gates = x_tensor.data<T>();
  const T* h_gates = ctx.num_inputs() > 1 ? ctx.input(1).data<T>() : nullptr;
  // One row of h_gates (b_hh at a zero state) serves every row.
  const int64_t hg_stride =
      ctx.num_inputs() > 1 && ctx.input(1).shape().rank() == 2 ? 3 * hidden : 0;
  const T* h_prev = ctx.num_inputs() > 2 ? ctx.input(2).data<T>() : nullptr;
  T* h = ctx.output(0).data<T>();
  T* act = ctx.output(1).data<T>();
  for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t e) {
    const int64_t r = e / hidden, j = e % hidden;
    const T* x = x_gates + r * 3 * hidden + j;
    const T* hg = h_gates ? h_gates + r * hg_stride + j : nullptr;
    const C h_r = hg ? static_cast<C>(hg[0]) : C(0), h_z = hg ? static_cast<C>(hg[hidden]) : C(0);
    const C h_n = hg ? static_cast<C>(hg[2 * hidden]) : C(0);
    const C reset = sigmoid_of(static_cast<C>(x[0]) + h_r);
    const C update = sigmoid_of(static_cast<C>(x[hidden]) + h_z);
    const C n = tanh(static_cast<C>(x[2 * hidden]) + reset * h_n);
    const C prev = h_prev ? static_cast<C>(h_prev[e]) : C(0);
    T* a = act + r * 3 * hidden + j;
    a[0] = static_cast<T>(reset);
    a[hidden] = static_cast<T>(update);
    a[2 * hidden] = static_cast<T>(n);
    h[e] = static_cast<T>((C(1) - update) * n + update * prev);
  });
}

void gru_cell_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) { gru_cell_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(gru_cell, gru_cell_cuda, cuda_dtypes(DTypeClass::floating));

template <typename T>
void gru_cell_grad_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const Tensor& act_tensor = ctx.input(0);
  const int64_t hidden = act_tensor.shape()[1] / 3;
  const T* act = act_tensor.data<T>();
  const T* dh = ctx.input(1).data<T>();
  const T* h_gates = ctx.num_inputs() > 2 ? ctx.input(2).data<T>() : nullptr;
  const int64_t hg_stride =
      ctx.num_inputs() > 2 && ctx.input(2).shape().rank() == 2 ? 3 * hidden : 0;
  const T* h_prev = ctx.num_inputs() > 3 ? ctx.input(3).data<T>() : nullptr;
  T* dx = ctx.output(0).data<T>();
  T* dhg = h_gates ? ctx.output(1).data<T>() : nullptr;
  T* dh_prev = h_prev ? ctx.output(2).data<T>() : nullptr;
  for_each(ctx, ctx.input(1).numel(), [=] __device__(int64_t e) {
    const int64_t r = e / hidden, j = e % hidden;
    const T* a = act + r * 3 * hidden + j;
    const C reset = static_cast<C>(a[0]);
    C d_r, d_z, d_n, d_prev;
    gru_cell_backward_element<C>(
        reset, static_cast<C>(a[hidden]), static_cast<C>(a[2 * hidden]),
        h_gates ? static_cast<C>(h_gates[r * hg_stride + 2 * hidden + j]) : C(0),
        h_prev ? static_cast<C>(h_prev[e]) : C(0), static_cast<C>(dh[e]), d_r, d_z, d_n, d_prev);
    T* d = dx + r * 3 * hidden + j;
    d[0] = static_cast<T>(d_r);
    d[hidden] = static_cast<T>(d_z);
    d[2 * hidden] = static_cast<T>(d_n);
    if (dhg) {
      T* dg = dhg + r * 3 * hidden + j;
      dg[0] = static_cast<T>(d_r);
      dg[hidden] = static_cast<T>(d_z);
      dg[2 * hidden] = static_cast<T>(d_n * reset);
    }
    if (dh_prev) dh_prev[e] = static_cast<T>(d_prev);
  });
}

void gru_cell_grad_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { gru_cell_grad_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(gru_cell_grad, gru_cell_grad_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_recurrent
