#include "kiln/framework/variables.h"

namespace kiln {

namespace init {
Initializer zeros() {
  return {"zeros", {}, 0};
}
Initializer constant(double value) {
  return {"constant", {value}, 0};
}
Initializer uniform(double low, double high, int64_t seed) {
  return {"uniform", {low, high}, seed};
}
Initializer normal(double mean, double stddev, int64_t seed) {
  return {"normal", {mean, stddev}, seed};
}
Initializer normal_with_zero_row(double mean, double stddev, int64_t row, int64_t seed) {
  return {"normal_zero_row", {mean, stddev, static_cast<double>(row)}, seed};
}
Initializer truncated_normal(double mean, double stddev, int64_t seed) {
  return {"truncated_normal", {mean, stddev}, seed};
}
Initializer glorot_uniform(int64_t seed) {
  return {"glorot_uniform", {}, seed};
}
Initializer glorot_normal(int64_t seed) {
  return {"glorot_normal", {}, seed};
}
Initializer he_uniform(int64_t seed) {
  return {"he_uniform", {}, seed};
}
Initializer he_normal(int64_t seed) {
  return {"he_normal", {}, seed};
}
Initializer from_tensor(const Tensor& value) {
  KILN_CHECK(value.defined(), Error, "[init] from_tensor of an undefined tensor");
  return {.kind = "tensor", .value = value.to(Device::cpu()).clone()};
}
}  // namespace init

bool VariableStore::contains(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return values_.count(name) > 0;
}

Tensor VariableStore::get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = values_.find(name);
  KILN_CHECK(it != values_.end(), Error, "[variables] variable '", name, "' has no value");
  return it->second;
}

void VariableStore::set(const std::string& name, Tensor value) {
  std::lock_guard<std::mutex> lock(mutex_);
  values_[name] = std::move(value);
  ++generation_;
}

uint64_t VariableStore::generation() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return generation_;
}

std::vector<std::string> VariableStore::names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (const auto& [name, _] : values_) out.push_back(name);
  return out;
}

}  // namespace kiln
