// Element types, the 16-bit float storage types, and dispatch from a runtime DType to C++ types.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "kiln/framework/error.h"

#if defined(__CUDACC__)
#define KILN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KILN_HOST_DEVICE inline
#endif

namespace kiln {

/// The element type of a tensor. The numeric values are stable: they are written to graph files.
enum class DType : int32_t {
  f32 = 1,
  f64 = 2,
  f16 = 3,
  bf16 = 4,
  i32 = 5,
  i64 = 6,
  u8 = 7,
  boolean = 8
};

inline constexpr DType f32 = DType::f32;
inline constexpr DType f64 = DType::f64;
inline constexpr DType f16 = DType::f16;
inline constexpr DType bf16 = DType::bf16;
inline constexpr DType i32 = DType::i32;
inline constexpr DType i64 = DType::i64;
inline constexpr DType u8 = DType::u8;
inline constexpr DType boolean = DType::boolean;

/// Bytes per element.
size_t dtype_size(DType dtype);
/// Short name: "f32", "i64", "bool", ...
std::string_view dtype_name(DType dtype);
/// Inverse of dtype_name; throws kiln::Error naming the text for an unknown name.
DType dtype_from_name(std::string_view name);
/// True for a value that names one of the eight dtypes (used when reading files).
bool dtype_is_valid(int32_t raw);
/// f32, f64, f16, bf16.
bool is_floating(DType dtype);
/// i32, i64, u8.
bool is_integer(DType dtype);

std::ostream& operator<<(std::ostream& out, DType dtype);

/// IEEE 754 half precision, stored as bits; arithmetic goes through float.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  KILN_HOST_DEVICE explicit Half(float value) : bits(from_float(value)) {}
  KILN_HOST_DEVICE operator float() const { return to_float(bits); }

  // Round to nearest even; overflow goes to infinity, NaN stays NaN.
  KILN_HOST_DEVICE static uint16_t from_float(float value) {
    uint32_t x;
    std::memcpy(&x, &value, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
    if (abs < 0x38800000u) {  // result is subnormal (or zero) in half precision
      // value * 2^24 rounded to an integer is the subnormal's mantissa.
      float magnitude;
      std::memcpy(&magnitude, &abs, 4);
      float scaled = magnitude * 16777216.0f;
      uint32_t mantissa = static_cast<uint32_t>(scaled);
      float rest = scaled - static_cast<float>(mantissa);
      if (rest > 0.5f || (rest == 0.5f && (mantissa & 1u))) ++mantissa;
      return static_cast<uint16_t>(sign | mantissa);
    }
    // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  KILN_HOST_DEVICE static float to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
      bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent == 0) {
      // Subnormal or zero: value = mantissa * 2^-24.
      float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
      std::memcpy(&bits, &magnitude, 4);
      bits |= sign;
    } else {
      bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
  }
};

/// bfloat16: the top 16 bits of an f32, rounded to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  KILN_HOST_DEVICE explicit BFloat16(float value) : bits(from_float(value)) {}
  KILN_HOST_DEVICE operator float() const { return to_float(bits); }

  KILN_HOST_DEVICE static uint16_t from_float(float value) {
    uint32_t x;
    std::memcpy(&x, &value, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
  }
  KILN_HOST_DEVICE static float to_float(uint16_t b) {
    uint32_t x = static_cast<uint32_t>(b) << 16;
    float out;
    std::memcpy(&out, &x, 4);
    return out;
  }
};

/// The C++ type that stores one element of a DType.
template <DType D>
struct DTypeTraits;
template <>
struct DTypeTraits<DType::f32> {
  using type = float;
};
template <>
struct DTypeTraits<DType::f64> {
  using type = double;
};
template <>
struct DTypeTraits<DType::f16> {
  using type = Half;
};
template <>
struct DTypeTraits<DType::bf16> {
  using type = BFloat16;
};
template <>
struct DTypeTraits<DType::i32> {
  using type = int32_t;
};
template <>
struct DTypeTraits<DType::i64> {
  using type = int64_t;
};
template <>
struct DTypeTraits<DType::u8> {
  using type = uint8_t;
};
template <>
struct DTypeTraits<DType::boolean> {
  using type = bool;
};

/// The DType of a C++ element type.
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<Half>() {
  return DType::f16;
}
template <>
constexpr DType dtype_of<BFloat16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::u8;
}
template <>
constexpr DType dtype_of<bool>() {
  return DType::boolean;
}

/// Converts one element between any two element types (16-bit floats go through f32;
/// to bool is "not zero"). Float to integer is defined for every value, unlike a plain C++
/// cast: truncated toward zero, NaN gives 0, values beyond int64's range saturate to it, and
/// narrower integers take the low bits of that int64 (so -3.0 -> u8 is 253, as in PyTorch).
template <typename To, typename From>
KILN_HOST_DEVICE To convert(From value) {
  constexpr bool from_16 = std::is_same_v<From, Half> || std::is_same_v<From, BFloat16>;
  constexpr bool to_16 = std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>;
  if constexpr (std::is_same_v<To, From>) {
    return value;
  } else if constexpr (from_16) {
    return convert<To>(static_cast<float>(value));
  } else if constexpr (to_16) {
    return To(static_cast<float>(value));
  } else if constexpr (std::is_same_v<To, bool>) {
    return value != From(0);
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<From>) {
    if (value != value) return To(0);
    constexpr From two_to_63 = From(9223372036854775808.0);  // exact in f32 and f64
    const int64_t wide = value >= two_to_63   ? INT64_MAX
                         : value < -two_to_63 ? INT64_MIN
                                              : static_cast<int64_t>(value);
    return static_cast<To>(wide);  // modular for narrower types (C++20)
  } else {
    return static_cast<To>(value);
  }
}

/// Calls fn(T{}) with T the element type of `dtype`, for every dtype.
template <typename Fn>
decltype(auto) dispatch_all(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32:
      return fn(float{});
    case DType::f64:
      return fn(double{});
    case DType::f16:
      return fn(Half{});
    case DType::bf16:
      return fn(BFloat16{});
    case DType::i32:
      return fn(int32_t{});
    case DType::i64:
      return fn(int64_t{});
    case DType::u8:
      return fn(uint8_t{});
    case DType::boolean:
      return fn(bool{});
  }
  throw Error(str("[dtype] invalid dtype value ", static_cast<int>(dtype)));
}

}  // namespace kiln
