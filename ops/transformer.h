// The attention layers: multi-head attention (grouped heads, rotary embedding, KV caches) and
// the transformer blocks built on it (kiln::nn, as ops/layers.h; ops/transformer.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kiln/ops/layers.h"
#include "kiln/ops/nn.h"

namespace kiln::nn {

/// The keys and values of the positions a generating model has seen, for one attention layer:
/// [B, max_length, heads, head_dim] each (the layout the attention reads in place). A graph
/// value: a decode step takes it as input and gives the next one as output, so the plan is
/// compiled once and serves every position (the host feeds the cache back, or zeros to start).
/// To keep it in the session instead (on a GPU it then never crosses to the host), make the
/// two values variables (MultiHeadAttention::cache_variables): a step then writes its entries
/// into them in place (assign_slice: nothing else of the cache is copied), whenever it runs,
/// and the next cache is the variables themselves (an assign(variable, next) target, as
/// before, costs nothing). Made with persistent = false, as cache_variables makes them, they
/// stay out of checkpoints.
struct KVCache {
  Value keys, values;
};

/// Multi-head self-attention over x [B, T, dim]: q, k, v projections (Linear dim -> dim),
/// `heads` heads of dim / heads (or of Options::head_dim), fused scaled dot-product attention,
/// an output projection.
///
/// With Options::kv_heads (a divisor of heads), grouped-query attention (multi-query with 1):
/// the k and v projections are dim -> kv_heads * dim / heads, each key-value head serving
/// heads / kv_heads consecutive query heads (read in place, never repeated; a KV cache holds
/// kv_heads heads). With Options::rotary, queries and keys get the rotary position embedding
/// (rotary_embedding) after their projections: at positions 0.. in attend(), at position.. in
/// attend_cached().
///
/// With Options::dropout > 0 (PyTorch's MultiheadAttention `dropout`), training mode drops
/// attention probabilities: softmax(scale q k^T, masked) becomes a graph value [B, heads, T, S],
/// inverted dropout acts on it, and the product with v follows (PyTorch's math path; the fused
/// op never forms the probabilities). Evaluation mode, and a rate of 0, keep the fused op.
class MultiHeadAttention : public Module {
 public:
  struct Options {
    bool causal = false;
    bool bias = true;
    int64_t seed = 0;
    double dropout = 0;    ///< the rate at which attention probabilities are dropped in training
    int64_t kv_heads = 0;  ///< key-value heads: 0 for `heads`, or a divisor of it
    std::optional<RotaryOptions> rotary{};  ///< rotary position embedding of queries and keys
    /// The width of the memory cross-attention reads keys and values from (PyTorch's kdim and
    /// vdim, equal): 0 for dim. Other than dim, the layer is for cross-attention only.
    int64_t memory_dim = 0;
    /// RMSNorm over each head's queries and keys, before rotary embedding (Qwen3's and Gemma
    /// 3's q_norm and k_norm): query_norm and key_norm, weights of the head depth.
    bool qk_norm = false;
    double qk_norm_eps = 1e-6;
    /// Biases of the q, k and v projections: `bias` unless given (Qwen2's are true with `bias`
    /// false: the output projection has none).
    std::optional<bool> qkv_bias{};
    /// Sliding-window attention: query i attends to keys j > i - window only (with causal, the
    /// `window` latest, itself included); 0 for none. In cached decoding the window follows
    /// the position (and only its entries are multiplied).
    int64_t window = 0;
    /// The scores' factor: 0 for 1 / sqrt(head depth) (Gemma 3's query_pre_attn_scalar s gives
    /// 1 / sqrt(s); T5's is 1).
    double scale = 0;
    /// Soft-capping of the scaled scores, softcap * tanh(score / softcap) (Gemma 2's
    /// attn_logit_softcapping, 50); 0 for none. AttentionOptions::softcap, in every method.
    double softcap = 0;
    /// Each head's depth: 0 for dim / heads. Otherwise the q projection is dim -> heads *
    /// head_dim, k and v memory_dim -> kv_heads * head_dim, the output heads * head_dim -> dim
    /// (Gemma 7B's 16 heads of 256 in a width of 3072, Qwen3's, T5's d_kv).
    int64_t head_dim = 0;
    /// With qk_norm: one RMSNorm over all of a projection's heads (OLMo 2's q_norm and k_norm,
    /// weights of heads * head_dim and kv_heads * head_dim), not one per head.
    bool qk_norm_across_heads = false;
  };
  MultiHeadAttention(Graph& graph, const std::string& name, int64_t dim, int64_t heads,
                     Options options);
  /// Self-attention with an optional mask broadcast to [B, heads, T, T]: bool (true: attend) or
  /// a bias of the scores (scaled_dot_product_attention's mask, either kind, in every method).
  Value attend(const Value& x, const Value& mask);
  /// Cross-attention: queries from x [B, T, dim], keys and values from `memory` [B, S,
  /// memory_dim] (an encoder's output), the mask (optional) broadcast to [B, heads, T, S].
  Value attend(const Value& x, const Value& memory, const Value& mask);
  /// The probabilities [B, heads, T, S] with which attend(x, memory, mask) weighs the values
  /// (PyTorch's need_weights with average_attn_weights=False; their mean over dim 1 is its
  /// default), as a graph value: the scores' softmax, masked (0 where hidden, rows hiding every
  /// key all 0), without dropout. Pass x as the memory for self-attention's.
  Value attention_weights(const Value& x, const Value& memory, const Value& mask = {});

