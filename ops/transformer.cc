// The attention layers of kiln::nn (ops/transformer.h): MultiHeadAttention and the transformer
// blocks.
#include "kiln/ops/transformer.h"

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "kiln/framework/error.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/state.h"

namespace kiln::nn {

// ---- Attention.

namespace {

// The depth of MultiHeadAttention's heads: Options::head_dim, or dim / heads (1 where that is
// not whole, so that the layers are made before the constructor's body says so).
int64_t head_depth(int64_t dim, int64_t heads, const MultiHeadAttention::Options& options) {
  if (options.head_dim > 0) return options.head_dim;
  return heads > 0 && dim % heads == 0 ? dim / heads : 1;
}

// The heads of MultiHeadAttention's k and v projections: kv_heads, or heads.
int64_t key_value_heads(int64_t heads, const MultiHeadAttention::Options& options) {
  return options.kv_heads > 0 ? options.kv_heads : heads;
}

// `cache` with `entries` written along its length from `position`: in the variable's own
// storage where the cache is one held in the session (assign_slice: only the entries are
// written), else a new value (dynamic_update_slice: a fed cache).
Value cache_written(const Value& cache, const Value& entries, const Value& position) {
  if (cache.graph()->node(cache.node_id()).op_name() == "variable")
    return assign_slice(cache, entries, position, 1);
  return dynamic_update_slice(cache, entries, position, 1);
}

}  // namespace

MultiHeadAttention::MultiHeadAttention(Graph& graph, const std::string& name, int64_t dim,
                                       int64_t heads, Options options)
    : Module(graph, name),
      query(make<Linear>("query", dim, heads * head_depth(dim, heads, options),
                         LayerOptions{options.qkv_bias.value_or(options.bias), options.seed})),
      key(make<Linear>("key", options.memory_dim > 0 ? options.memory_dim : dim,
                       key_value_heads(heads, options) * head_depth(dim, heads, options),
                       LayerOptions{options.qkv_bias.value_or(options.bias), options.seed})),
      value(make<Linear>("value", options.memory_dim > 0 ? options.memory_dim : dim,
                         key_value_heads(heads, options) * head_depth(dim, heads, options),
                         LayerOptions{options.qkv_bias.value_or(options.bias), options.seed})),
      output(make<Linear>("output", heads * head_depth(dim, heads, options), dim,
                          LayerOptions{options.bias, options.seed})),
      probability_dropout(make<Dropout>("probability_dropout", options.dropout,
                                        LayerOptions{.seed = options.seed})),
      dim_(dim),
      memory_dim_(options.memory_dim > 0 ? options.memory_dim : dim),
      heads_(heads),
      kv_heads_(key_value_heads(heads, options)),
      depth_(head_depth(dim, heads, options)),
      qk_norm_across_heads_(options.qk_norm_across_heads),
      causal_(options.causal),
      window_(options.window),
      scale_(options.scale),
      softcap_(options.softcap),
      dropout_(options.dropout),
      rotary_(options.rotary) {
  KILN_CHECK(options.head_dim >= 0, GraphError, "[nn] MultiHeadAttention ", path(), ": head_dim ",
             options.head_dim, " must be positive (or 0 for dim / heads)");
  KILN_CHECK(heads > 0 && (options.head_dim > 0 || dim % heads == 0), GraphError,
             "[nn] MultiHeadAttention ", path(), ": dim ", dim, " does not split into ", heads,
             " heads (give head_dim)");
  KILN_CHECK(options.scale >= 0, GraphError, "[nn] MultiHeadAttention ", path(), ": scale ",
             options.scale, " must be positive (or 0 for 1 / sqrt(head depth))");
  KILN_CHECK(options.softcap >= 0 && std::isfinite(options.softcap), GraphError,
             "[nn] MultiHeadAttention ", path(), ": softcap ", options.softcap,
             " must be positive (or 0 for none)");
  KILN_CHECK(options.window >= 0, GraphError, "[nn] MultiHeadAttention ", path(), ": window ",
             options.window, " must be positive (or 0 for none)");
  KILN_CHECK(options.memory_dim >= 0, GraphError, "[nn] MultiHeadAttention ", path(),
             ": memory_dim ", options.memory_dim, " must be positive (or 0 for dim)");
  KILN_CHECK(options.kv_heads >= 0 && heads % kv_heads_ == 0, GraphError,
             "[nn] MultiHeadAttention ", path(), ": kv_heads ", options.kv_heads,
             " must divide the ", heads, " heads");
  if (options.qk_norm) {  // made after the check above: the head depth is whole
    const int64_t query_width = qk_norm_across_heads_ ? heads * depth_ : depth_;
    const int64_t key_width = qk_norm_across_heads_ ? kv_heads_ * depth_ : depth_;
    query_norm = &make<RMSNorm>("query_norm", Shape{query_width}, options.qk_norm_eps);
    key_norm = &make<RMSNorm>("key_norm", Shape{key_width}, options.qk_norm_eps);
  }
  const int64_t turned = rotary_ && rotary_->dims > 0 ? rotary_->dims : depth_;
  KILN_CHECK(!rotary_ || (turned % 2 == 0 && turned <= depth_), GraphError,
             "[nn] MultiHeadAttention ", path(),
             ": rotary embedding turns pairs of features; it cannot turn ", turned, " of the head ",
             "depth ", depth_);
}

Value MultiHeadAttention::rotated(const Value& x, const Value& start) const {
  return rotary_ ? rotary_embedding(x, start, *rotary_) : x;
}

namespace {
// The positions 0 .. T-1 along dim 1 of x [B, T, ...] (T known or not), i64 [T], counted from
// x's first row.
Value positions_along_length(const Value& x) {
  std::vector<int64_t> first(static_cast<size_t>(x.shape().rank()), 0);
  std::vector<int64_t> end(first.size(), 1);
  end[1] = std::numeric_limits<int64_t>::max();
  return cumsum(reshape(ones_like(cast(slice(x, first, end), i64)), {-1}), 0, /*exclusive=*/true);
}

// [B, T, heads * depth] as [B, T, heads, depth], B and T known or not.
Value heads_split(const Value& x, int64_t heads, int64_t depth) {
  return unflatten(x, 2, {heads, depth});
}

// [B, T, heads, depth] as [B, T, heads * depth].
Value heads_merged(const Value& x) {
  return flatten(x, 2, 3);
}
}  // namespace

Value MultiHeadAttention::normalized_heads(const Value& projected, int64_t heads, RMSNorm* norm) {
  if (norm == nullptr) return heads_split(projected, heads, depth_);
  if (qk_norm_across_heads_) return heads_split((*norm)(projected), heads, depth_);
  return (*norm)(heads_split(projected, heads, depth_));
}

Value MultiHeadAttention::query_heads(const Value& projected, const Value& start) {
  return rotated(normalized_heads(projected, heads_, query_norm), start);
}

Value MultiHeadAttention::key_heads(const Value& projected, const Value& start) {
  return rotated(normalized_heads(projected, kv_heads_, key_norm), start);
}

Value MultiHeadAttention::attend(const Value& x, const Value& mask) {
  return attend(x, x, mask);
}

Value MultiHeadAttention::attend(const Value& x, const Value& memory, const Value& mask) {
  NameScope scope(graph(), name());
  return attention_to(x, projected(memory), mask);
}

KVCache MultiHeadAttention::project_memory(const Value& memory) {
  expect_own({&memory}, "the memory");
  NameScope scope(graph(), name());
  return projected(memory);
}

Value MultiHeadAttention::attend_projected(const Value& x, const KVCache& memory,
                                           const Value& mask) {
  expect_own({&x, &memory.keys, &memory.values}, "x and the memory's keys and values");
  const int64_t depth = depth_;
  const Shape& ks = memory.keys.shape();
  KILN_CHECK(ks.rank() == 4 && ks[2] == kv_heads_ && ks[3] == depth && memory.values.shape() == ks,
             GraphError, "[nn] MultiHeadAttention ", path(),
             ": projected keys and values must both be [batch, length, ", kv_heads_, ", ", depth,
             "], got ", ks, " and ", memory.values.shape());
  NameScope scope(graph(), name());
  return attention_to(x, memory, mask);
}

void MultiHeadAttention::expect_rows(const Value& x, const char* what, int64_t width) const {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 3 && s[2] == width, GraphError, "[nn] MultiHeadAttention ", path(),
             ": expects ", what, " [batch, length, ", width, "], got ", s);
}

