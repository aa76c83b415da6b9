// kiln::nn — layers: thin builders over the ops that own named variables and add ops to the
// graph when called. A layer is made once (its variables are created under its name, e.g.
// "conv1/weight") and may be called many times; every call shares the variables.
//
// Train and evaluation mode: a layer reads its mode when it is called, so a static graph holds
// both versions side by side, sharing the variables:
//   nn::Sequential model(g, "model");  ...
//   Value loss = cross_entropy(model(x), y);                 // training mode (the default)
//   model.eval();
//   Value logits = model(x);                                 // evaluation mode
//   save_graph(g, path, {.signatures = {{"train", {x, y}, {loss}, {step}},
//                                       {"predict", {x}, {logits}}}});
// Dropout is then active only under "train", and batch norm updates its running statistics
// there and uses them under "predict".
//
// Initialization follows PyTorch's defaults; each layer's seed is derived from its variables'
// names (plus LayerOptions::seed), so a model is the same on every run.
#pragma once

#include <array>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/framework/variables.h"
#include "kiln/ops/nn.h"

namespace kiln::nn {

/// A layer: variables made once, ops built on every call.
class Module {
 public:
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// Builds this layer's ops on x (under the layer's name scope), in its current mode.
  Value operator()(const Value& x);
  /// Training mode (true) or evaluation mode, for this layer and the layers inside it.
  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }
  /// The layer's name, and its full path (the name scopes it was made in, then its name):
  /// its variables are "<path>/<variable>".
  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }
  /// The trainable variables of this layer and the layers inside it, in creation order.
  std::vector<Value> parameters() const;
  /// This layer and every layer inside it, depth first (PyTorch's modules()).
  std::vector<Module*> modules();
  Graph& graph() const { return graph_; }

  /// PyTorch's state_dict of the torch.nn module this layer stands for, from Kiln's variable
  /// values by name (Session::variable_values()): names relative to this layer, '.'-separated
  /// ("block.self_attn.in_proj_weight"), tensors in PyTorch's layouts (Linear's and the recurrent
  /// layers' weights transposed to [out, in]; MultiHeadAttention's query, key and value packed
  /// into in_proj as torch.nn.MultiheadAttention's; TransformerBlock's parts named as
  /// torch.nn.TransformerEncoderLayer's). A child keeps the name it was made with, so a
  /// Sequential whose layers are named "0", "1", ... matches torch.nn.Sequential. Throws
  /// kiln::GraphError naming a variable `values` lacks.
  std::map<std::string, Tensor> torch_state_dict(const std::map<std::string, Tensor>& values) const;
  /// The reverse, PyTorch's load_state_dict: Kiln's variable values by name (for
  /// Session::set_variables) from a PyTorch state_dict, each cast to its variable's dtype. With
  /// `strict`, a key the layer does not have or a key it has that `state_dict` lacks is an error,
  /// as in PyTorch. Throws kiln::FeedError naming the keys, or the key and both shapes.
  std::map<std::string, Tensor> from_torch_state_dict(
      const std::map<std::string, Tensor>& state_dict, bool strict = true) const;

 protected:
  /// One tensor of PyTorch's state_dict: `name` (relative to the layer) holds the Kiln
  /// variables `parts`, each transposed when `transposed` (2-D), concatenated along dim 0.
  /// No parts: a key PyTorch's module has and Kiln's keeps no variable for (accepted when
  /// loading, not written).
  struct TorchTensor {
    std::string name;
    std::vector<Value> parts;
    bool transposed = false;
  };
  /// This layer's tensors as PyTorch names and lays them out, its children's included. The
  /// default: each variable as it is under its own name, then each child's under the child's
  /// name (torch_child_name).
  virtual std::vector<TorchTensor> torch_tensors() const;
  /// The attribute name PyTorch's module gives `child` (default: the name it was made with).
  virtual std::string torch_child_name(const Module& child) const { return child.name(); }

  Module(Graph& graph, std::string name);
  /// The layer's computation; called by operator() inside its name scope.
  virtual Value forward(const Value& x) = 0;
  /// A variable of this layer, named "<layer>/<name>". `trainable` false: state (running
  /// statistics) that the optimizer leaves alone.
  Value variable(const std::string& name, const Shape& shape, const Initializer& initializer,
                 bool trainable = true, DType dtype = DType::f32);
  /// A seed for one of this layer's random initializers (stable: from its name).
  int64_t seed_for(const std::string& variable) const;
  /// A trainable variable uniform in +-1 / sqrt(fan_in) (PyTorch's default for the weights and
  /// biases of Linear and the convolutions), seeded from its name plus `seed`.
  Value fan_in_variable(const std::string& name, const Shape& shape, int64_t fan_in, int64_t seed);
  /// Throws a GraphError naming this layer unless every value is defined and of its graph;
  /// `what` names them in the message ("the input", "x and memory").
  void expect_own(std::initializer_list<const Value*> values, const char* what) const;
  /// Registers a layer made inside this one (for train() and parameters()).
  template <typename T>
  T& child(std::unique_ptr<T> layer) {
    T& ref = *layer;
    children_.push_back(std::move(layer));
    return ref;
  }
  /// Makes a layer inside this one, named "<this>/<name>".
  template <typename T, typename... Args>
  T& make(const std::string& name, Args&&... args) {
    NameScope scope(graph_, name_);
    return child(std::make_unique<T>(graph_, name, std::forward<Args>(args)...));
  }
  /// Makes a layer of the first type if `first`, else of the second, with the same arguments:
  /// a layer an option chooses.
  template <typename A, typename B, typename... Args>
  Module& make_either(bool first, const std::string& name, const Args&... args) {
    if (first) return make<A>(name, args...);
    return make<B>(name, args...);
  }

 private:
  Graph& graph_;
  std::string name_, path_;
  bool training_ = true;
  std::vector<Value> variables_;
  std::vector<std::unique_ptr<Module>> children_;
};