  /// One step of incremental (cached) causal self-attention, for generation: x [B, n, dim]
  /// holds the tokens at positions [position, position + n) (`position` an integer scalar
  /// tensor, fed or computed at run time; B and n known or not, so one graph takes a prompt of
  /// any length). Their keys and values are written into `cache` at
  /// `position`, and query i attends to cache entries 0 .. position + i (and, with `mask`
  /// broadcast to [B, heads, n, max_length], only where it is true: a key-padding mask).
  /// Entries past position + n - 1 are never read, so a cache may start as zeros; nor are they
  /// multiplied (the attention's query offset is the position), so a step costs the entries
  /// written so far, not the cache's max_length. The same
  /// result as attend() with causal attention over the whole sequence, to rounding. A position
  /// with no room for n entries fails the run naming the cache write. Inference only: built in
  /// evaluation mode (eval()), or a GraphError.
  struct Cached {
    Value output;   ///< [B, n, dim]
    KVCache cache;  ///< the cache with this step's entries written
  };
  Cached attend_cached(const Value& x, const KVCache& cache, const Value& position,
                       const Value& mask = {});
  /// Placeholders for this layer's cache, [-1, max_length, kv_heads, head_dim] of `dtype`, named
  /// "<path>/cache_keys" and "<path>/cache_values".
  KVCache cache_placeholders(int64_t max_length, DType dtype = f32);
  /// A cache held in the session: variables [batch, max_length, kv_heads, head_dim] of
  /// `dtype`, zeros to start, named "<path>/cache/keys" and "<path>/cache/values" (once per
  /// layer), neither trainable nor persistent (no checkpoint holds them; a restore leaves them
  /// as they are). attend_cached writes a step's entries into them in place (only those
  /// entries).
  KVCache cache_variables(int64_t batch, int64_t max_length, DType dtype = f32);

  /// The keys and values of `memory` [B, S, dim] (an encoder's output) for cross-attention,
  /// projected (and, with rotary, turned for positions 0..S-1) once: [B, S, kv_heads, head_dim]
  /// each. An encoder-decoder that generates computes them once per input (a signature's
  /// outputs) and feeds them to every step, instead of projecting the memory again each token.
  KVCache project_memory(const Value& memory);
  /// Cross-attention of x [B, T, dim] to keys and values from project_memory (or any [B, S,
  /// kv_heads, head_dim] pair): attend(x, memory, mask) without the memory's projections.
  Value attend_projected(const Value& x, const KVCache& memory, const Value& mask = {});
  Linear &query, &key, &value, &output;
  Dropout& probability_dropout;
  RMSNorm* query_norm = nullptr;  ///< with Options::qk_norm, else null
  RMSNorm* key_norm = nullptr;    ///< with Options::qk_norm, else null

 protected:
  Value forward(const Value& x) override { return attention_to(x, projected(x), Value()); }
  std::vector<TorchTensor> torch_tensors() const override;
  std::string torch_child_name(const Module& child) const override;

