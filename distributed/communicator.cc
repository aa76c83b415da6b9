#include "kiln/distributed/communicator.h"

#include "kiln/framework/error.h"

namespace kiln::distributed {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      return "max";
    case ReduceOp::min:
      return "min";
  }
  return "?";
}

#ifndef KILN_WITH_GLOO
std::unique_ptr<Communicator> make_gloo_communicator(Store&, int64_t, int64_t,
                                                     std::chrono::milliseconds,
                                                     const std::string&) {
  throw DistributedError(
      "[gloo] Kiln was built without Gloo (install libgloo-dev and rebuild; tools/kiln-dev "
      "does)");
}
#endif

}  // namespace kiln::distributed
