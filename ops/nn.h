// Neural-network ops and functions: softmax, dropout, recurrent cells, activations, attention,
// convolution, pooling and normalization. The losses are in losses.h (included here).
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/ops/losses.h"
#include "kiln/ops/nn/recurrent_cell.h"

namespace kiln {

/// exp(x) / sum(exp(x)) along `axis` (computed as exp(x - max) for stability).
Value softmax(const Value& x, int64_t axis = -1);
/// log(softmax(x)) along `axis`, computed without forming softmax.
Value log_softmax(const Value& x, int64_t axis = -1);
/// Rows of `table` [V, D] picked by integer `ids` (any shape): [ids..., D]. The gradient is a
/// scatter-add into the rows used. An id outside [0, V) is an error when the graph runs.
Value embedding(const Value& table, const Value& ids);
/// How embedding_bag reduces each bag's rows (PyTorch's EmbeddingBag modes).
enum class BagMode { sum, mean, max };
/// embedding_bag's arguments besides the table and ids.
struct EmbeddingBagOptions {
  BagMode mode = BagMode::mean;
  /// With 1-D ids: where each bag starts, [B] (the first 0, non-decreasing, at most the number
  /// of ids); with `include_last_offset`, [B + 1], the last the end of bag B - 1 (ids after it
  /// are in no bag). Undefined for 2-D ids [B, L], whose rows are the bags.
  Value offsets;
  /// Shaped like the ids: each row times its weight before the sum (mode sum only).
  Value per_sample_weights;
  /// Ids equal to it count in no bag (not in a mean's count either).
  std::optional<int64_t> padding_index;
  bool include_last_offset = false;
};
/// The sum, mean or maximum of the rows of `table` [V, D] in each bag of `ids` (PyTorch's
/// F.embedding_bag): [B, D]. An empty bag (or one of padding only) gives zeros. Built from
/// gather and its scatter-add, so it differentiates (max: into each maximum) and runs on either
/// device. Tied maxima: over 2-D ids the gradient is shared among them (as `max`); over offsets
/// the first takes it (as PyTorch's).
Value embedding_bag(const Value& table, const Value& ids, const EmbeddingBagOptions& options = {});
/// Inverted dropout: in training, x * dropout_mask(x, rate, seed) (a new mask every run);
/// otherwise x itself.
Value dropout(const Value& x, double rate, bool training, int64_t seed = 0);
/// Channel dropout of x [N, C, ...] (PyTorch's dropout1d/2d/3d): in training each channel of each
/// example is zeroed with probability `rate` as a whole, the others scaled by 1 / (1 - rate) (a
/// new draw every run); otherwise x itself.
Value channel_dropout(const Value& x, double rate, bool training, int64_t seed = 0);
/// Stochastic depth (timm's drop_path, torchvision's stochastic_depth in "row" mode): in training
/// each example of x [N, ...] is zeroed with probability `rate` as a whole, the others scaled by
/// 1 / (1 - rate); otherwise x itself. Put on a residual branch: x + drop_path(f(x), rate, ...).
Value drop_path(const Value& x, double rate, bool training, int64_t seed = 0);

/// The mask of inverted dropout, shaped like `x`: 1 / (1 - rate) with probability 1 - rate,
/// else 0; a new mask on every run (the random trait: drawn under `seed`, the node's name and
/// the graph's random counter, so a restored checkpoint continues the same sequence).
/// Dropout is x * dropout_mask(x, rate, seed).
Value dropout_mask(const Value& x, double rate, int64_t seed = 0);

/// One LSTM step's outputs: the hidden state h and the cell state c, both [B, H].
struct LSTMCellState {
  Value h, c;
};
/// One LSTM step from its pre-activation gates [B, 4 H] (x W_ih + b_ih + h W_hh + b_hh, in
/// PyTorch's order i, f, g, o) and the previous cell state c_prev [B, H] (undefined: zeros):
/// c = sigmoid(f) c_prev + sigmoid(i) tanh(g), h = sigmoid(o) tanh(c). One op forward and one
/// backward (lstm_cell_grad), where the same step in elementwise ops is a dozen nodes each way.
LSTMCellState lstm_cell(const Value& gates, const Value& c_prev = {});
/// One GRU step (PyTorch's order r, z, n) from the input's gates x_gates = x W_ih + b_ih [B, 3 H]
/// and the hidden state's h_gates = h W_hh + b_hh [B, 3 H] (one row [3 H], b_hh, when h is
/// zero; undefined: zeros too) and h_prev [B, H] (undefined: zeros): r = sigmoid(x_r + h_r),
/// z = sigmoid(x_z + h_z), n = tanh(x_n + r h_n), h = (1 - z) n + z h_prev. One op each way.
Value gru_cell(const Value& x_gates, const Value& h_gates = {}, const Value& h_prev = {});

/// What recurrence() returns: every step's h [T, B, H] (zeros past a sequence's length), and
/// the state after each sequence's last step, h [B, H] and (LSTM) c [B, H].
struct RecurrenceOutputs {
  Value output, h, c;
};
/// One direction of a recurrent layer over a whole sequence as one op each way, for a length
/// T known only when the graph runs (TensorFlow's dynamic_rnn; an unrolled graph needs T when it
/// is built). `input_gates` [T, B, G H] is x W_ih + b_ih for every step (G: 1, 4 for the LSTM's
/// i, f, g, o, 3 for the GRU's r, z, n, as recurrence.h computes them), `weight_hh` [H, G H],
/// `bias_hh` [G H], `h0` and (LSTM only) `c0` [B, H]. `lengths` [B] (integers, optional):
/// sequence b runs steps [0, lengths[b]) and keeps its state after them, as PyTorch's packed
/// sequences (a length above T counts as T; a negative one is an error when the graph runs).
/// `reverse` runs the steps backwards, each sequence from its last step. h0 and c0 may also be
/// one row [1, H] for every sequence (zeros, say). Each step's h W_hh is one product in the op.
/// An LSTM's `weight_hr` [H, P] projects its h (PyTorch's proj_size): h = (o tanh(c)) W_hr, so
/// h0, the outputs and h are P wide and weight_hh is [P, 4 H].
RecurrenceOutputs recurrence(RecurrentCell cell, const Value& input_gates, const Value& weight_hh,
                             const Value& bias_hh, const Value& h0, const Value& c0 = {},
                             const Value& lengths = {}, bool reverse = false,
                             const Value& weight_hr = {});

/// x where x >= 0, else slope x (NaN passes).
Value leaky_relu(const Value& x, double slope = 0.01);
/// x limited to [low, high] (NaN passes); low > high is a GraphError.
Value clamp(const Value& x, double low, double high);

// More activations, as PyTorch defines them (composites: fusion makes each one kernel). NaN
// passes through every one.
/// x where x > 0, else alpha (e^x - 1) (ELU).
Value elu(const Value& x, double alpha = 1.0);
/// scale elu(x, alpha) with SELU's fixed alpha = 1.6732632423543772 and scale = 1.0507009873554805.
Value selu(const Value& x);
/// x where x > 0, else alpha (e^(x / alpha) - 1) (CELU); alpha 0 is a GraphError.
Value celu(const Value& x, double alpha = 1.0);
/// clamp(x, low, high) (Hardtanh).
Value hardtanh(const Value& x, double low = -1.0, double high = 1.0);
/// clamp(x, 0, 6) (ReLU6).
Value relu6(const Value& x);
/// clamp(x / 6 + 1 / 2, 0, 1) (Hardsigmoid).
Value hardsigmoid(const Value& x);
/// x hardsigmoid(x) (Hardswish, MobileNetV3's).
Value hardswish(const Value& x);
/// x tanh(softplus(x)) (Mish).
Value mish(const Value& x);
/// ln(sigmoid(x)) = -softplus(-x): no overflow for any x (LogSigmoid).
Value logsigmoid(const Value& x);
/// x / (1 + |x|) (Softsign).
Value softsign(const Value& x);
/// x where x >= 0, else weight x (PReLU): weight [1], or [C] for the channels of x [N, C, ...]
/// (axis 1); anything else is a GraphError.
Value prelu(const Value& x, const Value& weight);
/// The cosine of the angle between a and b along `axis`: sum(a / max(|a|, eps) * b / max(|b|,
/// eps)) over it (PyTorch's cosine_similarity; the axis is removed).
Value cosine_similarity(const Value& a, const Value& b, int64_t axis = 1, double eps = 1e-8);
/// x without the dims of size 1 in `axes` (every size-1 dim when empty); a listed dim that is
/// not 1 is a GraphError. Its inverse is expand_dims (unsqueeze).
Value squeeze(const Value& x, Axes axes = {});
/// The values (one shape) stacked along a new axis `axis` of the result.
Value stack(const std::vector<Value>& values, int64_t axis = 0);
/// log(sum(exp(x))) over `axes` (every axis when empty), without overflow; -inf where every
/// element is -inf.
Value logsumexp(const Value& x, Axes axes = {}, bool keepdims = false);
/// How interpolate computes an output position from the input (PyTorch's modes).
enum class InterpolateMode {
  nearest,        ///< the input at floor(dst scale) (PyTorch's "nearest")
  nearest_exact,  ///< the input at floor((dst + 1/2) scale) ("nearest-exact")
  linear,         ///< linear along each dim: "linear", "bilinear", "trilinear"
  cubic,          ///< Keys' cubic convolution (A = -0.75) along each dim: "bicubic"
};
/// Options of interpolate: the output's spatial size, or a factor per spatial dim (one value:
/// every dim), as F.interpolate's size / scale_factor (a factor gives floor(in factor) outputs
/// and, as PyTorch, positions scaled by 1 / factor).
struct InterpolateOptions {
  std::vector<int64_t> size;
  std::vector<double> scale_factor;
  InterpolateMode mode = InterpolateMode::nearest;
  bool align_corners = false;  ///< linear and cubic: the corner pixels' centers line up
  /// Linear and cubic: when shrinking by s, each output averages the inputs its filter covers
  /// stretched s times (PyTorch's antialias, PIL's resize; cubic with A = -0.5 then, as both),
  /// instead of sampling 2 or 4 of them. PyTorch has it for 2-D only; here any dims.
  bool antialias = false;
};
/// x [N, C, L], [N, C, H, W] or [N, C, D, H, W] resized over its spatial dims (PyTorch's
/// F.interpolate and nn.Upsample; the batch may be unknown). Cubic reads positions clamped to
/// the input, as PyTorch's bicubic.
Value interpolate(const Value& x, const InterpolateOptions& options);
/// How pad() fills: with a constant value, mirrored about the edge element (reflect: "dcb|abcd|
/// cba"), repeating the edge element (replicate), or wrapping around (circular), as
/// torch.nn.functional.pad's modes.
enum class PadMode { constant, reflect, replicate, circular };
/// x padded around its last dims: widths[0] = (before, after) for the last dim, widths[1] for
/// the one before, ... (torch.nn.functional.pad's order). The padded dims must be known (the
/// others, a batch, may not); reflect pads at most size - 1 on a side, circular at most size.
Value pad(const Value& x, const std::vector<std::pair<int64_t, int64_t>>& widths, PadMode mode,
          double value = 0);
/// pad() with `value` (constant mode).
inline Value pad(const Value& x, const std::vector<std::pair<int64_t, int64_t>>& widths,
                 double value = 0) {
  return pad(x, widths, PadMode::constant, value);
}

/// x [N, C r^2, H, W] rearranged to [N, C, H r, W r] (PyTorch's pixel_shuffle, sub-pixel
/// convolution's upsampling): channel c r^2 + i r + j becomes pixel (h r + i, w r + j).
Value pixel_shuffle(const Value& x, int64_t factor);
/// The inverse of pixel_shuffle: [N, C, H r, W r] to [N, C r^2, H, W].
Value pixel_unshuffle(const Value& x, int64_t factor);

/// The sliding blocks of unfold and fold (F.unfold's and F.fold's arguments; pairs are
/// (height, width)).
struct UnfoldOptions {
  std::array<int64_t, 2> kernel_size{1, 1};
  std::array<int64_t, 2> dilation{1, 1};
  std::array<int64_t, 2> padding{0, 0};  ///< zeros added on both sides
  std::array<int64_t, 2> stride{1, 1};
};
/// The blocks of x [N, C, H, W] (C, H, W known) as columns, im2col (PyTorch's F.unfold):
/// [N, C kh kw, L], L = oh ow blocks in row-major order; row c kh kw + i kw + j holds each
/// block's element (i, j) of channel c. Built from strided slices: gradients and every device
/// come with them.
Value unfold(const Value& x, const UnfoldOptions& options);
/// The adjoint of unfold, col2im (PyTorch's F.fold): columns [N, C kh kw, L] summed into the
/// image [N, C, H, W] of `output_size` (H, W) they were taken from; overlapping blocks add.
Value fold(const Value& columns, std::array<int64_t, 2> output_size, const UnfoldOptions& options);

/// Window of a 2-D convolution (pairs are (height, width)).
struct Conv2dOptions {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};  ///< zeros added on both sides
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;  ///< input and output channels split into this many independent groups
  /// What the padding holds (PyTorch's Conv2d padding_mode): zeros (constant), or the input
  /// reflected, replicated or wrapped (pad() then an unpadded convolution). Transposed
  /// convolutions take zeros only.
  PadMode padding_mode = PadMode::constant;
  /// PyTorch's padding="same" (stride 1, `padding` left 0): the output as large as the input,
  /// dilation (K - 1) padding per dim, half before and the rest (one more where it is odd)
  /// after, as PyTorch puts it; in padding_mode. Not for transposed convolutions.
  bool same = false;
};
/// 2-D cross-correlation (PyTorch's conv2d) of x [N, C, H, W] with filter [O, C / groups, KH,
/// KW]: [N, O, OH, OW], OH = (H + 2 pad - dilation (KH - 1) - 1) / stride + 1. Add a bias with
/// `+ reshape(b, {1, O, 1, 1})` (nn::Conv2d does).
Value conv2d(const Value& x, const Value& filter, const Conv2dOptions& options = {});
/// The transposed convolution (PyTorch's conv_transpose2d): the gradient of conv2d with
/// respect to its input. x [N, C, H, W], filter [C, O / groups, KH, KW] (PyTorch's layout):
/// [N, O, (H - 1) stride - 2 pad + dilation (KH - 1) + 1 + output_padding, ...].
Value conv_transpose2d(const Value& x, const Value& filter, const Conv2dOptions& options = {},
                       std::array<int64_t, 2> output_padding = {0, 0});