 private:
  /// Checks that x or memory is [B, T, width] (`what` names it), B and T known or not; else a
  /// GraphError.
  void expect_rows(const Value& x, const char* what, int64_t width) const;
  /// x [B, T, dim] projected to queries [B, T, heads, depth] (rotated for positions 0..).
  Value queries(const Value& x);
  /// A projection [B, T, heads * depth] as [B, T, heads, depth], through `norm` (a qk_norm,
  /// when not null) per head or across them.
  Value normalized_heads(const Value& projected, int64_t heads, RMSNorm* norm);
  /// A query or key projection [B, T, width] split into heads, normalized (qk_norm) and
  /// rotated for positions start.. (0.. for an undefined start).
  Value query_heads(const Value& projected, const Value& start);
  Value key_heads(const Value& projected, const Value& start);
  /// Keys or values [B, S, kv_heads, depth] with each head repeated for its group: [B, S,
  /// heads, depth].
  Value heads_repeated(const Value& t) const;
  /// softmax(scale q k^T, masked) for q [B, T, H, D], k [B, S, kv_heads, D]: [B, H, T, S].
  Value probabilities(const Value& q, const Value& k, const Value& mask);
  /// project_memory's body, inside the layer's name scope.
  KVCache projected(const Value& memory);
  /// Attention of x to projected keys and values [B, S, kv_heads, head_dim], inside the name
  /// scope: the queries, the fused op (or the math path with dropout), the output projection.
  Value attention_to(const Value& x, const KVCache& memory, const Value& mask);
  /// Attention of q [B, T, H, D], k and v [B, S, H, D] with the probabilities a graph value
  /// and dropped: [B, T, H, Dv].
  Value attention_with_dropout(const Value& q, const Value& k, const Value& v, const Value& mask);
  /// q or k [B, T, heads, depth] rotated for positions start.. (unchanged without rotary).
  Value rotated(const Value& x, const Value& start) const;
  int64_t dim_, memory_dim_, heads_, kv_heads_;
  int64_t depth_;  ///< of each head: Options::head_dim, or dim / heads
  bool qk_norm_across_heads_;
  bool causal_;
  int64_t window_;
  double scale_;
  double softcap_;
  double dropout_;
  std::optional<RotaryOptions> rotary_;
};

/// T5's learned relative position bias: a table `weight` [buckets, heads] (transformers'
/// relative_attention_bias, an Embedding) read at relative_position_buckets, giving a bias of
/// the attention scores [1, heads, queries, keys] to pass as the attention layers' mask (T5
/// computes it in a stack's first layer and adds it in every layer; a decoder's is one-directional
/// and joins causal masking). Learned through the attention's bias gradient. Starts as normal(0,
/// 0.02) (T5 initializes it with std dim^-0.5; a loaded checkpoint replaces it).
class RelativePositionBias : public Module {
 public:
  struct Options {
    int64_t buckets = 32;
    int64_t max_distance = 128;
    bool bidirectional = true;  ///< an encoder's; false for a decoder's self-attention
    int64_t seed = 0;
  };
  RelativePositionBias(Graph& graph, const std::string& name, int64_t heads, Options options);
  /// The bias of `queries` queries against `keys` keys (query i at key position i).
  Value bias(int64_t queries, int64_t keys);
  /// The bias of a cached step (MultiHeadAttention::attend_cached's mask): `queries` queries at
  /// positions position, position + 1, ... (`position` an integer scalar tensor) against a cache
  /// of `keys` entries, [1, heads, queries, keys]. The buckets of every distance a cache of that
  /// size can hold are a table built with the graph, gathered at run time.
  Value bias_at(const Value& position, int64_t queries, int64_t keys);
  /// bias_at for the step whose queries are x's rows, x [B, n, ...] with n known or not (one
  /// step graph for a prompt of any length and then each token): [1, heads, n, keys].
  Value bias_at(const Value& position, const Value& x, int64_t keys);
  Value weight;

 protected:
  /// The bias for self-attention over x [B, T, ...]: bias(T, T); with T unknown (-1), the
  /// bias of the length each run feeds (one graph for every length).
  Value forward(const Value& x) override;

