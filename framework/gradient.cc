#include "kiln/framework/gradient.h"

namespace kiln {

Value GradContext::grad_output(int i) {
  if (!grad_outputs_[i].defined())
    grad_outputs_[i] = graph_.add("full_like", {output(i)}, {{"value", 0.0}});
  return grad_outputs_[i];
}

}  // namespace kiln
