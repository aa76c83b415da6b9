// Fuzz target: safetensors bytes, parsed, each tensor used as a feed, and the tensors written
// back and read again (what loads must round-trip bit for bit).
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kiln::SafetensorsFile file;
  try {
    file = kiln::parse_safetensors(std::string(reinterpret_cast<const char*>(data), size),
                                   "fuzz.safetensors");
  } catch (const kiln::Error&) {
    return 0;
  }
  for (const auto& [name, t] : file.tensors) {
    if (t.numel() > kiln::fuzz::kMaxElements) return 0;
    kiln::Graph g;
    kiln::Value x = g.placeholder("x", t.dtype(), t.shape());
    kiln::Session session(g);
    session.run({{x, t}}, {kiln::identity(x)});
    t.to_string();
  }
  const kiln::SafetensorsFile again = kiln::parse_safetensors(
      kiln::serialize_safetensors(file.tensors, file.metadata), "round trip");
  if (again.tensors.size() != file.tensors.size() || again.metadata != file.metadata)
    __builtin_trap();
  for (const auto& [name, t] : file.tensors)
    if (!kiln::equal_bits(again.at(name), t)) __builtin_trap();
  return 0;
}