/// Options every layer with random weights takes.
struct LayerOptions {
  bool bias = true;
  int64_t seed = 0;  ///< mixed into the name-derived seeds
};

/// y = x w + b over the last dim, w [in, out] (PyTorch's weight transposed) and b [out], both
/// uniform in +-1 / sqrt(in) as PyTorch's Linear.
class Linear : public Module {
 public:
  Linear(Graph& graph, const std::string& name, int64_t in, int64_t out, LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;
  std::vector<TorchTensor> torch_tensors() const override;

 private:
  int64_t in_, out_;
};

/// conv2d of x [N, in, H, W] with weight [out, in / groups, KH, KW] plus bias [out]; PyTorch's
/// initialization (uniform in +-1 / sqrt(fan_in)).
class Conv2d : public Module {
 public:
  Conv2d(Graph& graph, const std::string& name, int64_t in, int64_t out,
         std::array<int64_t, 2> kernel_size, Conv2dOptions conv = {}, LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  Conv2dOptions conv_;
};

/// Window of a 1-D convolution.
struct Conv1dOptions {
  int64_t stride = 1;
  int64_t padding = 0;  ///< zeros added on both sides
  int64_t dilation = 1;
  int64_t groups = 1;
  PadMode padding_mode = PadMode::constant;  ///< as Conv2dOptions::padding_mode
  bool same = false;                         ///< as Conv2dOptions::same
};

/// conv1d of x [N, in, L] with weight [out, in / groups, K] plus bias [out] (PyTorch's Conv1d:
/// its layout and initialization, uniform in +-1 / sqrt(in / groups K)); runs as conv2d over a
/// height of 1.
class Conv1d : public Module {
 public:
  Conv1d(Graph& graph, const std::string& name, int64_t in, int64_t out, int64_t kernel_size,
         Conv1dOptions conv = {}, LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t in_;
  Conv1dOptions conv_;
};

/// The transposed 1-D convolution (PyTorch's ConvTranspose1d) of x [N, in, L] with weight [in,
/// out / groups, K] plus bias [out]; `output_padding` adds positions at the end. Runs as
/// conv_transpose2d over a height of 1; PyTorch's initialization (fan-in out / groups K).
class ConvTranspose1d : public Module {
 public:
  ConvTranspose1d(Graph& graph, const std::string& name, int64_t in, int64_t out,
                  int64_t kernel_size, Conv1dOptions conv = {}, int64_t output_padding = 0,
                  LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t in_;
  Conv1dOptions conv_;
  int64_t output_padding_;
};

/// The transposed convolution (PyTorch's ConvTranspose2d) of x [N, in, H, W] with weight [in,
/// out / groups, KH, KW] plus bias [out]; `output_padding` adds rows and columns at the bottom
/// right, as PyTorch's. PyTorch's initialization: uniform in +-1 / sqrt(out / groups KH KW).
class ConvTranspose2d : public Module {
 public:
  ConvTranspose2d(Graph& graph, const std::string& name, int64_t in, int64_t out,
                  std::array<int64_t, 2> kernel_size, Conv2dOptions conv = {},
                  std::array<int64_t, 2> output_padding = {0, 0}, LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  Conv2dOptions conv_;
  std::array<int64_t, 2> output_padding_;
};

/// conv3d of x [N, in, D, H, W] with weight [out, in / groups, KD, KH, KW] plus bias [out]
/// (PyTorch's Conv3d: its layout and initialization, uniform in +-1 / sqrt(in / groups KD KH KW)).
class Conv3d : public Module {
 public:
  Conv3d(Graph& graph, const std::string& name, int64_t in, int64_t out,
         std::array<int64_t, 3> kernel_size, Conv3dOptions conv = {}, LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  Conv3dOptions conv_;
};

/// The transposed 3-D convolution (PyTorch's ConvTranspose3d) of x [N, in, D, H, W] with weight
/// [in, out / groups, KD, KH, KW] plus bias [out]; PyTorch's initialization (fan-in out / groups
/// KD KH KW).
class ConvTranspose3d : public Module {
 public:
  ConvTranspose3d(Graph& graph, const std::string& name, int64_t in, int64_t out,
                  std::array<int64_t, 3> kernel_size, Conv3dOptions conv = {},
                  std::array<int64_t, 3> output_padding = {0, 0, 0}, LayerOptions options = {});
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  Conv3dOptions conv_;
  std::array<int64_t, 3> output_padding_;
};

/// Batch norm over x [N, C, ...] per channel (batch_norm): weight 1, bias 0, running mean 0
/// and variance 1 (variables, not trainable, saved in checkpoints). The layers are
/// BatchNorm1d, BatchNorm2d and BatchNorm3d, which check the input's rank as PyTorch's do,
/// with PyTorch's options:
///   - momentum: the running statistics' factor; std::nullopt (PyTorch's None) averages every
///     training batch equally, counted in the variable "<layer>/num_batches_tracked";
///   - affine false: no weight and bias;
///   - track_running_stats false: no running statistics; the batch's normalize in evaluation
///     too.
class BatchNorm : public Module {
 public:
  Value weight, bias, running_mean, running_var;  ///< undefined where the options leave them out
  Value num_batches_tracked;                      ///< with momentum std::nullopt only
  /// From the next call on, training mode averages every batch equally into the running
  /// statistics, counting the batches in `count` (an i64 scalar variable), whatever the
  /// momentum: the pass of torch.optim.swa_utils.update_bn (optim::BatchNormUpdate sets it
  /// around its own call). An undefined `count` goes back to the momentum.
  void average_batches_into(const Value& count) { average_count_ = count; }

