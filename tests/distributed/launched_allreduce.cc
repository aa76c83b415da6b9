// A distributed program as a user writes one, for the launcher tests: distributed::init(),
// then collectives; prints one line per check and exits non-zero on a wrong value.
//   kiln-launch --nproc-per-node N launched_allreduce
#include <cstdio>

#include "kiln/distributed/distributed.h"

using namespace kiln;

int main() {
  try {
    auto group = distributed::init({.timeout = std::chrono::seconds(60)});
    const int64_t rank = group->rank(), world = group->world_size();
    Tensor t = Tensor::full(f32, {1000}, static_cast<double>(rank + 1));
    group->communicator().all_reduce(t, distributed::ReduceOp::sum);
    const double want = static_cast<double>(world * (world + 1) / 2);
    std::printf("rank %lld of %lld: all_reduce %g (want %g)\n", static_cast<long long>(rank),
                static_cast<long long>(world), t.element(999), want);
    group->communicator().barrier();
    return t.element(0) == want && t.element(999) == want ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
