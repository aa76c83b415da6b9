// fused_elementwise: a tree of elementwise ops run as one kernel (made by the fusion pass).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/ops/math/elementwise.h"

namespace kiln::ops {

/// fused_elementwise's opcodes: the rows of the elementwise tables in order, then where.
enum FusedOpcode : int {
#define KILN_OPCODE(name, ...) op_##name,
  KILN_UNARY_OPS(KILN_OPCODE) KILN_BINARY_OPS(KILN_OPCODE) KILN_COMPARE_OPS(KILN_OPCODE)
#undef KILN_OPCODE
      op_where,
  op_count
};

/// The most instructions a fused_elementwise program may have (the fusion pass makes at most
/// 64; files are held to this bound).
inline constexpr size_t kMaxFusedInstructions = 1024;

/// Gives each instruction of a fused program (`code`, 4 ints per instruction) a value slot
/// out of `max_slots`, reusing a slot once its value's last reader has run. False when more
/// than max_slots values would be live at once. The GPU kernel keeps values in such slots.
bool assign_fused_slots(const std::vector<int64_t>& code, int num_inputs, int max_slots,
                        std::vector<int>* slots);

/// The fused_elementwise opcode of elementwise op `op`, or -1 when it cannot be fused.
int fused_opcode(const std::string& op);
/// Number of operands of an opcode (1, 2, or 3 for where).
int fused_arity(int opcode);
/// The op name of an opcode.
const char* fused_op_name(int opcode);

}  // namespace kiln::ops
