#include "kiln/ops/dtypes.h"

namespace kiln::ops {

std::span<const DType> dtypes_of(DTypeClass cls) {
  // One array in class order: each class is a prefix of the next.
  static constexpr DType kOrdered[] = {f32, f64, f16, bf16, i32, i64, u8, boolean};
  switch (cls) {
    case DTypeClass::floating:
      return {kOrdered, 4};
    case DTypeClass::signed_:
      return {kOrdered, 6};
    case DTypeClass::numeric:
      return {kOrdered, 7};
    case DTypeClass::any:
      break;
  }
  return {kOrdered, 8};
}

std::vector<DType> cpu_dtypes_of(DTypeClass cls) {
  std::vector<DType> out;
  for (DType d : dtypes_of(cls))
    if (d != f16 && d != bf16) out.push_back(d);
  return out;
}

}  // namespace kiln::ops
