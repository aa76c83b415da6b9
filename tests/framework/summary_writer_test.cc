// SummaryWriter's event files read back record by record: the framing and checksums
// TensorBoard verifies, then each event's content. (tests/tools/tensorboard_check.py reads an
// example's logs with the real tensorboard package.)
#include <filesystem>
#include <fstream>

#include "framework/tensorboard.pb.h"
#include "kiln/framework/crc32c.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::tmp;

uint64_t get_le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<uint8_t>(s[at + i])} << (8 * i);
  return v;
}

uint32_t masked(const std::string& s, size_t at, size_t n) {
  const uint32_t crc = crc32c(s.data() + at, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// Every event of a file; each record's two checksums must hold.
std::vector<tensorboard::Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<tensorboard::Event> events;
  size_t at = 0;
  while (at < bytes.size()) {
    EXPECT_LE(at + 12, bytes.size());
    const uint64_t length = get_le(bytes, at, 8);
    EXPECT_EQ(get_le(bytes, at + 8, 4), masked(bytes, at, 8)) << "length checksum at " << at;
    EXPECT_LE(at + 16 + length, bytes.size());
    EXPECT_EQ(get_le(bytes, at + 12 + length, 4), masked(bytes, at + 12, length))
        << "data checksum at " << at;
    tensorboard::Event event;
    EXPECT_TRUE(event.ParseFromArray(bytes.data() + at + 12, static_cast<int>(length)));
    events.push_back(event);
    at += 16 + length;
  }
  return events;
}

TEST(SummaryWriter, CrcIsTheCastagnoliChecksumTensorBoardUses) {
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);  // the standard check value of CRC-32C
}

TEST(SummaryWriter, WritesScalarsHistogramsTextAndTheGraph) {
  const std::string dir = tmp("summary_logs");
  std::filesystem::remove_all(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 4});
  Value y;
  {
    NameScope scope(g, "dense");
    y = relu(matmul(x, g.variable("w", {4, 2}, init::zeros())));
  }
  std::string path;
  {
    SummaryWriter log(dir);
    path = log.path();
    log.add_scalar("train/loss", 0.5, 10);
    log.add_histogram("weights", Tensor::from_vector<double>({1, 2, 2, 3, 4, NAN}), 10, 3);
    log.add_text("run/options", "| lr | 0.1 |", 0);
    log.add_graph(g);
  }
  EXPECT_NE(path.find("events.out.tfevents."), std::string::npos);
  EXPECT_EQ(std::filesystem::path(path).parent_path(), std::filesystem::path(dir));
  const std::vector<tensorboard::Event> events = read_events(path);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].file_version(), "brain.Event:2");

  EXPECT_EQ(events[1].step(), 10);
  EXPECT_GT(events[1].wall_time(), 1.7e9);
  EXPECT_EQ(events[1].summary().value(0).tag(), "train/loss");
  EXPECT_FLOAT_EQ(events[1].summary().value(0).simple_value(), 0.5f);

  const tensorboard::HistogramProto& h = events[2].summary().value(0).histo();
  EXPECT_EQ(h.num(), 5);  // the NaN is left out
  EXPECT_EQ(h.min(), 1);
  EXPECT_EQ(h.max(), 4);
  EXPECT_EQ(h.sum(), 12);
  EXPECT_EQ(h.sum_squares(), 34);
  ASSERT_EQ(h.bucket_size(), 3);
  // Buckets [1, 2], (2, 3], (3, 4]: each closed on the right, at its limit.
  EXPECT_EQ(h.bucket_limit(0), 2);
  EXPECT_EQ(h.bucket_limit(2), 4);
  EXPECT_EQ(h.bucket(0), 3);
  EXPECT_EQ(h.bucket(1), 1);
  EXPECT_EQ(h.bucket(2), 1);

  const auto& text = events[3].summary().value(0);
  EXPECT_EQ(text.metadata().plugin_data().plugin_name(), "text");
  EXPECT_EQ(text.tensor().dtype(), 7);
  EXPECT_EQ(text.tensor().string_val(0), "| lr | 0.1 |");

  tensorboard::GraphDef def;
  ASSERT_TRUE(def.ParseFromString(events[4].graph_def()));
  ASSERT_EQ(def.node_size(), g.num_nodes());
  const tensorboard::NodeDef& last = def.node(def.node_size() - 1);
  EXPECT_EQ(last.name(), y.name());
  EXPECT_EQ(last.op(), "relu");
  EXPECT_EQ(last.input(0), "dense/matmul");
  EXPECT_EQ(last.attr().at("outputs").s(), "f32[?, 2]");
}

TEST(SummaryWriter, AnUnwritableFolderIsAFileError) {
  testing::expect_error<FileError>([] { SummaryWriter log("/proc/kiln-cannot-be-here"); },
                                   {"[summary]", "/proc/kiln-cannot-be-here"});
}

}  // namespace
}  // namespace kiln
