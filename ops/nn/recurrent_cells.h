// The math of one LSTM step and one GRU step, shared by the CPU kernels
// (ops/nn/recurrent_cells.cc) and the CUDA ones (ops/nn/recurrent_cells.cu).
//
// LSTM, with the activated gates i, f, o = sigmoid(.), g = tanh(.) (PyTorch's order i, f, g, o
// along the gate axis):
//   c = f c_prev + i g,   h = o tanh(c)
// and, with dh and dc the gradients reaching h and c, and dc_total = dc + dh o (1 - tanh(c)^2):
//   d(i pre) = dc_total g i (1 - i)        d(f pre) = dc_total c_prev f (1 - f)
//   d(g pre) = dc_total i (1 - g^2)        d(o pre) = dh tanh(c) o (1 - o)
//   dc_prev  = dc_total f
//
// GRU (PyTorch's order r, z, n), from the input's gates x_r, x_z, x_n (x W_ih + b_ih) and the
// hidden state's h_r, h_z, h_n (h W_hh + b_hh):
//   r = sigmoid(x_r + h_r),  z = sigmoid(x_z + h_z),  n = tanh(x_n + r h_n)
//   h' = (1 - z) n + z h
// and, with dh the gradient reaching h':
//   d(n pre) = dh (1 - z) (1 - n^2)        (n pre = x_n + r h_n: d x_n = d(n pre), d h_n = d(n pre)
//   r) d(r pre) = d(n pre) h_n r (1 - r)      (d x_r = d h_r = d(r pre)) d(z pre) = dh (h - n) z (1
//   - z)        (d x_z = d h_z = d(z pre)) dh_prev  = dh z                        (h's other uses,
//   h W_hh, get theirs through h_r, h_z, h_n)
#pragma once

#include "kiln/framework/dtype.h"

namespace kiln::ops {

/// The gradients of one element of an LSTM step (see above): the four gates' pre-activation
/// gradients and c_prev's. `tanh_c` is tanh(c).
template <typename C>
KILN_HOST_DEVICE void lstm_cell_backward_element(C i, C f, C g, C o, C tanh_c, C c_prev, C dh, C dc,
                                                 C& d_i, C& d_f, C& d_g, C& d_o, C& dc_prev) {
  const C dc_total = dc + dh * o * (C(1) - tanh_c * tanh_c);
  d_i = dc_total * g * i * (C(1) - i);
  d_f = dc_total * c_prev * f * (C(1) - f);
  d_g = dc_total * i * (C(1) - g * g);
  d_o = dh * tanh_c * o * (C(1) - o);
  dc_prev = dc_total * f;
}

/// The gradients of one element of a GRU step (see above), from the activated r, z, n, the
/// hidden state's h_n and the previous h: the pre-activation gradients of r, z and n (n's with
/// respect to x_n; h_n's is d_n r) and h_prev's direct one.
template <typename C>
KILN_HOST_DEVICE void gru_cell_backward_element(C r, C z, C n, C h_n, C h_prev, C dh, C& d_r,
                                                C& d_z, C& d_n, C& dh_prev) {
  d_n = dh * (C(1) - z) * (C(1) - n * n);
  d_r = d_n * h_n * r * (C(1) - r);
  d_z = dh * (h_prev - n) * z * (C(1) - z);
  dh_prev = dh * z;
}

}  // namespace kiln::ops
