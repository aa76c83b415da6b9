// Module::torch_state_dict and from_torch_state_dict (ops/torch_state_dict.cc): PyTorch's names
// and layouts, the way back, and load_state_dict's strict checks. That PyTorch's own modules
// load these state_dicts (strict) and compute what Kiln's layers compute is torch_layer_parity's
// "ported" model.
#include <map>
#include <string>
#include <vector>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

// Every f32 variable of the session set to distinct values (i + 1) / 100.
void number_variables(Session& s, Graph& g) {
  for (const auto& [name, value] : s.variable_values()) {
    if (value.dtype() != f32) continue;
    std::vector<float> v(static_cast<size_t>(value.numel()));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i + 1) / 100;
    s.set_variable(g.value(name), Tensor::from_vector<float>(v, value.shape()));
  }
}

std::vector<std::string> keys(const std::map<std::string, Tensor>& m) {
  std::vector<std::string> out;
  for (const auto& [k, v] : m) out.push_back(k);
  return out;
}

TEST(TorchStateDict, NamesAndLayoutsArePyTorchsAndTheWayBackGivesEveryValue) {
  Graph g;
  nn::Sequential net(g, "net");
  net.add<nn::Linear>("0", 3, 2);
  net.add<nn::BatchNorm1d>("1", 2, std::nullopt);  // counts its batches, as PyTorch's
  nn::MultiHeadAttention attention(g, "attention", 4, 2, {});
  Session s(g);
  s.initialize_variables();
  number_variables(s, g);
  const std::map<std::string, Tensor> values = s.variable_values();

  const std::map<std::string, Tensor> net_dict = net.torch_state_dict(values);
  EXPECT_EQ(keys(net_dict),
            (std::vector<std::string>{"0.bias", "0.weight", "1.bias", "1.num_batches_tracked",
                                      "1.running_mean", "1.running_var", "1.weight"}));
  // Kiln's weight [in 3, out 2] holds 0.01 .. 0.06 row by row; PyTorch's is its transpose.
  EXPECT_EQ(net_dict.at("0.weight").shape(), (Shape{2, 3}));
  EXPECT_EQ(net_dict.at("0.weight").to_vector<float>(),
            (std::vector<float>{0.01f, 0.03f, 0.05f, 0.02f, 0.04f, 0.06f}));
  EXPECT_EQ(net_dict.at("1.num_batches_tracked").dtype(), i64);

  // torch.nn.MultiheadAttention's packing: in_proj_weight is query's, key's and value's [out,
  // in] weights stacked, [12, 4]; the output projection is out_proj.
  const std::map<std::string, Tensor> attention_dict = attention.torch_state_dict(values);
  EXPECT_EQ(keys(attention_dict), (std::vector<std::string>{"in_proj_bias", "in_proj_weight",
                                                            "out_proj.bias", "out_proj.weight"}));
  EXPECT_EQ(attention_dict.at("in_proj_weight").shape(), (Shape{12, 4}));
  EXPECT_EQ(attention_dict.at("in_proj_bias").shape(), (Shape{12}));
  // Row 4 is key's first output row: column 0 of its [in, out] weight, 0.01 0.05 0.09 0.13.
  const std::vector<float> packed = attention_dict.at("in_proj_weight").to_vector<float>();
  EXPECT_EQ(std::vector<float>(packed.begin() + 16, packed.begin() + 20),
            (std::vector<float>{0.01f, 0.05f, 0.09f, 0.13f}));

  // Back: every variable of each layer, bit for bit, under Kiln's names.
  auto expect_back = [&](const nn::Module& layer, const std::map<std::string, Tensor>& dict,
                         size_t variables) {
    const std::map<std::string, Tensor> back = layer.from_torch_state_dict(dict);
    EXPECT_EQ(back.size(), variables);
    for (const auto& [name, tensor] : back) {
      SCOPED_TRACE(name);
      const Tensor& kiln = values.at(name);
      EXPECT_EQ(tensor.shape(), kiln.shape());
      EXPECT_EQ(tensor.dtype(), kiln.dtype());
      EXPECT_EQ(tensor.to_vector<double>(), kiln.to_vector<double>());
    }
  };
  expect_back(net, net_dict, 7);
  expect_back(attention, attention_dict, 8);  // query, key, value and output: weight and bias
  s.set_variables(net.from_torch_state_dict(net_dict));
}

