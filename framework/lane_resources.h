// Typed per-lane resources and the per-executor kernel cache: where a library's state lives
// (a cuBLASLt handle and workspace, a cuDNN handle, an NCCL communicator, a oneDNN engine and
// stream) and where kernels keep the choices they make once (an algorithm, a heuristic).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kiln/framework/device.h"
#include "kiln/framework/error.h"

namespace kiln {

/// What a stream carries. The schedule gives every step a stream of some kind; an executor
/// runs each stream on a lane of that kind (a CPU thread, a CUDA stream).
enum class StreamKind : uint8_t {
  compute,        ///< kernels
  communication,  ///< collectives (ops with the communication trait), overlapping compute
  copy,           ///< host <-> device transfers
};

/// The lane a resource is made for.
struct LaneInfo {
  Device device = Device::cpu();
  StreamKind kind = StreamKind::compute;
  int32_t index = 0;       ///< the lane's number in its executor
  void* stream = nullptr;  ///< its cudaStream_t on a GPU; nullptr on the CPU
};

/// Base of every per-lane resource. A resource type T derives from it and has a constructor
/// T(const LaneInfo&) that makes it (it may throw kiln::DeviceError); its destructor releases
/// it, before the lane's stream goes.
class LaneResource {
 public:
  virtual ~LaneResource() = default;
};

/// The resources of one lane, each made on first use by the kernel that needs it:
///   auto& blas = ctx.lane_resource<BlasLtHandle>();
/// One lane is used by one thread at a time (its worker, or the host thread queueing work on
/// its stream), so lookups take no lock.
class LaneResources {
 public:
  explicit LaneResources(LaneInfo info) : info_(info) {}
  ~LaneResources() {
    while (!resources_.empty()) resources_.pop_back();  // newest first
  }
  LaneResources(const LaneResources&) = delete;
  LaneResources& operator=(const LaneResources&) = delete;

  const LaneInfo& info() const { return info_; }
  /// The lane's T, made now if it has none yet.
  template <typename T>
  T& get() {
    static_assert(std::is_base_of_v<LaneResource, T>, "a lane resource derives from LaneResource");
    const std::type_index type(typeid(T));
    for (auto& [key, resource] : resources_)
      if (key == type) return static_cast<T&>(*resource);
    resources_.emplace_back(type, std::make_unique<T>(info_));
    return static_cast<T&>(*resources_.back().second);
  }
  size_t size() const { return resources_.size(); }

 private:
  LaneInfo info_;
  std::vector<std::pair<std::type_index, std::unique_ptr<LaneResource>>> resources_;
};

/// Choices a kernel makes once and reuses, per executor (so per device): a cuBLASLt heuristic,
/// a cuDNN or oneDNN algorithm. The key must hold everything that makes a choice valid (the
/// device, shapes, dtypes, attributes such as an epilogue): KernelContext::cache_key starts it.
/// Thread-safe; `make` runs outside the lock (two threads may both make one; the first kept).
class KernelCache {
 public:
  template <typename T, typename Make>
  T get(const std::string& key, Make&& make) {
    const std::string full = std::string(typeid(T).name()) + '|' + key;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto it = entries_.find(full); it != entries_.end())
        return *static_cast<const T*>(it->second.get());
    }
    T value = make();
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.emplace(full, std::make_shared<const T>(value));
    return value;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const void>> entries_;
};

}  // namespace kiln
