#include "kiln/ops/layers.h"

#include <algorithm>
#include <cmath>

#include "kiln/framework/error.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"

namespace kiln::nn {

// ---- Module.

Module::Module(Graph& graph, std::string name)
    : graph_(graph), name_(std::move(name)), path_(graph.scope() + name_) {
  KILN_CHECK(!name_.empty() && name_.find('/') == std::string::npos, GraphError,
             "[nn] a layer's name must be non-empty and without '/', got '", name_, "'");
}

void Module::expect_own(std::initializer_list<const Value*> values, const char* what) const {
  for (const Value* v : values)
    KILN_CHECK(v->defined() && v->graph() == &graph_, GraphError, "[nn] ", path_, ": ", what,
               values.size() == 1 ? " is not a value" : " must be values", " of the layer's graph");
}

Value Module::operator()(const Value& x) {
  expect_own({&x}, "the input");
  NameScope scope(graph_, name_);
  return forward(x);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& child : children_) child->train(on);
}

std::vector<Value> Module::parameters() const {
  std::vector<Value> out;
  for (const Value& v : variables_)
    if (v.node().attr<bool>("trainable")) out.push_back(v);
  for (const auto& child : children_) {
    std::vector<Value> inner = child->parameters();
    out.insert(out.end(), inner.begin(), inner.end());
  }
  return out;
}

std::vector<Module*> Module::modules() {
  std::vector<Module*> out{this};
  for (const auto& child : children_) {
    std::vector<Module*> inner = child->modules();
    out.insert(out.end(), inner.begin(), inner.end());
  }
  return out;
}

Value Module::variable(const std::string& name, const Shape& shape, const Initializer& initializer,
                       bool trainable, DType dtype) {
  NameScope scope(graph_, name_);
  Value v = graph_.variable(name, shape, initializer, dtype, trainable);
  variables_.push_back(v);
  return v;
}

int64_t Module::seed_for(const std::string& variable) const {
  // FNV-1a of the variable's full name: stable across runs, machines and compilers.
  uint64_t h = 1469598103934665603ull;
  for (char c : path_ + "/" + variable) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return static_cast<int64_t>(h >> 1);
}

Value Module::fan_in_variable(const std::string& name, const Shape& shape, int64_t fan_in,
                              int64_t seed) {
  const double bound = 1 / std::sqrt(static_cast<double>(fan_in));
  return variable(name, shape, init::uniform(-bound, bound, seed_for(name) + seed));
}

namespace {

// x's shape with its last dim replaced by `last` (for a flattened product's result).
Shape with_last(const Shape& x, int64_t last) {
  std::vector<int64_t> dims(x.begin(), x.end());
  dims.back() = last;
  return Shape(dims);
}

// A convolution layer's channels (positive, each a multiple of the groups) and kernel sizes
// (positive).
void check_convolution(const char* layer, const std::string& path, int64_t in, int64_t out,
                       int64_t groups, std::initializer_list<int64_t> kernel_size) {
  KILN_CHECK(in > 0 && out > 0 && groups > 0 && in % groups == 0 && out % groups == 0, GraphError,
             "[nn] ", layer, " ", path, ": channels ", in, " -> ", out,
             " must be positive and divide by groups ", groups);
  for (int64_t k : kernel_size)
    KILN_CHECK(k > 0, GraphError, "[nn] ", layer, " ", path, ": kernel size ", k,
               " must be positive");
}

// y [N, C, ...] plus bias [C] (when defined) per channel.
Value with_channel_bias(const Value& y, const Value& bias) {
  if (!bias.defined()) return y;
  std::vector<int64_t> along_channels(static_cast<size_t>(y.shape().rank()), 1);
  along_channels[1] = -1;
  return y + reshape(bias, Shape(along_channels));
}

// The normalized dims of a norm layer: at least one, all known and positive.
int64_t normalized_dims(const char* layer, const std::string& path, const Shape& shape) {
  bool valid = shape.rank() > 0;
  for (int64_t d : shape) valid = valid && d > 0;
  KILN_CHECK(valid, GraphError, "[nn] ", layer, " ", path, ": the normalized shape ", shape,
             " must have known positive dims");
  return shape.rank();
}

}  // namespace

