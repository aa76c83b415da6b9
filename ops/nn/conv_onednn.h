// oneDNN's direct convolution for the f32 CPU kernels of conv2d and its two gradient ops
// (ops/nn/conv.cc keeps im2col + sgemm for f64, and wherever oneDNN declines).
#pragma once

#include "kiln/framework/kernel.h"
#include "kiln/ops/nn/conv.h"

namespace kiln::ops {

/// Which product of the convolution: forward (a = x, b = w, out = y), backward_input
/// (a = dy, b = w, out = dx) or backward_filter (a = x, b = dy, out = dw).
enum class ConvPass { forward, backward_input, backward_filter };

/// Runs `pass` of the f32 convolution `g` through oneDNN's direct (JIT) kernels, the images in
/// fixed blocks over Kiln's pool (one oneDNN thread per block), so a result depends on the
/// batch and never on the thread count. Returns false, having written nothing, where oneDNN has
/// no implementation for the problem or the environment sets KILN_ONEDNN=0. `bias` (forward
/// only, optional): [O], added to each block of images once written.
bool onednn_convolution(const KernelContext& ctx, ConvPass pass, const ConvGeometry& g,
                        const float* a, const float* b, float* out, const float* bias = nullptr);

}  // namespace kiln::ops
