// Datasets: the IDX format (MNIST, Fashion-MNIST), seeded shuffling, batching, and a loader
// that prepares the next batch on a background thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kiln/framework/tensor.h"

namespace kiln::data {

/// Reads an IDX file (gzip-compressed or not): u8/i8/i16/i32/f32/f64 elements, big-endian, as
/// the format defines. Returns a tensor of the file's dims (u8 stays u8, i8/i16/i32 become i32,
/// floats keep their width). Throws kiln::FileError naming the file for a missing, truncated
/// or malformed file (bad magic, unknown type code, wrong size).
Tensor read_idx(const std::string& path);

/// Examples with inputs and integer labels, kept in memory.
class Dataset {
 public:
  /// `inputs` [N, ...] (any dtype), `labels` [N].
  Dataset(Tensor inputs, Tensor labels);
  /// MNIST-style images and labels from IDX files: inputs become f32 in [0, 1] with shape
  /// [N, rows * cols], labels i64 [N]. Checks that the two files have the same N and that
  /// every label is in [0, 255].
  static Dataset from_idx(const std::string& images_path, const std::string& labels_path);

  int64_t size() const { return inputs_.shape()[0]; }
  const Tensor& inputs() const { return inputs_; }
  const Tensor& labels() const { return labels_; }
  /// The examples at `indices`, as (inputs, labels) batch tensors.
  std::pair<Tensor, Tensor> gather(const std::vector<int64_t>& indices) const;

 private:
  Tensor inputs_;
  Tensor labels_;
};

/// The order of one epoch: 0..n-1, shuffled by a generator seeded with (seed, epoch), so any
/// epoch's order can be reproduced alone (a resumed run sees the same batches).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle = true);

/// One rank's part of a dataset in a data-parallel job (PyTorch's DistributedSampler).
struct Shard {
  int64_t rank = 0;
  int64_t world_size = 1;
  /// false: the epoch's order is padded with its own first indices up to a multiple of
  /// world_size, so every rank gets ceil(n / world_size) examples (a few seen twice);
  /// true: the tail beyond the last multiple is dropped, so none is.
  bool drop_tail = false;
};

/// Rank `shard.rank`'s indices of an epoch's `order`: order[rank], order[rank + world], ...
/// (after padding or dropping the tail). Every rank gets the same count; the ranks' parts
/// are disjoint (without padding) and together cover the order. Throws kiln::Error for a
/// rank outside [0, world_size).
std::vector<int64_t> shard_order(const std::vector<int64_t>& order, const Shard& shard);

/// Iterates over one epoch in batches, preparing batch k+1 on a background thread while the
/// caller trains on batch k. With a shard, over this rank's part of the epoch: every rank
/// shuffles with the same seed and epoch, then takes its part, so the parts are disjoint and
/// change with the epoch.
class BatchLoader {
 public:
  /// `drop_last`: skip a final partial batch.
  BatchLoader(const Dataset& dataset, int64_t batch_size, uint64_t seed, int64_t epoch,
              bool shuffle = true, bool drop_last = false, const Shard& shard = {});
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  /// The next batch, or nothing at the end of the epoch.
  std::optional<std::pair<Tensor, Tensor>> next();
  int64_t num_batches() const { return num_batches_; }

 private:
  void prefetch(int64_t batch);

  const Dataset& dataset_;
  std::vector<int64_t> order_;
  int64_t batch_size_;
  int64_t num_batches_;
  int64_t next_batch_ = 0;
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::optional<std::pair<Tensor, Tensor>> prepared_;
  std::exception_ptr error_;
  bool has_prepared_ = false;
};

}  // namespace kiln::data