/// Window of 2-D pooling. A stride of 0 means the window's size (PyTorch's default). Padding
/// is at most half the window; windows start at the top left.
struct Pool2dOptions {
  std::array<int64_t, 2> kernel_size{2, 2};
  std::array<int64_t, 2> stride{0, 0};
  std::array<int64_t, 2> padding{0, 0};
  /// PyTorch's ceil_mode: the output size rounded up, so a last, partial window covers what
  /// the floor leaves out (it must start inside the input or the left padding).
  bool ceil_mode = false;
  /// Max pooling only (as PyTorch's MaxPool2d): the window's taps this many rows and columns
  /// apart, so it spans dilation (kernel - 1) + 1; every window must still hold an input
  /// element.
  std::array<int64_t, 2> dilation{1, 1};
};
/// The maximum of each window of x [N, C, H, W] (NaN propagates; padding never wins). The
/// gradient goes to each window's first maximum (row-major).
Value max_pool2d(const Value& x, const Pool2dOptions& options = {});
/// max_pool2d's output and, i64 and shaped like it, where each window's maximum is in its input
/// plane, h W + w (PyTorch's return_indices=True: the first maximum in the window's row-major
/// order; a NaN at once, where PyTorch takes the window's last NaN), for max_unpool2d.
std::pair<Value, Value> max_pool2d_with_indices(const Value& x, const Pool2dOptions& options = {});
/// PyTorch's max_unpool2d: zeros [N, C, H, W] with each x[n, c, i, j] written at place
/// indices[n, c, i, j] (h W + w) of its plane. (H, W) = output_size, or where it is {0, 0} the
/// size a pooling of `options` maps onto x's: ((OH - 1) stride - 2 padding + kernel, ...); an
/// explicit size must lie strictly within one stride of that (PyTorch's rule), or a GraphError.
/// Where several indices name one place the last (in x's order) stays, as in PyTorch
/// (max_pool2d's indices repeat where windows overlap, with the same maximum); the gradient
/// picks dy at every index, as PyTorch's. An index outside the plane is an error when the graph
/// runs.
Value max_unpool2d(const Value& x, const Value& indices, const Pool2dOptions& options = {},
                   std::array<int64_t, 2> output_size = {0, 0});
