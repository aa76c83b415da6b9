// Array ops: shape manipulation, joining and slicing, indexing, casting, sources of values.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "kiln/framework/graph.h"

namespace kiln {

/// The same elements seen with another shape. One dim may be -1: it is inferred.
Value reshape(const Value& x, const Shape& shape);
/// Dims start_axis..end_axis (inclusive, negative counting from the end) merged into one
/// (torch.flatten): flatten(x) of [N, C, H, W] is [N, C H W]. Dims outside the run are kept,
/// known or not; the merged dim is unknown if any of its dims is.
Value flatten(const Value& x, int64_t start_axis = 1, int64_t end_axis = -1);
/// Dim `axis` split into `sizes` (torch.unflatten): unflatten(x, 2, {heads, -1}) of [B, T, D]
/// is [B, T, heads, D / heads]. One size may be -1, inferred from the dim; the other dims are
/// kept, known or not, so B and T may both be unknown (a reshape's target infers one dim).
Value unflatten(const Value& x, int64_t axis, const std::vector<int64_t>& sizes);
/// Dims reordered: result.shape[i] = x.shape[perm[i]]. An empty perm reverses the dims.
Value transpose(const Value& x, std::vector<int64_t> perm = {});
/// x stretched to `shape` by NumPy broadcasting.
Value broadcast_to(const Value& x, const Shape& shape);
/// The inputs joined along `axis`; other dims must match.
Value concat(const std::vector<Value>& values, int64_t axis);
/// Pieces of x along `axis` with the given sizes (which sum to the dim).
std::vector<Value> split(const Value& x, std::vector<int64_t> sizes, int64_t axis);
/// `num_splits` equal pieces of x along `axis` (the dim must be known and divisible).
std::vector<Value> split(const Value& x, int64_t num_splits, int64_t axis);
/// x[begin:end:step] per axis, Python semantics (negative indices count from the end, out of
/// range bounds clamp). Lists may be shorter than the rank; missing axes are taken whole;
/// an empty `step` means 1 everywhere. Steps must be positive.
Value slice(const Value& x, std::vector<int64_t> begin, std::vector<int64_t> end,
            std::vector<int64_t> step = {});
/// The window of `length` entries of x along `axis` from `start`, an integer scalar tensor
/// (rank 0 or [1]; i32 or i64) known only at run time (XLA's DynamicSlice, PyTorch's narrow
/// with a tensor start). A start outside [0, dim - length] fails the run, naming the node.
Value dynamic_slice(const Value& x, const Value& start, int64_t length, int64_t axis);
/// x with `update` written over its window along `axis` from `start` (an integer scalar
/// tensor, as dynamic_slice's): update has x's rank and dims except along `axis`, where it is
/// no longer. The write of a KV cache: one compiled plan serves every position.
Value dynamic_update_slice(const Value& x, const Value& update, const Value& start, int64_t axis);
/// Rows of `params` picked along `axis` by integer `indices` (i32 or i64; negative indices
/// count from the end): result shape is params[:axis] + indices.shape + params[axis+1:].
/// An index out of range is an error when the graph runs.
Value gather(const Value& params, const Value& indices, int64_t axis = 0);
/// Elements of `params` picked along `axis` by integer `indices` of the same rank (PyTorch's
/// torch.gather, NumPy's take_along_axis): out[.., j, ..] = params[.., indices[.., j, ..], ..],
/// shaped like indices, whose dims other than `axis` must equal params'. Indices must lie in
/// [0, params.shape[axis]): any other is an error when the graph runs, naming it.
Value take_along_axis(const Value& params, const Value& indices, int64_t axis);
/// Elementwise conversion to `dtype` (floats to integers truncate; to bool is "not zero").
Value cast(const Value& x, DType dtype);
/// A constant holding `value` (copied into the graph, so it is saved with it): the same as
/// graph.constant(value, name).
Value constant(Graph& graph, const Tensor& value, const std::string& name = "");
/// x itself (useful to give a value a name).
Value identity(const Value& x);
/// x itself, computed only after every value in `deps` (a control dependency: whatever reads
/// the result also runs deps).
Value after(const Value& x, const std::vector<Value>& deps);

/// x with size-1 dims inserted so that they sit at `axes` of the result (unsqueeze).
Value expand_dims(const Value& x, Axes axes);
/// x summed over the dims along which `like` would be broadcast to x's shape: the result has
/// like's shape. (Gradients of broadcasting ops.)
Value sum_to(const Value& x, const Value& like);
/// x broadcast to like's shape, known at run time.
Value broadcast_like(const Value& x, const Value& like);
/// x's elements with like's shape, known at run time.
Value reshape_like(const Value& x, const Value& like);
/// A tensor with like's dtype and shape, every element `value`.
Value full_like(const Value& like, double value);
Value zeros_like(const Value& like);
Value ones_like(const Value& like);
/// The number of elements of x, as a scalar of `dtype`.
Value numel(const Value& x, DType dtype = f32);
/// One target that runs all `values` (their outputs are discarded); a bool scalar.
Value group(Graph& graph, const std::vector<Value>& values);

/// A tensor of `shape` filled with `value`.
Value fill(Graph& graph, const Shape& shape, double value, DType dtype = f32);
/// A tensor of `shape` whose elements are their index along `axis`: iota([2, 3], 1) is
/// [[0, 1, 2], [0, 1, 2]].
Value iota(Graph& graph, const Shape& shape, int64_t axis = 0, DType dtype = f32);
/// Uniform samples in [low, high). The same seed gives the same numbers on every run, machine
/// and thread count (counter-based Philox4x32-10: element i depends only on seed and i).
Value random_uniform(Graph& graph, const Shape& shape, double low, double high, int64_t seed,
                     DType dtype = f32);
/// Normal samples with `mean` and `stddev` (Box-Muller over Philox4x32-10), reproducible as
/// random_uniform.
///
/// Both are seeded constants: the same tensor on every run. Ops with the random trait
/// (OpDef::random, e.g. dropout_mask) draw anew on every run instead.
Value random_normal(Graph& graph, const Shape& shape, double mean, double stddev, int64_t seed,
                    DType dtype = f32);
/// The graph's random counter: the i64 scalar variable "random_counter" (not trainable), made
/// on first use. Every op with the random trait reads it; each run that executes one advances
/// it by one, and checkpoints save it, so a restored session draws what the original would.
Value random_counter(Graph& graph);

}  // namespace kiln
