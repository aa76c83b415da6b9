// The input range each unary op is tested on (inside its domain, where it is smooth enough for
// comparisons), shared by the PyTorch parity cases and the GPU op table.
#pragma once

#include <vector>

namespace kiln::testing {

struct UnaryRange {
  const char* op;
  double low, high;
};

inline const std::vector<UnaryRange>& unary_ranges() {
  static const std::vector<UnaryRange> ranges = {
      {"neg", -2, 2},  {"abs", -2, 2},   {"square", -2, 2}, {"relu", -2, 2}, {"exp", -2, 2},
      {"log", 0.2, 3}, {"sqrt", 0.2, 3}, {"rsqrt", 0.2, 3}, {"tanh", -2, 2}, {"sigmoid", -4, 4},
      {"gelu", -4, 4}, {"sin", -3, 3},   {"cos", -3, 3},    {"sign", -2, 2}};
  return ranges;
}

}  // namespace kiln::testing
