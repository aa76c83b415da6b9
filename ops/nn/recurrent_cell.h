// The cells of the recurrence op (ops/nn/recurrence.cc), named as its `cell` attribute; the
// public API (recurrence() in ops/nn.h) and the kernels (recurrence.h) share them.
#pragma once

#include <string_view>

namespace kiln {

/// The step recurrence() runs (the op's `cell` attribute: "rnn_tanh", "rnn_relu", "lstm",
/// "gru").
enum class RecurrentCell { rnn_tanh, rnn_relu, lstm, gru };

/// The cell's name in the op's `cell` attribute.
inline const char* recurrent_cell_name(RecurrentCell cell) {
  switch (cell) {
    case RecurrentCell::rnn_tanh:
      return "rnn_tanh";
    case RecurrentCell::rnn_relu:
      return "rnn_relu";
    case RecurrentCell::lstm:
      return "lstm";
    case RecurrentCell::gru:
      return "gru";
  }
  return "?";
}

/// The cell named `name` into `cell`; false when no cell has that name.
inline bool parse_recurrent_cell(std::string_view name, RecurrentCell& cell) {
  for (RecurrentCell each :
       {RecurrentCell::rnn_tanh, RecurrentCell::rnn_relu, RecurrentCell::lstm, RecurrentCell::gru})
    if (name == recurrent_cell_name(each)) {
      cell = each;
      return true;
    }
  return false;
}

}  // namespace kiln