/// The mean of each window; with count_include_pad (PyTorch's default) padding counts as
/// zeros in the divisor.
Value avg_pool2d(const Value& x, const Pool2dOptions& options = {}, bool count_include_pad = true);
/// The maximum of x [N, C, H, W] over an output_size grid of windows (PyTorch's
/// adaptive_max_pool2d): output row i covers input rows [floor(i H / OH), ceil((i + 1) H / OH)),
/// columns likewise; H and W must be known. NaN propagates; the gradient goes to each window's
/// first maximum.
Value adaptive_max_pool2d(const Value& x, std::array<int64_t, 2> output_size);
/// The mean of each channel plane: [N, C, H, W] -> [N, C].
Value global_avg_pool2d(const Value& x);

/// Window of a 3-D convolution (triples are (depth, height, width)).
struct Conv3dOptions {
  std::array<int64_t, 3> stride{1, 1, 1};
  std::array<int64_t, 3> padding{0, 0, 0};  ///< zeros added on both sides
  std::array<int64_t, 3> dilation{1, 1, 1};
  int64_t groups = 1;
  PadMode padding_mode = PadMode::constant;  ///< as Conv2dOptions::padding_mode
  bool same = false;                         ///< as Conv2dOptions::same
};
/// 3-D cross-correlation (PyTorch's conv3d) of x [N, C, D, H, W] with filter [O, C / groups, KD,
/// KH, KW]: [N, O, OD, OH, OW] (C, D, H, W known). One conv2d per depth tap of the filter, over
/// every output depth at once: a direct 3-D convolution's products, with conv2d's kernels and
/// gradients.
Value conv3d(const Value& x, const Value& filter, const Conv3dOptions& options = {});
/// The transposed 3-D convolution (PyTorch's conv_transpose3d) of x [N, in, D, H, W] with filter
/// [in, out / groups, KD, KH, KW]: the adjoint of conv3d in its input; `output_padding` adds
/// depths, rows and columns at the end.
Value conv_transpose3d(const Value& x, const Value& filter, const Conv3dOptions& options = {},
                       std::array<int64_t, 3> output_padding = {0, 0, 0});