// ---- Linear.

Linear::Linear(Graph& graph, const std::string& name, int64_t in, int64_t out, LayerOptions options)
    : Module(graph, name), in_(in), out_(out) {
  KILN_CHECK(in > 0 && out > 0, GraphError, "[nn] Linear ", path(), ": sizes ", in, " -> ", out,
             " must be positive");
  weight = fan_in_variable("weight", {in, out}, in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, in, options.seed);
}

Value Linear::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() >= 1 && s[-1] == in_, GraphError, "[nn] Linear ", path(), ": expects [..., ",
             in_, "], got ", s);
  int64_t unknown = 0;
  for (int64_t d = 0; d + 1 < s.rank(); ++d) unknown += s[d] < 0;
  // Rank > 2: one product over the flattened leading dims. With two of them unknown or more
  // (a [?, ?, in] input), a reshape could not restore them: the product takes x whole, and
  // matmul multiplies its rows as one matrix all the same.
  const bool flat = s.rank() > 2 && unknown <= 1;
  Value y = matmul(flat ? reshape(x, {-1, in_}) : x, weight);
  if (bias.defined()) y = y + bias;
  return flat ? reshape(y, with_last(s, out_)) : y;
}

// ---- Conv2d.

Conv2d::Conv2d(Graph& graph, const std::string& name, int64_t in, int64_t out,
               std::array<int64_t, 2> kernel_size, Conv2dOptions conv, LayerOptions options)
    : Module(graph, name), conv_(conv) {
  check_convolution("Conv2d", path(), in, out, conv.groups, {kernel_size[0], kernel_size[1]});
  const int64_t fan_in = in / conv.groups * kernel_size[0] * kernel_size[1];
  weight = fan_in_variable("weight", {out, in / conv.groups, kernel_size[0], kernel_size[1]},
                           fan_in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, fan_in, options.seed);
}

Value Conv2d::forward(const Value& x) {
  return with_channel_bias(conv2d(x, weight, conv_), bias);
}

// ---- Conv1d.

Conv1d::Conv1d(Graph& graph, const std::string& name, int64_t in, int64_t out, int64_t kernel_size,
               Conv1dOptions conv, LayerOptions options)
    : Module(graph, name), in_(in), conv_(conv) {
  check_convolution("Conv1d", path(), in, out, conv.groups, {kernel_size});
  const int64_t fan_in = in / conv.groups * kernel_size;
  weight = fan_in_variable("weight", {out, in / conv.groups, kernel_size}, fan_in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, fan_in, options.seed);
}

namespace {

// A 1-D convolution layer's input [N, in, L] as [N, in, 1, L], checked; its weight [A, B, K] as
// [A, B, 1, K]; its window over a height of 1.
Value as_height_one(const char* layer, const std::string& path, int64_t in, const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 3 && (s[1] < 0 || s[1] == in), GraphError, "[nn] ", layer, " ", path,
             ": expects [N, ", in, ", L], got ", s);
  return expand_dims(x, 2);
}
Value filter_of_height_one(const Value& weight) {
  const Shape& w = weight.shape();
  return reshape(weight, {w[0], w[1], 1, w[2]});
}
Conv2dOptions window_of_height_one(const Conv1dOptions& conv) {
  return {.stride = {1, conv.stride},
          .padding = {0, conv.padding},
          .dilation = {1, conv.dilation},
          .groups = conv.groups,
          .padding_mode = conv.padding_mode,
          .same = conv.same};
}
// [N, out, 1, L'] back to [N, out, L'] plus the bias per channel.
Value from_height_one(const Value& y, const Value& bias) {
  const Value squeezed = squeeze(y, 2);
  return bias.defined() ? squeezed + reshape(bias, {1, -1, 1}) : squeezed;
}

}  // namespace

Value Conv1d::forward(const Value& x) {
  return from_height_one(conv2d(as_height_one("Conv1d", path(), in_, x),
                                filter_of_height_one(weight), window_of_height_one(conv_)),
                         bias);
}