// [B, S, dim] -> [B, S, kv_heads, depth]: attention reads the heads in place (layout bthd), so
// no transpose splits or merges them.
KVCache MultiHeadAttention::projected(const Value& memory) {
  expect_rows(memory, "memory", memory_dim_);
  return {key_heads(key(memory), Value()), heads_split(value(memory), kv_heads_, depth_)};
}

Value MultiHeadAttention::queries(const Value& x) {
  expect_rows(x, "x", dim_);
  return query_heads(query(x), Value());
}

Value MultiHeadAttention::attention_weights(const Value& x, const Value& memory,
                                            const Value& mask) {
  expect_own({&x, &memory}, "x and the memory");
  NameScope scope(graph(), name());
  return probabilities(queries(x), projected(memory).keys, mask);
}

Value MultiHeadAttention::attention_to(const Value& x, const KVCache& memory, const Value& mask) {
  const bool dropped = dropout_ > 0 && training();
  Value q = queries(x);
  const Value &k = memory.keys, &v = memory.values;
  Value attended = dropped ? attention_with_dropout(q, k, v, mask)
                           : scaled_dot_product_attention(q, k, v,
                                                          {.mask = mask,
                                                           .causal = causal_,
                                                           .window = window_,
                                                           .scale = scale_,
                                                           .softcap = softcap_,
                                                           .layout = "bthd"});
  return output(heads_merged(attended));
}