/// Window of 3-D pooling, as Pool2dOptions with (depth, height, width) triples.
struct Pool3dOptions {
  std::array<int64_t, 3> kernel_size{2, 2, 2};
  std::array<int64_t, 3> stride{0, 0, 0};  ///< 0: the window's size
  std::array<int64_t, 3> padding{0, 0, 0};
  bool ceil_mode = false;
  /// max_pool3d only (as PyTorch's MaxPool3d): the window's taps this many depths, rows and
  /// columns apart; every window must still hold an input element.
  std::array<int64_t, 3> dilation{1, 1, 1};
};
/// The maximum of each window of x [N, C, D, H, W] (PyTorch's max_pool3d; C, D, H, W known):
/// max_pool2d of each depth slice, then the maximum over the depth window's taps (NaN
/// propagates; a gradient goes to the first maximum within a slice, to one slice on a tie across
/// slices).
Value max_pool3d(const Value& x, const Pool3dOptions& options = {});
/// The mean of each window of x [N, C, D, H, W] (PyTorch's avg_pool3d, either count_include_pad).
Value avg_pool3d(const Value& x, const Pool3dOptions& options = {}, bool count_include_pad = true);
/// The mean of x over a grid of output_size windows along its last output_size.size() dims
/// (PyTorch's adaptive_avg_pool1d/2d/3d: output i covers [floor(i in / out), ceil((i + 1) in /
/// out))); every dim but the batch must be known. Each pooled dim is a product with a constant
/// matrix of the window weights.
Value adaptive_avg_pool(const Value& x, const std::vector<int64_t>& output_size);
/// The maximum of x over a grid of output_size windows along its last output_size.size() dims
/// (PyTorch's adaptive_max_pool1d/2d/3d windows, as adaptive_avg_pool's); the pooled dims must
/// be known. Separable: per pooled dim, the maximum over the longest window's taps, each a
/// gather of one input index per output (a shorter window repeats its last index). NaN
/// propagates; the gradient goes to each window's maximum (split between equal values, as
/// `maximum` splits it).
Value adaptive_max_pool(const Value& x, const std::vector<int64_t>& output_size);