// ---- ConvTranspose2d.

ConvTranspose1d::ConvTranspose1d(Graph& graph, const std::string& name, int64_t in, int64_t out,
                                 int64_t kernel_size, Conv1dOptions conv, int64_t output_padding,
                                 LayerOptions options)
    : Module(graph, name), in_(in), conv_(conv), output_padding_(output_padding) {
  check_convolution("ConvTranspose1d", path(), in, out, conv.groups, {kernel_size});
  const int64_t fan_in = out / conv.groups * kernel_size;
  weight = fan_in_variable("weight", {in, out / conv.groups, kernel_size}, fan_in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, fan_in, options.seed);
}

Value ConvTranspose1d::forward(const Value& x) {
  return from_height_one(conv_transpose2d(as_height_one("ConvTranspose1d", path(), in_, x),
                                          filter_of_height_one(weight), window_of_height_one(conv_),
                                          {0, output_padding_}),
                         bias);
}

ConvTranspose2d::ConvTranspose2d(Graph& graph, const std::string& name, int64_t in, int64_t out,
                                 std::array<int64_t, 2> kernel_size, Conv2dOptions conv,
                                 std::array<int64_t, 2> output_padding, LayerOptions options)
    : Module(graph, name), conv_(conv), output_padding_(output_padding) {
  check_convolution("ConvTranspose2d", path(), in, out, conv.groups,
                    {kernel_size[0], kernel_size[1]});
  // PyTorch takes the fan-in from the weight's second dim, out / groups, for this layer too.
  const int64_t fan_in = out / conv.groups * kernel_size[0] * kernel_size[1];
  weight = fan_in_variable("weight", {in, out / conv.groups, kernel_size[0], kernel_size[1]},
                           fan_in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, fan_in, options.seed);
}

Value ConvTranspose2d::forward(const Value& x) {
  return with_channel_bias(conv_transpose2d(x, weight, conv_, output_padding_), bias);
}

// ---- Conv3d and ConvTranspose3d.

Conv3d::Conv3d(Graph& graph, const std::string& name, int64_t in, int64_t out,
               std::array<int64_t, 3> kernel_size, Conv3dOptions conv, LayerOptions options)
    : Module(graph, name), conv_(conv) {
  const auto [kd, kh, kw] = kernel_size;
  check_convolution("Conv3d", path(), in, out, conv.groups, {kd, kh, kw});
  const int64_t fan_in = in / conv.groups * kd * kh * kw;
  weight = fan_in_variable("weight", {out, in / conv.groups, kd, kh, kw}, fan_in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, fan_in, options.seed);
}

Value Conv3d::forward(const Value& x) {
  return with_channel_bias(conv3d(x, weight, conv_), bias);
}

ConvTranspose3d::ConvTranspose3d(Graph& graph, const std::string& name, int64_t in, int64_t out,
                                 std::array<int64_t, 3> kernel_size, Conv3dOptions conv,
                                 std::array<int64_t, 3> output_padding, LayerOptions options)
    : Module(graph, name), conv_(conv), output_padding_(output_padding) {
  const auto [kd, kh, kw] = kernel_size;
  check_convolution("ConvTranspose3d", path(), in, out, conv.groups, {kd, kh, kw});
  const int64_t fan_in = out / conv.groups * kd * kh * kw;  // PyTorch's: the weight's dim 1
  weight = fan_in_variable("weight", {in, out / conv.groups, kd, kh, kw}, fan_in, options.seed);
  if (options.bias) bias = fan_in_variable("bias", {out}, fan_in, options.seed);
}

Value ConvTranspose3d::forward(const Value& x) {
  return with_channel_bias(conv_transpose3d(x, weight, conv_, output_padding_), bias);
}

// ---- Normalization.