MultiHeadAttention::Cached MultiHeadAttention::attend_cached(const Value& x, const KVCache& cache,
                                                             const Value& position,
                                                             const Value& mask) {
  KILN_CHECK(!training(), GraphError, "[nn] MultiHeadAttention ", path(),
             ": cached attention is for inference; build it in evaluation mode (eval())");
  expect_own({&x, &position}, "x and position");
  KILN_CHECK(memory_dim_ == dim_, GraphError, "[nn] MultiHeadAttention ", path(),
             ": cached self-attention needs memory_dim (", memory_dim_, ") equal to dim (", dim_,
             ")");
  expect_rows(x, "x", dim_);
  const int64_t depth = depth_, length = x.shape()[1];
  for (const Value* part : {&cache.keys, &cache.values}) {
    KILN_CHECK(part->defined(), GraphError, "[nn] MultiHeadAttention ", path(),
               ": the cache's keys and values must both be given");
    const Shape& cs = part->shape();
    KILN_CHECK(cs.rank() == 4 && cs[1] >= length && cs[2] == kv_heads_ && cs[3] == depth,
               GraphError, "[nn] MultiHeadAttention ", path(), ": a cache must be [batch, ",
               length >= 0 ? str("max_length >= ", length) : "max_length", ", ", kv_heads_, ", ",
               depth, "], got ", cs);
  }
  NameScope scope(graph(), name());
  // Keys enter the cache rotated for their positions, as attend() rotates them.
  KVCache next{cache_written(cache.keys, key_heads(key(x), position), position),
               cache_written(cache.values, heads_split(value(x), kv_heads_, depth), position)};
  // Query i sits at position + i and sees the entries written up to it, j <= position + i (and
  // within its window, j > position + i - window): the attention's reach at that offset, so
  // the entries past it are never multiplied. A mask narrows it; a bias is added.
  Value attended =
      scaled_dot_product_attention(query_heads(query(x), position), next.keys, next.values,
                                   {.mask = mask,
                                    .causal = true,
                                    .window = window_,
                                    .scale = scale_,
                                    .softcap = softcap_,
                                    .layout = "bthd",
                                    .query_offset = position});
  return {output(heads_merged(attended)), next};
}

KVCache MultiHeadAttention::cache_placeholders(int64_t max_length, DType dtype) {
  KILN_CHECK(max_length > 0, GraphError, "[nn] MultiHeadAttention ", path(),
             ": a cache's max_length must be positive, got ", max_length);
  const Shape shape{kUnknownDim, max_length, kv_heads_, depth_};
  return {graph().placeholder(path() + "/cache_keys", dtype, shape),
          graph().placeholder(path() + "/cache_values", dtype, shape)};
}

