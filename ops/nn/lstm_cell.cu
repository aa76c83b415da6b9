// The CUDA kernels of lstm_cell and lstm_cell_grad (ops/nn/lstm_cell.cc): one thread per
// element of h, the math of ops/nn/lstm_cell.h; 16-bit floats compute in f32.
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/nn/lstm_cell.h"

namespace kiln::ops::cuda_lstm {

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

}  // namespace kiln::ops::cuda_lstm
