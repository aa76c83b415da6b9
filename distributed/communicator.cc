#include "kiln/distributed/communicator.h"

#include <algorithm>
#include <array>

#include "kiln/framework/error.h"

namespace kiln::distributed {

namespace {

enum class Call : int64_t { all_reduce, broadcast, all_gather, reduce_scatter, barrier };

// What a rank says it is about to call: {call, dtype (0: none), elements, reduction or root}.
using Fingerprint = std::array<int64_t, 4>;

std::string describe(const Fingerprint& f) {
  static const char* const calls[] = {"all_reduce", "broadcast", "all_gather", "reduce_scatter",
                                      "barrier"};
  if (f[0] < 0 || f[0] > 4) return str("an unknown collective (", f[0], ")");
  const auto call = static_cast<Call>(f[0]);
  if (call == Call::barrier) return "barrier";
  std::string argument;
  if (call == Call::all_reduce || call == Call::reduce_scatter)
    argument = f[3] >= 0 && f[3] <= 3 ? reduce_op_name(static_cast<ReduceOp>(f[3])) : "?";
  else if (call == Call::broadcast)
    argument = str("root ", f[3]);
  const std::string dtype = f[1] >= 1 && f[1] <= 8
                                ? std::string(dtype_name(static_cast<DType>(f[1])))
                                : str("dtype ", f[1]);
  return str(calls[f[0]], argument.empty() ? "" : str(" (", argument, ")"), " of ", f[2], " ",
             dtype, " elements");
}

class CheckedCommunicator final : public Communicator {
 public:
  explicit CheckedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int64_t rank() const override { return inner_->rank(); }
  int64_t world_size() const override { return inner_->world_size(); }
  void all_reduce(Tensor& tensor, ReduceOp op) override {
    agree(Call::all_reduce, tensor, static_cast<int64_t>(op));
    inner_->all_reduce(tensor, op);
  }
  void broadcast(Tensor& tensor, int64_t root) override {
    agree(Call::broadcast, tensor, root);
    inner_->broadcast(tensor, root);
  }
  Tensor all_gather(const Tensor& tensor) override {
    agree(Call::all_gather, tensor, 0);
    return inner_->all_gather(tensor);
  }
  Tensor reduce_scatter(const Tensor& tensor, ReduceOp op) override {
    agree(Call::reduce_scatter, tensor, static_cast<int64_t>(op));
    return inner_->reduce_scatter(tensor, op);
  }
  void barrier() override {
    agree(Call::barrier, Tensor(), 0);
    inner_->barrier();
  }

 private:
  // The fixed-size exchange cannot itself mismatch; after it every rank knows every call and
  // all of them throw alike, before the collective that would not fit.
  void agree(Call call, const Tensor& tensor, int64_t argument) {
    ++count_;
    if (world_size() == 1) return;
    const Fingerprint mine = {static_cast<int64_t>(call),
                              tensor.defined() ? static_cast<int64_t>(tensor.dtype()) : 0,
                              tensor.defined() ? tensor.numel() : 0, argument};
    const Tensor all = inner_->all_gather(
        Tensor::from_vector<int64_t>(std::vector<int64_t>(mine.begin(), mine.end()), {4}));
    const int64_t* calls = all.data<int64_t>();
    for (int64_t r = 0; r < world_size(); ++r) {
      Fingerprint theirs;
      std::copy(calls + 4 * r, calls + 4 * r + 4, theirs.begin());
      KILN_CHECK(theirs == mine, DistributedError, "[collectives] rank ", rank(), " of ",
                 world_size(), ": collective #", count_, " differs across the ranks: rank ", rank(),
                 " calls ", describe(mine), ", rank ", r, " calls ", describe(theirs),
                 " (their programs or graphs differ)");
    }
  }

  std::unique_ptr<Communicator> inner_;
  int64_t count_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> check_collectives(std::unique_ptr<Communicator> inner) {
  return std::make_unique<CheckedCommunicator>(std::move(inner));
}

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