 protected:
  /// `kind` names the layer in errors; `ranks` are the input ranks it takes.
  BatchNorm(Graph& graph, const std::string& name, const char* kind, std::vector<int64_t> ranks,
            int64_t channels, std::optional<double> momentum, double eps, bool affine,
            bool track_running_stats);
  Value forward(const Value& x) override;
  std::vector<TorchTensor> torch_tensors() const override;
  /// Training normalizes by what `combine` makes of the batch's statistics (batch_norm's
  /// combine): distributed::SyncBatchNorm's statistics of every rank.
  void combine_statistics(CombineStatistics combine) { combine_ = std::move(combine); }

 private:
  const char* kind_;
  std::vector<int64_t> ranks_;
  int64_t channels_;
  std::optional<double> momentum_;
  double eps_;
  Value average_count_;
  CombineStatistics combine_;
};

/// Batch norm of x [N, C] or [N, C, L] (PyTorch's BatchNorm1d).
class BatchNorm1d : public BatchNorm {
 public:
  BatchNorm1d(Graph& graph, const std::string& name, int64_t channels,
              std::optional<double> momentum = 0.1, double eps = 1e-5, bool affine = true,
              bool track_running_stats = true)
      : BatchNorm(graph, name, "BatchNorm1d", {2, 3}, channels, momentum, eps, affine,
                  track_running_stats) {}
};

/// Batch norm of x [N, C, H, W] (PyTorch's BatchNorm2d).
class BatchNorm2d : public BatchNorm {
 public:
  BatchNorm2d(Graph& graph, const std::string& name, int64_t channels,
              std::optional<double> momentum = 0.1, double eps = 1e-5, bool affine = true,
              bool track_running_stats = true)
      : BatchNorm(graph, name, "BatchNorm2d", {4}, channels, momentum, eps, affine,
                  track_running_stats) {}
};

/// Batch norm of x [N, C, D, H, W] (PyTorch's BatchNorm3d).
class BatchNorm3d : public BatchNorm {
 public:
  BatchNorm3d(Graph& graph, const std::string& name, int64_t channels,
              std::optional<double> momentum = 0.1, double eps = 1e-5, bool affine = true,
              bool track_running_stats = true)
      : BatchNorm(graph, name, "BatchNorm3d", {5}, channels, momentum, eps, affine,
                  track_running_stats) {}
};

/// Layer norm over the last dims `shape`, then weight (1) and bias (0) unless `affine` is false
/// (PyTorch's elementwise_affine).
class LayerNorm : public Module {
 public:
  LayerNorm(Graph& graph, const std::string& name, const Shape& shape, double eps = 1e-5,
            bool affine = true);
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t dims_;
  double eps_;
};

/// Group norm over x [N, C, ...]: the C channels in `groups` groups, each normalized per example
/// over its channels and positions, then per-channel weight (1) and bias (0) (PyTorch's
/// GroupNorm).
class GroupNorm : public Module {
 public:
  GroupNorm(Graph& graph, const std::string& name, int64_t groups, int64_t channels,
            double eps = 1e-5);
  Value weight, bias;

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t groups_, channels_;
  double eps_;
};

/// The instance norm layers' arguments (PyTorch's, same defaults).
struct InstanceNormOptions {
  double eps = 1e-5;
  bool affine = false;
  double momentum = 0.1;
  bool track_running_stats = false;
};

/// Instance norm of x [N, C, ...]: each channel of each example normalized over its positions
/// (instance_norm), then per-channel weight (1) and bias (0) when `affine` (PyTorch's
/// InstanceNorm1d/2d/3d, whose affine is off by default). By default no running statistics are
/// kept (PyTorch's track_running_stats=False): evaluation normalizes each instance too. With
/// `track_running_stats`, running_mean (0) and running_var (1) are variables (not trainable,
/// saved in checkpoints) that training moves by `momentum` and evaluation normalizes with. The
/// layers are InstanceNorm1d/2d/3d, which check the input's rank.
class InstanceNorm : public Module {
 public:
  Value weight, bias;
  Value running_mean, running_var;  ///< undefined unless track_running_stats

