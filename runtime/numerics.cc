#include "kiln/runtime/numerics.h"

#include <cmath>

namespace kiln {

int64_t first_non_finite(const Tensor& t, NumericsCheck check) {
  if (check == NumericsCheck::off || !is_floating(t.dtype())) return -1;
  return dispatch_all(t.dtype(), [&](auto tag) -> int64_t {
    using T = decltype(tag);
    if constexpr (std::is_integral_v<T>) {
      return -1;
    } else {
      const T* p = static_cast<const T*>(t.raw_data());
      for (int64_t i = 0; i < t.numel(); ++i) {
        const double v = convert<double>(p[i]);
        if (std::isnan(v) || (check == NumericsCheck::nan_or_inf && std::isinf(v))) return i;
      }
      return -1;
    }
  });
}

void check_numerics(const Tensor& t, NumericsCheck check, const std::string& what) {
  const int64_t at = first_non_finite(t, check);
  if (at < 0) return;
  const double v = t.element(at);
  // The multi-index of element `at` (row-major).
  std::string index;
  int64_t rest = at;
  std::vector<int64_t> position(static_cast<size_t>(t.rank()));
  for (int64_t d = t.rank() - 1; d >= 0; --d) {
    position[d] = t.shape()[d] ? rest % t.shape()[d] : 0;
    rest = t.shape()[d] ? rest / t.shape()[d] : 0;
  }
  for (size_t d = 0; d < position.size(); ++d) index += str(d ? ", " : "", position[d]);
  throw NumericsError(str("[check_numerics] ", what, ": ", t.dtype(), t.shape(), " has ",
                          std::isnan(v) ? "NaN"
                          : v > 0       ? "+inf"
                                        : "-inf",
                          " at [", index, "] (element ", at,
                          "); everything the run computed before it was ",
                          check == NumericsCheck::nan ? "free of NaN" : "finite"));
}

}  // namespace kiln
