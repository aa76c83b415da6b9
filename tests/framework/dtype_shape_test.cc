#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

TEST(DType, NamesRoundTripAndSizes) {
  for (DType d : {f32, f64, f16, bf16, i32, i64, u8, boolean})
    EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
  EXPECT_EQ(dtype_size(f32), 4u);
  EXPECT_EQ(dtype_size(f64), 8u);
  EXPECT_EQ(dtype_size(f16), 2u);
  EXPECT_EQ(dtype_size(bf16), 2u);
  EXPECT_EQ(dtype_size(i64), 8u);
  EXPECT_EQ(dtype_size(boolean), 1u);
  EXPECT_TRUE(is_floating(bf16));
  EXPECT_FALSE(is_floating(i32));
  EXPECT_TRUE(is_integer(u8));
  EXPECT_FALSE(dtype_is_valid(0));
  EXPECT_FALSE(dtype_is_valid(9));
  expect_error([] { dtype_from_name("float128"); }, {"[dtype]", "float128"});
}

TEST(DType, HalfConversionMatchesIeee) {
  // Exactly representable values, the largest half, a subnormal, and rounding to even.
  EXPECT_EQ(Half(1.0f).bits, 0x3c00);
  EXPECT_EQ(Half(-2.0f).bits, 0xc000);
  EXPECT_EQ(Half(65504.0f).bits, 0x7bff);
  EXPECT_EQ(Half(1e6f).bits, 0x7c00);                    // overflow -> inf
  EXPECT_EQ(Half(5.9604644775390625e-8f).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(Half(1.0f + 1.0f / 2048).bits, 0x3c00);      // halfway: rounds to even (down)
  EXPECT_EQ(Half(1.0f + 3.0f / 2048).bits, 0x3c02);      // halfway: rounds to even (up)
  EXPECT_TRUE(std::isnan(static_cast<float>(Half(std::nanf("")))));
  for (uint32_t bits = 0; bits < 0x7c00; bits += 7) {  // every finite positive half, sampled
    Half h;
    h.bits = static_cast<uint16_t>(bits);
    EXPECT_EQ(Half(static_cast<float>(h)).bits, bits);
  }
}

TEST(DType, BFloat16ConversionRoundsToNearestEven) {
  EXPECT_EQ(BFloat16(1.0f).bits, 0x3f80);
  EXPECT_EQ(static_cast<float>(BFloat16(3.140625f)), 3.140625f);
  float halfway;
  uint32_t x = 0x3f808000u;  // exactly between 0x3f80 and 0x3f81
  std::memcpy(&halfway, &x, 4);
  EXPECT_EQ(BFloat16(halfway).bits, 0x3f80);
  x = 0x3f818000u;
  std::memcpy(&halfway, &x, 4);
  EXPECT_EQ(BFloat16(halfway).bits, 0x3f82);
  EXPECT_TRUE(std::isnan(static_cast<float>(BFloat16(std::nanf("")))));
}

TEST(DType, ConvertRules) {
  EXPECT_EQ(convert<int32_t>(-2.7), -2);  // truncation toward zero
  EXPECT_EQ(convert<bool>(0.5f), true);
  EXPECT_EQ(convert<bool>(0), false);
  EXPECT_EQ(convert<float>(Half(0.5f)), 0.5f);
  EXPECT_EQ(convert<int64_t>(int64_t{1} << 60), int64_t{1} << 60);  // no trip through float
}

TEST(Shape, BasicsAndPrinting) {
  Shape s{2, 3, 4};
  EXPECT_EQ(s.rank(), 3);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s[-1], 4);
  EXPECT_EQ(s.strides(), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(Shape({-1, 784}).to_string(), "[?, 784]");
  EXPECT_EQ(Shape{}.numel(), 1);
  EXPECT_EQ(Shape({0, 5}).numel(), 0);
  EXPECT_TRUE(Shape({-1, 3}).compatible_with({7, 3}));
  EXPECT_FALSE(Shape({-1, 3}).compatible_with({7, 4}));
  EXPECT_FALSE(Shape({3}).compatible_with({3, 1}));
  expect_error([] { Shape({-1, 3}).numel(); }, {"unknown"});
  expect_error([] { Shape({int64_t{1} << 40, int64_t{1} << 40}).numel(); }, {"2^62"});
}

TEST(Shape, BroadcastFollowsNumpy) {
  struct Case {
    Shape a, b, out;
  };
  for (const Case& c : std::vector<Case>{{{2, 3}, {3}, {2, 3}},
                                         {{2, 1}, {1, 3}, {2, 3}},
                                         {{}, {4, 5}, {4, 5}},
                                         {{0, 1}, {1, 7}, {0, 7}},
                                         {{5, 1, 4}, {3, 1}, {5, 3, 4}},
                                         {{-1, 1}, {1, 3}, {-1, 3}},
                                         {{-1}, {4}, {4}},
                                         {{-1}, {1}, {-1}}}) {
    Shape out;
    ASSERT_TRUE(broadcast_shapes(c.a, c.b, &out)) << c.a << " " << c.b;
    EXPECT_EQ(out, c.out) << c.a << " " << c.b;
  }
  Shape out;
  EXPECT_FALSE(broadcast_shapes({2, 3}, {4}, &out));
  EXPECT_FALSE(broadcast_shapes({0}, {2}, &out));
}

TEST(Device, ParseAndAvailability) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  // A GPU name is checked at once: usable here, or a DeviceError that says why.
  const CudaAvailability& cuda = cuda_availability();
  if (cuda.device_count > 0)
    EXPECT_EQ(Device::parse("cuda:0"), Device::cuda(0));
  else
    expect_error<DeviceError>([] { Device::parse("cuda:0"); },
                              {"[device] cuda:0 is not available", cuda.reason});
  expect_error<DeviceError>([] { Device::parse("cuda:999"); }, {"cuda:999", "not available"});
  EXPECT_EQ(Device::cuda(1).to_string(), "cuda:1");
  expect_error([] { Device::parse("tpu"); }, {"[device]", "tpu"});
  expect_error([] { Device::parse("cuda:x"); }, {"cuda:x"});
  // best() is the CPU exactly when CUDA reports no device, with a reason why.
  if (cuda.device_count == 0) {
    EXPECT_EQ(Device::best(), Device::cpu());
    EXPECT_FALSE(cuda.reason.empty());
    expect_error<DeviceError>([] { check_device_usable(Device::cuda(0)); },
                              {"[device]", "cuda:0", cuda.reason});
  } else {
    EXPECT_EQ(Device::best(), Device::cuda(0));
  }
}

}  // namespace
}  // namespace kiln