 protected:
  /// `kind` names the layer in errors; `rank` is the input rank it takes.
  InstanceNorm(Graph& graph, const std::string& name, const char* kind, int64_t rank,
               int64_t channels, InstanceNormOptions options);
  Value forward(const Value& x) override;
  std::vector<TorchTensor> torch_tensors() const override;

 private:
  const char* kind_;
  int64_t rank_, channels_;
  InstanceNormOptions options_;
};

/// Instance norm of x [N, C, L] (PyTorch's InstanceNorm1d).
class InstanceNorm1d : public InstanceNorm {
 public:
  InstanceNorm1d(Graph& graph, const std::string& name, int64_t channels, double eps = 1e-5,
                 bool affine = false)
      : InstanceNorm1d(graph, name, channels, InstanceNormOptions{.eps = eps, .affine = affine}) {}
  InstanceNorm1d(Graph& graph, const std::string& name, int64_t channels,
                 InstanceNormOptions options)
      : InstanceNorm(graph, name, "InstanceNorm1d", 3, channels, options) {}
};

/// Instance norm of x [N, C, H, W] (PyTorch's InstanceNorm2d).
class InstanceNorm2d : public InstanceNorm {
 public:
  InstanceNorm2d(Graph& graph, const std::string& name, int64_t channels, double eps = 1e-5,
                 bool affine = false)
      : InstanceNorm2d(graph, name, channels, InstanceNormOptions{.eps = eps, .affine = affine}) {}
  InstanceNorm2d(Graph& graph, const std::string& name, int64_t channels,
                 InstanceNormOptions options)
      : InstanceNorm(graph, name, "InstanceNorm2d", 4, channels, options) {}
};

/// Instance norm of x [N, C, D, H, W] (PyTorch's InstanceNorm3d).
class InstanceNorm3d : public InstanceNorm {
 public:
  InstanceNorm3d(Graph& graph, const std::string& name, int64_t channels, double eps = 1e-5,
                 bool affine = false)
      : InstanceNorm3d(graph, name, channels, InstanceNormOptions{.eps = eps, .affine = affine}) {}
  InstanceNorm3d(Graph& graph, const std::string& name, int64_t channels,
                 InstanceNormOptions options)
      : InstanceNorm(graph, name, "InstanceNorm3d", 5, channels, options) {}
};

/// RMS norm over the last dims `shape`, then weight (1) unless `affine` is false. eps defaults
/// to LLaMA's 1e-6; PyTorch's nn.RMSNorm defaults to the dtype's epsilon (1.19e-7 for f32), and
/// TransformerBlock passes its `norm_eps` (1e-5): give the same eps when porting a model.
class RMSNorm : public Module {
 public:
  RMSNorm(Graph& graph, const std::string& name, const Shape& shape, double eps = 1e-6,
          bool affine = true);
  Value weight;

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t dims_;
  double eps_;
};

/// A table [count, dim] of N(0, 1) rows looked up by integer ids. With a padding index (in
/// [0, count)), that row starts at zeros, the id reads zeros and passes no gradient to the
/// table (PyTorch's padding_idx).
class Embedding : public Module {
 public:
  Embedding(Graph& graph, const std::string& name, int64_t count, int64_t dim,
            LayerOptions options = {}, std::optional<int64_t> padding_index = std::nullopt);
  Value weight;

