#include "kiln/framework/summary_writer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "framework/tensorboard.pb.h"
#include "kiln/framework/byte_order.h"
#include "kiln/framework/crc32c.h"

namespace kiln {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// TensorBoard's records store CRC-32C "masked" (rotated and offset), so that a checksum of
// data that itself holds checksums is not trivially related to them.
uint32_t masked_crc(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string event_file_name() {
  static std::atomic<int> count{0};
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  return str("events.out.tfevents.", static_cast<int64_t>(now_seconds()), ".", host, ".",
             static_cast<int64_t>(getpid()), ".", count.fetch_add(1));
}

tensorboard::Event event_at(int64_t step) {
  tensorboard::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  return event;
}

std::string serialized(const tensorboard::Event& event) {
  std::string out;
  event.SerializeToString(&out);
  return out;
}

}  // namespace

SummaryWriter::SummaryWriter(const std::string& log_dir) {
  std::error_code error;
  std::filesystem::create_directories(log_dir, error);
  KILN_CHECK(!error, FileError, "[summary] cannot create log folder ", log_dir, ": ",
             error.message());
  path_ = (std::filesystem::path(log_dir) / event_file_name()).string();
  file_ = std::fopen(path_.c_str(), "wbx");  // a new file, never another writer's
  KILN_CHECK(file_ != nullptr, FileError, "[summary] cannot create ", path_, ": ",
             std::strerror(errno));
  tensorboard::Event first = event_at(0);
  first.set_file_version("brain.Event:2");
  write_event(serialized(first));
}

SummaryWriter::~SummaryWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

// A record: length (8 bytes, little-endian), its masked CRC (4), the data, the data's masked
// CRC (4).
void SummaryWriter::write_event(const std::string& data) {
  std::string record;
  append_little_endian(record, data.size(), 8);
  append_little_endian(record, masked_crc(record.data(), 8), 4);
  record += data;
  append_little_endian(record, masked_crc(data.data(), data.size()), 4);
  const bool ok = std::fwrite(record.data(), 1, record.size(), file_) == record.size() &&
                  std::fflush(file_) == 0;
  KILN_CHECK(ok, FileError, "[summary] cannot write ", path_, ": ", std::strerror(errno));
}

void SummaryWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  tensorboard::Event event = event_at(step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_event(serialized(event));
}

void SummaryWriter::add_histogram(const std::string& tag, const Tensor& values, int64_t step,
                                  int buckets) {
  KILN_CHECK(buckets >= 1, Error, "[summary] add_histogram ", tag, ": buckets must be >= 1, got ",
             buckets);
  const std::vector<double> all = values.to_vector<double>();
  std::vector<double> finite;
  finite.reserve(all.size());
  for (double v : all)
    if (std::isfinite(v)) finite.push_back(v);
  tensorboard::Event event = event_at(step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  tensorboard::HistogramProto* h = v->mutable_histo();
  if (finite.empty()) {
    write_event(serialized(event));
    return;
  }
  const auto [lo, hi] = std::minmax_element(finite.begin(), finite.end());
  const double low = *lo, high = *hi;
  double sum = 0, squares = 0;
  for (double x : finite) {
    sum += x;
    squares += x * x;
  }
  h->set_min(low);
  h->set_max(high);
  h->set_num(static_cast<double>(finite.size()));
  h->set_sum(sum);
  h->set_sum_squares(squares);
  // Bucket i holds (limit[i - 1], limit[i]]; the first starts at the minimum.
  const int count = high > low ? buckets : 1;
  std::vector<double> counts(static_cast<size_t>(count), 0.0);
  const double width = (high - low) / count;
  for (double x : finite) {
    int i = width > 0 ? static_cast<int>(std::ceil((x - low) / width)) - 1 : 0;
    counts[static_cast<size_t>(std::clamp(i, 0, count - 1))] += 1;
  }
  for (int i = 0; i < count; ++i) {
    h->add_bucket_limit(i == count - 1 ? high : low + width * (i + 1));
    h->add_bucket(counts[static_cast<size_t>(i)]);
  }
  write_event(serialized(event));
}

void SummaryWriter::add_text(const std::string& tag, const std::string& text, int64_t step) {
  tensorboard::Event event = event_at(step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->mutable_metadata()->mutable_plugin_data()->set_plugin_name("text");
  tensorboard::TensorProto* t = v->mutable_tensor();
  t->set_dtype(7);  // a string tensor
  t->mutable_tensor_shape();
  t->add_string_val(text);
  write_event(serialized(event));
}

void SummaryWriter::add_graph(const Graph& graph) {
  tensorboard::GraphDef def;
  def.mutable_versions()->set_producer(1);
  for (int32_t id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    tensorboard::NodeDef* n = def.add_node();
    n->set_name(node.name());
    n->set_op(node.op_name());
    for (OutputRef in : node.inputs()) {
      const std::string& source = graph.node(in.node).name();
      n->add_input(in.index == 0 ? source : str(source, ":", in.index));
    }
    std::string types;
    for (const TensorType& t : node.outputs())
      types += str(types.empty() ? "" : ", ", dtype_name(t.dtype), t.shape);
    (*n->mutable_attr())["outputs"].set_s(types);
  }
  tensorboard::Event event = event_at(0);
  event.set_graph_def(def.SerializeAsString());
  write_event(serialized(event));
}

}  // namespace kiln
