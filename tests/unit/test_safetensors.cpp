// safetensors header parsing: every malformed-file case gets a Format/Unsupported error that
// names the file (and the tensor where there is one), never a crash.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/safetensors.h"
#include "unit/safetensors_writer.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using test::f32_tensor;
using test::make_safetensors;
using test::make_safetensors_raw;
using test::RawTensor;

SafetensorsHeader parse(const std::string& bytes) {
  return parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "x.safetensors");
}

// Expects parse() to throw an Error of `kind` whose message contains every one of `parts`.
void expect_error(const std::string& bytes, ErrorKind kind, std::initializer_list<const char*> parts) {
  try {
    parse(bytes);
    ADD_FAILURE() << "no error for a malformed file";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    std::string msg = e.what();
    EXPECT_NE(msg.find("x.safetensors"), std::string::npos) << msg;
    for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(Safetensors, ParsesValidFile) {
  std::string file = make_safetensors({{"a", f32_tensor({2, 3})}, {"b", f32_tensor({4})}}, {{"format", "pt"}});
  SafetensorsHeader h = parse(file);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  for (const auto& t : h.tensors) {
    if (t.name == "a") {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{2, 3}));
      EXPECT_EQ(t.nbytes(), 24u);
      EXPECT_EQ(t.dtype, DType::F32);
    } else {
      EXPECT_EQ(t.begin, 24u);
    }
  }
}

TEST(Safetensors, ScalarAndEmptyTensorsAreValid) {
  RawTensor scalar = f32_tensor({});
  RawTensor empty = f32_tensor({0, 5});
  SafetensorsHeader h = parse(make_safetensors({{"s", scalar}, {"e", empty}}));
  EXPECT_EQ(h.tensors.size(), 2u);
}

TEST(Safetensors, TruncatedFile) { expect_error("\x10\x00\x00", ErrorKind::Format, {"truncated"}); }

TEST(Safetensors, HeaderLargerThanFile) {
  expect_error(make_safetensors_raw("{}", "", 4096), ErrorKind::Format, {"header length 4096", "larger than the file"});
}

TEST(Safetensors, HugeHeaderLength) {
  expect_error(make_safetensors_raw("{}", "", UINT64_MAX - 1), ErrorKind::Format, {"100 MB"});
}

TEST(Safetensors, GarbledHeader) {
  expect_error(make_safetensors_raw("{\"a\": {\"dtype\": ", ""), ErrorKind::Format, {"not valid JSON"});
  expect_error(make_safetensors_raw("[1, 2]", ""), ErrorKind::Format, {"not a JSON object"});
}

TEST(Safetensors, OffsetsPastEndOfFile) {
  std::string header = R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  expect_error(make_safetensors_raw(header, std::string(8, '\0')), ErrorKind::Format, {"'w'", "past the end"});
}

TEST(Safetensors, OffsetsReversed) {
  std::string header = R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})";
  expect_error(make_safetensors_raw(header, std::string(8, '\0')), ErrorKind::Format, {"'w'", "reversed"});
}

TEST(Safetensors, OverlappingTensors) {
  std::string header = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  expect_error(make_safetensors_raw(header, std::string(12, '\0')), ErrorKind::Format, {"'a'", "'b'", "overlap"});
}

TEST(Safetensors, ShapeDisagreesWithByteCount) {
  std::string header = R"({"w": {"dtype": "BF16", "shape": [3, 3], "data_offsets": [0, 16]}})";
  expect_error(make_safetensors_raw(header, std::string(16, '\0')), ErrorKind::Format, {"'w'", "needs 18"});
}

TEST(Safetensors, ShapeProductOverflows) {
  std::string header =
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 0]}})";
  expect_error(make_safetensors_raw(header, ""), ErrorKind::Format, {"'w'", "overflow"});
}

TEST(Safetensors, NegativeOrNonIntegerShape) {
  expect_error(make_safetensors_raw(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", ""),
               ErrorKind::Format, {"'w'", "shape"});
  expect_error(make_safetensors_raw(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}})", ""),
               ErrorKind::Format, {"'w'", "shape"});
}

TEST(Safetensors, MissingFields) {
  expect_error(make_safetensors_raw(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
               ErrorKind::Format, {"'w'", "dtype"});
  expect_error(make_safetensors_raw(R"({"w": {"dtype": "F32", "shape": [1]}})", std::string(4, '\0')),
               ErrorKind::Format, {"'w'", "data_offsets"});
  expect_error(make_safetensors_raw(R"({"w": 3})", ""), ErrorKind::Format, {"'w'", "not an object"});
}

TEST(Safetensors, UnknownDtype) {
  expect_error(make_safetensors_raw(R"({"w": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
               ErrorKind::Unsupported, {"'w'", "Q4_K"});
}

TEST(Safetensors, KnownButUncomputedDtypeIsParsed) {
  // An FP8 tensor is valid safetensors: parsed and validated, rejected only if a layer needs it.
  std::string header = R"({"scale": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})";
  SafetensorsHeader h = parse(make_safetensors_raw(header, std::string(4, '\0')));
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_FALSE(h.tensors[0].dtype.has_value());
}

TEST(Safetensors, BadMetadata) {
  expect_error(make_safetensors_raw(R"({"__metadata__": {"format": 1}})", ""), ErrorKind::Format, {"__metadata__"});
}

TEST(Safetensors, MissingFileIsIoError) {
  try {
    SafetensorsFile f("/nonexistent/model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.safetensors"), std::string::npos);
  }
}

TEST(Safetensors, ReadsFixtureDataThroughMmap) {
  auto path = test::fixture("models/mamba-tiny/model.safetensors");
  SafetensorsFile f(path.string());
  const TensorInfo* t = f.find("backbone.layers.0.mixer.D");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{96}));
  float first;
  std::memcpy(&first, f.data(*t), 4);
  EXPECT_TRUE(std::isfinite(first));
}

}  // namespace
}  // namespace statelm