BatchNorm::BatchNorm(Graph& graph, const std::string& name, const char* kind,
                     std::vector<int64_t> ranks, int64_t channels, std::optional<double> momentum,
                     double eps, bool affine, bool track_running_stats)
    : Module(graph, name),
      kind_(kind),
      ranks_(std::move(ranks)),
      channels_(channels),
      momentum_(momentum),
      eps_(eps) {
  KILN_CHECK(channels > 0, GraphError, "[nn] ", kind, " ", path(), ": ", channels,
             " channels; a positive count is needed");
  KILN_CHECK(!momentum || (*momentum >= 0 && *momentum <= 1), GraphError, "[nn] ", kind, " ",
             path(), ": momentum ", momentum.value_or(0), " must be in [0, 1] (or std::nullopt)");
  if (affine) {
    weight = variable("weight", {channels}, init::constant(1));
    bias = variable("bias", {channels}, init::zeros());
  }
  if (!track_running_stats) return;
  running_mean = variable("running_mean", {channels}, init::zeros(), false);
  running_var = variable("running_var", {channels}, init::constant(1), false);
  if (!momentum)
    num_batches_tracked = variable("num_batches_tracked", {}, init::zeros(), false, i64);
}

Value BatchNorm::forward(const Value& x) {
  const Shape& s = x.shape();
  if (std::find(ranks_.begin(), ranks_.end(), s.rank()) == ranks_.end() ||
      (s[1] >= 0 && s[1] != channels_)) {
    std::string expected;  // e.g. "[N, 8] or [N, 8, L]"
    for (const int64_t rank : ranks_)
      expected += str(expected.empty() ? "" : " or ", "[N, ", channels_,
                      rank == 3   ? ", L]"
                      : rank == 4 ? ", H, W]"
                      : rank == 5 ? ", D, H, W]"
                                  : "]");
    throw GraphError(str("[nn] ", kind_, " ", path(), ": expects ", expected, ", got ", s));
  }
  return batch_norm(x, running_mean, running_var, weight, bias, training(), momentum_.value_or(0),
                    eps_, average_count_.defined() ? average_count_ : num_batches_tracked,
                    combine_);
}

LayerNorm::LayerNorm(Graph& graph, const std::string& name, const Shape& shape, double eps,
                     bool affine)
    : Module(graph, name), dims_(normalized_dims("LayerNorm", path(), shape)), eps_(eps) {
  if (!affine) return;
  weight = variable("weight", shape, init::constant(1));
  bias = variable("bias", shape, init::zeros());
}

Value LayerNorm::forward(const Value& x) {
  return layer_norm(x, dims_, weight, bias, eps_);
}

GroupNorm::GroupNorm(Graph& graph, const std::string& name, int64_t groups, int64_t channels,
                     double eps)
    : Module(graph, name), groups_(groups), channels_(channels), eps_(eps) {
  KILN_CHECK(groups > 0 && channels > 0 && channels % groups == 0, GraphError, "[nn] GroupNorm ",
             path(), ": ", channels, " channels must be positive and divide into ", groups,
             " groups");
  weight = variable("weight", {channels}, init::constant(1));
  bias = variable("bias", {channels}, init::zeros());
}

Value GroupNorm::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() >= 2 && (s[1] < 0 || s[1] == channels_), GraphError, "[nn] GroupNorm ",
             path(), ": expects [N, ", channels_, ", ...], got ", s);
  return group_norm(x, groups_, weight, bias, eps_);
}

InstanceNorm::InstanceNorm(Graph& graph, const std::string& name, const char* kind, int64_t rank,
                           int64_t channels, InstanceNormOptions options)
    : Module(graph, name), kind_(kind), rank_(rank), channels_(channels), options_(options) {
  KILN_CHECK(channels > 0, GraphError, "[nn] ", kind, " ", path(), ": ", channels,
             " channels must be positive");
  if (options.affine) {
    weight = variable("weight", {channels}, init::constant(1));
    bias = variable("bias", {channels}, init::zeros());
  }
  if (options.track_running_stats) {
    running_mean = variable("running_mean", {channels}, init::zeros(), false);
    running_var = variable("running_var", {channels}, init::constant(1), false);
  }
}

Value InstanceNorm::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == rank_ && (s[1] < 0 || s[1] == channels_), GraphError, "[nn] ", kind_, " ",
             path(), ": expects [N, ", channels_,
             rank_ == 3   ? ", L]"
             : rank_ == 4 ? ", H, W]"
                          : ", D, H, W]",
             ", got ", s);
  return instance_norm(x, running_mean, running_var, weight, bias,
                       training() || !running_mean.defined(), options_.momentum, options_.eps);
}

