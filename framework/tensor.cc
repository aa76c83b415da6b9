#include "kiln/framework/tensor.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <sstream>
#include <vector>

#include "kiln/framework/cuda/device_memory.h"

namespace kiln {

namespace {
std::atomic<int64_t> allocations{0};

// Large buffers are kept after use and handed out again: a fresh large block comes from mmap
// and costs a page fault per 4 KiB on first touch, which for a 64 MiB result is as slow as
// computing it. A request takes the smallest cached block that holds it without wasting more
// than an eighth; the cache holds at most kCacheLimit bytes, and when a freed block does not
// fit, the oldest blocks are released to make room (blocks of sizes no longer asked for, as
// after a change of batch size, do not stay resident).
constexpr size_t kCachedMin = size_t{1} << 20;
constexpr size_t kCacheLimit = size_t{256} << 20;

struct CachedBlock {
  size_t bytes;
  void* data;
};

struct BlockCache {
  std::mutex mutex;
  std::list<CachedBlock> blocks;  // oldest first
  size_t cached = 0;
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive statics
  return *cache;
}

// Allocation size: a multiple of 64 (aligned_alloc's rule), and of 64 KiB for cached blocks so
// that nearby sizes share them.
size_t rounded_size(size_t nbytes) {
  size_t rounded = std::max<size_t>((nbytes + 63) / 64 * 64, 64);
  if (rounded >= kCachedMin) rounded = (rounded + 65535) / 65536 * 65536;
  return rounded;
}

// A block of at least `nbytes`; its real size goes to *capacity.
void* allocate_host(size_t nbytes, size_t* capacity) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  const size_t rounded = rounded_size(nbytes);
  *capacity = rounded;
  if (rounded >= kCachedMin) {
    BlockCache& cache = block_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto best = cache.blocks.end();
    for (auto it = cache.blocks.begin(); it != cache.blocks.end(); ++it)
      if (it->bytes >= rounded && it->bytes <= rounded + rounded / 8 &&
          (best == cache.blocks.end() || it->bytes < best->bytes))
        best = it;
    if (best != cache.blocks.end()) {
      void* p = best->data;
      *capacity = best->bytes;
      cache.cached -= best->bytes;
      cache.blocks.erase(best);
      return p;
    }
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw Error(str("[tensor] cannot allocate ", nbytes, " bytes of host memory"));
  return p;
}

void free_host(void* p, size_t capacity) {
  if (capacity >= kCachedMin && capacity <= kCacheLimit) {
    std::vector<void*> released;
    {
      BlockCache& cache = block_cache();
      std::lock_guard<std::mutex> lock(cache.mutex);
      while (cache.cached + capacity > kCacheLimit) {
        released.push_back(cache.blocks.front().data);
        cache.cached -= cache.blocks.front().bytes;
        cache.blocks.pop_front();
      }
      cache.blocks.push_back({capacity, p});
      cache.cached += capacity;
    }
    for (void* old : released) std::free(old);
    return;
  }
  std::free(p);
}
}  // namespace

HostStorage::HostStorage(size_t nbytes) : Storage(nullptr, nbytes, Device::cpu()) {
  set_data(allocate_host(nbytes, &capacity_));
}

int64_t host_allocation_count() {
  return allocations.load(std::memory_order_relaxed);
}

HostStorage::~HostStorage() {
  free_host(data(), capacity_);
}

namespace {

// Memory a caller lent to a tensor (Tensor::from_blob); `release` runs when the last tensor
// sharing it goes.
class BorrowedStorage final : public Storage {
 public:
  BorrowedStorage(void* data, size_t nbytes, std::function<void(void*)> release)
      : Storage(data, nbytes, Device::cpu()), release_(std::move(release)) {}
  ~BorrowedStorage() override {
    if (release_) release_(data());
  }

 private:
  std::function<void(void*)> release_;
};

}  // namespace

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype,
                         std::function<void(void*)> deleter) {
  KILN_CHECK(shape.is_known(), Error, "[tensor] from_blob with shape ", shape,
             ": every dim must be known");
  const size_t element = dtype_size(dtype);
  KILN_CHECK(data != nullptr || shape.numel() == 0, Error,
             "[tensor] from_blob of a null pointer for ", dtype, shape);
  KILN_CHECK(reinterpret_cast<uintptr_t>(data) % element == 0, Error, "[tensor] from_blob: ", data,
             " is not aligned to the ", element, "-byte elements of ", dtype);
  const size_t nbytes = static_cast<size_t>(shape.numel()) * element;
  return Tensor(dtype, shape, std::make_shared<BorrowedStorage>(data, nbytes, std::move(deleter)));
}