 protected:
  Value forward(const Value& ids) override;
  /// The table for a layer that reads it otherwise (EmbeddingBag); `kind` names it in errors.
  Embedding(Graph& graph, const std::string& name, int64_t count, int64_t dim, LayerOptions options,
            std::optional<int64_t> padding_index, const char* kind);

  std::optional<int64_t> padding_index_;
};

/// A table of `count` rows of `dim` (N(0, 1), the padding row zeros, as PyTorch's) whose bags
/// of ids are summed, averaged or maxed (PyTorch's nn.EmbeddingBag): calling it on 2-D ids
/// [B, L] makes each row a bag; bags() takes 1-D ids with offsets.
class EmbeddingBag : public Embedding {
 public:
  EmbeddingBag(Graph& graph, const std::string& name, int64_t count, int64_t dim,
               BagMode mode = BagMode::mean, LayerOptions options = {},
               std::optional<int64_t> padding_index = std::nullopt,
               bool include_last_offset = false);
  /// The bags of 1-D `ids` starting at `offsets` (see embedding_bag), each row weighed by
  /// `per_sample_weights` when given (mode sum). Also takes 2-D ids with offsets undefined.
  Value bags(const Value& ids, const Value& offsets, const Value& per_sample_weights = {});

 protected:
  Value forward(const Value& ids) override { return bagged(ids, {}, {}); }

 private:
  // embedding_bag over the layer's table, in the caller's name scope.
  Value bagged(const Value& ids, const Value& offsets, const Value& per_sample_weights) const;
  BagMode mode_;
  bool include_last_offset_;
};

/// Inverted dropout in training mode, the identity in evaluation mode. Each call draws its own
/// masks (seeded from the layer's name).
class Dropout : public Module {
 public:
  Dropout(Graph& graph, const std::string& name, double rate, LayerOptions options = {});

 protected:
  Value forward(const Value& x) override;

 private:
  double rate_;
  int64_t seed_;
};

/// channel_dropout in training mode (whole channels of [N, C, ...] zeroed), the identity in
/// evaluation mode. Dropout1d, Dropout2d and Dropout3d also check the input's rank (3, 4, 5).
class ChannelDropout : public Module {
 public:
  ChannelDropout(Graph& graph, const std::string& name, double rate, LayerOptions options = {});

 protected:
  Value forward(const Value& x) override;
  /// The rank x must have (0: any of at least 2), and the layer's PyTorch name for the error.
  ChannelDropout(Graph& graph, const std::string& name, double rate, LayerOptions options,
                 int64_t rank, const char* kind);