KVCache MultiHeadAttention::cache_variables(int64_t batch, int64_t max_length, DType dtype) {
  KILN_CHECK(batch > 0 && max_length > 0, GraphError, "[nn] MultiHeadAttention ", path(),
             ": a cache's batch and max_length must be positive, got ", batch, " and ", max_length);
  const Shape shape{batch, max_length, kv_heads_, depth_};
  const VariableOptions options{.dtype = dtype, .trainable = false, .persistent = false};
  return {graph().variable(path() + "/cache/keys", shape, init::zeros(), options),
          graph().variable(path() + "/cache/values", shape, init::zeros(), options)};
}

// Grouped heads: each key-value head of t [B, S, kv_heads, depth] repeated for its group:
// [B, S, kv_heads, group, depth], then [B, S, heads, depth] (query head h reads key-value head
// h / group).
Value MultiHeadAttention::heads_repeated(const Value& t) const {
  if (kv_heads_ == heads_) return t;
  const std::vector<Value> copies(static_cast<size_t>(heads_ / kv_heads_), expand_dims(t, {3}));
  return heads_merged(concat(copies, 3));
}

Value MultiHeadAttention::probabilities(const Value& q, const Value& k, const Value& mask) {
  const int64_t length = q.shape()[1], memory_length = k.shape()[1], depth = q.shape()[3];
  auto heads_first = [](const Value& t) { return transpose(t, {0, 2, 1, 3}); };
  Value scores =
      matmul(heads_first(q), heads_first(heads_repeated(k)), false, true) *
      (scale_ > 0 ? scale_ : 1.0 / std::sqrt(static_cast<double>(depth)));  // [B, H, T, S]
  if (softcap_ > 0) scores = tanh(scores / softcap_) * softcap_;
  // keep: 1 where query i may attend key j (the mask, and j <= i when causal), else 0. A float
  // mask is a bias of the scores: it hides the keys where it is -inf.
  Value keep;
  if (mask.defined() && mask.dtype() != DType::boolean) {
    scores = scores + mask;
    keep = cast(greater(scores, -std::numeric_limits<double>::infinity()), q.dtype());
  } else if (mask.defined()) {
    keep = cast(mask, q.dtype());
  }
  if (causal_ || window_ > 0) {  // key j for query i: j <= i when causal, j > i - window
    Value positional;
    if (length >= 0 && memory_length >= 0) {
      std::vector<float> positions(static_cast<size_t>(length * memory_length), 0.0f);
      for (int64_t i = 0; i < length; ++i)
        for (int64_t j = 0; j < memory_length; ++j)
          positions[static_cast<size_t>(i * memory_length + j)] =
              (!causal_ || j <= i) && (window_ == 0 || j > i - window_) ? 1.0f : 0.0f;
      positional = constant(graph(), Tensor::from_vector(positions, {length, memory_length}),
                            "positional_keep");
    } else {  // the same from the lengths of this run
      const Value i = expand_dims(positions_along_length(q), {1});
      const Value j = expand_dims(positions_along_length(k), {0});
      Value kept = causal_ ? cast(less_equal(j, i), f32) : ones_like(cast(j - i, f32));
      if (window_ > 0) kept = kept * cast(greater(j, i - static_cast<double>(window_)), f32);
      positional = kept;
    }
    if (q.dtype() != f32) positional = cast(positional, q.dtype());
    keep = keep.defined() ? keep * positional : positional;
  }
  if (!keep.defined()) return softmax(scores);
  // Masked scores become -65504 (f16's lowest finite value, finite in every float dtype, also
  // where autocast runs this in 16 bits), not -inf: exp of it less the row's maximum is 0
  // wherever a row keeps a key (scores are far above it), and a row that keeps none is uniform
  // instead of NaN, then zeroed by the product with keep (the fused op's zeros for such a
  // query).
  return softmax(where(greater(keep, 0.5), scores, -65504.0)) * keep;
}

Value MultiHeadAttention::attention_with_dropout(const Value& q, const Value& k, const Value& v,
                                                 const Value& mask) {
  auto heads_first = [](const Value& t) { return transpose(t, {0, 2, 1, 3}); };
  return transpose(
      matmul(probability_dropout(probabilities(q, k, mask)), heads_first(heads_repeated(v))),
      {0, 2, 1, 3});
}

