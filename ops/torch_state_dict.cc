// PyTorch's state_dict for kiln::nn layers: which torch.nn module each layer stands for, under
// which names and in which layouts PyTorch keeps its tensors, and the conversion both ways.
// Every layer says it through Module::torch_tensors (the default: Kiln's names and layouts,
// which the convolutions, norms, embeddings and PReLU share with PyTorch); the layers whose
// layouts differ override it here, next to each other.
#include <cstring>
#include <set>

#include "kiln/framework/error.h"
#include "kiln/ops/layers.h"
#include "kiln/ops/recurrent.h"
#include "kiln/ops/transformer.h"

namespace kiln::nn {

namespace {

// t [r, c] as [c, r], in t's dtype (elements moved as bytes).
Tensor transposed(const Tensor& t) {
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  const size_t size = dtype_size(t.dtype());
  Tensor out = Tensor::empty(t.dtype(), {cols, rows});
  const auto* from = static_cast<const char*>(t.raw_data());
  auto* to = static_cast<char*>(out.raw_data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      std::memcpy(to + (c * rows + r) * size, from + (r * cols + c) * size, size);
  return out;
}

// The shape PyTorch's tensor has: the parts' (each transposed when `transposed`) stacked along
// dim 0. Parts that do not stack (a layer whose pieces differ) are a GraphError.
Shape torch_shape(const std::string& layer, const std::string& name,
                  const std::vector<Shape>& parts, bool transposed) {
  std::vector<int64_t> dims;
  for (const Shape& part : parts) {
    std::vector<int64_t> d(part.begin(), part.end());
    if (transposed) {
      KILN_CHECK(d.size() == 2, GraphError, "[nn] ", layer, ": ", name,
                 " is a transposed matrix, but a part of it is ", part);
      std::swap(d[0], d[1]);
    }
    if (dims.empty()) {
      dims = d;
      continue;
    }
    KILN_CHECK(!d.empty() && d.size() == dims.size() &&
                   std::equal(d.begin() + 1, d.end(), dims.begin() + 1),
               GraphError, "[nn] ", layer, ": the parts of ", name, " do not stack: ", Shape(dims),
               " and ", Shape(d));
    dims[0] += d[0];
  }
  return Shape(dims);
}

}  // namespace

std::vector<Module::TorchTensor> Module::torch_tensors() const {
  std::vector<TorchTensor> out;
  const std::string prefix = path_ + "/";
  for (const Value& v : variables_) {
    const std::string name = v.name();  // "<path>/<variable>", made in the layer's scope
    out.push_back({name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name, {v}});
  }
  for (const auto& child : children_) {
    const std::string name = torch_child_name(*child);
    for (TorchTensor t : child->torch_tensors()) {
      t.name = name + "." + t.name;
      out.push_back(std::move(t));
    }
  }
  return out;
}

std::map<std::string, Tensor> Module::torch_state_dict(
    const std::map<std::string, Tensor>& values) const {
  std::map<std::string, Tensor> out;
  for (const TorchTensor& t : torch_tensors()) {
    if (t.parts.empty()) continue;
    std::vector<Tensor> parts;
    std::vector<Shape> shapes;
    for (const Value& v : t.parts) {
      auto found = values.find(v.name());
      KILN_CHECK(found != values.end(), GraphError, "[nn] ", path_, ": no value for variable ",
                 v.name(), " (PyTorch's ", t.name, "); pass Session::variable_values()");
      Tensor part = found->second.to(Device::cpu());
      KILN_CHECK(part.shape() == v.shape() && part.dtype() == v.dtype(), GraphError, "[nn] ", path_,
                 ": the value for ", v.name(), " is ", part.dtype(), part.shape(),
                 ", the variable ", v.dtype(), v.shape());
      parts.push_back(t.transposed ? transposed(part) : part);
      shapes.push_back(v.shape());
    }
    // The parts stacked along dim 0: their bytes one after another.
    Tensor whole =
        Tensor::empty(parts[0].dtype(), torch_shape(path_, t.name, shapes, t.transposed));
    auto* to = static_cast<char*>(whole.raw_data());
    for (const Tensor& part : parts) {
      std::memcpy(to, part.raw_data(), part.nbytes());
      to += part.nbytes();
    }
    out.emplace(t.name, std::move(whole));
  }
  return out;
}

std::map<std::string, Tensor> Module::from_torch_state_dict(
    const std::map<std::string, Tensor>& state_dict, bool strict) const {
  std::map<std::string, Tensor> out;
  std::set<std::string> known, missing;
  for (const TorchTensor& t : torch_tensors()) {
    known.insert(t.name);
    auto found = state_dict.find(t.name);
    if (found == state_dict.end()) {
      if (!t.parts.empty()) missing.insert(t.name);
      continue;
    }
    if (t.parts.empty()) continue;
    std::vector<Shape> shapes;
    for (const Value& v : t.parts) shapes.push_back(v.shape());
    const Shape expected = torch_shape(path_, t.name, shapes, t.transposed);
    const Tensor whole = found->second.to(Device::cpu());
    KILN_CHECK(whole.shape() == expected, FeedError, "[nn] ", path_, ": PyTorch's ", t.name, " is ",
               whole.shape(), "; this layer's is ", expected);
    // Each part: its rows of the whole (dim 0 in PyTorch's layout), cast, then transposed back.
    const char* from = static_cast<const char*>(whole.raw_data());
    for (const Value& v : t.parts) {
      Shape torch_part = torch_shape(path_, t.name, {v.shape()}, t.transposed);
      Tensor part = Tensor::empty(whole.dtype(), torch_part);
      std::memcpy(part.raw_data(), from, part.nbytes());
      from += part.nbytes();
      part = part.cast(v.dtype());
      out.emplace(v.name(), t.transposed ? transposed(part) : part);
    }
  }
  if (strict) {
    std::string unexpected;
    for (const auto& [name, tensor] : state_dict)
      if (!known.count(name)) unexpected += (unexpected.empty() ? "" : ", ") + name;
    std::string absent;
    for (const std::string& name : missing) absent += (absent.empty() ? "" : ", ") + name;
    KILN_CHECK(unexpected.empty() && absent.empty(), FeedError, "[nn] ", path_,
               ": the state_dict does not fit the layer (strict)",
               absent.empty() ? "" : "; missing keys: ", absent,
               unexpected.empty() ? "" : "; unexpected keys: ", unexpected);
  }
  return out;
}

// ---- The layers whose PyTorch tensors differ from Kiln's variables.

// torch.nn.Linear keeps weight [out, in].
std::vector<Module::TorchTensor> Linear::torch_tensors() const {
  std::vector<TorchTensor> out = Module::torch_tensors();
  for (TorchTensor& t : out) t.transposed = t.name == "weight";
  return out;
}

// torch.nn.BatchNorm*d (and InstanceNorm*d with running statistics) always count their
// batches; a Kiln layer whose momentum is a number keeps no count, so PyTorch's is accepted and
// not read.
std::vector<Module::TorchTensor> BatchNorm::torch_tensors() const {
  std::vector<TorchTensor> out = Module::torch_tensors();
  if (running_mean.defined() && !num_batches_tracked.defined())
    out.push_back({"num_batches_tracked", {}});
  return out;
}

std::vector<Module::TorchTensor> InstanceNorm::torch_tensors() const {
  std::vector<TorchTensor> out = Module::torch_tensors();
  if (running_mean.defined()) out.push_back({"num_batches_tracked", {}});
  return out;
}

// torch.nn.LSTM, GRU and RNN keep weight_ih_l<k> [gates * hidden, in] (and weight_hh, weight_hr)
// under the names Kiln's variables have.
// The recurrent layers' and cells' tensors: every weight_* transposed ([in, G H] is PyTorch's
// [G H, in]), the biases as they are. (A template: TorchTensor is Module's protected type.)
namespace {
template <typename Tensors>
Tensors with_weights_transposed(Tensors tensors) {
  for (auto& t : tensors) t.transposed = t.name.rfind("weight_", 0) == 0;
  return tensors;
}
}  // namespace

std::vector<Module::TorchTensor> Recurrent::torch_tensors() const {
  return with_weights_transposed(Module::torch_tensors());
}

std::vector<Module::TorchTensor> RecurrentCellLayer::torch_tensors() const {
  return with_weights_transposed(Module::torch_tensors());
}

// torch.nn.MultiheadAttention packs the query, key and value projections: in_proj_weight
// [3 dim, dim] and in_proj_bias [3 dim]; with keys and values of another width (kdim, vdim) the
// weights stay apart as q_proj_weight, k_proj_weight and v_proj_weight, the bias still packed.
// The output projection is its Linear out_proj.
std::vector<Module::TorchTensor> MultiHeadAttention::torch_tensors() const {
  std::vector<TorchTensor> out;
  for (TorchTensor& t : Module::torch_tensors()) {
    const std::string child = t.name.substr(0, t.name.find('.'));
    if (child != "query" && child != "key" && child != "value") out.push_back(std::move(t));
  }
  const bool packed =
      query.weight.shape() == key.weight.shape() && query.weight.shape() == value.weight.shape();
  if (packed) {
    out.push_back({"in_proj_weight", {query.weight, key.weight, value.weight}, true});
  } else {
    out.push_back({"q_proj_weight", {query.weight}, true});
    out.push_back({"k_proj_weight", {key.weight}, true});
    out.push_back({"v_proj_weight", {value.weight}, true});
  }
  if (query.bias.defined() && key.bias.defined() && value.bias.defined())
    out.push_back({"in_proj_bias", {query.bias, key.bias, value.bias}});
  return out;
}

std::string MultiHeadAttention::torch_child_name(const Module& child) const {
  return &child == &output ? "out_proj" : child.name();
}

// torch.nn.TransformerEncoderLayer: self_attn, linear1, linear2, norm1, norm2.
std::string TransformerBlock::torch_child_name(const Module& child) const {
  if (&child == &attention) return "self_attn";
  if (&child == &ffn_in) return "linear1";
  if (&child == &ffn_out) return "linear2";
  return child.name();
}

// torch.nn.TransformerDecoderLayer: self_attn, multihead_attn, linear1, linear2, norm1..3.
std::string TransformerDecoderBlock::torch_child_name(const Module& child) const {
  if (&child == &self_attention) return "self_attn";
  if (&child == &cross_attention) return "multihead_attn";
  if (&child == &ffn_in) return "linear1";
  if (&child == &ffn_out) return "linear2";
  return child.name();
}

}  // namespace kiln::nn
