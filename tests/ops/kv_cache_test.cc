// Cached (incremental) attention for generation (nn::KVCache, attend_cached): a block decoded
// one token at a time, or a chunk and then tokens, gives what the whole causal block gives;
// one plan serves every position; and the errors a user can hit.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "kiln/runtime/checkpoint.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

constexpr int64_t kBatch = 2, kLength = 6, kDim = 8, kHeads = 2, kMaxLength = 8;
constexpr int64_t kAnyLength = -1;  // a step built for [?, ?, dim]

// Rows [begin, begin + n) of x [B, T, dim] as a tensor [B, n, dim].
Tensor rows(const Tensor& x, int64_t begin, int64_t n) {
  Tensor out = Tensor::empty(f32, {kBatch, n, kDim});
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t i = 0; i < n * kDim; ++i)
      out.data<float>()[b * n * kDim + i] = x.data<float>()[(b * kLength + begin) * kDim + i];
  return out;
}

// The block decoded through its cache (a chunk of `chunk` tokens at position 0, then one token
// a step; or one step of any length doing both) against the block over the whole sequence, both
// causal, for pre- and post-norm blocks, with and without a key-padding mask, and a LLaMA-style
// block (RMS norm, SwiGLU, no biases, rotary embedding of half of each head at the step's position,
// queries and keys RMS-normalized per head, a sliding window of 3, one key-value head cached for
// both query heads). The mask is bool or the equal float bias (0 or -inf). The cache starts as
// garbage: entries past the position are never read.
TEST(KVCache, DecodingStepByStepIsTheWholeCausalBlock) {
  for (bool llama : {false, true})
    for (bool norm_first : {true, false})
      for (int masked : {0, 1, 2})  // no mask, bool, a bias
        for (int64_t chunk : {int64_t{1}, int64_t{3}, kAnyLength}) {
          if (llama && !norm_first) continue;
          SCOPED_TRACE(str("llama ", llama, ", norm_first ", norm_first, ", masked ", masked,
                           ", chunk ", chunk));
          // kAnyLength: one step built for x [?, ?, dim] takes the prompt's 3 tokens, then one
          // token a step.
          const bool any_length = chunk == kAnyLength;
          if (any_length) chunk = 3;
          Graph g;
          nn::TransformerBlock::Options options{
              .ffn_dim = 16, .dropout = 0, .norm_first = norm_first};
          if (llama) {
            options.activation = nn::TransformerBlock::Activation::swiglu;
            options.norm = nn::TransformerBlock::Norm::rms;
            options.bias = false;
            options.kv_heads = 1;
            options.rotary = RotaryOptions{.base = 100, .dims = 2};
            options.qk_norm = true;
            options.window = 3;
          }
          const int64_t kv_heads = llama ? 1 : kHeads;
          nn::TransformerBlock block(g, "block", kDim, kHeads, options);
          block.eval();
          Value x = g.placeholder("x", f32, {kBatch, kLength, kDim});
          // Example 1 may not attend to position 1 (a padded prompt token).
          Tensor keep_full = Tensor::empty(boolean, {kBatch, 1, 1, kLength});
          Tensor keep_cache = Tensor::empty(boolean, {kBatch, 1, 1, kMaxLength});
          for (int64_t b = 0; b < kBatch; ++b) {
            for (int64_t j = 0; j < kLength; ++j)
              keep_full.data<bool>()[b * kLength + j] = !(masked && b == 1 && j == 1);
            for (int64_t j = 0; j < kMaxLength; ++j)
              keep_cache.data<bool>()[b * kMaxLength + j] = !(masked && b == 1 && j == 1);
          }
          // The bias hiding what the bool mask hides.
          auto as_mask = [&](const Tensor& keep) {
            if (masked != 2) return g.constant(keep);
            Tensor bias = Tensor::empty(f32, keep.shape());
            for (int64_t i = 0; i < keep.numel(); ++i)
              bias.data<float>()[i] = keep.data<bool>()[i] ? 0.0f : -INFINITY;
            return g.constant(bias);
          };
          Value whole = block.attend(x, as_mask(keep_full));

          nn::KVCache cache = block.attention.cache_placeholders(kMaxLength);
          Value position = g.placeholder("position", i64, {});
          Value keep = masked ? as_mask(keep_cache) : Value();
          Value first = any_length ? g.placeholder("first", f32, {-1, -1, kDim})
                                   : g.placeholder("first", f32, {kBatch, chunk, kDim});
          Value token = any_length ? first : g.placeholder("token", f32, {kBatch, 1, kDim});
          auto chunk_step = block.attend_cached(first, cache, position, keep);
          auto token_step =
              any_length ? chunk_step : block.attend_cached(token, cache, position, keep);

          Session s(g);
          const Tensor in = testing::random_tensor(f32, {kBatch, kLength, kDim}, -2, 2, 11);
          const Tensor want = s.run({{x, in}}, {whole})[0];
          const Shape cache_shape{kBatch, kMaxLength, kv_heads, kDim / kHeads};
          Tensor keys = testing::random_tensor(f32, cache_shape, -50, 50, 12);
          Tensor values = testing::random_tensor(f32, cache_shape, -50, 50, 13);
          std::vector<Tensor> got;  // [B, n, dim] per step
          for (int64_t at = 0; at < kLength;) {
            const bool is_chunk = at == 0;
            const int64_t n = is_chunk ? chunk : 1;
            const auto& step = is_chunk ? chunk_step : token_step;
            auto out = s.run({{is_chunk ? first : token, rows(in, at, n)},
                              {position, Tensor::scalar<int64_t>(at)},
                              {cache.keys, keys},
                              {cache.values, values}},
                             {step.output, step.cache.keys, step.cache.values});
            // The fed cache is the caller's: the write went to a buffer of the session's.
            EXPECT_FALSE(equal_bits(keys, out[1]));
            got.push_back(out[0]);
            keys = out[1];
            values = out[2];
            at += n;
          }
          int64_t at = 0;
          for (const Tensor& step : got) {
            const int64_t n = step.shape()[1];
            const Tensor expected = rows(want, at, n);
            for (int64_t i = 0; i < step.numel(); ++i)
              EXPECT_NEAR(step.data<float>()[i], expected.data<float>()[i], 2e-5)
                  << "position " << at + i / kDim % n;
            at += n;
          }
          // The whole block's plan, the chunk's and the token's: one each, whatever the position
          // (any_length: one step graph, compiled for each of its two shapes).
          EXPECT_EQ(s.num_compiled_plans(), 3u);
        }
}

