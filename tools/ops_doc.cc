// kiln-ops-doc: writes docs/OPS.md, the op reference, from the op registry: every op with its
// inputs, attributes (type and default), kernels by device with their dtypes, gradient and
// traits. The test `ops_doc_is_current` fails when the committed file differs from what this
// prints; regenerate with  build/tools/kiln-ops-doc > docs/OPS.md  (from a build with CUDA, so
// the CUDA column is filled).
#include <kiln/kiln.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "kiln/framework/op_registry.h"

using namespace kiln;

namespace {

std::string dtypes_of(const OpDef& op, DeviceKind device) {
  if (!op.has_kernel(device)) return "-";
  const std::vector<DType>& dtypes = op.kernel_dtypes(device);
  if (dtypes.empty()) return "any";
  std::string out;
  for (DType d : dtypes) out += (out.empty() ? "" : " ") + std::string(dtype_name(d));
  return out;
}

std::string gradient_of(const OpDef& op) {
  if (op.grad_fn()) return "yes";
  if (op.has_no_gradient()) return "none (constant)";
  return "no";
}

std::string traits_of(const OpDef& op) {
  std::string out;
  auto add = [&](bool on, const char* name) {
    if (on) out += (out.empty() ? "" : ", ") + std::string(name);
  };
  add(op.is_elementwise(), "elementwise");
  add(op.is_random(), "random");
  add(op.is_communication(), "communication");
  add(op.writes_state(), "writes a variable");
  add(op.is_stateful() && !op.is_random() && !op.is_communication() && !op.writes_state(),
      "stateful");
  add(op.precision_policy() == Precision::low, "16-bit in autocast");
  add(op.precision_policy() == Precision::keep_f32, "f32 in autocast");
  for (size_t i = 0; i < op.inputs().size(); ++i)
    if (op.reads_only_type(static_cast<int>(i)))
      out += (out.empty() ? "" : ", ") + str("reads only the type of ", op.inputs()[i]);
  return out.empty() ? "-" : out;
}

std::string inputs_of(const OpDef& op) {
  std::string out;
  for (size_t i = 0; i < op.inputs().size(); ++i) {
    out += (out.empty() ? "" : ", ") + op.inputs()[i];
    if (op.variadic() && i + 1 == op.inputs().size()) out += "...";
  }
  return out.empty() ? "-" : out;
}

std::string attrs_of(const OpDef& op) {
  std::string out;
  for (const AttrSpec& a : op.attrs()) {
    std::string one = str("`", a.name, "`: ", attr_type_name(a.type));
    if (a.default_value) one += str(" = ", attr_to_string(*a.default_value));
    out += (out.empty() ? "" : "<br>") + one;
  }
  return out.empty() ? "-" : out;
}

// '|' would end a table cell.
std::string cell(std::string text) {
  for (size_t at = 0; (at = text.find('|', at)) != std::string::npos; at += 2)
    text.replace(at, 1, "\\|");
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf("usage: kiln-ops-doc > docs/OPS.md  (the op reference, from the registry)\n");
    return 0;
  }
  const std::vector<const OpDef*> ops = OpRegistry::global().all();
  std::printf(
      "# Kiln ops\n\n"
      "Generated from the op registry by `build/tools/kiln-ops-doc > docs/OPS.md` (a build with\n"
      "CUDA); the test `ops_doc_is_current` fails when this file is stale. %zu ops. Kernel\n"
      "columns list the dtypes each device's kernel takes (\"any\": every dtype the op accepts,\n"
      "\"-\": none; on the CPU, f16/bf16 values of an op without a 16-bit kernel run its f32\n"
      "kernel on widened copies). Gradient \"none (constant)\": autograd treats the inputs as\n"
      "constants; \"no\": differentiating through it is an error.\n\n"
      "| op | inputs | attributes | CPU | CUDA | gradient | traits |\n"
      "|---|---|---|---|---|---|---|\n",
      ops.size());
  for (const OpDef* op : ops)
    std::printf("| `%s` | %s | %s | %s | %s | %s | %s |\n", op->name().c_str(),
                cell(inputs_of(*op)).c_str(), cell(attrs_of(*op)).c_str(),
                dtypes_of(*op, DeviceKind::cpu).c_str(), dtypes_of(*op, DeviceKind::cuda).c_str(),
                gradient_of(*op).c_str(), traits_of(*op).c_str());
  return 0;
}