 private:
  double rate_;
  int64_t seed_, rank_ = 0;
  const char* kind_ = "ChannelDropout";
};
/// ChannelDropout of [N, C, L] (PyTorch's Dropout1d).
class Dropout1d : public ChannelDropout {
 public:
  Dropout1d(Graph& graph, const std::string& name, double rate, LayerOptions options = {})
      : ChannelDropout(graph, name, rate, options, 3, "Dropout1d") {}
};
/// ChannelDropout of [N, C, H, W] (PyTorch's Dropout2d).
class Dropout2d : public ChannelDropout {
 public:
  Dropout2d(Graph& graph, const std::string& name, double rate, LayerOptions options = {})
      : ChannelDropout(graph, name, rate, options, 4, "Dropout2d") {}
};
/// ChannelDropout of [N, C, D, H, W] (PyTorch's Dropout3d).
class Dropout3d : public ChannelDropout {
 public:
  Dropout3d(Graph& graph, const std::string& name, double rate, LayerOptions options = {})
      : ChannelDropout(graph, name, rate, options, 5, "Dropout3d") {}
};

/// drop_path (stochastic depth: whole examples zeroed) in training mode, the identity in
/// evaluation mode; for a residual branch (timm's DropPath, torchvision's StochasticDepth "row").
class DropPath : public Module {
 public:
  DropPath(Graph& graph, const std::string& name, double rate, LayerOptions options = {});

 protected:
  Value forward(const Value& x) override;

 private:
  double rate_;
  int64_t seed_;
};

/// max_pool2d as a layer (PyTorch's MaxPool2d).
class MaxPool2d : public Module {
 public:
  MaxPool2d(Graph& graph, const std::string& name, Pool2dOptions options);
  /// The pooled x and where each maximum is (PyTorch's return_indices=True): see
  /// max_pool2d_with_indices; for a MaxUnpool2d.
  std::pair<Value, Value> with_indices(const Value& x);

 protected:
  Value forward(const Value& x) override { return max_pool2d(x, options_); }

 private:
  Pool2dOptions options_;
};

/// max_unpool2d as a layer (PyTorch's MaxUnpool2d): unpool(x, indices) puts each value of x
/// back where a MaxPool2d of the same options found it, zeros elsewhere. It needs the indices,
/// so calling it as a one-input layer is an error naming it.
class MaxUnpool2d : public Module {
 public:
  MaxUnpool2d(Graph& graph, const std::string& name, Pool2dOptions options);
  /// The unpooled x [N, C, H, W]: (H, W) = output_size, or where that is {0, 0} the size the
  /// pooling maps onto x's (PyTorch's default; an explicit size must lie strictly within one
  /// stride of it, as PyTorch requires).
  Value unpool(const Value& x, const Value& indices, std::array<int64_t, 2> output_size = {0, 0});

 protected:
  Value forward(const Value& x) override;

 private:
  Pool2dOptions options_;
};

/// avg_pool2d as a layer (PyTorch's AvgPool2d).
class AvgPool2d : public Module {
 public:
  AvgPool2d(Graph& graph, const std::string& name, Pool2dOptions options,
            bool count_include_pad = true);

 protected:
  Value forward(const Value& x) override { return avg_pool2d(x, options_, count_include_pad_); }

 private:
  Pool2dOptions options_;
  bool count_include_pad_;
};

/// max_pool3d as a layer (PyTorch's MaxPool3d).
class MaxPool3d : public Module {
 public:
  MaxPool3d(Graph& graph, const std::string& name, Pool3dOptions options)
      : Module(graph, name), options_(options) {}

 protected:
  Value forward(const Value& x) override { return max_pool3d(x, options_); }

 private:
  Pool3dOptions options_;
};

/// avg_pool3d as a layer (PyTorch's AvgPool3d).
class AvgPool3d : public Module {
 public:
  AvgPool3d(Graph& graph, const std::string& name, Pool3dOptions options,
            bool count_include_pad = true)
      : Module(graph, name), options_(options), count_include_pad_(count_include_pad) {}

 protected:
  Value forward(const Value& x) override { return avg_pool3d(x, options_, count_include_pad_); }

 private:
  Pool3dOptions options_;
  bool count_include_pad_;
};

/// Window of a 1-D pooling layer; a stride of 0 is the kernel size (PyTorch's default).
struct Pool1dOptions {
  int64_t kernel_size = 2;
  int64_t stride = 0;
  int64_t padding = 0;     ///< on both sides
  bool ceil_mode = false;  ///< as Pool2dOptions::ceil_mode
  int64_t dilation = 1;    ///< MaxPool1d only: taps this far apart (Pool2dOptions::dilation)
};

/// The maximum of each window of x [N, C, L] (PyTorch's MaxPool1d): max_pool2d over a height of
/// 1, so NaN propagates and padding never wins as there.
class MaxPool1d : public Module {
 public:
  MaxPool1d(Graph& graph, const std::string& name, Pool1dOptions options);
  /// The pooled x and, i64 and shaped like it, the position along L of each window's maximum
  /// (PyTorch's return_indices=True), for a MaxUnpool1d.
  std::pair<Value, Value> with_indices(const Value& x);

