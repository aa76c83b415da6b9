// Fuzz target: .npy bytes, parsed, then used as a feed and written back.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kiln::Tensor t;
  try {
    t = kiln::parse_npy(std::string(reinterpret_cast<const char*>(data), size), "fuzz.npy");
  } catch (const kiln::Error&) {
    return 0;
  }
  if (t.numel() > kiln::fuzz::kMaxElements) return 0;
  try {
    kiln::Graph g;
    kiln::Value x = g.placeholder("x", t.dtype(), t.shape());
    kiln::Session session(g);
    session.run({{x, t}}, {kiln::identity(x)});
    t.to_string();
  } catch (const kiln::Error&) {
  }
  return 0;
}