RMSNorm::RMSNorm(Graph& graph, const std::string& name, const Shape& shape, double eps, bool affine)
    : Module(graph, name), dims_(normalized_dims("RMSNorm", path(), shape)), eps_(eps) {
  if (affine) weight = variable("weight", shape, init::constant(1));
}

Value RMSNorm::forward(const Value& x) {
  return rms_norm(x, dims_, weight, eps_);
}

// ---- Embedding, Dropout, pooling, Flatten, Lambda.

Embedding::Embedding(Graph& graph, const std::string& name, int64_t count, int64_t dim,
                     LayerOptions options, std::optional<int64_t> padding_index)
    : Embedding(graph, name, count, dim, options, padding_index, "Embedding") {}

Embedding::Embedding(Graph& graph, const std::string& name, int64_t count, int64_t dim,
                     LayerOptions options, std::optional<int64_t> padding_index, const char* kind)
    : Module(graph, name), padding_index_(padding_index) {
  KILN_CHECK(count > 0 && dim > 0, GraphError, "[nn] ", kind, " ", path(), ": a table of ", count,
             " rows of ", dim, " must be non-empty");
  KILN_CHECK(!padding_index || (*padding_index >= 0 && *padding_index < count), GraphError, "[nn] ",
             kind, " ", path(), ": padding index ", padding_index.value_or(0), " is outside [0, ",
             count, ")");
  const int64_t seed = seed_for("weight") + options.seed;
  // PyTorch starts the padding row at zeros; the forward below keeps it reading zeros whatever
  // the row holds (a restored checkpoint, weight decay), and passes it no gradient.
  weight = variable("weight", {count, dim},
                    padding_index ? init::normal_with_zero_row(0, 1, *padding_index, seed)
                                  : init::normal(0, 1, seed));
}

Value Embedding::forward(const Value& ids) {
  Value rows = embedding(weight, ids);
  if (!padding_index_) return rows;
  // Rows of the padding id times 0: zeros out, and a zero gradient back to the table's row.
  Value keep = cast(expand_dims(ids != static_cast<double>(*padding_index_), -1), weight.dtype());
  return rows * keep;
}

EmbeddingBag::EmbeddingBag(Graph& graph, const std::string& name, int64_t count, int64_t dim,
                           BagMode mode, LayerOptions options, std::optional<int64_t> padding_index,
                           bool include_last_offset)
    : Embedding(graph, name, count, dim, options, padding_index, "EmbeddingBag"),
      mode_(mode),
      include_last_offset_(include_last_offset) {}

Value EmbeddingBag::bags(const Value& ids, const Value& offsets, const Value& per_sample_weights) {
  expect_own({&ids}, "the ids");
  NameScope scope(graph(), name());
  return bagged(ids, offsets, per_sample_weights);
}

Value EmbeddingBag::bagged(const Value& ids, const Value& offsets,
                           const Value& per_sample_weights) const {
  return embedding_bag(weight, ids,
                       {.mode = mode_,
                        .offsets = offsets,
                        .per_sample_weights = per_sample_weights,
                        .padding_index = padding_index_,
                        .include_last_offset = include_last_offset_});
}

namespace {

// The rate of a dropout layer, checked: in [0, 1).
double dropout_rate(const char* kind, const std::string& path, double rate) {
  KILN_CHECK(rate >= 0 && rate < 1, GraphError, "[nn] ", kind, " ", path, ": rate ", rate,
             " must be in [0, 1)");
  return rate;
}

}  // namespace

Dropout::Dropout(Graph& graph, const std::string& name, double rate, LayerOptions options)
    : Module(graph, name),
      rate_(dropout_rate("Dropout", path(), rate)),
      seed_(seed_for("mask") + options.seed) {}

Value Dropout::forward(const Value& x) {
  return dropout(x, rate_, training(), seed_);
}

