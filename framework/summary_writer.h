// SummaryWriter: TensorBoard event files (scalars, histograms, text, the graph), as PyTorch's
// torch.utils.tensorboard.SummaryWriter and TensorFlow's tf.summary write them.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "kiln/framework/graph.h"
#include "kiln/framework/tensor.h"

namespace kiln {

/// Appends events to one new file `LOG_DIR/events.out.tfevents.TIME.HOST.PID.N`
/// (TensorBoard's record format: each record carries CRC-32C checksums), flushed after every
/// event so `tensorboard --logdir LOG_DIR` shows a run while it trains. Tags group by their
/// prefix up to '/' ("train/loss", "train/lr"). Not thread-safe; throws kiln::FileError naming
/// the file when it cannot be created or written.
class SummaryWriter {
 public:
  /// Creates `log_dir` (and its parents) if needed, and the event file in it.
  explicit SummaryWriter(const std::string& log_dir);
  ~SummaryWriter();
  SummaryWriter(const SummaryWriter&) = delete;
  SummaryWriter& operator=(const SummaryWriter&) = delete;

  /// One point of the curve `tag` (TensorBoard's Scalars tab).
  void add_scalar(const std::string& tag, double value, int64_t step);
  /// The distribution of a tensor's elements (any dtype; on any device) in `buckets`
  /// equal-width buckets between its minimum and maximum (Histograms tab). Non-finite
  /// elements are left out of the buckets and the statistics.
  void add_histogram(const std::string& tag, const Tensor& values, int64_t step, int buckets = 30);
  /// Text, Markdown allowed (Text tab): a run's options, a sample of generated text.
  void add_text(const std::string& tag, const std::string& text, int64_t step);
  /// The graph (Graphs tab): every node with its op, inputs, dtype and shape; name scopes
  /// ("block1/attention/...") are collapsible groups.
  void add_graph(const Graph& graph);

  /// The file this writer appends to.
  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& serialized_event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace kiln