/// Options of scaled_dot_product_attention.
struct AttentionOptions {
  /// [B or 1, H or 1, Tq or 1, Tk or 1], as PyTorch's attn_mask: bool, true where query i may
  /// attend to key j (a key-padding mask is [B, 1, 1, Tk]); or of q's dtype, a bias added to the
  /// scaled scores (ALiBi, a relative position bias, -inf to hide a key), differentiable. A mask
  /// of rank 1 to 3 broadcasts from the right ([Tq, Tk] is [1, 1, Tq, Tk]).
  Value mask{};
  /// Query i attends to keys j <= i only (top-left aligned, as PyTorch's is_causal).
  bool causal = false;
  /// Sliding-window (local) attention: query i attends to keys j > i - window only (with causal,
  /// the `window` keys up to its own: Mistral's and Gemma's local layers); 0 for no window. The
  /// kernels skip the products outside it (a step costs O(T window), not O(T^2)); lengths may
  /// be unknown as the graph is built.
  int64_t window = 0;
  /// The scores' factor; 0 means 1 / sqrt(depth).
  double scale = 0;
  /// Soft-capping of the scaled scores (Gemma 2's attn_logit_softcapping): each becomes
  /// softcap * tanh(score / softcap), in (-softcap, softcap), before the mask is applied; 0 for
  /// none. On CUDA it runs on the per-row kernels, not flash.
  double softcap = 0;
  /// "bhtd": q, k, v and the result are [B, H, T, D]; "bthd": [B, T, H, D], as a [B, T, H * D]
  /// projection reshaped (read in place: no transposes to split or merge heads).
  std::string layout = "bhtd";
  /// Where the queries stand among the keys, for `causal` and `window`: an integer scalar,
  /// read when the graph runs; query i is at key position query_offset + i (undefined: 0, top
  /// left). Tk - Tq aligns the last query with the last key (PyTorch's causal_lower_right);
  /// cached decoding gives the cache's position, so a step multiplies only the entries written
  /// so far, not the whole cache. Not differentiable.
  Value query_offset{};
};
/// softmax(scale q k^T, masked) v for q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv]:
/// [B, H, Tq, Dv] (or all [B, T, H, D] with layout "bthd"), fused (the score matrix is never a
/// graph value; flash-attention's recomputation in the backward pass). A query with no key to
/// attend gets zeros. Hk is H, or a divisor of it: grouped-query attention (PyTorch's
/// enable_gqa), query head h reading key-value head h / (H / Hk) in place. Gradients sum over
/// a group's query heads when H and Hk are known as the graph is built (as they are from
/// projections reshaped into heads).
Value scaled_dot_product_attention(const Value& q, const Value& k, const Value& v,
                                   const AttentionOptions& options = {});
