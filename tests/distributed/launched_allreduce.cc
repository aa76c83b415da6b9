// A distributed program as a user writes one, for the launcher tests: distributed::init(),
// then collectives; prints one line per check and exits non-zero on a wrong value.
//   kiln-launch --nproc-per-node N launched_allreduce
// With --mismatch each rank builds a graph whose variable has another size, as ranks whose
// programs differ do: broadcast_variables then cannot fit, and KILN_CHECK_COLLECTIVES=1 makes
// that an error naming both calls on every rank.
#include <cstdio>
#include <cstring>

#include "kiln/kiln.h"

using namespace kiln;

int main(int argc, char** argv) {
  try {
    auto group = distributed::init({.timeout = std::chrono::seconds(60)});
    if (argc > 1 && std::strcmp(argv[1], "--mismatch") == 0) {
      Graph g;
      g.variable("w", {group->rank() == 0 ? 85 : 1034}, init::zeros());
      Session s(g);
      s.run({}, {}, {distributed::broadcast_variables(g)});
      std::printf("rank %lld: the mismatched broadcast ran\n",
                  static_cast<long long>(group->rank()));
      return 1;
    }
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
