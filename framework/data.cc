#include "kiln/framework/data.h"

#include <zlib.h>

#include <cstring>
#include <numeric>
#include <random>

#include "kiln/framework/graph_io.h"

namespace kiln::data {

namespace {

// Whole file, gunzipped when it starts with the gzip magic. Bounded: 4 GiB uncompressed.
std::string read_maybe_gzip(const std::string& path) {
  std::string raw = read_file(path, size_t{1} << 32);
  if (raw.size() < 2 || static_cast<uint8_t>(raw[0]) != 0x1f ||
      static_cast<uint8_t>(raw[1]) != 0x8b)
    return raw;
  z_stream z{};
  KILN_CHECK(inflateInit2(&z, 16 + MAX_WBITS) == Z_OK, FileError, "[data] ", path,
             ": cannot start gzip decompression");
  z.next_in = reinterpret_cast<Bytef*>(raw.data());
  z.avail_in = static_cast<uInt>(raw.size());
  std::string out;
  char buffer[1 << 16];
  int status;
  do {
    z.next_out = reinterpret_cast<Bytef*>(buffer);
    z.avail_out = sizeof buffer;
    status = inflate(&z, Z_NO_FLUSH);
    if (status != Z_OK && status != Z_STREAM_END) {
      std::string message = z.msg ? z.msg : "corrupt data";
      inflateEnd(&z);
      throw FileError(str("[data] ", path, ": gzip data is corrupt (", message, ")"));
    }
    out.append(buffer, sizeof buffer - z.avail_out);
    if (out.size() > (size_t{1} << 32)) {
      inflateEnd(&z);
      throw FileError(str("[data] ", path, ": more than 4 GiB uncompressed"));
    }
    if (status != Z_STREAM_END && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      throw FileError(str("[data] ", path, ": gzip data is truncated"));
    }
  } while (status != Z_STREAM_END);
  inflateEnd(&z);
  return out;
}

uint32_t big_endian_u32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

}  // namespace

Tensor read_idx(const std::string& path) {
  const std::string data = read_maybe_gzip(path);
  const std::string where = str("[data] ", path);
  KILN_CHECK(data.size() >= 4 && data[0] == 0 && data[1] == 0, FileError, where,
             ": not an IDX file (bad magic)");
  const uint8_t type = static_cast<uint8_t>(data[2]);
  const int rank = static_cast<uint8_t>(data[3]);
  size_t element = 0;
  switch (type) {
    case 0x08:
    case 0x09:
      element = 1;
      break;
    case 0x0B:
      element = 2;
      break;
    case 0x0C:
    case 0x0D:
      element = 4;
      break;
    case 0x0E:
      element = 8;
      break;
    default:
      throw FileError(str(where, ": unknown IDX element type 0x", std::hex, int(type)));
  }
  KILN_CHECK(rank >= 1 && data.size() >= 4 + 4 * size_t(rank), FileError, where,
             ": truncated header");
  std::vector<int64_t> dims;
  uint64_t count = 1;
  for (int d = 0; d < rank; ++d) {
    dims.push_back(big_endian_u32(data, 4 + 4 * d));
    count *= static_cast<uint64_t>(dims.back());
    KILN_CHECK(count <= (uint64_t{1} << 34), FileError, where, ": implausible dims");
  }
  const size_t offset = 4 + 4 * size_t(rank);
  KILN_CHECK(data.size() - offset == count * element, FileError, where, ": the header announces ",
             Shape(dims), " (", count * element, " bytes of data), the file has ",
             data.size() - offset);
  const char* p = data.data() + offset;
  auto be = [&](size_t i, size_t width) {  // big-endian element i of `width` bytes
    uint64_t v = 0;
    for (size_t b = 0; b < width; ++b) v = (v << 8) | uint8_t(p[i * width + b]);
    return v;
  };
  Tensor t;
  if (type == 0x08) {
    t = Tensor::empty(u8, Shape(dims));
    std::memcpy(t.raw_data(), p, count);
  } else if (type == 0x0D || type == 0x0E) {
    t = Tensor::empty(type == 0x0D ? f32 : f64, Shape(dims));
    for (size_t i = 0; i < count; ++i) {
      uint64_t bits = be(i, element);
      if (type == 0x0D) {
        uint32_t b32 = static_cast<uint32_t>(bits);
        std::memcpy(t.data<float>() + i, &b32, 4);
      } else {
        std::memcpy(t.data<double>() + i, &bits, 8);
      }
    }
  } else {
    t = Tensor::empty(i32, Shape(dims));
    for (size_t i = 0; i < count; ++i) {
      uint64_t bits = be(i, element);
      int32_t v = type == 0x09   ? int32_t(int8_t(bits))
                  : type == 0x0B ? int32_t(int16_t(bits))
                                 : int32_t(uint32_t(bits));
      t.data<int32_t>()[i] = v;
    }
  }
  return t;
}

Dataset::Dataset(Tensor inputs, Tensor labels)
    : inputs_(std::move(inputs)), labels_(std::move(labels)) {
  KILN_CHECK(inputs_.rank() >= 1 && labels_.rank() == 1 && inputs_.shape()[0] == labels_.shape()[0],
             Error, "[data] inputs ", inputs_.shape(), " and labels ", labels_.shape(),
             " do not have one label per example");
}

Dataset Dataset::from_idx(const std::string& images_path, const std::string& labels_path) {
  Tensor images = read_idx(images_path);
  Tensor labels = read_idx(labels_path);
  KILN_CHECK(images.dtype() == u8 && images.rank() >= 2, FileError, "[data] ", images_path,
             ": expected u8 images [N, rows, cols], got ", images.dtype(), images.shape());
  KILN_CHECK(labels.rank() == 1, FileError, "[data] ", labels_path, ": expected labels [N], got ",
             labels.shape());
  KILN_CHECK(images.shape()[0] == labels.shape()[0], FileError, "[data] ", images_path, " has ",
             images.shape()[0], " images but ", labels_path, " has ", labels.shape()[0], " labels");
  const int64_t n = images.shape()[0];
  const int64_t features = images.numel() / std::max<int64_t>(n, 1);
  Tensor x = Tensor::empty(f32, {n, features});
  const uint8_t* in = images.data<uint8_t>();
  float* out = x.data<float>();
  for (int64_t i = 0; i < images.numel(); ++i) out[i] = in[i] * (1.0f / 255.0f);
  Tensor y = Tensor::empty(i64, {n});
  for (int64_t i = 0; i < n; ++i) y.data<int64_t>()[i] = static_cast<int64_t>(labels.element(i));
  return Dataset(std::move(x), std::move(y));
}

std::pair<Tensor, Tensor> Dataset::gather(const std::vector<int64_t>& indices) const {
  const int64_t count = static_cast<int64_t>(indices.size());
  std::vector<int64_t> dims = inputs_.shape().dims();
  dims[0] = count;
  Tensor x = Tensor::empty(inputs_.dtype(), Shape(dims));
  Tensor y = Tensor::empty(labels_.dtype(), Shape{count});
  const size_t row = inputs_.nbytes() / std::max<int64_t>(size(), 1);
  const size_t label_size = dtype_size(labels_.dtype());
  for (int64_t i = 0; i < count; ++i) {
    KILN_CHECK(indices[i] >= 0 && indices[i] < size(), Error, "[data] index ", indices[i],
               " is outside a dataset of ", size());
    std::memcpy(static_cast<char*>(x.raw_data()) + i * row,
                static_cast<const char*>(inputs_.raw_data()) + indices[i] * row, row);
    std::memcpy(static_cast<char*>(y.raw_data()) + i * label_size,
                static_cast<const char*>(labels_.raw_data()) + indices[i] * label_size, label_size);
  }
  return {x, y};
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (!shuffle) return order;
  // Fisher-Yates with a 64-bit Mersenne Twister: its output is specified by the standard, so
  // the order is the same with every compiler and library (std::shuffle's is not).
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<int64_t> shard_order(const std::vector<int64_t>& order, const Shard& shard) {
  KILN_CHECK(shard.world_size >= 1 && shard.rank >= 0 && shard.rank < shard.world_size, Error,
             "[data] shard rank ", shard.rank, " is outside a world of ", shard.world_size);
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t per_rank =
      shard.drop_tail ? n / shard.world_size : (n + shard.world_size - 1) / shard.world_size;
  std::vector<int64_t> part;
  part.reserve(static_cast<size_t>(per_rank));
  for (int64_t k = 0; k < per_rank; ++k) {
    const int64_t i = shard.rank + k * shard.world_size;  // in the padded order
    part.push_back(order[static_cast<size_t>(i % n)]);    // per_rank > 0 implies n > 0
  }
  return part;
}

BatchLoader::BatchLoader(const Dataset& dataset, int64_t batch_size, uint64_t seed, int64_t epoch,
                         bool shuffle, bool drop_last, const Shard& shard)
    : dataset_(dataset),
      order_(shard_order(epoch_order(dataset.size(), seed, epoch, shuffle), shard)),
      batch_size_(batch_size) {
  KILN_CHECK(batch_size > 0, Error, "[data] batch size must be > 0, got ", batch_size);
  const int64_t n = static_cast<int64_t>(order_.size());
  num_batches_ = drop_last ? n / batch_size : (n + batch_size - 1) / batch_size;
  prefetch(0);
}

BatchLoader::~BatchLoader() {
  if (worker_.joinable()) worker_.join();
}

void BatchLoader::prefetch(int64_t batch) {
  if (batch >= num_batches_) return;
  has_prepared_ = false;
  worker_ = std::thread([this, batch] {
    try {
      int64_t begin = batch * batch_size_;
      int64_t end = std::min<int64_t>(begin + batch_size_, static_cast<int64_t>(order_.size()));
      auto result =
          dataset_.gather(std::vector<int64_t>(order_.begin() + begin, order_.begin() + end));
      std::lock_guard<std::mutex> lock(mutex_);
      prepared_ = std::move(result);
      has_prepared_ = true;
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::current_exception();
      has_prepared_ = true;
    }
    ready_.notify_one();
  });
}

std::optional<std::pair<Tensor, Tensor>> BatchLoader::next() {
  if (next_batch_ >= num_batches_) return std::nullopt;
  std::optional<std::pair<Tensor, Tensor>> batch;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return has_prepared_; });
    if (error_) std::rethrow_exception(error_);
    batch = std::move(prepared_);
  }
  worker_.join();
  prefetch(++next_batch_);
  return batch;
}

}  // namespace kiln::data
