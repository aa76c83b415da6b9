// fused_elementwise: a tree of elementwise ops run as one kernel (made by the fusion pass).
#pragma once

#include <string>

namespace kiln::ops {

/// The fused_elementwise opcode of elementwise op `op`, or -1 when it cannot be fused.
int fused_opcode(const std::string& op);
/// Number of operands of an opcode (1, 2, or 3 for where).
int fused_arity(int opcode);
/// The op name of an opcode.
const char* fused_op_name(int opcode);

}  // namespace kiln::ops