TEST(TorchStateDict, LoadingChecksAsPyTorchsStrictLoad) {
  Graph g;
  nn::Sequential net(g, "net");
  net.add<nn::Linear>("0", 3, 2);
  net.add<nn::BatchNorm1d>("1", 2);  // momentum 0.1: Kiln keeps no batch count
  Session s(g);
  std::map<std::string, Tensor> dict = net.torch_state_dict(s.variable_values());
  EXPECT_EQ(dict.count("1.num_batches_tracked"), 0u);
  // PyTorch's count is accepted (strict) and not read; f64 tensors are cast to f32.
  dict["1.num_batches_tracked"] = Tensor::scalar<int64_t>(7);
  dict["0.weight"] = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  const std::map<std::string, Tensor> loaded = net.from_torch_state_dict(dict);
  EXPECT_EQ(loaded.size(), 6u);
  EXPECT_EQ(loaded.at("net/0/weight").dtype(), f32);
  EXPECT_EQ(loaded.at("net/0/weight").to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));

  std::map<std::string, Tensor> partial = dict;
  partial.erase("0.bias");
  partial.erase("1.running_var");
  partial["fc.weight"] = Tensor::zeros(f32, {1});
  expect_error<FeedError>(
      [&] { net.from_torch_state_dict(partial); },
      {"[nn] net:", "missing keys: 0.bias, 1.running_var", "unexpected keys: fc.weight"});
  // Not strict: what is there loads, the rest keeps its values.
  EXPECT_EQ(keys(net.from_torch_state_dict(partial, false)),
            (std::vector<std::string>{"net/0/weight", "net/1/bias", "net/1/running_mean",
                                      "net/1/weight"}));
  std::map<std::string, Tensor> wrong = dict;
  wrong["0.weight"] = Tensor::zeros(f32, {3, 2});  // Kiln's layout, not PyTorch's
  expect_error<FeedError>([&] { net.from_torch_state_dict(wrong, false); },
                          {"PyTorch's 0.weight is [3, 2]; this layer's is [2, 3]"});
  // InstanceNorm2d with running statistics: PyTorch's count too.
  nn::InstanceNorm2d instance(g, "instance", 2, {.affine = true, .track_running_stats = true});
  Session with_instance(g);
  std::map<std::string, Tensor> instance_dict =
      instance.torch_state_dict(with_instance.variable_values());
  EXPECT_EQ(keys(instance_dict),
            (std::vector<std::string>{"bias", "running_mean", "running_var", "weight"}));
  instance_dict["num_batches_tracked"] = Tensor::scalar<int64_t>(3);
  EXPECT_EQ(instance.from_torch_state_dict(instance_dict).size(), 4u);
  std::map<std::string, Tensor> values = s.variable_values();
  values.erase("net/1/running_mean");
  expect_error<GraphError>([&] { net.torch_state_dict(values); },
                           {"no value for variable net/1/running_mean", "1.running_mean"});
}

TEST(TorchStateDict, KeysAndValuesOfAnotherWidthStayApart) {
  Graph g;
  nn::MultiHeadAttention cross(g, "cross", 8, 2, {.bias = false, .memory_dim = 6});
  nn::LSTM lstm(g, "lstm", 3, 4, {});
  Session s(g);
  const std::map<std::string, Tensor> values = s.variable_values();
  const std::map<std::string, Tensor> dict = cross.torch_state_dict(values);
  // kdim = vdim = 6: q_proj_weight [8, 8], k_proj_weight and v_proj_weight [8, 6]; no biases.
  EXPECT_EQ(keys(dict), (std::vector<std::string>{"k_proj_weight", "out_proj.weight",
                                                  "q_proj_weight", "v_proj_weight"}));
  EXPECT_EQ(dict.at("k_proj_weight").shape(), (Shape{8, 6}));
  // torch.nn.LSTM's weight_ih_l0 is [4 hidden, in], Kiln's transposed; biases as they are.
  const std::map<std::string, Tensor> lstm_dict = lstm.torch_state_dict(values);
  EXPECT_EQ(lstm_dict.at("weight_ih_l0").shape(), (Shape{16, 3}));
  EXPECT_EQ(lstm_dict.at("weight_hh_l0").shape(), (Shape{16, 4}));
  EXPECT_EQ(lstm_dict.at("bias_ih_l0").shape(), (Shape{16}));
}

}  // namespace
}  // namespace kiln
