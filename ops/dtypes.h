// Dtype classes that op schemas and kernels share, and dispatch over them.
#pragma once

#include <span>
#include <vector>

#include "kiln/framework/dtype.h"

namespace kiln::ops {

/// Which dtypes an op accepts.
enum class DTypeClass {
  floating,  ///< f32 f64 f16 bf16
  signed_,   ///< floating + i32 i64
  numeric,   ///< signed_ + u8
  any,       ///< numeric + bool
};

/// The dtypes of a class, for inference checks.
std::span<const DType> dtypes_of(DTypeClass cls);
/// The dtypes of a class that CPU kernels handle (16-bit floats are GPU-only).
std::vector<DType> cpu_dtypes_of(DTypeClass cls);

/// Calls fn(T{}) for the dtypes CPU kernels handle: f32 f64 i32 i64 u8 bool.
template <typename Fn>
decltype(auto) dispatch_cpu(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32:
      return fn(float{});
    case DType::f64:
      return fn(double{});
    case DType::i32:
      return fn(int32_t{});
    case DType::i64:
      return fn(int64_t{});
    case DType::u8:
      return fn(uint8_t{});
    case DType::boolean:
      return fn(bool{});
    default:
      break;
  }
  throw Error(str("[kernel] no CPU kernel for ", dtype));
}

/// Calls fn(T{}) with T float or double: the dispatch of kernels registered for f32 and f64.
template <typename Fn>
decltype(auto) dispatch_float(DType dtype, Fn&& fn) {
  if (dtype == DType::f32) return fn(float{});
  if (dtype == DType::f64) return fn(double{});
  throw Error(str("[kernel] expected f32 or f64, got ", dtype));
}

}  // namespace kiln::ops
