#include <fstream>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

using testing::tmp;

TEST(Tensor, FromAndToVector) {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.dtype(), f32);
  EXPECT_EQ(t.shape(), Shape({2, 3}));
  EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  expect_error([] { Tensor::from_vector<float>({1, 2, 3}, {2, 2}); }, {"3 values", "[2, 2]"});
  expect_error([&] { t.data<double>(); }, {"data<f64>", "f32"});
  expect_error([&] { t.item<float>(); }, {"item()", "[2, 3]"});
  EXPECT_EQ(Tensor::scalar<int64_t>(7).item<int64_t>(), 7);
}

TEST(Tensor, FullCloneReshape) {
  Tensor t = Tensor::full(i32, {3}, 2.9);
  EXPECT_EQ(t.to_vector<int32_t>(), (std::vector<int32_t>{2, 2, 2}));
  Tensor c = t.clone();
  c.data<int32_t>()[0] = 5;
  EXPECT_EQ(t.data<int32_t>()[0], 2);  // clone does not share storage
  Tensor r = t.reshaped({1, 3});
  EXPECT_EQ(r.raw_data(), t.raw_data());  // a view shares storage
  expect_error([&] { t.reshaped({2, 2}); }, {"[3]", "[2, 2]"});
  EXPECT_EQ(Tensor::zeros(f64, {0, 4}).numel(), 0);
  expect_error([] { Tensor::empty(f32, {-1, 3}); }, {"unknown shape"});
  EXPECT_EQ(Tensor::from_vector<float>({1.5f, 2}).to_string(), "f32[2] {1.5, 2}");
}

TEST(Tensor, NpyRoundTripEveryDtype) {
  for (DType d : {f32, f64, f16, i32, i64, u8, boolean}) {
    for (const Shape& s : {Shape{}, Shape{5}, Shape{2, 3}, Shape{0, 2}, Shape{1, 1, 3}}) {
      Tensor t = testing::random_tensor(d, s, -5, 5, 7);
      std::string path = tmp("rt.npy");
      save_npy(t, path);
      Tensor back = load_npy(path);
      EXPECT_TRUE(equal_bits(t, back)) << d << s;
    }
  }
  expect_error<FileError>([] { save_npy(Tensor::zeros(bf16, {2}), tmp("bf.npy")); }, {"bf16"});
}

TEST(Tensor, NpyMalformedFilesAreRejected) {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  std::string good = tmp("good.npy");
  save_npy(t, good);
  std::ifstream in(good, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  auto write = [](const std::string& path, const std::string& data) {
    std::ofstream(path, std::ios::binary) << data;
    return path;
  };
  expect_error<FileError>(
      [&] { load_npy(write(tmp("trunc.npy"), bytes.substr(0, bytes.size() - 3))); },
      {"trunc.npy", "needs 16 bytes"});
  expect_error<FileError>([&] { load_npy(write(tmp("magic.npy"), "hello world, not numpy")); },
                          {"bad magic"});
  std::string fortran = bytes;
  fortran.replace(fortran.find("False"), 5, "True ");
  expect_error<FileError>([&] { load_npy(write(tmp("f.npy"), fortran)); }, {"Fortran"});
  std::string complex = bytes;
  complex.replace(complex.find("<f4"), 3, "<c8");
  expect_error<FileError>([&] { load_npy(write(tmp("c.npy"), complex)); }, {"<c8"});
  expect_error<FileError>([&] { load_npy(write(tmp("h.npy"), bytes.substr(0, 20))); },
                          {"truncated header"});
  expect_error<FileError>([] { load_npy(tmp("missing.npy")); }, {"cannot open"});
  // Every prefix of a valid file is rejected cleanly.
  for (size_t n = 0; n < bytes.size(); ++n)
    EXPECT_THROW(load_npy(write(tmp("p.npy"), bytes.substr(0, n))), FileError) << n;
}

}  // namespace
}  // namespace kiln