ChannelDropout::ChannelDropout(Graph& graph, const std::string& name, double rate,
                               LayerOptions options)
    : ChannelDropout(graph, name, rate, options, 0, "ChannelDropout") {}

ChannelDropout::ChannelDropout(Graph& graph, const std::string& name, double rate,
                               LayerOptions options, int64_t rank, const char* kind)
    : Module(graph, name),
      rate_(dropout_rate(kind, path(), rate)),
      seed_(seed_for("mask") + options.seed),
      rank_(rank),
      kind_(kind) {}

Value ChannelDropout::forward(const Value& x) {
  KILN_CHECK(rank_ == 0 || x.shape().rank() == rank_, GraphError, "[nn] ", kind_, " ", path(),
             ": x ", x.shape(), " must have rank ", rank_);
  return channel_dropout(x, rate_, training(), seed_);
}

DropPath::DropPath(Graph& graph, const std::string& name, double rate, LayerOptions options)
    : Module(graph, name),
      rate_(dropout_rate("DropPath", path(), rate)),
      seed_(seed_for("mask") + options.seed) {}

Value DropPath::forward(const Value& x) {
  return drop_path(x, rate_, training(), seed_);
}

MaxPool2d::MaxPool2d(Graph& graph, const std::string& name, Pool2dOptions options)
    : Module(graph, name), options_(options) {}

std::pair<Value, Value> MaxPool2d::with_indices(const Value& x) {
  expect_own({&x}, "the input");
  NameScope scope(graph(), name());
  return max_pool2d_with_indices(x, options_);
}

MaxUnpool2d::MaxUnpool2d(Graph& graph, const std::string& name, Pool2dOptions options)
    : Module(graph, name), options_(options) {}

Value MaxUnpool2d::unpool(const Value& x, const Value& indices,
                          std::array<int64_t, 2> output_size) {
  expect_own({&x, &indices}, "x and indices");
  NameScope scope(graph(), name());
  return max_unpool2d(x, indices, options_, output_size);
}

Value MaxUnpool2d::forward(const Value&) {
  throw GraphError(str("[nn] MaxUnpool2d ", path(),
                       ": unpooling needs the pool's indices; call unpool(x, indices)"));
}

AvgPool2d::AvgPool2d(Graph& graph, const std::string& name, Pool2dOptions options,
                     bool count_include_pad)
    : Module(graph, name), options_(options), count_include_pad_(count_include_pad) {}

namespace {

// A 1-D pooling layer's input [N, C, L] as [N, C, 1, L] and its window as a 2-D one.
Value as_plane(const char* layer, const std::string& path, const Value& x) {
  KILN_CHECK(x.shape().rank() == 3, GraphError, "[nn] ", layer, " ", path,
             ": expects [N, C, L], got ", x.shape());
  return expand_dims(x, 2);
}
Pool2dOptions plane_window(const Pool1dOptions& options) {
  return {.kernel_size = {1, options.kernel_size},
          .stride = {1, options.stride > 0 ? options.stride : options.kernel_size},
          .padding = {0, options.padding},
          .ceil_mode = options.ceil_mode,
          .dilation = {1, options.dilation}};
}

}  // namespace

MaxPool1d::MaxPool1d(Graph& graph, const std::string& name, Pool1dOptions options)
    : Module(graph, name), options_(options) {}

Value MaxPool1d::forward(const Value& x) {
  return squeeze(max_pool2d(as_plane("MaxPool1d", path(), x), plane_window(options_)), 2);
}

// Over the plane [N, C, 1, L] an index h W + w is w: the position along L.
std::pair<Value, Value> MaxPool1d::with_indices(const Value& x) {
  expect_own({&x}, "the input");
  NameScope scope(graph(), name());
  const auto [pooled, indices] =
      max_pool2d_with_indices(as_plane("MaxPool1d", path(), x), plane_window(options_));
  return {squeeze(pooled, 2), squeeze(indices, 2)};
}

MaxUnpool1d::MaxUnpool1d(Graph& graph, const std::string& name, Pool1dOptions options)
    : Module(graph, name), options_(options) {}

