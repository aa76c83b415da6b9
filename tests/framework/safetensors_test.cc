// Safetensors files (framework/safetensors.h) and the JSON reader under them (framework/json.h):
// a file written by the reference Python package, round trips of every dtype, sharded
// checkpoints, and every way an untrusted file can be malformed.
#include <filesystem>

#include "kiln/framework/file_io.h"
#include "kiln/framework/json.h"
#include "kiln/framework/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::tmp;

// The 8-byte little-endian length, then `header`, then `data`.
std::string file_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

// A header of one tensor entry plus what the test adds.
std::string one_tensor(const std::string& entry) {
  return "{\"t\":" + entry + "}";
}

void expect_file_error(const std::string& header, const std::string& data,
                       const std::vector<std::string>& parts) {
  expect_error<FileError>([&] { parse_safetensors(file_bytes(header, data), "bad.safetensors"); },
                          parts);
}

// What safetensors 0.8.0's safetensors.torch.save wrote for
//   {"embed.weight": bf16 [[1.5, -2], [0.25, 3]], "head.bias": f32 [1, 2, -3],
//    "mask": bool [True, False], "step": i64 7}, metadata={"format": "pt"}.
TEST(Safetensors, ReadsWhatTheReferenceWriterWrote) {
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},\"step\":{\"dtype\":\"I64\",\"shape\":[],"
      "\"data_offsets\":[0,8]},\"head.bias\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":"
      "[8,20]},\"embed.weight\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[20,28]},"
      "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[28,30]}}   ";
  const std::string data(
      "\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\xc0\xc0\x3f"
      "\x00\xc0\x80\x3e\x40\x40\x01\x00",
      30);
  ASSERT_EQ(header.size(), 0x118u);  // the length the reference writer put first
  const SafetensorsFile file = parse_safetensors(file_bytes(header, data), "reference");
  ASSERT_EQ(file.tensors.size(), 4u);
  EXPECT_EQ(file.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  const Tensor& embed = file.at("embed.weight");
  EXPECT_EQ(embed.dtype(), bf16);
  EXPECT_EQ(embed.shape(), Shape({2, 2}));
  EXPECT_EQ(embed.to_vector<float>(), (std::vector<float>{1.5f, -2.f, 0.25f, 3.f}));
  EXPECT_EQ(file.at("head.bias").to_vector<float>(), (std::vector<float>{1.f, 2.f, -3.f}));
  EXPECT_EQ(file.at("mask").to_vector<int>(), (std::vector<int>{1, 0}));
  EXPECT_EQ(file.at("step").shape(), Shape({}));
  EXPECT_EQ(file.at("step").item<int64_t>(), 7);
}

TEST(Safetensors, EveryDTypeRoundTripsThroughAFile) {
  std::map<std::string, Tensor> tensors = {
      {"f32", Tensor::from_vector<float>({1.5f, -2.f, 3.25f, 0.f, 5.f, -6.f}, {2, 3})},
      {"f64", Tensor::from_vector<double>({1e-300, -2.5})},
      {"f16", Tensor::full(f16, {3}, -0.75)},
      {"bf16", Tensor::full(bf16, {1, 2}, 96)},
      {"i32", Tensor::from_vector<int32_t>({-7, 8, 9})},
      {"i64", Tensor::scalar<int64_t>(int64_t{1} << 40)},
      {"u8", Tensor::from_vector<uint8_t>({0, 255})},
      {"bool", Tensor::from_vector<bool>({true, false, true})},
      {"empty", Tensor::zeros(f32, {2, 0, 3})},
      {"name with \"quotes\" and \\ and \xc3\xa9", Tensor::scalar<float>(4.f)}};
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "a\nb\"c"}};
  const std::string path = tmp("round_trip.safetensors");
  save_safetensors(tensors, path, metadata);
  const SafetensorsFile file = load_safetensors(path);
  EXPECT_EQ(file.source, path);
  EXPECT_EQ(file.metadata, metadata);
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (const auto& [name, tensor] : tensors) {
    EXPECT_TRUE(equal_bits(file.at(name), tensor)) << name;
    EXPECT_EQ(file.at(name).shape(), tensor.shape()) << name;
  }
  // The layout the reference writer uses: a header padded to 8 bytes, then the tensors largest
  // element first, so each starts aligned to its element size.
  const std::string bytes = read_file(path, 1 << 20);
  const size_t length = static_cast<uint8_t>(bytes[0]) | (static_cast<uint8_t>(bytes[1]) << 8);
  EXPECT_EQ(length % 8, 0u);
  const JsonValue header = parse_json(std::string_view(bytes).substr(8, length), path);
  uint64_t begin = 0;
  ASSERT_TRUE(header.find("f64")->find("data_offsets")->items()[0].to_uint64(&begin));
  EXPECT_EQ(begin, 0u);
  ASSERT_TRUE(header.find("u8")->find("data_offsets")->items()[0].to_uint64(&begin));
  EXPECT_EQ(begin, 8u * 2 + 8 + 4 * 6 + 4 + 4 * 3 + 2 * 3 + 2 * 2 + 3);  // after "bool"
  EXPECT_EQ(serialize_safetensors(tensors, metadata), bytes);
}

