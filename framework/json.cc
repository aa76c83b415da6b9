#include "kiln/framework/json.h"

#include "kiln/framework/error.h"

namespace kiln {

const JsonValue* JsonValue::find(std::string_view key) const {
  for (const auto& [name, value] : members_)
    if (name == key) return &value;
  return nullptr;
}

bool JsonValue::to_uint64(uint64_t* value) const {
  if (kind_ != Kind::number || text_.empty() || text_.size() > 20) return false;
  uint64_t result = 0;
  for (char c : text_) {
    if (c < '0' || c > '9') return false;  // a sign, fraction or exponent
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (result > (UINT64_MAX - digit) / 10) return false;
    result = result * 10 + digit;
  }
  *value = result;
  return true;
}

const char* JsonValue::kind_name(Kind kind) {
  switch (kind) {
    case Kind::null:
      return "null";
    case Kind::boolean:
      return "boolean";
    case Kind::number:
      return "number";
    case Kind::string:
      return "string";
    case Kind::array:
      return "array";
    case Kind::object:
      return "object";
  }
  return "value";
}

// Recursive descent over the text, one value at a time; `at_` is the next unread byte.
class JsonParser {
 public:
  JsonParser(std::string_view text, const std::string& source, int max_depth)
      : text_(text), source_(source), max_depth_(max_depth) {}

  JsonValue document() {
    JsonValue value = parse_value(0);
    skip_space();
    if (at_ != text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FileError(str("[json] ", source_, ": byte ", at_, ": ", what));
  }

  void skip_space() {
    while (at_ < text_.size() &&
           (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\n' || text_[at_] == '\r'))
      ++at_;
  }

  char peek() const { return at_ < text_.size() ? text_[at_] : '\0'; }

  void expect_word(std::string_view word) {
    if (text_.substr(at_, word.size()) != word) fail("not a JSON value");
    at_ += word.size();
  }

  JsonValue parse_value(int depth) {
    skip_space();
    if (at_ >= text_.size()) fail("unexpected end of the document");
    JsonValue value;
    const char c = text_[at_];
    if (c == '{' || c == '[') {
      if (depth >= max_depth_) fail(str("nested more than ", max_depth_, " deep"));
      if (c == '{')
        parse_object(value, depth + 1);
      else
        parse_array(value, depth + 1);
    } else if (c == '"') {
      value.kind_ = JsonValue::Kind::string;
      value.text_ = parse_string();
    } else if (c == 't' || c == 'f') {
      value.kind_ = JsonValue::Kind::boolean;
      value.text_ = c == 't' ? "true" : "false";
      expect_word(value.text_);
    } else if (c == 'n') {
      expect_word("null");
      value.text_ = "null";
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      value.kind_ = JsonValue::Kind::number;
      value.text_ = parse_number();
    } else {
      fail(str("unexpected character '", c, "'"));
    }
    return value;
  }

  void parse_object(JsonValue& value, int depth) {
    value.kind_ = JsonValue::Kind::object;
    ++at_;  // '{'
    skip_space();
    if (peek() == '}') {
      ++at_;
      return;
    }
    while (true) {
      skip_space();
      if (peek() != '"') fail("expected a string key in an object");
      std::string key = parse_string();
      if (value.find(key) != nullptr) fail(str("the key \"", key, "\" appears twice"));
      skip_space();
      if (peek() != ':') fail("expected ':' after an object key");
      ++at_;
      JsonValue member = parse_value(depth);
      value.members_.emplace_back(std::move(key), std::move(member));
      skip_space();
      if (peek() == ',') {
        ++at_;
        continue;
      }
      if (peek() == '}') {
        ++at_;
        return;
      }
      fail("expected ',' or '}' in an object");
    }
  }

  void parse_array(JsonValue& value, int depth) {
    value.kind_ = JsonValue::Kind::array;
    ++at_;  // '['
    skip_space();
    if (peek() == ']') {
      ++at_;
      return;
    }
    while (true) {
      value.items_.push_back(parse_value(depth));
      skip_space();
      if (peek() == ',') {
        ++at_;
        continue;
      }
      if (peek() == ']') {
        ++at_;
        return;
      }
      fail("expected ',' or ']' in an array");
    }
  }

  // JSON's number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  std::string parse_number() {
    const size_t begin = at_;
    auto digits = [&] {
      const size_t first = at_;
      while (peek() >= '0' && peek() <= '9') ++at_;
      if (at_ == first) fail("malformed number");
    };
    if (peek() == '-') ++at_;
    if (peek() == '0')
      ++at_;
    else
      digits();
    if (peek() == '.') {
      ++at_;
      digits();
    }
    if (peek() == 'e' || peek() == 'E') {
      ++at_;
      if (peek() == '+' || peek() == '-') ++at_;
      digits();
    }
    return std::string(text_.substr(begin, at_ - begin));
  }

  uint32_t hex4() {
    if (at_ + 4 > text_.size()) fail("truncated \\u escape");
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[at_++];
      code <<= 4;
      if (h >= '0' && h <= '9')
        code |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f')
        code |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F')
        code |= static_cast<uint32_t>(h - 'A' + 10);
      else
        fail("malformed \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xc0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xe0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    }
  }

  std::string parse_string() {
    ++at_;  // '"'
    std::string out;
    while (true) {
      if (at_ >= text_.size()) fail("unterminated string");
      const char c = text_[at_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_ >= text_.size()) fail("unterminated string");
      const char e = text_[at_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t code = hex4();
          // A character beyond the basic plane is a surrogate pair: \uD8xx\uDCxx.
          if (code >= 0xd800 && code < 0xdc00) {
            if (text_.substr(at_, 2) != "\\u") fail("unpaired surrogate in a \\u escape");
            at_ += 2;
            const uint32_t low = hex4();
            if (low < 0xdc00 || low >= 0xe000) fail("unpaired surrogate in a \\u escape");
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
          } else if (code >= 0xdc00 && code < 0xe000) {
            fail("unpaired surrogate in a \\u escape");
          }
          append_utf8(out, code);
          break;
        }
        default:
          --at_;
          fail(str("unknown escape '\\", e, "'"));
      }
    }
  }

  std::string_view text_;
  const std::string& source_;
  int max_depth_;
  size_t at_ = 0;
};

JsonValue parse_json(std::string_view text, const std::string& source, int max_depth) {
  return JsonParser(text, source, max_depth).document();
}

std::string json_quoted(std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (byte < 0x20) {
      out += "\\u00";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace kiln
