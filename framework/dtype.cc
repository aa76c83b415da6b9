#include "kiln/framework/dtype.h"

#include <ostream>

namespace kiln {

size_t dtype_size(DType dtype) {
  return dispatch_all(dtype, [](auto t) { return sizeof(t); });
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
    case DType::boolean:
      return "bool";
  }
  return "invalid";
}

DType dtype_from_name(std::string_view name) {
  for (int32_t raw = 1; raw <= 8; ++raw) {
    if (dtype_name(static_cast<DType>(raw)) == name) return static_cast<DType>(raw);
  }
  throw Error(str("[dtype] unknown dtype '", name,
                  "' (expected one of f32, f64, f16, bf16, i32, i64, u8, bool)"));
}

bool dtype_is_valid(int32_t raw) {
  return raw >= 1 && raw <= 8;
}

bool is_floating(DType dtype) {
  return dtype == DType::f32 || dtype == DType::f64 || dtype == DType::f16 || dtype == DType::bf16;
}

bool is_integer(DType dtype) {
  return dtype == DType::i32 || dtype == DType::i64 || dtype == DType::u8;
}

std::ostream& operator<<(std::ostream& out, DType dtype) {
  return out << dtype_name(dtype);
}

namespace detail {
void assertion_failed(const char* expr, const char* file, int line) {
  throw Error(str("[internal] assertion failed: ", expr, " at ", file, ":", line));
}
}  // namespace detail

}  // namespace kiln