RelativePositionBias::RelativePositionBias(Graph& graph, const std::string& name, int64_t heads,
                                           Options options)
    : Module(graph, name), options_(options) {
  KILN_CHECK(heads > 0, GraphError, "[nn] RelativePositionBias ", path(), ": heads ", heads,
             " must be positive");
  relative_position_bucket(0, options.bidirectional, options.buckets,
                           options.max_distance);  // checks the buckets, naming them
  weight = variable("weight", {options.buckets, heads},
                    init::normal(0, 0.02, seed_for("weight") + options.seed));
}

Value RelativePositionBias::bias(int64_t queries, int64_t keys) {
  NameScope scope(graph(), name());
  return table_read(queries, keys);
}

Value RelativePositionBias::table_read(int64_t queries, int64_t keys) {
  const Value buckets = relative_position_buckets(graph(), queries, keys, options_.bidirectional,
                                                  options_.buckets, options_.max_distance);
  // [Tq, Tk, heads] -> [1, heads, Tq, Tk]
  return expand_dims(transpose(embedding(weight, buckets), {2, 0, 1}), {0});
}

Value RelativePositionBias::bias_at(const Value& position, int64_t queries, int64_t keys) {
  KILN_CHECK(queries > 0 && keys >= queries, GraphError, "[nn] RelativePositionBias ", path(),
             ": a cached step's ", queries, " queries need a cache of at least as many keys, got ",
             keys);
  expect_own({&position}, "position");
  NameScope scope(graph(), name());
  return step_bias(position, iota(graph(), Shape{queries, 1}, 0, i64), keys);
}

Value RelativePositionBias::bias_at(const Value& position, const Value& x, int64_t keys) {
  KILN_CHECK(keys > 0, GraphError, "[nn] RelativePositionBias ", path(),
             ": a cached step needs a cache of at least one key, got ", keys);
  expect_own({&position, &x}, "position and x");
  KILN_CHECK(x.shape().rank() >= 2, GraphError, "[nn] RelativePositionBias ", path(),
             ": expects x [batch, n, ...], got ", x.shape());
  NameScope scope(graph(), name());
  return step_bias(position, expand_dims(positions_along_length(x), {1}), keys);
}

Value RelativePositionBias::step_bias(const Value& position, const Value& offsets, int64_t keys) {
  // Query i sits at position + i <= keys - 1, so j - (position + i) lies in [-(keys - 1),
  // keys - 1]: the buckets of that range as a table, gathered at the distances of this step.
  std::vector<int64_t> of_distance(static_cast<size_t>(2 * keys - 1));
  for (int64_t d = -(keys - 1); d <= keys - 1; ++d)
    of_distance[static_cast<size_t>(d + keys - 1)] = relative_position_bucket(
        d, options_.bidirectional, options_.buckets, options_.max_distance);
  const Value table =
      graph().constant(Tensor::from_vector(of_distance, {2 * keys - 1}), "buckets_by_distance");
  const Value query_at = offsets + cast(position, i64);
  const Value distance = iota(graph(), Shape{1, keys}, 1, i64) - query_at + double(keys - 1);
  const Value buckets = gather(table, distance, 0);  // [queries, keys]
  return expand_dims(transpose(embedding(weight, buckets), {2, 0, 1}), {0});
}

Value RelativePositionBias::forward(const Value& x) {
  KILN_CHECK(x.shape().rank() >= 2, GraphError, "[nn] RelativePositionBias ", path(),
             ": expects x [batch, length, ...], got ", x.shape());
  if (x.shape()[1] >= 0) return table_read(x.shape()[1], x.shape()[1]);
  // A length known only at run time. Every distance of max_distance or more (either way) has
  // the last bucket of its half, so the buckets of the distances clamped to [-max_distance,
  // max_distance] are a table built now, gathered at the run's distances j - i.
  const int64_t reach = options_.max_distance;
  std::vector<int64_t> of_distance(static_cast<size_t>(2 * reach + 1));
  for (int64_t d = -reach; d <= reach; ++d)
    of_distance[static_cast<size_t>(d + reach)] = relative_position_bucket(
        d, options_.bidirectional, options_.buckets, options_.max_distance);
  const Value table =
      graph().constant(Tensor::from_vector(of_distance, {2 * reach + 1}), "buckets_by_distance");
  const Value positions = positions_along_length(x);  // [T]
  const Value distance = clamp(expand_dims(positions, {0}) - expand_dims(positions, {1}),
                               static_cast<double>(-reach), static_cast<double>(reach)) +
                         static_cast<double>(reach);  // [T, T]: key j - query i, shifted
  const Value buckets = gather(table, distance, 0);   // [T, T]
  return expand_dims(transpose(embedding(weight, buckets), {2, 0, 1}), {0});
}