 private:
  /// bias()'s body, inside the layer's name scope.
  Value table_read(int64_t queries, int64_t keys);
  /// bias_at's body: queries at position + `offsets` (i64 [n, 1]) against `keys` keys.
  Value step_bias(const Value& position, const Value& offsets, int64_t keys);
  Options options_;
};

/// A transformer block. Pre-norm (GPT-2's, the default): x + dropout(attn(norm1(x))), then
/// h + dropout(ffn(norm2(h))). Post-norm (norm_first false: PyTorch's TransformerEncoderLayer
/// default): norm1(x + dropout(attn(x))), then norm2(h + dropout(ffn(h))). ffn = Linear(dim,
/// ffn_dim), the activation, dropout at activation_dropout, Linear(ffn_dim, dim); attn drops
/// its probabilities at attention_dropout. PyTorch's TransformerEncoderLayer(dropout=p) is all
/// three rates p; GPT-2's block is dropout = attention_dropout = p, activation_dropout 0.
///
/// A LLaMA-style block: norm rms, activation swiglu, bias false, rotary, and kv_heads for
/// grouped-query attention. With swiglu, ffn_in is Linear(dim, 2 ffn_dim) and the FFN is
/// ffn_out(silu(gate) * up), gate and up the first and second halves of ffn_in's output (LLaMA's
/// w1 and w3 side by side). geglu is the same with GELU's tanh form of the gate (Gemma's, T5
/// v1.1's).
class TransformerBlock : public Module {
 public:
  enum class Activation { gelu, gelu_tanh, relu, swiglu, geglu };
  enum class Norm { layer, rms };  ///< LayerNorm, or RMSNorm (weight only)
  struct Options {
    int64_t ffn_dim = 0;   ///< 0: 4 dim
    double dropout = 0.1;  ///< on the attention's and the FFN's outputs, before each residual sum
    double attention_dropout = 0;   ///< on the attention probabilities (MultiHeadAttention's)
    double activation_dropout = 0;  ///< on the FFN's hidden activations
    bool causal = true;
    Activation activation = Activation::gelu;  ///< gelu_tanh: GELU's tanh approximation
    bool norm_first = true;
    double norm_eps = 1e-5;
    int64_t seed = 0;
    Norm norm = Norm::layer;
    bool bias = true;      ///< biases of the attention's and the FFN's Linear layers
    int64_t kv_heads = 0;  ///< the attention's key-value heads: 0 for `heads`, or a divisor
    std::optional<RotaryOptions> rotary{};  ///< rotary embedding in the (self-)attention
    bool qk_norm = false;  ///< the attention's queries and keys RMS-normalized per head (Qwen3)
    int64_t window = 0;    ///< the self-attention's sliding window (Mistral's, Gemma's local)
    /// The attention and the FFN side by side: x + attn(norm1(x)) + ffn(norm2(x)) (GPT-NeoX's
    /// use_parallel_residual; GPT-J's and Phi's share one norm: give both the same weights).
    /// Pre-norm only.
    bool parallel = false;
    std::optional<bool> qkv_bias{};  ///< the attention's q, k, v biases: `bias` unless given
    double attention_scale = 0;      ///< the attention's scale (MultiHeadAttention's `scale`)
    double attention_softcap = 0;    ///< its scores' soft cap (MultiHeadAttention's `softcap`)
    int64_t head_dim = 0;  ///< the attention's head depth (MultiHeadAttention's `head_dim`)
    /// Norms of each branch's output before its residual sum (Gemma 2 and 3's "sandwich"):
    /// h = x + attention_output_norm(attn(norm1(x))), h + ffn_output_norm(ffn(norm2(h))).
    /// Pre-norm, not parallel.
    bool post_norms = false;
    /// The norms before each branch. false (with post_norms): norms after each branch only,
    /// h = x + attention_output_norm(attn(x)), h + ffn_output_norm(ffn(h)) (OLMo 2's); norm1 and
    /// norm2 are then identities without variables.
    bool input_norms = true;
    bool qk_norm_across_heads = false;  ///< MultiHeadAttention's `qk_norm_across_heads`
  };
  TransformerBlock(Graph& graph, const std::string& name, int64_t dim, int64_t heads,
                   Options options);
  /// The block with its attention restricted by a mask broadcast to [B, heads, T, T] (bool, true:
  /// attend, e.g. a key-padding mask [B, 1, 1, T]; or a bias of the scores); calling the block is
  /// attend(x, {}).
  Value attend(const Value& x, const Value& mask);
  /// One step of cached generation through the block: x [B, n, dim] at positions [position,
  /// position + n), its attention MultiHeadAttention::attend_cached over `cache` (see there).
  /// Evaluation mode only.
  MultiHeadAttention::Cached attend_cached(const Value& x, const KVCache& cache,
                                           const Value& position, const Value& mask = {});
  Module &norm1, &norm2;  ///< LayerNorm or RMSNorm (Options::norm)
  /// With Options::post_norms (else null): the norms of the attention's and the FFN's outputs.
  Module* attention_output_norm = nullptr;
  Module* ffn_output_norm = nullptr;
  MultiHeadAttention& attention;
  Linear &ffn_in, &ffn_out;
  /// The dropouts before the residual sums, and the FFN's inner one.
  Dropout &attention_output_dropout, &ffn_output_dropout, &activation_dropout;

