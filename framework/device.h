// Devices: where a tensor lives and where a node runs.
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>

namespace kiln {

/// The kinds of device Kiln can run on.
enum class DeviceKind { cpu = 0, cuda = 1 };

/// A device: the CPU, or CUDA GPU number `index`.
struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::cuda, index}; }
  /// cuda:0 where a usable GPU and driver are present, else the CPU.
  static Device best();
  /// Parses "cpu", "cuda" or "cuda:N" and checks that the device can be used here: throws
  /// kiln::Error naming the text when it is not a device name, kiln::DeviceError saying why
  /// when it names a GPU this machine cannot use (before any work is done on it).
  static Device parse(std::string_view text);

  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  /// "cpu" or "cuda:N".
  std::string to_string() const;
  bool operator==(const Device&) const = default;
};

std::ostream& operator<<(std::ostream& out, const Device& device);

/// What the CUDA runtime says about this machine. Filled by framework/cuda (or its stub in a
/// build without CUDA); never throws.
struct CudaAvailability {
  int device_count = 0;
  /// Why there is no usable GPU, empty when device_count > 0: "built without CUDA",
  /// "no CUDA driver is installed", "no CUDA driver, or one older than the CUDA 13.0 runtime", ...
  std::string reason{};
};

/// Queries the CUDA runtime once and caches the answer.
const CudaAvailability& cuda_availability();

/// Throws kiln::DeviceError saying why when `device` is a GPU that cannot be used.
void check_device_usable(const Device& device);

}  // namespace kiln
