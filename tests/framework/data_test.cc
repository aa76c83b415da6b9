#include <zlib.h>

#include <fstream>
#include <set>

#include "test_util.h"

namespace kiln {
namespace {

using testing::tmp;

// An IDX file of u8 images [n, 2, 2] with pixel value i for image i, and labels i % 10.
std::pair<std::string, std::string> idx_bytes(int n) {
  std::string images = std::string("\0\0\x08\x03", 4);
  std::string labels = std::string("\0\0\x08\x01", 4);
  auto be = [](uint32_t v) {
    return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  };
  images += be(n) + be(2) + be(2);
  labels += be(n);
  for (int i = 0; i < n; ++i) {
    images += std::string(4, char(i));
    labels += char(i % 10);
  }
  return {images, labels};
}

std::string write(const std::string& name, const std::string& data, bool gzip = false) {
  std::string path = tmp(name);
  if (!gzip) {
    std::ofstream(path, std::ios::binary) << data;
  } else {
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, data.data(), static_cast<unsigned>(data.size()));
    gzclose(f);
  }
  return path;
}

TEST(Idx, ReadsPlainAndGzip) {
  auto [images, labels] = idx_bytes(12);
  for (bool gz : {false, true}) {
    Tensor t = data::read_idx(write(gz ? "img.gz" : "img.idx", images, gz));
    EXPECT_EQ(t.dtype(), u8);
    EXPECT_EQ(t.shape(), Shape({12, 2, 2}));
    EXPECT_EQ(t.element(4 * 7), 7);
    data::Dataset set =
        data::Dataset::from_idx(write("i.gz", images, true), write("l", labels, gz));
    EXPECT_EQ(set.size(), 12);
    EXPECT_EQ(set.inputs().shape(), Shape({12, 4}));
    EXPECT_FLOAT_EQ(set.inputs().data<float>()[4 * 3], 3.0f / 255);
    EXPECT_EQ(set.labels().data<int64_t>()[11], 1);
  }
}

TEST(Idx, RealFashionMnistWhenInstalled) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::ifstream(dir + "/t10k-labels-idx1-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  data::Dataset test = data::Dataset::from_idx(dir + "/t10k-images-idx3-ubyte.gz",
                                               dir + "/t10k-labels-idx1-ubyte.gz");
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.inputs().shape(), Shape({10000, 784}));
  std::vector<int> counts(10, 0);
  for (int64_t i = 0; i < test.size(); ++i) counts[test.labels().data<int64_t>()[i]]++;
  for (int c : counts) EXPECT_EQ(c, 1000);  // the test set is balanced
}

TEST(Idx, MalformedFilesAreRejected) {
  // A plain variable: lambdas below capture it (clang 14 cannot capture a structured binding).
  const std::string images = idx_bytes(5).first;
  testing::expect_error<FileError>(
      [&] { data::read_idx(write("t.idx", images.substr(0, images.size() - 1))); },
      {"t.idx", "20 bytes of data", "has 19"});
  testing::expect_error<FileError>(
      [&] { data::read_idx(write("m.idx", "\x01\x02\x08\x01" + std::string(8, 0))); },
      {"bad magic"});
  testing::expect_error<FileError>(
      [&] { data::read_idx(write("ty.idx", std::string("\0\0\x07\x01", 4) + std::string(8, 0))); },
      {"unknown IDX element type"});
  testing::expect_error<FileError>(
      [&] { data::read_idx(write("h.idx", std::string("\0\0\x08\x03\0\0", 6))); },
      {"truncated header"});
  std::string gz = tmp("cut.gz");
  write("cut.gz", images, true);
  std::ifstream in(gz, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  testing::expect_error<FileError>(
      [&] { data::read_idx(write("cut2.gz", bytes.substr(0, bytes.size() / 2))); },
      {"cut2.gz", "gzip"});
  testing::expect_error<FileError>(
      [&] { data::Dataset::from_idx(write("a", images), write("b", idx_bytes(4).second)); },
      {"5 images", "4 labels"});
  testing::expect_error<FileError>([&] { data::read_idx(tmp("nope.idx")); }, {"cannot open"});
}

TEST(Batches, SeededShuffleCoversEveryExampleOnce) {
  auto order = data::epoch_order(1000, 7, 3);
  EXPECT_EQ(order, data::epoch_order(1000, 7, 3));
  EXPECT_NE(order, data::epoch_order(1000, 7, 4));
  EXPECT_NE(order, data::epoch_order(1000, 8, 3));
  EXPECT_EQ(std::set<int64_t>(order.begin(), order.end()).size(), 1000u);
  auto [images, labels] = idx_bytes(25);
  data::Dataset set = data::Dataset::from_idx(write("bi", images), write("bl", labels));
  for (bool drop : {false, true}) {
    data::BatchLoader loader(set, 10, 1, 0, true, drop);
    EXPECT_EQ(loader.num_batches(), drop ? 2 : 3);
    std::multiset<int64_t> seen;
    int batches = 0;
    while (auto batch = loader.next()) {
      ++batches;
      for (int64_t i = 0; i < batch->second.numel(); ++i) {
        int64_t image = static_cast<int64_t>(std::lround(batch->first.data<float>()[i * 4] * 255));
        EXPECT_EQ(batch->second.data<int64_t>()[i], image % 10);  // inputs and labels stay paired
        seen.insert(image);
      }
    }
    EXPECT_EQ(batches, loader.num_batches());
    EXPECT_EQ(seen.size(), drop ? 20u : 25u);
    EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), seen.size());
  }
}

