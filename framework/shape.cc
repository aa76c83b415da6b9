#include "kiln/framework/shape.h"

#include <ostream>
#include <sstream>

#include "kiln/framework/error.h"

namespace kiln {

bool Shape::is_known() const {
  for (int64_t d : dims_)
    if (d < 0) return false;
  return true;
}

int64_t Shape::numel() const {
  constexpr int64_t kMaxElements = int64_t{1} << 62;
  int64_t n = 1;
  for (int64_t d : dims_) {
    KILN_CHECK(d >= 0, Error, "[shape] numel of a shape with unknown dims: ", to_string());
    if (d != 0 && n > kMaxElements / d)
      throw Error(str("[shape] ", to_string(), " has more than 2^62 elements"));
    n *= d;
  }
  return n;
}

std::vector<int64_t> Shape::strides() const {
  std::vector<int64_t> s(dims_.size());
  int64_t stride = 1;
  for (int64_t i = rank() - 1; i >= 0; --i) {
    s[i] = stride;
    stride *= dims_[i];
  }
  return s;
}

std::string Shape::to_string() const {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < dims_.size(); ++i) {
    if (i) out << ", ";
    if (dims_[i] < 0)
      out << '?';
    else
      out << dims_[i];
  }
  out << ']';
  return out.str();
}

bool Shape::compatible_with(const Shape& other) const {
  if (rank() != other.rank()) return false;
  for (int64_t i = 0; i < rank(); ++i)
    if (dims_[i] >= 0 && other.dims_[i] >= 0 && dims_[i] != other.dims_[i]) return false;
  return true;
}

std::ostream& operator<<(std::ostream& out, const Shape& shape) {
  return out << shape.to_string();
}

int64_t normalize_axis(int64_t axis, int64_t rank, const std::string& what) {
  if (axis < -rank || axis >= rank)
    throw GraphError(str(what, ": axis ", axis, " is out of range for rank ", rank));
  return axis < 0 ? axis + rank : axis;
}

bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out) {
  int64_t rank = std::max(a.rank(), b.rank());
  std::vector<int64_t> dims(rank);
  for (int64_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.rank() ? 1 : a[i - (rank - a.rank())];
    int64_t db = i < rank - b.rank() ? 1 : b[i - (rank - b.rank())];
    if (da == 1) {
      dims[i] = db;
    } else if (db == 1) {
      dims[i] = da;
    } else if (da < 0) {
      dims[i] = db;
    } else if (db < 0 || da == db) {
      dims[i] = da;
    } else {
      return false;
    }
  }
  *out = Shape(std::move(dims));
  return true;
}

}  // namespace kiln