 protected:
  Value forward(const Value& x) override;
  std::string torch_child_name(const Module& child) const override;

 private:
  /// norm1 or norm2: LayerNorm or RMSNorm, or without Options::input_norms an identity.
  Module& input_norm(const std::string& name, int64_t dim, const Options& options);
  /// The block around `attend`, its attention sublayer.
  Value block_of(const Value& x, const std::function<Value(const Value&)>& attend);
  Activation activation_;
  bool norm_first_;
  bool parallel_;
};

/// A transformer decoder block (PyTorch's TransformerDecoderLayer): self-attention over x [B, T,
/// dim] (causal per Options::causal, and an optional mask), attention from x to `memory` [B, S,
/// dim] (an encoder's output; an optional mask), and the FFN, each in a residual. Post-norm
/// (norm_first false, PyTorch's default): h = norm1(x + sa(x)), h = norm2(h + ca(h, memory)),
/// norm3(h + ffn(h)). Pre-norm: h = x + sa(norm1(x)), h = h + ca(norm2(h), memory), h +
/// ffn(norm3(h)). Dropouts as TransformerBlock's: `dropout` on each of the three outputs,
/// attention_dropout inside both attentions, activation_dropout inside the FFN. norm, bias,
/// kv_heads and the swiglu FFN as TransformerBlock's; rotary applies to the self-attention only.
class TransformerDecoderBlock : public Module {
 public:
  using Options = TransformerBlock::Options;
  using Activation = TransformerBlock::Activation;
  using Norm = TransformerBlock::Norm;
  TransformerDecoderBlock(Graph& graph, const std::string& name, int64_t dim, int64_t heads,
                          Options options);
  /// The block on x and memory; self_mask (broadcast to [B, heads, T, T]) and memory_mask
  /// (to [B, heads, T, S], e.g. a key-padding mask [B, 1, 1, S]) are optional (true: attend).
  Value decode(const Value& x, const Value& memory, const Value& self_mask = {},
               const Value& memory_mask = {});
  /// One step of cached generation: x [B, n, dim] at positions [position, position + n), its
  /// self-attention MultiHeadAttention::attend_cached over `cache` (see there), its
  /// cross-attention to `memory` as decode()'s (the memory's keys and values are projected
  /// again every step: see the overload below). `self_mask` is the self-attention's
  /// attend_cached mask ([B, heads, n, max_length]: a bool mask or a bias, as T5's
  /// RelativePositionBias::bias_at). Evaluation mode only.
  MultiHeadAttention::Cached decode_cached(const Value& x, const Value& memory,
                                           const KVCache& cache, const Value& position,
                                           const Value& memory_mask = {},
                                           const Value& self_mask = {});
  /// The cross-attention's keys and values of `memory`, projected once
  /// (MultiHeadAttention::project_memory) for the decode_cached below.
  KVCache project_memory(const Value& memory);
  /// decode_cached with the memory's keys and values from project_memory: a step projects
  /// only its own tokens.
  MultiHeadAttention::Cached decode_cached(const Value& x, const KVCache& memory,
                                           const KVCache& cache, const Value& position,
                                           const Value& memory_mask = {},
                                           const Value& self_mask = {});
  Module &norm1, &norm2, &norm3;  ///< LayerNorm or RMSNorm (Options::norm)
  MultiHeadAttention &self_attention, &cross_attention;
  Linear &ffn_in, &ffn_out;
  Dropout &self_attention_output_dropout, &cross_attention_output_dropout, &ffn_output_dropout,
      &activation_dropout;

 protected:
  /// A decoder needs its memory: calling it as a one-input layer is an error naming it.
  Value forward(const Value& x) override;
  std::string torch_child_name(const Module& child) const override;

 private:
  /// The block around `self_attend` and `cross_attend`, its attention sublayers.
  Value block_of(const Value& x, const std::function<Value(const Value&)>& self_attend,
                 const std::function<Value(const Value&)>& cross_attend);
  /// decode_cached's body, its cross-attention `cross_attend`.
  MultiHeadAttention::Cached step_of(const Value& x, const KVCache& cache, const Value& position,
                                     const Value& self_mask,
                                     const std::function<Value(const Value&)>& cross_attend);
  Activation activation_;
  bool norm_first_;
};

}  // namespace kiln::nn
