#include "kiln/distributed/distributed.h"

#include <cstring>

#include "kiln/framework/error.h"

namespace kiln::distributed {

namespace {

class LocalCommunicator final : public Communicator {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  void all_reduce(Tensor&, ReduceOp) override {}
  void broadcast(Tensor&, int64_t root) override {
    KILN_CHECK(root == 0, DistributedError, "[distributed] broadcast: root ", root,
               " is outside a world of 1");
  }
  Tensor all_gather(const Tensor& tensor) override {
    std::vector<int64_t> dims = {1};
    for (int64_t d : tensor.shape()) dims.push_back(d);
    return tensor.clone().reshaped(Shape(dims));
  }
  Tensor reduce_scatter(const Tensor& tensor, ReduceOp) override { return tensor.clone(); }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

Communicator& local_communicator() {
  static const std::unique_ptr<Communicator> local = make_local_communicator();
  return *local;
}

std::shared_ptr<Group> init(const InitOptions& options, const EnvironmentReader& read) {
  auto group = std::shared_ptr<Group>(new Group());
  group->env_ = read_environment(read);
  group->timeout_ = options.timeout;
  const std::optional<std::string> check = read("KILN_CHECK_COLLECTIVES");
  KILN_CHECK(!check || *check == "0" || *check == "1" || check->empty(), DistributedError,
             "[distributed] KILN_CHECK_COLLECTIVES is '", *check, "': 0 or 1");
  const bool check_all = options.check_collectives || (check && *check == "1");
  if (group->env_.world_size == 1) {
    group->communicator_ = make_local_communicator();
    set_default_group(group);
    return group;
  }
  group->rendezvous_ = rendezvous(group->env_, options.timeout);
  group->communicator_ = make_gloo_communicator(*group->rendezvous_.store, group->env_.rank,
                                                group->env_.world_size, options.timeout);
  if (check_all) group->communicator_ = check_collectives(std::move(group->communicator_));
  set_default_group(group);
  return group;
}

}  // namespace kiln::distributed
