// The checkpoint file format: version 2 (a checksummed header, then the tensors' bytes) round
// trips every dtype, version 1 files still load, and every kind of damage is refused by name
// before a tensor is allocated.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "framework/checkpoint.pb.h"
#include "kiln/framework/crc32c.h"
#include "kiln/framework/graph_io.h"
#include "kiln/runtime/checkpoint.h"
#include "test_util.h"

// GCC says __SANITIZE_*__, clang __has_feature.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KILN_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KILN_TEST_SANITIZED 1
#endif
#endif
#ifndef KILN_TEST_SANITIZED
#define KILN_TEST_SANITIZED 0
#endif

namespace kiln {
namespace {

using testing::expect_error;
using testing::tmp;

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  std::ofstream(tmp(name), std::ios::binary) << bytes;
  return tmp(name);
}

std::string little_endian(uint64_t value, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
  return out;
}

// A version 2 file of `header` and `data`, with the header's length and CRC right: what a
// writer with other intentions than Kiln's could produce.
std::string version_2_file(const proto::CheckpointHeader& header, const std::string& data) {
  std::string h;
  header.SerializeToString(&h);
  return "KILNCKP2" + little_endian(h.size(), 8) + h +
         little_endian(crc32c(h.data(), h.size()), 4) + data;
}

proto::CheckpointHeader header_of(const std::string& name, DType dtype, std::vector<int64_t> dims,
                                  const std::string& data) {
  proto::CheckpointHeader header;
  header.set_version(2);
  proto::CheckpointEntry* entry = header.add_tensors();
  entry->set_name(name);
  entry->set_dtype(static_cast<int32_t>(dtype));
  for (int64_t d : dims) entry->add_dims(d);
  entry->set_crc32c(crc32c(data.data(), data.size()));
  return header;
}

std::map<std::string, Tensor> every_dtype() {
  std::map<std::string, Tensor> tensors;
  uint32_t seed = 1;
  for (DType dtype : {f32, f64, f16, bf16, i32, i64, u8, boolean})
    for (const Shape& shape : {Shape{2, 3}, Shape{}, Shape{0, 5}})
      tensors[str(dtype, shape.rank(), "/", shape.numel())] =
          testing::random_tensor(dtype, shape, 0, 100, seed++);
  return tensors;
}

// The instruction path and the table agree, on RFC 3720's check values and at every length and
// alignment, whole or continued.
TEST(Crc32c, TheInstructionAndTheTableAgree) {
  const std::string digits = "123456789";
  EXPECT_EQ(crc32c(digits.data(), digits.size()), 0xE3069283u);
  EXPECT_EQ(crc32c_bytewise(digits.data(), digits.size()), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  std::string bytes(300, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 2654435761u >> 13);
  for (size_t start = 0; start < 9; ++start)
    for (size_t size = 0; start + size <= bytes.size(); size += 7) {
      const char* p = bytes.data() + start;
      const uint32_t want = crc32c_bytewise(p, size);
      ASSERT_EQ(crc32c(p, size), want) << start << " " << size;
      ASSERT_EQ(crc32c(p + size / 3, size - size / 3, crc32c(p, size / 3)), want);
    }
}

TEST(CheckpointFormat, EveryDtypeAndShapeRoundTrips) {
  const std::map<std::string, Tensor> tensors = every_dtype();
  write_checkpoint(tensors, tmp("every_dtype.ckpt"));
  const std::string bytes = file_bytes(tmp("every_dtype.ckpt"));
  EXPECT_EQ(bytes.substr(0, 8), "KILNCKP2");
  for (const auto& read :
       {read_checkpoint(tmp("every_dtype.ckpt")), parse_checkpoint(bytes, "memory")}) {
    ASSERT_EQ(read.size(), tensors.size());
    for (const auto& [name, tensor] : tensors) {
      ASSERT_TRUE(read.count(name)) << name;
      EXPECT_TRUE(equal_bits(read.at(name), tensor)) << name;
    }
  }
  write_checkpoint(std::map<std::string, Tensor>{}, tmp("nothing.ckpt"));
  EXPECT_TRUE(read_checkpoint(tmp("nothing.ckpt")).empty());
}

// A checkpoint of sources fetches each value once, in order, and releases it before the next
// (a device's model is on the host one variable at a time): the file is the format's, its
// header's checksums filled in at the end (an empty tensor's is 0, serialized all the same). A
// source that gives another type, or fails, leaves the old file and no temporary.
TEST(CheckpointFormat, SourcesAreFetchedOneAtATime) {
  const std::map<std::string, Tensor> tensors = every_dtype();
  std::vector<std::weak_ptr<Storage>> fetched;
  std::vector<CheckpointSource> sources;
  proto::CheckpointHeader header;
  header.set_version(2);
  header.set_producer("kiln 0.1.0");
  std::string data;
  for (const auto& [name, tensor] : tensors) {
    sources.push_back({name, tensor.dtype(), tensor.shape(), [&fetched, tensor = tensor] {
                         for (const auto& earlier : fetched) EXPECT_TRUE(earlier.expired());
                         Tensor copy = tensor.clone();  // as a device variable's copy is new
                         fetched.push_back(copy.storage());
                         return copy;
                       }});
    proto::CheckpointEntry* entry = header.add_tensors();
    entry->set_name(name);
    entry->set_dtype(static_cast<int32_t>(tensor.dtype()));
    for (int64_t d : tensor.shape()) entry->add_dims(d);
    entry->set_crc32c(crc32c(tensor.raw_data(), tensor.nbytes()));
    data.append(static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
  }
  const std::string path = tmp("sources.ckpt");
  write_checkpoint(sources, path);
  EXPECT_EQ(fetched.size(), tensors.size());
  EXPECT_EQ(file_bytes(path), version_2_file(header, data));

  const CheckpointReader reader(path);
  ASSERT_EQ(reader.entries().size(), tensors.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    EXPECT_EQ(reader.entries()[i].name, sources[i].name);
    EXPECT_EQ(reader.entries()[i].dtype, sources[i].dtype);
    EXPECT_EQ(reader.entries()[i].shape, sources[i].shape);
    EXPECT_TRUE(equal_bits(reader.read(i), tensors.at(sources[i].name))) << sources[i].name;
  }

  const std::string before = file_bytes(path);
  auto no_temporary = [&] {
    for (const auto& file :
         std::filesystem::directory_iterator(std::filesystem::path(path).parent_path()))
      EXPECT_EQ(file.path().filename().string().find("sources.ckpt.tmp"), std::string::npos);
  };
  std::vector<CheckpointSource> wrong = {{"w", f32, {2, 3}, [] {
                                            return Tensor::zeros(f64, {2, 3});
                                          }}};
  expect_error<FileError>([&] { write_checkpoint(wrong, path); },
                          {path, "variable 'w' should be a host tensor f32[2, 3], got f64[2, 3]"});
  wrong[0].host_value = [] { return Tensor::zeros(f32, {3, 2}); };
  expect_error<FileError>([&] { write_checkpoint(wrong, path); }, {"got f32[3, 2]"});
  wrong[0].host_value = [] { return Tensor(); };
  expect_error<FileError>([&] { write_checkpoint(wrong, path); }, {"got an undefined tensor"});
  wrong[0].host_value = []() -> Tensor { throw DeviceError("[cuda] copy failed"); };
  expect_error<DeviceError>([&] { write_checkpoint(wrong, path); }, {"copy failed"});
  wrong.push_back(wrong[0]);
  expect_error<FileError>([&] { write_checkpoint(wrong, path); }, {"variable 'w' is given twice"});
  EXPECT_EQ(file_bytes(path), before);
  no_temporary();
}

// Files written before version 2 (one protobuf message holding every tensor) still load.
TEST(CheckpointFormat, VersionOneFilesStillLoad) {
  Graph g;
  Value w = g.variable("w", {3, 2}, init::zeros());
  g.variable("global_step", {}, init::zeros(), i64, false);
  const Tensor saved = testing::random_tensor(f32, {3, 2}, -1, 1, 7);
  proto::Checkpoint v1;
  v1.set_version(1);
  for (const auto& [name, tensor] :
       std::map<std::string, Tensor>{{"w", saved}, {"global_step", Tensor::scalar<int64_t>(12)}}) {
    proto::CheckpointVariable* var = v1.add_variables();
    var->set_name(name);
    tensor_to_proto(tensor, var->mutable_value());
    var->set_crc32c(crc32c(tensor.raw_data(), tensor.nbytes()));
  }
  std::string bytes;
  v1.SerializeToString(&bytes);
  Session s(g);
  s.restore_checkpoint(write_bytes("v1.ckpt", bytes));
  EXPECT_TRUE(equal_bits(s.variable_value(w), saved));
  EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), 12);
  // Saved again, it is a version 2 file with the same values.
  s.save_checkpoint(tmp("v1_again.ckpt"));
  EXPECT_EQ(file_bytes(tmp("v1_again.ckpt")).substr(0, 8), "KILNCKP2");
  EXPECT_TRUE(equal_bits(read_checkpoint(tmp("v1_again.ckpt")).at("w"), saved));

  v1.set_version(3);
  v1.SerializeToString(&bytes);
  expect_error<FileError>([&] { read_checkpoint(write_bytes("v3.ckpt", bytes)); },
                          {"v3.ckpt", "unsupported checkpoint version 3", "reads 1 and 2"});
}

TEST(CheckpointFormat, EveryDamageIsRefusedByName) {
  const Tensor w = testing::random_tensor(f32, {4, 3}, -1, 1, 3);
  write_checkpoint({{"w", w}, {"b", Tensor::zeros(f32, {3})}}, tmp("good2.ckpt"));
  const std::string good = file_bytes(tmp("good2.ckpt"));
  auto refused = [&](const std::string& bytes, const std::vector<std::string>& parts) {
    expect_error<FileError>([&] { read_checkpoint(write_bytes("bad2.ckpt", bytes)); }, parts);
    expect_error<FileError>([&] { parse_checkpoint(bytes, "bad2.ckpt"); }, parts);
  };
  // Every truncation and every byte appended.
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(parse_checkpoint(good.substr(0, n), "cut.ckpt"), FileError) << n;
  refused(good.substr(0, good.size() - 1), {"bad2.ckpt", "truncated"});
  refused(good.substr(0, 12), {"truncated"});
  refused(good + "x", {"bytes after the last"});
  refused("", {"the file is empty"});
  // The header's length, its bytes, and a tensor's bytes.
  std::string damaged = good;
  damaged[15] = '\x7f';
  refused(damaged, {"the header claims", "truncated or corrupt"});
  damaged = good;
  damaged[20] = static_cast<char>(damaged[20] ^ 1);
  refused(damaged, {"header checksum mismatch"});
  damaged = good;
  damaged[good.size() - 5] = static_cast<char>(damaged[good.size() - 5] ^ 1);
  refused(damaged, {"variable 'w'", "checksum mismatch"});

  // Headers with their CRC right but lying: each refused before any tensor is allocated.
  const std::string four(4, '\0');
  refused(version_2_file(header_of("x", f32, {1 << 20, 1 << 20, 1 << 20}, four), four),
          {"variable 'x'", "more than 2^40 elements"});
  refused(version_2_file(header_of("x", f32, {-1}, four), four), {"negative dim -1"});
  proto::CheckpointHeader bad_dtype = header_of("x", f32, {1}, four);
  bad_dtype.mutable_tensors(0)->set_dtype(99);
  refused(version_2_file(bad_dtype, four), {"invalid dtype 99"});
  refused(version_2_file(header_of("x", f32, {1 << 20}, four), four),
          {"the tensors up to 'x' need 4194304 bytes", "the file holds 4", "truncated"});
  proto::CheckpointHeader twice = header_of("x", f32, {1}, four);
  *twice.add_tensors() = twice.tensors(0);
  refused(version_2_file(twice, four + four), {"variable 'x'", "appears twice"});
  proto::CheckpointHeader wrong_version = header_of("x", f32, {1}, four);
  wrong_version.set_version(5);
  refused(version_2_file(wrong_version, four), {"says version 5"});
  // A bool byte other than 0 or 1 is read as true.
  const std::string bools("\x00\x02\x01", 3);
  const auto read =
      parse_checkpoint(version_2_file(header_of("m", boolean, {3}, bools), bools), "bools.ckpt");
  EXPECT_EQ(read.at("m").to_vector<bool>(), std::vector<bool>({false, true, true}));
}

// A checkpoint past 2 GiB (the most version 1 could hold) writes and reads back. Skipped under
// the sanitizers (they make it minutes long; the small tests cover the same code there) and
// where the scratch folder has no room.
TEST(CheckpointFormat, PastTwoGibibytes) {
#if KILN_TEST_SANITIZED
  GTEST_SKIP() << "skipped under the sanitizers";
#endif
  const int64_t big = (int64_t{2} << 30) + 4096 + 3;
  const auto free_bytes = std::filesystem::space(std::filesystem::path(tmp("")).parent_path());
  if (free_bytes.available < static_cast<uintmax_t>(3 * big))
    GTEST_SKIP() << "the scratch folder has " << free_bytes.available << " bytes free";
  Tensor large = Tensor::empty(u8, {big});
  auto* p = static_cast<uint8_t*>(large.raw_data());
  for (int64_t i = 0; i < big; ++i) p[i] = static_cast<uint8_t>(i * 2654435761u >> 24);
  const Tensor small = testing::random_tensor(f32, {5}, -1, 1, 9);
  write_checkpoint({{"large", large}, {"small", small}}, tmp("large.ckpt"));
  EXPECT_GT(std::filesystem::file_size(tmp("large.ckpt")), static_cast<uintmax_t>(big));
  {
    const std::map<std::string, Tensor> read = read_checkpoint(tmp("large.ckpt"));
    EXPECT_TRUE(equal_bits(read.at("large"), large));
    EXPECT_TRUE(equal_bits(read.at("small"), small));
  }
  std::filesystem::remove(tmp("large.ckpt"));
}

}  // namespace
}  // namespace kiln