Value MaxUnpool1d::unpool(const Value& x, const Value& indices, int64_t output_size) {
  expect_own({&x, &indices}, "x and indices");
  KILN_CHECK(indices.shape().rank() == 3, GraphError, "[nn] MaxUnpool1d ", path(),
             ": expects indices [N, C, L], got ", indices.shape());
  NameScope scope(graph(), name());
  const std::array<int64_t, 2> size{output_size > 0 ? 1 : 0, output_size};
  return squeeze(max_unpool2d(as_plane("MaxUnpool1d", path(), x), expand_dims(indices, 2),
                              plane_window(options_), size),
                 2);
}

Value MaxUnpool1d::forward(const Value&) {
  throw GraphError(str("[nn] MaxUnpool1d ", path(),
                       ": unpooling needs the pool's indices; call unpool(x, indices)"));
}

AvgPool1d::AvgPool1d(Graph& graph, const std::string& name, Pool1dOptions options,
                     bool count_include_pad)
    : Module(graph, name), options_(options), count_include_pad_(count_include_pad) {}

Value AvgPool1d::forward(const Value& x) {
  return squeeze(
      avg_pool2d(as_plane("AvgPool1d", path(), x), plane_window(options_), count_include_pad_), 2);
}

namespace {

// An adaptive pooling layer's output size: every extent positive.
void check_output_size(const char* layer, const std::string& path,
                       std::initializer_list<int64_t> size) {
  std::string shown;
  for (int64_t extent : size) shown += (shown.empty() ? "" : "x") + std::to_string(extent);
  for (int64_t extent : size)
    KILN_CHECK(extent > 0, GraphError, "[nn] ", layer, " ", path, ": output size ", shown,
               " must be positive");
}

}  // namespace

AdaptiveAvgPool1d::AdaptiveAvgPool1d(Graph& graph, const std::string& name, int64_t output_size)
    : Module(graph, name), output_size_(output_size) {
  check_output_size("AdaptiveAvgPool1d", path(), {output_size});
}

Value AdaptiveAvgPool1d::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 3 && s[2] > 0, GraphError, "[nn] AdaptiveAvgPool1d ", path(),
             ": expects [N, C, L] with L known and positive, got ", s);
  return adaptive_avg_pool(x, {output_size_});
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(Graph& graph, const std::string& name,
                                     std::array<int64_t, 2> output_size)
    : Module(graph, name), output_size_(output_size) {
  check_output_size("AdaptiveAvgPool2d", path(), {output_size[0], output_size[1]});
}

Value AdaptiveAvgPool2d::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 4 && s[2] > 0 && s[3] > 0, GraphError, "[nn] AdaptiveAvgPool2d ", path(),
             ": expects [N, C, H, W] with H and W known and positive, got ", s);
  return adaptive_avg_pool(x, {output_size_[0], output_size_[1]});
}

AdaptiveAvgPool3d::AdaptiveAvgPool3d(Graph& graph, const std::string& name,
                                     std::array<int64_t, 3> output_size)
    : Module(graph, name), output_size_(output_size) {
  check_output_size("AdaptiveAvgPool3d", path(), {output_size[0], output_size[1], output_size[2]});
}

Value AdaptiveAvgPool3d::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 5 && s[2] > 0 && s[3] > 0 && s[4] > 0, GraphError,
             "[nn] AdaptiveAvgPool3d ", path(),
             ": expects [N, C, D, H, W] with D, H and W known and positive, got ", s);
  return adaptive_avg_pool(x, {output_size_[0], output_size_[1], output_size_[2]});
}

AdaptiveMaxPool1d::AdaptiveMaxPool1d(Graph& graph, const std::string& name, int64_t output_size)
    : Module(graph, name), output_size_(output_size) {
  check_output_size("AdaptiveMaxPool1d", path(), {output_size});
}

Value AdaptiveMaxPool1d::forward(const Value& x) {
  return squeeze(adaptive_max_pool2d(as_plane("AdaptiveMaxPool1d", path(), x), {1, output_size_}),
                 2);
}

