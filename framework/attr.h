// Node attributes: the typed constants that parameterize an op (axes, shapes, dtypes, ...).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "kiln/framework/dtype.h"
#include "kiln/framework/shape.h"
#include "kiln/framework/tensor.h"

namespace kiln {

/// One attribute value. The alternatives are in AttrType order.
using AttrValue = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>,
                               std::vector<double>, DType, Shape, Tensor>;

/// The type of an attribute, as declared by an op's schema.
enum class AttrType { integer, real, boolean, string, integers, reals, dtype, shape, tensor };

/// Attributes of a node, by name.
using AttrMap = std::map<std::string, AttrValue>;

inline AttrType attr_type(const AttrValue& value) {
  return static_cast<AttrType>(value.index());
}
/// "int", "float", "bool", "string", "ints", "floats", "dtype", "shape", "tensor".
const char* attr_type_name(AttrType type);
/// A short human-readable rendering, for dumps and error messages.
std::string attr_to_string(const AttrValue& value);

/// The C++ type stored for each AttrType.
template <typename T>
constexpr AttrType attr_type_of();
template <>
constexpr AttrType attr_type_of<int64_t>() {
  return AttrType::integer;
}
template <>
constexpr AttrType attr_type_of<double>() {
  return AttrType::real;
}
template <>
constexpr AttrType attr_type_of<bool>() {
  return AttrType::boolean;
}
template <>
constexpr AttrType attr_type_of<std::string>() {
  return AttrType::string;
}
template <>
constexpr AttrType attr_type_of<std::vector<int64_t>>() {
  return AttrType::integers;
}
template <>
constexpr AttrType attr_type_of<std::vector<double>>() {
  return AttrType::reals;
}
template <>
constexpr AttrType attr_type_of<DType>() {
  return AttrType::dtype;
}
template <>
constexpr AttrType attr_type_of<Shape>() {
  return AttrType::shape;
}
template <>
constexpr AttrType attr_type_of<Tensor>() {
  return AttrType::tensor;
}

}  // namespace kiln