TEST(Safetensors, BoolBytesBecomeZeroOrOne) {
  const SafetensorsFile file = parse_safetensors(
      file_bytes(one_tensor("{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[0,3]}"),
                 std::string("\x07\x00\xff", 3)),
      "bools");
  const Tensor& t = file.at("t");
  const auto* bytes = static_cast<const uint8_t*>(t.raw_data());
  EXPECT_EQ(bytes[0], 1);
  EXPECT_EQ(bytes[1], 0);
  EXPECT_EQ(bytes[2], 1);
}

TEST(Safetensors, MalformedHeadersAreRefusedWithTheReason) {
  const std::string f32x2 = "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  const std::string eight(8, '\0');
  expect_error<FileError>([] { parse_safetensors("abc", "tiny"); },
                          {"[safetensors] tiny", "3 bytes is too short"});
  std::string too_long = file_bytes("{}", "");
  too_long[0] = 100;
  expect_error<FileError>([&] { parse_safetensors(too_long, "cut"); },
                          {"cut", "header is 100 bytes", "only 2", "truncated"});
  std::string huge = file_bytes("{}", "");
  huge[7] = 1;
  expect_error<FileError>([&] { parse_safetensors(huge, "huge"); },
                          {"huge", "more than the format's limit of 100000000"});
  expect_file_error("[1]", "", {"bad.safetensors", "does not start with '{'"});
  expect_file_error("{\"t\": 1,}", "", {"[json] bad.safetensors", "byte 8", "string key"});
  expect_file_error("{\"t\":" + f32x2 + ",\"t\":" + f32x2 + "}", eight,
                    {"the key \"t\" appears twice"});
  expect_file_error("{\"t\": 3}", "", {"tensor 't'", "is a number, not an object"});
  expect_file_error(one_tensor("{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}"), eight,
                    {"tensor 't'", "unknown dtype \"F7\""});
  expect_file_error(one_tensor("{\"dtype\":\"I8\",\"shape\":[8],\"data_offsets\":[0,8]}"), eight,
                    {"tensor 't'", "dtype I8 is not one Kiln has", "cast"});
  expect_file_error(one_tensor("{\"shape\":[2],\"data_offsets\":[0,8]}"), eight,
                    {"\"dtype\" is missing"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}"), eight,
                    {"\"shape\" is missing or not an array"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}"), eight,
                    {"\"shape\" holds -2", "not an integer"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}"), eight,
                    {"\"shape\" holds 2.0"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}"),
                    eight, {"\"shape\" holds a string"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}"), eight,
                    {"data_offsets must be [begin, end]"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}"), eight,
                    {"begin <= end <= 8", "it has [8, 0]"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}"), eight,
                    {"begin <= end <= 8", "it has [0, 16]"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}"), eight,
                    {"tensor 't'", "F32[3] needs 12 bytes", "[0, 8] hold 8"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                               "\"data_offsets\":[0,8]}"),
                    eight, {"needs over 2^64 bytes"});
  expect_file_error(
      one_tensor("{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4,0],\"data_offsets\":[0,0]}"),
      "", {"is too large"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999"
                               "999999999999]}"),
                    eight, {"\"data_offsets\" holds 99999999999999999999999"});
  // Tensors must tile the data exactly.
  expect_file_error(one_tensor(f32x2), eight + "xx", {"end at byte 8", "has 10", "2 bytes"});
  expect_file_error("{\"a\":" + f32x2 + ",\"b\":" + f32x2 + "}", eight + eight,
                    {"tensor 'b' starts at byte 0", "'a' ends at 8", "overlap"});
  expect_file_error(one_tensor("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}"), eight,
                    {"tensor 't' starts at byte 4", "must start at 0", "gap"});
  expect_file_error("{\"__metadata__\":{\"format\":1}}", "",
                    {"\"__metadata__\" entry \"format\" is a number"});
  expect_file_error("{\"__metadata__\":[]}", "", {"\"__metadata__\" is a array"});
  expect_file_error(std::string(200, '[').insert(0, "{\"t\":"), "", {"nested more than 64"});
}