namespace {

// A transformer block's feed-forward part: out(dropout(activation(in(x)))); with swiglu,
// out(dropout(silu(gate) * up)) for in(x)'s halves gate and up (geglu: tanh GELU of the gate).
Value feed_forward(Linear& in, TransformerBlock::Activation activation, Dropout& dropout,
                   Linear& out, const Value& x) {
  Value inner = in(x);
  switch (activation) {
    case TransformerBlock::Activation::swiglu:
    case TransformerBlock::Activation::geglu: {
      std::vector<Value> gate_up = split(inner, 2, -1);
      const bool swish = activation == TransformerBlock::Activation::swiglu;
      inner = (swish ? silu(gate_up[0]) : gelu_tanh(gate_up[0])) * gate_up[1];
      break;
    }
    case TransformerBlock::Activation::gelu:
      inner = gelu(inner);
      break;
    case TransformerBlock::Activation::gelu_tanh:
      inner = gelu_tanh(inner);
      break;
    case TransformerBlock::Activation::relu:
      inner = relu(inner);
      break;
  }
  return out(dropout(inner));
}

int64_t ffn_dim_of(int64_t dim, const TransformerBlock::Options& options) {
  return options.ffn_dim > 0 ? options.ffn_dim : 4 * dim;
}

// ffn_in's width: the FFN's, or twice it when gated (gate and up side by side).
int64_t ffn_in_width(int64_t dim, const TransformerBlock::Options& options) {
  const int64_t width = ffn_dim_of(dim, options);
  const bool gated = options.activation == TransformerBlock::Activation::swiglu ||
                     options.activation == TransformerBlock::Activation::geglu;
  return gated ? 2 * width : width;
}

// A block's attention: causal or not; self-attention (with the block's rotary embedding and
// sliding window) or cross-attention; the block's seed, biases, key-value heads, query and key
// norms and attention dropout.
MultiHeadAttention::Options attention_options(const TransformerBlock::Options& options, bool causal,
                                              bool self_attention) {
  return {.causal = causal,
          .bias = options.bias,
          .seed = options.seed,
          .dropout = options.attention_dropout,
          .kv_heads = options.kv_heads,
          .rotary = self_attention ? options.rotary : std::nullopt,
          .qk_norm = options.qk_norm,
          .qk_norm_eps = options.norm_eps,
          .qkv_bias = options.qkv_bias,
          .window = self_attention ? options.window : 0,
          .scale = options.attention_scale,
          .softcap = options.attention_softcap,
          .head_dim = options.head_dim,
          .qk_norm_across_heads = options.qk_norm_across_heads};
}

}  // namespace

