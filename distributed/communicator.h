// Communicators: the collectives every rank of a job calls together. Gloo runs them over TCP
// for host tensors (this file); NCCL for CUDA tensors comes with the GPU data-parallel path.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/distributed/store.h"
#include "kiln/framework/tensor.h"

namespace kiln::distributed {

/// How all_reduce and reduce_scatter combine the ranks' values. avg is sum / world size
/// (floating dtypes only). For bool: sum and max are "or", min is "and".
enum class ReduceOp { sum, avg, max, min };
const char* reduce_op_name(ReduceOp op);

/// One rank's end of a group of world_size processes. Every rank calls the same collectives in
/// the same order with tensors of the same dtype and shape (checked where it costs nothing:
/// all_gather and reduce_scatter check sizes). Each call waits at most the communicator's
/// timeout; a peer that dies or hangs becomes a kiln::DistributedError naming this rank, the
/// collective and what the transport said, never a hang.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  /// `tensor` (a host tensor) becomes the reduction of every rank's `tensor`, in place.
  virtual void all_reduce(Tensor& tensor, ReduceOp op) = 0;
  /// `tensor` becomes rank `root`'s, in place.
  virtual void broadcast(Tensor& tensor, int64_t root) = 0;
  /// Every rank's `tensor`, concatenated along a new leading axis: [world_size, ...shape].
  virtual Tensor all_gather(const Tensor& tensor) = 0;
  /// The reduction of every rank's `tensor` (its leading dim a multiple of world_size),
  /// split along dim 0: this rank's 1/world_size part.
  virtual Tensor reduce_scatter(const Tensor& tensor, ReduceOp op) = 0;
  /// Returns once every rank has called it.
  virtual void barrier() = 0;
};

/// A Gloo communicator over TCP, meeting its peers through `store` (keys under `prefix`).
/// Throws kiln::DistributedError when Kiln was built without Gloo, or when the peers do not
/// all connect within `timeout` (naming this rank).
std::unique_ptr<Communicator> make_gloo_communicator(Store& store, int64_t rank, int64_t world_size,
                                                     std::chrono::milliseconds timeout,
                                                     const std::string& prefix = "gloo");

/// `inner`, checking before each collective that every rank calls the same one (as PyTorch's
/// TORCH_DISTRIBUTED_DEBUG=DETAIL): the ranks first all-gather what each is about to call (the
/// collective, dtype, element count and reduction or root, a fixed 32 bytes) and on any
/// difference every rank throws kiln::DistributedError naming the collective's number, both
/// ranks and both calls. Unchecked, ranks whose programs or graphs differ meet a transport
/// error, a timeout or (Gloo, on differing sizes) an abort. Costs one small all-gather each.
std::unique_ptr<Communicator> check_collectives(std::unique_ptr<Communicator> inner);

}  // namespace kiln::distributed