TEST(Safetensors, MissingNamesAndBadFilesAreNamed) {
  const std::string path = tmp("names.safetensors");
  save_safetensors({{"a", Tensor::scalar<float>(1)}, {"b", Tensor::scalar<float>(2)}}, path);
  const SafetensorsFile file = load_safetensors(path);
  expect_error<FileError>([&] { file.at("c"); },
                          {path, "no tensor 'c'", "it has 2 tensors: 'a', 'b'"});
  // A file cut short: the length says more header than there is, or the data is short.
  const std::string bytes = read_file(path, 1 << 20);
  for (size_t keep : {size_t{4}, size_t{20}, bytes.size() - 1}) {
    const std::string cut = tmp("cut.safetensors");
    write_file_atomically(cut, bytes.substr(0, keep));
    expect_error<FileError>([&] { load_safetensors(cut); }, {"[safetensors] " + cut});
  }
  expect_error<FileError>([&] { load_safetensors(tmp("")); }, {"is a folder"});
  expect_error<FileError>([&] { load_safetensors(tmp("no_such.safetensors")); },
                          {"no_such.safetensors", "cannot open"});
  expect_error<FileError>(
      [&] {
        save_safetensors({{"__metadata__", Tensor::scalar<float>(1)}}, path);
      },
      {path, "may not be called \"__metadata__\""});
  expect_error<FileError>(
      [&] {
        save_safetensors({{"x", Tensor()}}, path);
      },
      {path, "tensor 'x' is undefined"});
  EXPECT_EQ(load_safetensors(path).tensors.size(), 2u);  // the failed saves left it alone
}