TransformerBlock::TransformerBlock(Graph& graph, const std::string& name, int64_t dim,
                                   int64_t heads, Options options)
    : Module(graph, name),
      norm1(input_norm("norm1", dim, options)),
      norm2(input_norm("norm2", dim, options)),
      attention(make<MultiHeadAttention>("attention", dim, heads,
                                         attention_options(options, options.causal, true))),
      ffn_in(make<Linear>("ffn_in", dim, ffn_in_width(dim, options),
                          LayerOptions{options.bias, options.seed})),
      ffn_out(make<Linear>("ffn_out", ffn_dim_of(dim, options), dim,
                           LayerOptions{options.bias, options.seed})),
      attention_output_dropout(
          make<Dropout>("attention_dropout", options.dropout, LayerOptions{.seed = options.seed})),
      ffn_output_dropout(
          make<Dropout>("ffn_dropout", options.dropout, LayerOptions{.seed = options.seed})),
      activation_dropout(make<Dropout>("activation_dropout", options.activation_dropout,
                                       LayerOptions{.seed = options.seed})),
      activation_(options.activation),
      norm_first_(options.norm_first),
      parallel_(options.parallel) {
  KILN_CHECK(!parallel_ || norm_first_, GraphError, "[nn] TransformerBlock ", path(),
             ": a parallel block is pre-norm (norm_first)");
  KILN_CHECK(!options.post_norms || (norm_first_ && !parallel_), GraphError,
             "[nn] TransformerBlock ", path(),
             ": post_norms are for a pre-norm block that is not parallel");
  KILN_CHECK(options.input_norms || options.post_norms, GraphError, "[nn] TransformerBlock ",
             path(), ": a block without input_norms needs post_norms (OLMo 2's)");
  if (options.post_norms) {
    attention_output_norm = &make_either<RMSNorm, LayerNorm>(
        options.norm == Norm::rms, "attention_output_norm", Shape{dim}, options.norm_eps);
    ffn_output_norm = &make_either<RMSNorm, LayerNorm>(options.norm == Norm::rms, "ffn_output_norm",
                                                       Shape{dim}, options.norm_eps);
  }
}

Module& TransformerBlock::input_norm(const std::string& name, int64_t dim, const Options& options) {
  if (!options.input_norms) return make<Lambda>(name, [](const Value& x) { return x; });
  return make_either<RMSNorm, LayerNorm>(options.norm == Norm::rms, name, Shape{dim},
                                         options.norm_eps);
}

Value TransformerBlock::forward(const Value& x) {
  return block_of(x, [&](const Value& v) { return attention.attend(v, Value()); });
}

Value TransformerBlock::attend(const Value& x, const Value& mask) {
  NameScope scope(graph(), name());
  return block_of(x, [&](const Value& v) { return attention.attend(v, mask); });
}

MultiHeadAttention::Cached TransformerBlock::attend_cached(const Value& x, const KVCache& cache,
                                                           const Value& position,
                                                           const Value& mask) {
  KILN_CHECK(!training(), GraphError, "[nn] TransformerBlock ", path(),
             ": cached attention is for inference; build it in evaluation mode (eval())");
  NameScope scope(graph(), name());
  KVCache next;
  Value y = block_of(x, [&](const Value& v) {
    MultiHeadAttention::Cached step = attention.attend_cached(v, cache, position, mask);
    next = step.cache;
    return step.output;
  });
  return {y, next};
}

Value TransformerBlock::block_of(const Value& x, const std::function<Value(const Value&)>& attend) {
  auto ffn = [&](const Value& v) {
    return ffn_output_dropout(feed_forward(ffn_in, activation_, activation_dropout, ffn_out, v));
  };
  if (parallel_) return x + attention_output_dropout(attend(norm1(x))) + ffn(norm2(x));
  if (norm_first_) {
    // With post_norms, each branch's output is normalized too before its residual sum.
    auto post = [](Module* norm, const Value& v) { return norm != nullptr ? (*norm)(v) : v; };
    Value h = x + attention_output_dropout(post(attention_output_norm, attend(norm1(x))));
    return h + post(ffn_output_norm, ffn(norm2(h)));
  }
  Value h = norm1(x + attention_output_dropout(attend(x)));
  return norm2(h + ffn(h));
}

// ---- TransformerDecoderBlock.