/// An attention mask (bool, a float bias, or undefined) narrowed to where the bool `keep` is
/// true (the shapes broadcast): mask && keep, or the bias where keep and -inf elsewhere.
Value attention_mask_and(const Value& mask, const Value& keep);
/// ALiBi's per-head slopes (Press et al., "Train Short, Test Long"; BLOOM's and MPT's): for H a
/// power of two, head h's (from 0) is 2^(-8 (h + 1) / H); otherwise the largest power of two
/// P below H gives the first P heads theirs, and the rest take 2^(-4 k / P) for k = 1, 3, 5, ...
/// (every other slope of 2P heads), as the paper's code and transformers do.
std::vector<double> alibi_slopes(int64_t heads);
/// ALiBi's attention bias, a float mask for scaled_dot_product_attention or the attention
/// layers: [heads, Tq, Tk] of `dtype`, slope_h * (j - i) for query i and key j (query i sits
/// at key position i, as `causal` and `window` place it), or with `symmetric`
/// -slope_h * |j - i| (for attention without a causal mask). BLOOM's slope_h * j differs from
/// it by a constant per row, which softmax ignores. Lengths are those of the graph's build (the
/// overload below takes positions computed when the graph runs).
Value alibi_bias(Graph& graph, int64_t heads, int64_t queries, int64_t keys, DType dtype = f32,
                 bool symmetric = false);
/// Positions 0, 1, ..., n - 1 along x's dim `axis` (n as the graph runs), plus `start` when
/// given (an integer scalar tensor, rank 0 or [1]: a cache's position): [n] of `dtype`. For a
/// bias or a table over a length the graph is not built for.
Value positions_along(const Value& x, int64_t axis, DType dtype = f32, const Value& start = {});
/// alibi_bias at query positions [Tq] and key positions [Tk] (vectors, any numeric dtype;
/// positions_along gives them for lengths known only when the graph runs, or past a cache's
/// offset): [heads, Tq, Tk] of `dtype`, slope_h * (key_j - query_i), or -slope_h |key_j -
/// query_i| with `symmetric`.
Value alibi_bias(int64_t heads, const Value& query_positions, const Value& key_positions,
                 DType dtype = f32, bool symmetric = false);
/// T5's bucket of the relative position j - i of key j to query i (Raffel et al.; transformers'
/// T5Attention._relative_position_bucket, in its f32 arithmetic). With `bidirectional` the
/// first half of the buckets holds keys at or before the query, the second half keys after it;
/// otherwise (a decoder's) all hold keys at or before it, and later keys share bucket 0. In each
/// half, the first half of its buckets are the distances 0, 1, ... exactly; the rest grow
/// logarithmically up to `max_distance`, and farther keys share the last.
int64_t relative_position_bucket(int64_t relative, bool bidirectional, int64_t buckets = 32,
                                 int64_t max_distance = 128);
/// relative_position_bucket of every query i and key j: a constant [queries, keys] of i64 (for
/// nn::RelativePositionBias, or an embedding of one's own).
Value relative_position_buckets(Graph& graph, int64_t queries, int64_t keys, bool bidirectional,
                                int64_t buckets = 32, int64_t max_distance = 128);

