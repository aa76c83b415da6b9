// A strict JSON reader and writer for the small JSON documents that come with model files
// (safetensors headers, sharded-checkpoint indexes). Input is untrusted: every malformed
// document gets a kiln::FileError naming its source and the byte offset, never a crash.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

/// One JSON value. Numbers keep their text so that integers up to 2^64 - 1 read back exactly
/// (a double holds only 2^53); objects keep their members in document order.
class JsonValue {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  Kind kind() const { return kind_; }
  bool is_object() const { return kind_ == Kind::object; }
  /// The text of a string, the digits of a number ("12", "-1.5e3"), "true"/"false"/"null".
  const std::string& text() const { return text_; }
  const std::vector<JsonValue>& items() const { return items_; }
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }
  /// The member called `key` of an object, or nullptr.
  const JsonValue* find(std::string_view key) const;
  /// A number written as a non-negative integer without fraction or exponent ("0", "1024"),
  /// when it fits in 64 bits; false otherwise.
  bool to_uint64(uint64_t* value) const;
  /// "string", "number", "object", ... for error messages.
  static const char* kind_name(Kind kind);

 private:
  friend class JsonParser;
  Kind kind_ = Kind::null;
  std::string text_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

/// Parses `text` as one JSON document (RFC 8259: no comments, no trailing commas, UTF-8
/// strings with escapes, an object's keys unique), nested at most `max_depth` deep. Trailing
/// whitespace is allowed, anything else after the value is not. Throws kiln::FileError:
/// "[json] SOURCE: byte 17: expected ':' after an object key".
JsonValue parse_json(std::string_view text, const std::string& source, int max_depth = 64);

/// `text` as a JSON string literal, quotes included, with '"', '\\' and control characters
/// escaped (other bytes are copied: UTF-8 stays UTF-8).
std::string json_quoted(std::string_view text);

}  // namespace kiln