 protected:
  Value forward(const Value& x) override;

 private:
  Pool1dOptions options_;
};

/// PyTorch's MaxUnpool1d: unpool(x, indices) puts each value of x [N, C, L'] back at the position
/// along L where a MaxPool1d of the same options found it, zeros elsewhere (max_unpool2d over a
/// height of 1). Calling it as a one-input layer is an error naming it.
class MaxUnpool1d : public Module {
 public:
  MaxUnpool1d(Graph& graph, const std::string& name, Pool1dOptions options);
  /// The unpooled x [N, C, L]: L = output_size, or where that is 0 the length the pooling maps
  /// onto x's (an explicit one within one stride of it, as PyTorch requires).
  Value unpool(const Value& x, const Value& indices, int64_t output_size = 0);

 protected:
  Value forward(const Value& x) override;

 private:
  Pool1dOptions options_;
};

/// The mean of each window of x [N, C, L] (PyTorch's AvgPool1d); with count_include_pad
/// padding counts as zeros in the divisor.
class AvgPool1d : public Module {
 public:
  AvgPool1d(Graph& graph, const std::string& name, Pool1dOptions options,
            bool count_include_pad = true);

 protected:
  Value forward(const Value& x) override;

 private:
  Pool1dOptions options_;
  bool count_include_pad_;
};

/// The mean of x [N, C, L] over output_size windows (PyTorch's AdaptiveAvgPool1d): output i
/// averages [floor(i L / out), ceil((i + 1) L / out)); L must be known when the layer is called.
class AdaptiveAvgPool1d : public Module {
 public:
  AdaptiveAvgPool1d(Graph& graph, const std::string& name, int64_t output_size);

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t output_size_;
};

/// The mean of x [N, C, H, W] over an output_size grid of windows (PyTorch's
/// AdaptiveAvgPool2d): output row i averages input rows [floor(i H / out), ceil((i + 1) H /
/// out)), windows that may be uneven and overlap; columns likewise. H and W must be known when
/// the layer is called.
class AdaptiveAvgPool2d : public Module {
 public:
  AdaptiveAvgPool2d(Graph& graph, const std::string& name, std::array<int64_t, 2> output_size);

 protected:
  Value forward(const Value& x) override;

 private:
  std::array<int64_t, 2> output_size_;
};

/// The mean of x [N, C, D, H, W] over an output_size grid of windows (PyTorch's
/// AdaptiveAvgPool3d; adaptive_avg_pool). C, D, H and W must be known when the layer is called.
class AdaptiveAvgPool3d : public Module {
 public:
  AdaptiveAvgPool3d(Graph& graph, const std::string& name, std::array<int64_t, 3> output_size);

 protected:
  Value forward(const Value& x) override;

 private:
  std::array<int64_t, 3> output_size_;
};

/// The maximum of x [N, C, L] over output_size windows (PyTorch's AdaptiveMaxPool1d): output i
/// covers [floor(i L / out), ceil((i + 1) L / out)); L must be known when the layer is called.
class AdaptiveMaxPool1d : public Module {
 public:
  AdaptiveMaxPool1d(Graph& graph, const std::string& name, int64_t output_size);

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t output_size_;
};

/// The maximum of x [N, C, D, H, W] over an output_size grid of windows (PyTorch's
/// AdaptiveMaxPool3d; adaptive_max_pool). D, H and W must be known when the layer is called.
class AdaptiveMaxPool3d : public Module {
 public:
  AdaptiveMaxPool3d(Graph& graph, const std::string& name, std::array<int64_t, 3> output_size);

 protected:
  Value forward(const Value& x) override;

 private:
  std::array<int64_t, 3> output_size_;
};

/// adaptive_max_pool2d as a layer (PyTorch's AdaptiveMaxPool2d).
class AdaptiveMaxPool2d : public Module {
 public:
  AdaptiveMaxPool2d(Graph& graph, const std::string& name, std::array<int64_t, 2> output_size);

 protected:
  Value forward(const Value& x) override { return adaptive_max_pool2d(x, output_size_); }