/// normalize's outputs: y = (x - mean) * rstd (times scale, plus shift) and the statistics,
/// shaped like the dims not normalized.
struct Normalized {
  Value y, mean, rstd;
};
/// Normalizes x over `axes` (the other dims must be adjacent): mean and biased variance over
/// the axes, rstd = 1 / sqrt(var + eps). Without `center` (RMS norm) the mean is 0 and rstd
/// = 1 / sqrt(mean(x^2) + eps). The op behind every function below. With `scale` or `shift`
/// (shaped like the statistics, as batch norm's per-channel weight and bias), y is
/// xhat * scale + shift, computed in the same pass (and their gradients in the backward's).
Normalized normalize(const Value& x, const Axes& axes, double eps = 1e-5, bool center = true,
                     const Value& scale = {}, const Value& shift = {});
/// Layer normalization over the last `normalized_dims` dims, then * weight + bias (each
/// optional, shaped like those dims): PyTorch's layer_norm.
Value layer_norm(const Value& x, int64_t normalized_dims = 1, const Value& weight = {},
                 const Value& bias = {}, double eps = 1e-5);
/// Root-mean-square normalization over the last dims, then * weight (optional).
Value rms_norm(const Value& x, int64_t normalized_dims = 1, const Value& weight = {},
               double eps = 1e-6);
/// Group normalization of x [N, C, ...]: the channels in `groups` groups, each group of each
/// example normalized over its channels and positions; then per-channel weight [C] and bias
/// [C] (optional).
Value group_norm(const Value& x, int64_t groups, const Value& weight = {}, const Value& bias = {},
                 double eps = 1e-5);
/// A batch's statistics per channel: its element count per channel (a scalar of x's dtype), its
/// mean [C], and the sum of squared deviations from that mean [C] (M2: var = m2 / count).
struct BatchStatistics {
  Value count, mean, m2;
};
/// Turns one process's statistics into those of every process's batch together
/// (distributed::statistics_over_ranks: SyncBatchNorm). Shapes are kept.
using CombineStatistics = std::function<BatchStatistics(const BatchStatistics&)>;

/// Batch normalization of x [N, C, ...] per channel, then weight [C] and bias [C] (optional).
/// Training: the batch's statistics, and where running_mean / running_var (variables [C]) are
/// given they are updated whenever the result is computed (running = (1 - momentum) running +
/// momentum batch, the variance unbiased), as PyTorch does. Evaluation: the running
/// statistics. With `num_batches_tracked` (an i64 scalar variable, the batches averaged so far)
/// momentum is ignored and the running statistics are the plain average of every training
/// batch's: the count grows by one and the factor is 1 / count (PyTorch's momentum=None).
/// With `combine`, training normalizes by (and the running statistics follow) the statistics it
/// returns for this batch's: the batches of every rank of a job (SyncBatchNorm); gradients flow
/// through them.
Value batch_norm(const Value& x, const Value& running_mean, const Value& running_var,
                 const Value& weight, const Value& bias, bool training, double momentum = 0.1,
                 double eps = 1e-5, const Value& num_batches_tracked = {},
                 const CombineStatistics& combine = {});
/// Instance normalization of x [N, C, ...]: each channel of each example normalized over its
/// positions, then weight [C] and bias [C] (optional) (PyTorch's instance_norm). With
/// use_input_stats (training, or no running statistics kept) the instance's statistics are used,
/// and given running_mean / running_var (variables [C]) they are updated whenever the result is
/// computed toward the mean over the examples of the instance statistics (variances unbiased);
/// otherwise the running statistics normalize (PyTorch's track_running_stats in evaluation).
Value instance_norm(const Value& x, const Value& running_mean = {}, const Value& running_var = {},
                    const Value& weight = {}, const Value& bias = {}, bool use_input_stats = true,
                    double momentum = 0.1, double eps = 1e-5);

