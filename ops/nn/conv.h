// The geometry of a 2-D convolution, shared by conv2d, its two gradient ops and their CPU and
// CUDA kernels. Layout NCHW; the filter is [O, C / groups, KH, KW].
//   out = floor((in + 2 pad - dilation (k - 1) - 1) / stride) + 1   per spatial dim
//   y[n, o, i, j] = sum_{c in o's group, a, b} x[n, c, i s - p + a d, j s - p + b d] w[o, c, a, b]
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kiln/framework/graph.h"

namespace kiln::ops {

struct ConvGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  /// Pooling only: uneven adaptive windows, row i [floor(i in_h / out_h), ceil((i + 1) in_h /
  /// out_h)) and columns likewise (kernel_h/w then bound the window, stride and pad unused).
  bool adaptive = false;

  int64_t group_in() const { return in_channels / groups; }
  int64_t group_out() const { return out_channels / groups; }
  /// Rows of the unfolded input (im2col): one per (input channel of a group, kernel offset).
  int64_t patch_size() const { return group_in() * kernel_h * kernel_w; }
  int64_t out_pixels() const { return out_h * out_w; }
  int64_t in_pixels() const { return in_h * in_w; }
  /// A 1x1 filter with stride 1 and no padding: the unfolded input is the input itself.
  bool pointwise() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 &&
           pad_w == 0;
  }
};

/// The output size of one spatial dim (may be < 1 for a window larger than the padded input).
inline int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                int64_t dilation) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

/// The geometry of `node` (conv2d or one of its gradient ops) from the shapes of its input
/// side x [N, C, H, W], output side y [N, O, OH, OW] and filter [O, C / groups, KH, KW].
ConvGeometry conv_geometry(const Node& node, const Shape& x, const Shape& y, const Shape& filter);

/// The geometry of a pooling node (as a depthwise window: groups = channels; dilation for the
/// max ops) from its input side x and pooled side y. An adaptive pool (attribute output_size) whose
/// windows tile the input is an ordinary window of in / out, stride the same; otherwise `adaptive`.
ConvGeometry pool_geometry(const Node& node, const Shape& x, const Shape& y);

/// out[n, o, :] += bias[o] for `images` images of `channels` planes of `pixels`: conv2d's
/// optional bias, added by each kernel to the images it has just written (still in cache).
template <typename T>
void add_channel_bias(T* out, int64_t images, int64_t channels, int64_t pixels, const T* bias) {
  for (int64_t n = 0; n < images; ++n)
    for (int64_t o = 0; o < channels; ++o) {
      T* plane = out + (n * channels + o) * pixels;
      const T b = bias[o];
      for (int64_t p = 0; p < pixels; ++p) plane[p] += b;
    }
}

/// PyTorch's padding="same" for a convolution's `dims` spatial dims: per dim (in order) the
/// padding {before, after} = {dilation (K - 1) / 2, the rest}, K the filter's size there (its
/// last `dims` dims). A GraphError naming `op` unless every stride is 1, the padding given is 0
/// and the filter's sizes are known.
std::vector<std::pair<int64_t, int64_t>> same_padding(const std::string& op, const Shape& filter,
                                                      const int64_t* stride, const int64_t* padding,
                                                      const int64_t* dilation, int dims);

}  // namespace kiln::ops
