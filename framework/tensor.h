// Tensor: a dense, row-major, contiguous array with a dtype, a shape and shared storage.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/framework/device.h"
#include "kiln/framework/dtype.h"
#include "kiln/framework/error.h"
#include "kiln/framework/shape.h"

namespace kiln {

/// Bytes that hold tensor data on one device. Subclasses own the allocation.
class Storage {
 public:
  virtual ~Storage() = default;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 protected:
  Storage(void* data, size_t nbytes, Device device)
      : data_(data), nbytes_(nbytes), device_(device) {}
  void set_data(void* data) { data_ = data; }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
};

/// Number of host tensor buffers allocated so far in this process (a diagnostic: tests use it
/// to check that a planned step allocates nothing).
int64_t host_allocation_count();

/// Host memory aligned to 64 bytes (a cache line, an AVX-512 vector).
class HostStorage final : public Storage {
 public:
  /// Throws kiln::Error with the size when the allocation fails.
  explicit HostStorage(size_t nbytes);
  ~HostStorage() override;

 private:
  size_t capacity_ = 0;  // bytes of the block (at least nbytes(); a cached block may be larger)
};

/// A tensor. Copies share storage (like a shared_ptr); clone() copies the data.
/// The shape of a tensor is always fully known.
class Tensor {
 public:
  /// An undefined tensor (defined() is false).
  Tensor() = default;
  /// Uninitialized host tensor.
  static Tensor empty(DType dtype, const Shape& shape);
  /// Host tensor with every element equal to `value` (converted to `dtype`).
  static Tensor full(DType dtype, const Shape& shape, double value);
  static Tensor zeros(DType dtype, const Shape& shape) { return full(dtype, shape, 0.0); }
  /// Rank-0 tensor holding `value`.
  template <typename T>
  static Tensor scalar(T value) {
    Tensor t = empty(dtype_of<T>(), Shape{});
    *t.data<T>() = value;
    return t;
  }
  /// Host tensor with the elements of `values`; their count must match `shape`.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    Tensor t = empty(dtype_of<T>(), shape);
    KILN_CHECK(static_cast<int64_t>(values.size()) == t.numel(), Error, "[tensor] ", values.size(),
               " values do not fill shape ", shape);
    T* out = t.data<T>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
    return t;
  }
  /// 1-D host tensor with the elements of `values`.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values) {
    return from_vector(values, Shape{static_cast<int64_t>(values.size())});
  }
  /// A host tensor over memory the caller owns, without copying (libtorch's from_blob). The
  /// memory must hold shape.numel() elements of `dtype`, aligned to the element size, and stay
  /// valid until `deleter` is called with `data`: when the last tensor sharing it goes (no
  /// deleter: the caller keeps it valid while any such tensor lives). Kiln reads a fed
  /// tensor's memory and never writes it.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype,
                          std::function<void(void*)> deleter = {});
  /// Wraps existing storage; `offset` in bytes. Used by executors.
  Tensor(DType dtype, Shape shape, std::shared_ptr<Storage> storage, size_t offset = 0);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t rank() const { return shape_.rank(); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  Device device() const;

  void* raw_data() const;
  /// Typed pointer; throws kiln::Error when T does not match the dtype.
  template <typename T>
  T* data() const {
    KILN_CHECK(dtype_of<T>() == dtype_, Error, "[tensor] data<", dtype_name(dtype_of<T>()),
               ">() on a ", dtype_, " tensor");
    return static_cast<T*>(raw_data());
  }
  /// The elements as a span (host tensors; T must match the dtype, as data<T>()).
  template <typename T>
  std::span<T> data_span() const {
    KILN_CHECK(!device().is_cuda(), Error, "[tensor] data_span() of a tensor on ", device(),
               " (copy it to the CPU with to(Device::cpu()) first)");
    return std::span<T>(data<T>(), static_cast<size_t>(numel_));
  }
  /// Copies the elements out, converting to T.
  template <typename T>
  std::vector<T> to_vector() const {
    if (device().is_cuda()) return to(Device::cpu()).template to_vector<T>();
    std::vector<T> out(static_cast<size_t>(numel_));
    dispatch_all(dtype_, [&](auto tag) {
      using S = decltype(tag);
      const S* in = static_cast<const S*>(raw_data());
      for (int64_t i = 0; i < numel_; ++i) out[i] = convert<T>(in[i]);
    });
    return out;
  }
  /// The only element of a one-element tensor, converted to T.
  template <typename T>
  T item() const {
    KILN_CHECK(numel_ == 1, Error, "[tensor] item() of a tensor with shape ", shape_);
    return to_vector<T>()[0];
  }
  /// Element `i` (row-major) as a double, for tests and printing.
  double element(int64_t i) const;

  /// A deep copy into fresh storage on the same device.
  Tensor clone() const;
  /// This tensor on `device` (itself when it is there already; else a synchronous copy).
  Tensor to(Device device) const;
  /// The elements converted to `dtype` (rounding to nearest, as the cast op does), in a new
  /// host tensor; the tensor itself when it has that dtype already. E.g. bf16 weights from a
  /// file for an f32 variable: `session.set_variable(w, loaded.cast(f32))`.
  Tensor cast(DType dtype) const;
  /// The same data seen with another shape of the same element count (no copy).
  Tensor reshaped(const Shape& shape) const;
  /// Short description and up to `max_elements` values: "f32[2, 2] {1, 2, 3, 4}".
  std::string to_string(int64_t max_elements = 16) const;

  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset() const { return offset_; }

 private:
  DType dtype_ = DType::f32;
  Shape shape_;
  int64_t numel_ = 0;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
};

/// True when both tensors have the same dtype, shape and bytes.
bool equal_bits(const Tensor& a, const Tensor& b);
/// True when both tensors are the same elements: one dtype and shape at one address (on any
/// device; nothing is read).
inline bool same_elements(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.raw_data() == b.raw_data();
}

}  // namespace kiln