// A decoder block (PyTorch's TransformerDecoderLayer: post-norm, cross-attention to a memory
// over its padding mask) decoded a token at a time is the block over the whole sequence; so is
// one whose steps read the memory's keys and values projected once (project_memory), fed to
// each step without the memory itself; and one with T5's relative position bias on its
// self-attention (RelativePositionBias::bias_at for a step, bias for the whole).
TEST(KVCache, ADecoderBlockDecodesStepByStepAsAWhole) {
  Graph g;
  nn::TransformerDecoderBlock block(g, "decoder", kDim, kHeads,
                                    {.ffn_dim = 16, .dropout = 0, .norm_first = false});
  block.eval();
  Value x = g.placeholder("x", f32, {kBatch, kLength, kDim});
  Value memory = g.placeholder("memory", f32, {kBatch, 5, kDim});
  Tensor keep = Tensor::empty(boolean, {kBatch, 1, 1, 5});
  for (int64_t i = 0; i < kBatch * 5; ++i) keep.data<bool>()[i] = i != 7;  // one padded
  Value memory_mask = g.constant(keep);
  Value whole = block.decode(x, memory, {}, memory_mask);
  nn::KVCache cache = block.self_attention.cache_placeholders(kMaxLength);
  Value position = g.placeholder("position", i64, {});
  Value token = g.placeholder("token", f32, {kBatch, 1, kDim});
  auto step = block.decode_cached(token, memory, cache, position, memory_mask);
  // T5's way: a learned relative position bias on the self-attention, the whole square's or a
  // step's rows of it (bias_at).
  nn::RelativePositionBias relative(g, "relative", kHeads,
                                    {.buckets = 8, .max_distance = 20, .bidirectional = false});
  Value whole_biased = block.decode(x, memory, relative.bias(kLength, kLength), memory_mask);
  auto biased_step = block.decode_cached(token, memory, cache, position, memory_mask,
                                         relative.bias_at(position, 1, kMaxLength));
  // The same step built for any number of tokens [?, ?, dim]: two, then one at a time.
  Value tokens = g.placeholder("tokens", f32, {-1, -1, kDim});
  auto any_step = block.decode_cached(tokens, memory, cache, position, memory_mask,
                                      relative.bias_at(position, tokens, kMaxLength));
  expect_error<GraphError>([&] { block.decode_cached(token, Value(), cache, position); },
                           {"[nn] decoder", "x and memory must be values"});
  const nn::KVCache memory_kv = block.project_memory(memory);
  const Shape projected_shape{kBatch, 5, kHeads, kDim / kHeads};
  const nn::KVCache fed_kv{g.placeholder("memory_keys", f32, projected_shape),
                           g.placeholder("memory_values", f32, projected_shape)};
  auto projected_step = block.decode_cached(token, fed_kv, cache, position, memory_mask);
  EXPECT_EQ(memory_kv.keys.shape(), projected_shape);
  expect_error<GraphError>(
      [&] {
        block.decode_cached(token,
                            nn::KVCache{fed_kv.keys, g.placeholder("short", f32, {kBatch, 5})},
                            cache, position);
      },
      {"[nn] MultiHeadAttention decoder/cross_attention", "projected keys and values must both be",
       "[2, 5]"});

  Session s(g);
  const Tensor in = testing::random_tensor(f32, {kBatch, kLength, kDim}, -2, 2, 14);
  const Tensor mem = testing::random_tensor(f32, {kBatch, 5, kDim}, -2, 2, 15);
  s.initialize_variables();
  s.set_variable(relative.weight, testing::random_tensor(f32, {8, kHeads}, -2, 2, 16));
  const std::vector<Tensor> wholes = s.run({{x, in}, {memory, mem}}, {whole, whole_biased});
  const std::vector<Tensor> projected = s.run({{memory, mem}}, {memory_kv.keys, memory_kv.values});
  const Shape cache_shape{kBatch, kMaxLength, kHeads, kDim / kHeads};
  for (int variant : {0, 1, 2, 3}) {
    const bool project_once = variant == 1, biased = variant >= 2, any_length = variant == 3;
    SCOPED_TRACE(project_once ? "memory projected once"
                 : any_length ? "a relative position bias, steps of any length"
                 : biased     ? "a relative position bias"
                              : "memory projected each step");
    Tensor keys = Tensor::zeros(f32, cache_shape), values = keys;
    for (int64_t at = 0, n = 1; at < kLength; at += n) {
      n = any_length && at == 0 ? 2 : 1;
      FeedList feeds{{any_length ? tokens : token, rows(in, at, n)},
                     {position, Tensor::scalar<int64_t>(at)},
                     {cache.keys, keys},
                     {cache.values, values}};
      if (project_once) {
        feeds.emplace_back(fed_kv.keys, projected[0]);
        feeds.emplace_back(fed_kv.values, projected[1]);
      } else {
        feeds.emplace_back(memory, mem);
      }
      const auto& run = project_once ? projected_step
                        : any_length ? any_step
                        : biased     ? biased_step
                                     : step;
      auto out = s.run(feeds, {run.output, run.cache.keys, run.cache.values});
      keys = out[1];
      values = out[2];
      const Tensor expected = rows(wholes[biased ? 1 : 0], at, n);
      ASSERT_EQ(out[0].shape(), expected.shape());
      for (int64_t i = 0; i < out[0].numel(); ++i)
        EXPECT_NEAR(out[0].data<float>()[i], expected.data<float>()[i], 2e-5) << "position " << at;
    }
  }
  block.train();
  expect_error<GraphError>([&] { block.decode_cached(token, memory, cache, position); },
                           {"evaluation mode"});
}

