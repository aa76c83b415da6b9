// Shapes: dims of a tensor, where -1 marks a dim known only at run time.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <limits>
#include <string>
#include <vector>

namespace kiln {

/// Marks a dim whose size is known only when the graph runs (a batch size, for example).
inline constexpr int64_t kUnknownDim = -1;

/// The `end` of a slice meaning "to the end of the axis".
inline constexpr int64_t kSliceEnd = std::numeric_limits<int64_t>::max();

/// The dims of a tensor, outermost first. A dim is >= 0, or kUnknownDim.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  int64_t rank() const { return static_cast<int64_t>(dims_.size()); }
  /// The dim at `axis`; a negative axis counts from the end.
  int64_t operator[](int64_t axis) const { return dims_[axis < 0 ? axis + rank() : axis]; }
  int64_t& operator[](int64_t axis) { return dims_[axis < 0 ? axis + rank() : axis]; }
  const std::vector<int64_t>& dims() const { return dims_; }
  auto begin() const { return dims_.begin(); }
  auto end() const { return dims_.end(); }

  /// True when no dim is kUnknownDim.
  bool is_known() const;
  /// Number of elements; requires is_known(). Throws kiln::Error if it overflows 2^62.
  int64_t numel() const;
  /// Row-major strides in elements.
  std::vector<int64_t> strides() const;
  /// "[64, 784]"; unknown dims print as "?".
  std::string to_string() const;

  /// True when the shapes could describe the same tensor: same rank and every pair of dims
  /// equal or one of them unknown.
  bool compatible_with(const Shape& other) const;

  bool operator==(const Shape& other) const = default;

 private:
  std::vector<int64_t> dims_;
};

std::ostream& operator<<(std::ostream& out, const Shape& shape);

/// One axis or a list of axes, wherever an op takes axes: sum(x, 1) and sum(x, {0, 2}) both
/// work. Negative axes count from the end; an empty list means what the op says (all axes for
/// a reduction).
class Axes {
 public:
  Axes() = default;
  Axes(int64_t axis) : list_{axis} {}                          // NOLINT: implicit, sum(x, 1)
  Axes(std::initializer_list<int64_t> axes) : list_(axes) {}   // sum(x, {0, 2})
  Axes(std::vector<int64_t> axes) : list_(std::move(axes)) {}  // NOLINT: implicit
  const std::vector<int64_t>& list() const { return list_; }
  operator std::vector<int64_t>() const& { return list_; }         // NOLINT: implicit
  operator std::vector<int64_t>() && { return std::move(list_); }  // NOLINT: implicit

 private:
  std::vector<int64_t> list_;
};

/// Validates a possibly negative axis for a tensor of `rank` and returns it in [0, rank).
/// `what` names the caller for the error message ("[sum] loss/sum").
int64_t normalize_axis(int64_t axis, int64_t rank, const std::string& what);

/// Broadcasts two shapes by NumPy rules: align from the right; a dim of 1 stretches.
/// An unknown dim against 1 stays unknown; against n > 1 it is taken to be n.
/// Returns false when two known dims differ and neither is 1.
bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out);

}  // namespace kiln