TransformerDecoderBlock::TransformerDecoderBlock(Graph& graph, const std::string& name, int64_t dim,
                                                 int64_t heads, Options options)
    : Module(graph, name),
      norm1(make_either<RMSNorm, LayerNorm>(options.norm == Norm::rms, "norm1", Shape{dim},
                                            options.norm_eps)),
      norm2(make_either<RMSNorm, LayerNorm>(options.norm == Norm::rms, "norm2", Shape{dim},
                                            options.norm_eps)),
      norm3(make_either<RMSNorm, LayerNorm>(options.norm == Norm::rms, "norm3", Shape{dim},
                                            options.norm_eps)),
      self_attention(make<MultiHeadAttention>("self_attention", dim, heads,
                                              attention_options(options, options.causal, true))),
      cross_attention(make<MultiHeadAttention>("cross_attention", dim, heads,
                                               attention_options(options, false, false))),
      ffn_in(make<Linear>("ffn_in", dim, ffn_in_width(dim, options),
                          LayerOptions{options.bias, options.seed})),
      ffn_out(make<Linear>("ffn_out", ffn_dim_of(dim, options), dim,
                           LayerOptions{options.bias, options.seed})),
      self_attention_output_dropout(make<Dropout>("self_attention_dropout", options.dropout,
                                                  LayerOptions{.seed = options.seed})),
      cross_attention_output_dropout(make<Dropout>("cross_attention_dropout", options.dropout,
                                                   LayerOptions{.seed = options.seed})),
      ffn_output_dropout(
          make<Dropout>("ffn_dropout", options.dropout, LayerOptions{.seed = options.seed})),
      activation_dropout(make<Dropout>("activation_dropout", options.activation_dropout,
                                       LayerOptions{.seed = options.seed})),
      activation_(options.activation),
      norm_first_(options.norm_first) {
  KILN_CHECK(!options.parallel, GraphError, "[nn] TransformerDecoderBlock ", path(),
             ": the parallel form is TransformerBlock's only");
}

Value TransformerDecoderBlock::decode(const Value& x, const Value& memory, const Value& self_mask,
                                      const Value& memory_mask) {
  expect_own({&x, &memory}, "x and memory");
  NameScope scope(graph(), name());
  return block_of(
      x, [&](const Value& v) { return self_attention.attend(v, self_mask); },
      [&](const Value& v) { return cross_attention.attend(v, memory, memory_mask); });
}

MultiHeadAttention::Cached TransformerDecoderBlock::decode_cached(
    const Value& x, const Value& memory, const KVCache& cache, const Value& position,
    const Value& memory_mask, const Value& self_mask) {
  expect_own({&x, &memory}, "x and memory");
  return step_of(x, cache, position, self_mask,
                 [&](const Value& v) { return cross_attention.attend(v, memory, memory_mask); });
}

KVCache TransformerDecoderBlock::project_memory(const Value& memory) {
  NameScope scope(graph(), name());
  return cross_attention.project_memory(memory);
}

MultiHeadAttention::Cached TransformerDecoderBlock::decode_cached(
    const Value& x, const KVCache& memory, const KVCache& cache, const Value& position,
    const Value& memory_mask, const Value& self_mask) {
  expect_own({&x}, "x");
  return step_of(x, cache, position, self_mask, [&](const Value& v) {
    return cross_attention.attend_projected(v, memory, memory_mask);
  });
}

MultiHeadAttention::Cached TransformerDecoderBlock::step_of(
    const Value& x, const KVCache& cache, const Value& position, const Value& self_mask,
    const std::function<Value(const Value&)>& cross_attend) {
  KILN_CHECK(!training(), GraphError, "[nn] TransformerDecoderBlock ", path(),
             ": cached attention is for inference; build it in evaluation mode (eval())");
  NameScope scope(graph(), name());
  KVCache next;
  Value y = block_of(
      x,
      [&](const Value& v) {
        MultiHeadAttention::Cached step =
            self_attention.attend_cached(v, cache, position, self_mask);
        next = step.cache;
        return step.output;
      },
      cross_attend);
  return {y, next};
}

Value TransformerDecoderBlock::forward(const Value&) {
  throw GraphError(str("[nn] TransformerDecoderBlock ", path(),
                       ": a decoder attends to a memory; call decode(x, memory)"));
}

Value TransformerDecoderBlock::block_of(const Value& x,
                                        const std::function<Value(const Value&)>& self_attend,
                                        const std::function<Value(const Value&)>& cross_attend) {
  auto self_part = [&](const Value& v) { return self_attention_output_dropout(self_attend(v)); };
  auto cross_part = [&](const Value& v) { return cross_attention_output_dropout(cross_attend(v)); };
  auto ffn = [&](const Value& v) {
    return ffn_output_dropout(feed_forward(ffn_in, activation_, activation_dropout, ffn_out, v));
  };
  if (norm_first_) {
    Value h = x + self_part(norm1(x));
    h = h + cross_part(norm2(h));
    return h + ffn(norm3(h));
  }
  Value h = norm1(x + self_part(x));
  h = norm2(h + cross_part(h));
  return norm3(h + ffn(h));
}
}  // namespace kiln::nn
