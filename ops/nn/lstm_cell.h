// The math of one LSTM step, shared by the CPU kernels (ops/nn/lstm_cell.cc) and the CUDA ones
// (ops/nn/lstm_cell.cu). With the activated gates i, f, o = sigmoid(.), g = tanh(.) (PyTorch's
// order i, f, g, o along the gate axis):
//   c = f c_prev + i g,   h = o tanh(c)
// and, with dh and dc the gradients reaching h and c, and dc_total = dc + dh o (1 - tanh(c)^2):
//   d(i pre) = dc_total g i (1 - i)        d(f pre) = dc_total c_prev f (1 - f)
//   d(g pre) = dc_total i (1 - g^2)        d(o pre) = dh tanh(c) o (1 - o)
//   dc_prev  = dc_total f
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

}  // namespace kiln::ops