/// How rotary_embedding stretches its frequencies so that a model reads contexts longer than it
/// was trained on (the `rope_scaling` types of Hugging Face's configurations).
struct RotaryScaling {
  enum class Kind {
    /// base^(-2c / D) as they are.
    none,
    /// Position interpolation (Chen et al. 2023): every frequency divided by `factor`, so
    /// position factor p turns as p did.
    linear,
    /// LLaMA 3.1's: frequencies whose wavelength 2 pi / f is below original_length /
    /// high_frequency_factor are kept, those above original_length / low_frequency_factor are
    /// divided by `factor`, and those between blend the two linearly in original_length /
    /// wavelength.
    llama3,
    /// YaRN (Peng et al. 2023): pairs that turn more than beta_fast times over original_length
    /// are kept, those turning fewer than beta_slow times are divided by `factor`, those between
    /// blend linearly in the pair index; the turned features are multiplied by attention_factor.
    yarn,
    /// Dynamic NTK (Hugging Face's "dynamic"): at a sequence length L = start + T past
    /// original_length the base becomes base (factor L / original_length - (factor - 1))^(D /
    /// (D - 2)), so the frequencies follow L at run time; up to original_length they are
    /// unscaled. D must exceed 2.
    dynamic,
    /// LongRoPE (Phi-3's "longrope"): pair c's frequency divided by short_factors[c], or by
    /// long_factors[c] once L = start + T passes original_length (chosen at run time); the
    /// turned features multiplied by attention_factor.
    longrope,
  };
  Kind kind = Kind::none;
  /// How many times longer the contexts are (at least 1). longrope's is the model's longest
  /// context over original_length (Hugging Face's default when its config names none).
  double factor = 1;
  /// The context length the model was trained on (llama3, yarn, dynamic, longrope).
  int64_t original_length = 0;
  /// llama3's bounds on the turns a pair makes over original_length (original_length /
  /// wavelength): below the low one it is divided by `factor`, above the high one kept.
  double low_frequency_factor = 1, high_frequency_factor = 4;
  /// yarn's rotation counts over original_length that bound the blend.
  double beta_fast = 32, beta_slow = 1;
  /// yarn's and longrope's scale of the turned features (both queries and keys, so scores scale
  /// by its square); 0 means yarn's 0.1 ln(factor) + 1, longrope's sqrt(1 + ln(factor) /
  /// ln(original_length)) (1 for a factor of 1).
  double attention_factor = 0;
  /// longrope's divisors of the D/2 pair frequencies, within original_length and past it.
  std::vector<double> short_factors, long_factors;
};

/// Options of rotary_embedding.
struct RotaryOptions {
  /// theta: feature pair c of D turns by position * base^(-2c / D) radians.
  double base = 10000;
  /// The pairs are (x[2c], x[2c + 1]) (GPT-J's, Meta's LLaMA code); otherwise (x[c], x[c + D/2])
  /// ("rotate half": GPT-NeoX's, Hugging Face's LLaMA).
  bool interleaved = false;
  /// Frequency scaling for longer contexts (none by default).
  RotaryScaling scaling{};
  /// Partial rotary embedding: only the first `dims` features of each head turn (pairs within
  /// them, D read as `dims`), the rest pass unchanged (GPT-NeoX's rotary_pct, Phi's
  /// partial_rotary_factor). Even, at most the depth; 0 for the whole head.
  int64_t dims = 0;
};

/// The D/2 frequencies rotary_embedding turns the pairs of a depth-D head by (radians per
/// position), after options.scaling, each rounded once to f32, at sequence length `length`
/// (only dynamic and longrope scaling depend on it; 0: within original_length). Throws
/// GraphError naming `depth` or the option that is out of range.
std::vector<float> rotary_frequencies(int64_t depth, const RotaryOptions& options = {},
                                      int64_t length = 0);
/// The factor rotary_embedding multiplies its turned features by: yarn's or longrope's
/// attention factor, 1 for the other scalings.
double rotary_attention_factor(const RotaryOptions& options);
/// Rotary position embedding (RoFormer) of x [B, T, H, D] (the heads of a [B, T, H D]
/// projection; D known, and even unless options.dims says which features turn), one op: at position
/// p = start + t each feature pair (a, b) becomes (a cos w - b sin w, b cos w + a sin w), w = p
/// base^(-2c / D). `start` is an integer scalar tensor (rank 0 or [1]: the first row's position,
/// fed or computed, as in cached decoding) or undefined for 0. The angles are computed in f32 and
/// the rotation in x's dtype. Applied to queries and keys, their dot products depend on the
/// positions' difference only. options.scaling changes the frequencies (rotary_frequencies) and,
/// for yarn and longrope, scales the result. With dynamic or longrope scaling the frequencies
/// are those at length start + T: a constant when both are known as the graph is built, else
/// computed in the graph from `start` (a cached decoding step: one compiled plan serves every
/// position).
Value rotary_embedding(const Value& x, const Value& start = {}, const RotaryOptions& options = {});

/// The gated linear unit (PyTorch's F.glu): x split in halves a, b along `axis` (even), a
/// sigmoid(b).
Value glu(const Value& x, int64_t axis = -1);

}  // namespace kiln