// A sharded checkpoint as transformers writes one: an index naming each tensor's shard.
TEST(Safetensors, ShardedCheckpointsLoadThroughTheirIndex) {
  const std::string folder = tmp("sharded");
  std::filesystem::remove_all(folder);
  std::filesystem::create_directories(folder);
  save_safetensors({{"a", Tensor::scalar<float>(1)}, {"b", Tensor::scalar<float>(2)}},
                   folder + "/model-00001-of-00002.safetensors", {{"format", "pt"}});
  save_safetensors({{"c", Tensor::from_vector<int64_t>({3, 4})}},
                   folder + "/model-00002-of-00002.safetensors");
  const std::string index = folder + "/model.safetensors.index.json";
  auto write_index = [&](const std::string& weight_map) {
    write_file_atomically(
        index, "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {" + weight_map + "}}");
  };
  write_index(
      "\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\", "
      "\"c\": \"model-00002-of-00002.safetensors\"");
  const SafetensorsFile file = load_safetensors(index);
  ASSERT_EQ(file.tensors.size(), 3u);
  EXPECT_EQ(file.at("b").item<float>(), 2.f);
  EXPECT_EQ(file.at("c").to_vector<int64_t>(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(file.metadata.at("total_size"), "24");
  EXPECT_EQ(file.metadata.at("format"), "pt");

  write_index("\"a\": \"model-00001-of-00002.safetensors\"");
  expect_error<FileError>([&] { load_safetensors(index); },
                          {index, "holds tensor 'b', which the index does not list there"});
  write_index(
      "\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\", "
      "\"c\": \"model-00001-of-00002.safetensors\"");
  expect_error<FileError>([&] { load_safetensors(index); },
                          {"model-00001-of-00002.safetensors", "no tensor 'c'"});
  // A NUL would cut the path short where the system reads it (named escaped in the message).
  for (const char* outside : {"../model.safetensors", "/etc/passwd", "x/../../y",
                              "model-00001-of-00002.safetensors\\u0000"}) {
    write_index(str("\"a\": \"", outside, "\""));
    expect_error<FileError>([&] { load_safetensors(index); },
                            {index, outside, "must be files in the index's folder"});
  }
  write_file_atomically(index, "{\"metadata\": {}}");
  expect_error<FileError>([&] { load_safetensors(index); }, {index, "no \"weight_map\""});
}

TEST(Safetensors, CastConvertsLoadedWeights) {
  const Tensor weights = Tensor::from_vector<float>({1.5f, -2.25f, 1e-3f}).cast(bf16);
  EXPECT_EQ(weights.dtype(), bf16);
  const Tensor back = weights.cast(f32);
  EXPECT_EQ(back.to_vector<float>()[0], 1.5f);
  EXPECT_EQ(back.to_vector<float>()[1], -2.25f);
  EXPECT_NEAR(back.to_vector<float>()[2], 1e-3f, 4e-6f);  // bf16 keeps 8 bits of mantissa
  EXPECT_NE(back.to_vector<float>()[2], 1e-3f);
  EXPECT_EQ(Tensor::from_vector<double>({2.7, -2.7}).cast(i64).to_vector<int64_t>(),
            (std::vector<int64_t>{2, -2}));
  const Tensor same = Tensor::scalar<float>(1);
  EXPECT_EQ(same.cast(f32).raw_data(), same.raw_data());
}

TEST(Json, ReadsStringsNumbersAndNesting) {
  const JsonValue v = parse_json(
      " {\"s\": \"a\\u00e9\\ud83d\\ude00\\n\\\"\", \"n\": [0, 18446744073709551615, "
      "18446744073709551616, -1, 1e3], \"o\": {\"t\": true, \"z\": null}} ",
      "doc");
  EXPECT_EQ(v.find("s")->text(), "a\xc3\xa9\xf0\x9f\x98\x80\n\"");
  const auto& n = v.find("n")->items();
  uint64_t value = 0;
  EXPECT_TRUE(n[1].to_uint64(&value));
  EXPECT_EQ(value, UINT64_MAX);
  EXPECT_FALSE(n[2].to_uint64(&value));
  EXPECT_FALSE(n[3].to_uint64(&value));
  EXPECT_FALSE(n[4].to_uint64(&value));
  EXPECT_EQ(n[4].text(), "1e3");
  EXPECT_EQ(v.find("o")->find("t")->kind(), JsonValue::Kind::boolean);
  EXPECT_EQ(v.find("o")->find("z")->kind(), JsonValue::Kind::null);
  EXPECT_EQ(v.find("missing"), nullptr);
  const std::string text = "tab\t \"q\" \\ \x01 \xc3\xa9";
  EXPECT_EQ(parse_json(json_quoted(text), "quoted").text(), text);
}

TEST(Json, MalformedDocumentsNameTheByte) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "byte 0: unexpected end"},
      {"{\"a\" 1}", "byte 5: expected ':'"},
      {"[1 2]", "byte 3: expected ',' or ']'"},
      {"01", "byte 1: unexpected text after"},
      {"-", "malformed number"},
      {"1.", "malformed number"},
      {"\"abc", "unterminated string"},
      {"\"a\nb\"", "control character"},
      {"\"\\x\"", "unknown escape '\\x'"},
      {"\"\\u12\"", "truncated \\u escape"},
      {"\"\\u12zz\"", "malformed \\u escape"},
      {"\"\\ud800\"", "unpaired surrogate"},
      {"\"\\udc00\"", "unpaired surrogate"},
      {"tru", "not a JSON value"},
      {"{} {}", "unexpected text after"},
      {"[[[]]]", "nested more than 2 deep"},
  };
  for (const auto& entry : bad) {
    const std::string& text = entry.first;
    expect_error<FileError>([&] { parse_json(text, "doc.json", 2); },
                            {"[json] doc.json", entry.second});
  }
}

}  // namespace
}  // namespace kiln