// The cache as session state instead (on a GPU it then never crosses to the host): variables
// read by the step and assigned its new cache as targets. The same bits as feeding it back.
TEST(KVCache, ACacheInVariablesGivesTheFedCachesResults) {
  Graph g;
  nn::TransformerBlock block(g, "block", kDim, kHeads, {.ffn_dim = 16, .dropout = 0});
  block.eval();
  Value token = g.placeholder("token", f32, {kBatch, 1, kDim});
  Value position = g.placeholder("position", i64, {});
  const Shape cache_shape{kBatch, kMaxLength, kHeads, kDim / kHeads};
  nn::KVCache fed = block.attention.cache_placeholders(kMaxLength);
  nn::KVCache held = block.attention.cache_variables(kBatch, kMaxLength);
  EXPECT_EQ(held.keys.name(), "block/attention/cache/keys");
  EXPECT_EQ(held.values.shape(), cache_shape);
  EXPECT_TRUE(g.variables(/*trainable_only=*/true).size() < g.variables().size());
  auto fed_step = block.attend_cached(token, fed, position);
  auto held_step = block.attend_cached(token, held, position);
  std::vector<Value> writes = {assign(held.keys, held_step.cache.keys),
                               assign(held.values, held_step.cache.values)};
  Session s(g);
  Tensor keys = Tensor::zeros(f32, cache_shape), values = keys;
  for (int64_t at = 0; at < kMaxLength; ++at) {
    const Tensor x =
        testing::random_tensor(f32, {kBatch, 1, kDim}, -1, 1, static_cast<uint32_t>(20 + at));
    auto out = s.run({{token, x},
                      {position, Tensor::scalar<int64_t>(at)},
                      {fed.keys, keys},
                      {fed.values, values}},
                     {fed_step.output, fed_step.cache.keys, fed_step.cache.values});
    keys = out[1];
    values = out[2];
    const Tensor held_out =
        s.run({{token, x}, {position, Tensor::scalar<int64_t>(at)}}, {held_step.output}, writes)[0];
    EXPECT_EQ(held_out.to_vector<float>(), out[0].to_vector<float>()) << "position " << at;
  }
  EXPECT_EQ(s.variable_value(held.keys).to_vector<float>(), keys.to_vector<float>());
  EXPECT_EQ(s.variable_value(held.values).to_vector<float>(), values.to_vector<float>());
  // The cache is not persistent: checkpoints and variable_values() leave it out, and a restore
  // keeps the session's cache (a file that holds it anyway, from before, is accepted).
  const std::map<std::string, Tensor> state = s.variable_values();
  EXPECT_FALSE(state.count("block/attention/cache/keys"));
  EXPECT_TRUE(state.count("block/attention/query/weight"));
  s.save_checkpoint(testing::tmp("kv_cache.ckpt"));
  const std::map<std::string, Tensor> saved = read_checkpoint(testing::tmp("kv_cache.ckpt"));
  EXPECT_EQ(saved.size(), state.size());
  EXPECT_FALSE(saved.count("block/attention/cache/values"));
  std::map<std::string, Tensor> with_cache = saved;
  with_cache["block/attention/cache/keys"] = Tensor::zeros(f32, cache_shape);
  write_checkpoint(with_cache, testing::tmp("kv_cache_old.ckpt"));
  for (const char* file : {"kv_cache.ckpt", "kv_cache_old.ckpt"}) {
    s.restore_checkpoint(testing::tmp(file));
    EXPECT_EQ(s.variable_value(held.keys).to_vector<float>(), keys.to_vector<float>()) << file;
  }
  // The held cache is written in place (assign_slice: the next cache is the variable), the fed
  // one into a new value.
  std::map<std::string, int> ops;
  for (int32_t id = 0; id < g.num_nodes(); ++id) ++ops[g.node(id).op_name()];
  EXPECT_EQ(ops["assign_slice"], 2);
  EXPECT_EQ(ops["dynamic_update_slice"], 2);
  EXPECT_EQ(held_step.cache.keys.shape(), cache_shape);
  // So a step writes it whenever it runs, without the assign targets too: a step at position 1
  // again writes that entry's new key.
  const Tensor x = testing::random_tensor(f32, {kBatch, 1, kDim}, -1, 1, 99);
  s.run({{token, x}, {position, Tensor::scalar<int64_t>(1)}}, {held_step.output});
  auto refed = s.run(
      {{token, x}, {position, Tensor::scalar<int64_t>(1)}, {fed.keys, keys}, {fed.values, values}},
      {fed_step.cache.keys});
  EXPECT_EQ(s.variable_value(held.keys).to_vector<float>(), refed[0].to_vector<float>());
  // A step past the end fails naming the write, and leaves the variables as they were.
  const Tensor before = s.variable_value(held.keys).clone();
  expect_error<Error>(
      [&] {
        s.run({{token, x}, {position, Tensor::scalar<int64_t>(kMaxLength)}}, {held_step.output});
      },
      {"assign_slice", "start " + std::to_string(kMaxLength), "out of range"});
  EXPECT_EQ(s.variable_value(held.keys).to_vector<float>(), before.to_vector<float>());
}