AdaptiveMaxPool3d::AdaptiveMaxPool3d(Graph& graph, const std::string& name,
                                     std::array<int64_t, 3> output_size)
    : Module(graph, name), output_size_(output_size) {
  check_output_size("AdaptiveMaxPool3d", path(), {output_size[0], output_size[1], output_size[2]});
}

Value AdaptiveMaxPool3d::forward(const Value& x) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 5 && s[2] > 0 && s[3] > 0 && s[4] > 0, GraphError,
             "[nn] AdaptiveMaxPool3d ", path(),
             ": expects [N, C, D, H, W] with D, H and W known and positive, got ", s);
  return adaptive_max_pool(x, {output_size_[0], output_size_[1], output_size_[2]});
}

AdaptiveMaxPool2d::AdaptiveMaxPool2d(Graph& graph, const std::string& name,
                                     std::array<int64_t, 2> output_size)
    : Module(graph, name), output_size_(output_size) {
  check_output_size("AdaptiveMaxPool2d", path(), {output_size[0], output_size[1]});
}

PReLU::PReLU(Graph& graph, const std::string& name, int64_t num_parameters, double init)
    : Module(graph, name) {
  KILN_CHECK(num_parameters >= 1, GraphError, "[nn] PReLU ", path(), ": num_parameters ",
             num_parameters, " must be at least 1");
  weight = variable("weight", {num_parameters}, init::constant(init));
}

Upsample::Upsample(Graph& graph, const std::string& name, InterpolateOptions options)
    : Module(graph, name), options_(std::move(options)) {}

Pad::Pad(Graph& graph, const std::string& name, std::vector<std::pair<int64_t, int64_t>> widths,
         PadMode mode, double value)
    : Module(graph, name), widths_(std::move(widths)), mode_(mode), value_(value) {}

Value Pad::forward(const Value& x) {
  return pad(x, widths_, mode_, value_);
}

PixelShuffle::PixelShuffle(Graph& graph, const std::string& name, int64_t factor)
    : Module(graph, name), factor_(factor) {}

Value PixelShuffle::forward(const Value& x) {
  return pixel_shuffle(x, factor_);
}

PixelUnshuffle::PixelUnshuffle(Graph& graph, const std::string& name, int64_t factor)
    : Module(graph, name), factor_(factor) {}

Value PixelUnshuffle::forward(const Value& x) {
  return pixel_unshuffle(x, factor_);
}

Flatten::Flatten(Graph& graph, const std::string& name, int64_t start_axis, int64_t end_axis)
    : Module(graph, name), start_axis_(start_axis), end_axis_(end_axis) {}

Value Flatten::forward(const Value& x) {
  return flatten(x, start_axis_, end_axis_);
}

Unflatten::Unflatten(Graph& graph, const std::string& name, int64_t axis,
                     std::vector<int64_t> sizes)
    : Module(graph, name), axis_(axis), sizes_(std::move(sizes)) {}

Value Unflatten::forward(const Value& x) {
  return unflatten(x, axis_, sizes_);
}

Unfold::Unfold(Graph& graph, const std::string& name, UnfoldOptions options)
    : Module(graph, name), options_(options) {}

Value Unfold::forward(const Value& x) {
  return unfold(x, options_);
}

Fold::Fold(Graph& graph, const std::string& name, std::array<int64_t, 2> output_size,
           UnfoldOptions options)
    : Module(graph, name), output_size_(output_size), options_(options) {}

Value Fold::forward(const Value& x) {
  return fold(x, output_size_, options_);
}

Lambda::Lambda(Graph& graph, const std::string& name, std::function<Value(const Value&)> fn)
    : Module(graph, name), fn_(std::move(fn)) {}

Value Lambda::forward(const Value& x) {
  return fn_(x);
}

// ---- Sequential.

Sequential::Sequential(Graph& graph, const std::string& name) : Module(graph, name) {}

Sequential& Sequential::add(const std::string& name, std::function<Value(const Value&)> fn) {
  add<Lambda>(name, std::move(fn));
  return *this;
}

Value Sequential::forward(const Value& x) {
  Value y = x;
  for (Module* layer : layers_) y = (*layer)(y);
  return y;
}

}  // namespace kiln::nn