Tensor::Tensor(DType dtype, Shape shape, std::shared_ptr<Storage> storage, size_t offset)
    : dtype_(dtype),
      shape_(std::move(shape)),
      numel_(shape_.numel()),
      storage_(std::move(storage)),
      offset_(offset) {
  // Always checked: a tensor that claims more bytes than its storage holds would let a kernel
  // read or write past the buffer.
  KILN_CHECK(storage_ == nullptr || (offset_ <= storage_->nbytes() &&
                                     static_cast<uint64_t>(numel_) <=
                                         (storage_->nbytes() - offset_) / dtype_size(dtype_)),
             Error, "[tensor] ", dtype_, shape_, " needs ", numel_, " elements of ",
             dtype_size(dtype_), " bytes from byte offset ", offset_, "; its storage holds ",
             storage_ ? storage_->nbytes() : 0, " bytes");
}

Tensor Tensor::empty(DType dtype, const Shape& shape) {
  KILN_CHECK(shape.is_known(), Error, "[tensor] cannot allocate a tensor of unknown shape ", shape);
  int64_t n = shape.numel();
  size_t size = dtype_size(dtype);
  KILN_CHECK(static_cast<uint64_t>(n) <= (uint64_t{1} << 56) / size, Error, "[tensor] ", dtype,
             shape, " is too large to allocate");
  return Tensor(dtype, shape, std::make_shared<HostStorage>(static_cast<size_t>(n) * size));
}

Tensor Tensor::full(DType dtype, const Shape& shape, double value) {
  Tensor t = empty(dtype, shape);
  dispatch_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    T v = convert<T>(value);
    T* out = static_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < t.numel(); ++i) out[i] = v;
  });
  return t;
}

Device Tensor::device() const {
  return storage_ ? storage_->device() : Device::cpu();
}

void* Tensor::raw_data() const {
  KILN_CHECK(defined(), Error, "[tensor] data of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

double Tensor::element(int64_t i) const {
  KILN_CHECK(i >= 0 && i < numel_, Error, "[tensor] element ", i, " of a tensor with ", numel_,
             " elements");
  if (device().is_cuda()) return to(Device::cpu()).element(i);
  return dispatch_all(dtype_, [&](auto tag) -> double {
    using T = decltype(tag);
    return convert<double>(static_cast<const T*>(raw_data())[i]);
  });
}

Tensor Tensor::clone() const {
  if (device().is_cuda()) {
    Tensor out(dtype_, shape_, allocate_device(device(), nbytes(), nullptr, "clone"));
    if (nbytes()) copy_bytes(out.raw_data(), raw_data(), nbytes(), nullptr, "clone");
    return out;
  }
  Tensor out = empty(dtype_, shape_);
  if (nbytes()) std::memcpy(out.raw_data(), raw_data(), nbytes());
  return out;
}

Tensor Tensor::to(Device target) const {
  KILN_CHECK(defined(), Error, "[tensor] to(", target, ") of an undefined tensor");
  if (device() == target) return *this;
  Tensor out = target.is_cpu()
                   ? empty(dtype_, shape_)
                   : Tensor(dtype_, shape_, allocate_device(target, nbytes(), nullptr, "to"));
  if (nbytes()) copy_bytes(out.raw_data(), raw_data(), nbytes(), nullptr, str("copy to ", target));
  return out;
}

Tensor Tensor::cast(DType dtype) const {
  KILN_CHECK(defined(), Error, "[tensor] cast(", dtype, ") of an undefined tensor");
  if (dtype == dtype_) return *this;
  if (device().is_cuda()) return to(Device::cpu()).cast(dtype);
  Tensor out = empty(dtype, shape_);
  dispatch_all(dtype_, [&](auto from_tag) {
    using From = decltype(from_tag);
    dispatch_all(dtype, [&](auto to_tag) {
      using To = decltype(to_tag);
      const From* in = static_cast<const From*>(raw_data());
      To* result = static_cast<To*>(out.raw_data());
      for (int64_t i = 0; i < numel_; ++i) result[i] = convert<To>(in[i]);
    });
  });
  return out;
}

Tensor Tensor::reshaped(const Shape& shape) const {
  KILN_CHECK(shape.is_known() && shape.numel() == numel_, Error, "[tensor] cannot view ", shape_,
             " as ", shape);
  return Tensor(dtype_, shape, storage_, offset_);
}

std::string Tensor::to_string(int64_t max_elements) const {
  std::ostringstream out;
  out << dtype_ << shape_;
  if (!defined()) return out.str() + " (undefined)";
  out << " {";
  for (int64_t i = 0; i < numel_ && i < max_elements; ++i) out << (i ? ", " : "") << element(i);
  if (numel_ > max_elements) out << ", ...";
  out << '}';
  return out.str();
}

bool equal_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
}

}  // namespace kiln
