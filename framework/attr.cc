#include "kiln/framework/attr.h"

#include <sstream>

namespace kiln {

const char* attr_type_name(AttrType type) {
  switch (type) {
    case AttrType::integer:
      return "int";
    case AttrType::real:
      return "float";
    case AttrType::boolean:
      return "bool";
    case AttrType::string:
      return "string";
    case AttrType::integers:
      return "ints";
    case AttrType::reals:
      return "floats";
    case AttrType::dtype:
      return "dtype";
    case AttrType::shape:
      return "shape";
    case AttrType::tensor:
      return "tensor";
  }
  return "invalid";
}

std::string attr_to_string(const AttrValue& value) {
  std::ostringstream out;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          out << (v ? "true" : "false");
        } else if constexpr (std::is_same_v<T, std::string>) {
          out << '"' << v << '"';
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>> ||
                             std::is_same_v<T, std::vector<double>>) {
          out << '[';
          for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
          out << ']';
        } else if constexpr (std::is_same_v<T, Tensor>) {
          out << v.to_string(4);
        } else {
          out << v;
        }
      },
      value);
  return out.str();
}

}  // namespace kiln
