// Shared by the GPU tests (CTest label `gpu`): each skips, saying why, where no GPU is usable.
#pragma once

#include <random>

#include "test_util.h"

#define KILN_REQUIRE_GPU()                                                     \
  do {                                                                         \
    if (::kiln::cuda_availability().device_count == 0)                         \
      GTEST_SKIP() << "no usable GPU: " << ::kiln::cuda_availability().reason; \
  } while (0)
