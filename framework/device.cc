#include "kiln/framework/device.h"

#include <charconv>
#include <ostream>

#include "kiln/framework/error.h"

namespace kiln {

Device Device::best() {
  return cuda_availability().device_count > 0 ? Device::cuda(0) : Device::cpu();
}

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda" || text == "gpu") {
    check_device_usable(cuda(0));
    return cuda(0);
  }
  if (text.starts_with("cuda:")) {
    std::string_view digits = text.substr(5);
    int index = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size() && index >= 0) {
      check_device_usable(cuda(index));
      return cuda(index);
    }
  }
  throw Error(str("[device] cannot parse device '", text, "' (expected cpu, cuda or cuda:N)"));
}

std::string Device::to_string() const {
  return is_cpu() ? std::string("cpu") : str("cuda:", index);
}

std::ostream& operator<<(std::ostream& out, const Device& device) {
  return out << device.to_string();
}

void check_device_usable(const Device& device) {
  if (device.is_cpu()) return;
  const CudaAvailability& cuda = cuda_availability();
  if (cuda.device_count == 0)
    throw DeviceError(str("[device] ", device, " is not available: ", cuda.reason));
  if (device.index >= cuda.device_count)
    throw DeviceError(str("[device] ", device, " is not available: this machine has ",
                          cuda.device_count, " CUDA device(s)"));
}

}  // namespace kiln