 private:
  std::array<int64_t, 2> output_size_;
};

/// prelu as a layer (PyTorch's PReLU): a learned slope for x < 0, one shared (num_parameters 1)
/// or one per channel of x [N, C, ...], each starting at `init`.
class PReLU : public Module {
 public:
  PReLU(Graph& graph, const std::string& name, int64_t num_parameters = 1, double init = 0.25);
  Value weight;  ///< [num_parameters]

 protected:
  Value forward(const Value& x) override { return prelu(x, weight); }
};

/// interpolate as a layer (PyTorch's Upsample): x [N, C, L], [N, C, H, W] or [N, C, D, H, W]
/// resized to options.size or by options.scale_factor.
class Upsample : public Module {
 public:
  Upsample(Graph& graph, const std::string& name, InterpolateOptions options);

 protected:
  Value forward(const Value& x) override { return interpolate(x, options_); }

 private:
  InterpolateOptions options_;
};

/// pad(x, widths, mode, value) as a layer (PyTorch's ZeroPad2d, ConstantPad1d/2d,
/// ReflectionPad1d/2d, ReplicationPad1d/2d, CircularPad1d/2d: widths innermost dim first).
class Pad : public Module {
 public:
  Pad(Graph& graph, const std::string& name, std::vector<std::pair<int64_t, int64_t>> widths,
      PadMode mode = PadMode::constant, double value = 0);

 protected:
  Value forward(const Value& x) override;

 private:
  std::vector<std::pair<int64_t, int64_t>> widths_;
  PadMode mode_;
  double value_;
};

/// pixel_shuffle(x, factor) as a layer (PyTorch's PixelShuffle).
class PixelShuffle : public Module {
 public:
  PixelShuffle(Graph& graph, const std::string& name, int64_t factor);

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t factor_;
};

/// pixel_unshuffle(x, factor) as a layer (PyTorch's PixelUnshuffle).
class PixelUnshuffle : public Module {
 public:
  PixelUnshuffle(Graph& graph, const std::string& name, int64_t factor);

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t factor_;
};

/// flatten(x, start_axis, end_axis) as a layer (PyTorch's Flatten: from dim 1 by default).
class Flatten : public Module {
 public:
  Flatten(Graph& graph, const std::string& name, int64_t start_axis = 1, int64_t end_axis = -1);

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t start_axis_, end_axis_;
};

/// unflatten(x, axis, sizes) as a layer (PyTorch's Unflatten).
class Unflatten : public Module {
 public:
  Unflatten(Graph& graph, const std::string& name, int64_t axis, std::vector<int64_t> sizes);

 protected:
  Value forward(const Value& x) override;

 private:
  int64_t axis_;
  std::vector<int64_t> sizes_;
};

/// unfold(x, options) as a layer (PyTorch's Unfold).
class Unfold : public Module {
 public:
  Unfold(Graph& graph, const std::string& name, UnfoldOptions options);

 protected:
  Value forward(const Value& x) override;

 private:
  UnfoldOptions options_;
};

/// fold(columns, output_size, options) as a layer (PyTorch's Fold).
class Fold : public Module {
 public:
  Fold(Graph& graph, const std::string& name, std::array<int64_t, 2> output_size,
       UnfoldOptions options);

 protected:
  Value forward(const Value& x) override;

 private:
  std::array<int64_t, 2> output_size_;
  UnfoldOptions options_;
};

/// A function of one value as a layer (activations in a Sequential).
class Lambda : public Module {
 public:
  Lambda(Graph& graph, const std::string& name, std::function<Value(const Value&)> fn);

 protected:
  Value forward(const Value& x) override;

 private:
  std::function<Value(const Value&)> fn_;
};

/// Layers applied in order.
class Sequential : public Module {
 public:
  Sequential(Graph& graph, const std::string& name);
  /// Appends a layer made here, named "<this>/<name>".
  template <typename T, typename... Args>
  T& add(const std::string& name, Args&&... args) {
    T& layer = make<T>(name, std::forward<Args>(args)...);
    layers_.push_back(&layer);
    return layer;
  }
  /// Appends a function (an activation).
  Sequential& add(const std::string& name, std::function<Value(const Value&)> fn);
  size_t size() const { return layers_.size(); }

 protected:
  Value forward(const Value& x) override;

 private:
  std::vector<Module*> layers_;
};

}  // namespace kiln::nn