TEST(KVCache, ErrorsNameTheLayerAndTheWindow) {
  Graph g;
  nn::MultiHeadAttention attention(g, "attention", kDim, kHeads, {.causal = true});
  Value token = g.placeholder("token", f32, {1, 1, kDim});
  Value position = g.placeholder("position", i64, {});
  nn::KVCache cache = attention.cache_placeholders(4);
  EXPECT_EQ(cache.keys.name(), "attention/cache_keys");
  EXPECT_EQ(cache.values.shape(), Shape({kUnknownDim, 4, kHeads, kDim / kHeads}));
  expect_error<GraphError>([&] { attention.attend_cached(token, cache, position); },
                           {"[nn] MultiHeadAttention attention", "evaluation mode"});
  attention.eval();
  nn::KVCache wrong{g.placeholder("k", f32, {1, 4, 4, 2}), cache.values};
  expect_error<GraphError>([&] { attention.attend_cached(token, wrong, position); },
                           {"a cache must be", "[1, 4, 4, 2]"});
  expect_error<GraphError>(
      [&] {
        attention.attend_cached(token, {cache.keys, {}}, position);
      },
      {"keys and values must both be given"});
  Value five = g.placeholder("five", f32, {1, 5, kDim});
  expect_error<GraphError>([&] { attention.attend_cached(five, cache, position); },
                           {"max_length >= 5"});
  expect_error<GraphError>([&] { attention.cache_placeholders(0); }, {"max_length", "got 0"});
  expect_error<GraphError>([&] { attention.cache_variables(0, 4); },
                           {"[nn] MultiHeadAttention attention", "got 0 and 4"});
  attention.cache_variables(1, 4);
  expect_error<GraphError>([&] { attention.cache_variables(1, 4); },
                           {"attention/cache/keys", "already used"});
  // A step past the cache's end fails naming the write and the range.
  auto step = attention.attend_cached(token, cache, position);
  Session s(g);
  const Tensor zeros = Tensor::zeros(f32, {1, 4, kHeads, kDim / kHeads});
  expect_error(
      [&] {
        s.run({{token, Tensor::zeros(f32, {1, 1, kDim})},
               {position, Tensor::scalar<int64_t>(4)},
               {cache.keys, zeros},
               {cache.values, zeros}},
              {step.output});
      },
      {"[dynamic_update_slice]", "attention/", "start 4 is out of range", "[0, 3]"});
}

}  // namespace
}  // namespace kiln