// DistributedSampler's contract: equal counts, disjoint parts that cover the epoch, padded
// with the epoch's first indices or with the tail dropped, a new split every epoch.
TEST(Batches, ShardsAreDisjointEqualAndCoverTheEpoch) {
  for (int64_t n : {0, 1, 10, 11, 1001}) {
    for (int64_t world : {1, 2, 3, 4}) {
      const auto order = data::epoch_order(n, 5, 2);
      for (bool drop : {false, true}) {
        std::multiset<int64_t> seen;
        size_t count = 0;
        for (int64_t rank = 0; rank < world; ++rank) {
          const auto part = data::shard_order(order, {rank, world, drop});
          if (rank == 0) count = part.size();
          EXPECT_EQ(part.size(), count) << "n " << n << " world " << world;
          seen.insert(part.begin(), part.end());
        }
        const int64_t want = drop ? n / world * world : (n + world - 1) / world * world;
        EXPECT_EQ(static_cast<int64_t>(seen.size()), want) << "n " << n << " world " << world;
        const std::set<int64_t> distinct(seen.begin(), seen.end());
        // Padding goes on from the start of the order (round and round when n < world).
        EXPECT_EQ(static_cast<int64_t>(distinct.size()), std::min(n, want));
        for (int64_t j = 0; j < n && want > n; ++j) {
          size_t times = j < want % n || want % n == 0 ? want / n + (want % n != 0) : want / n;
          EXPECT_EQ(seen.count(order[j]), times) << "n " << n << " world " << world;
        }
      }
    }
  }
  const auto part0 = data::shard_order(data::epoch_order(100, 5, 0), {1, 4});
  EXPECT_NE(part0, data::shard_order(data::epoch_order(100, 5, 1), {1, 4}));
  EXPECT_THROW(data::shard_order(data::epoch_order(10, 5, 0), {4, 4}), Error);
  EXPECT_THROW(data::shard_order(data::epoch_order(10, 5, 0), {0, 0}), Error);
  // The loader over a shard: this rank's examples, batched.
  auto [images, labels] = idx_bytes(25);
  data::Dataset set = data::Dataset::from_idx(write("si", images), write("sl", labels));
  std::set<int64_t> all;
  for (int64_t rank = 0; rank < 2; ++rank) {
    data::BatchLoader loader(set, 5, 1, 0, true, false, {rank, 2, true});
    EXPECT_EQ(loader.num_batches(), 3);
    while (auto batch = loader.next())
      for (int64_t i = 0; i < batch->second.numel(); ++i)
        EXPECT_TRUE(all.insert(std::lround(batch->first.data<float>()[i * 4] * 255)).second);
  }
  EXPECT_EQ(all.size(), 24u);
}

}  // namespace
}  // namespace kiln
