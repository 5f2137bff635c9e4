#include "json.hpp"

#include <cstdlib>
#include <stdexcept>

namespace udaseg {
namespace json {
namespace {

constexpr int kMaxDepth = 64;  // metadata nests 3 levels; this only guards against pathological files

class Parser {
public:
    Parser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

    Value document() {
        Value v = value(0);
        skip_space();
        if (pos_ != s_.size()) fail("unexpected text after the JSON value");
        return v;
    }

private:
    const std::string& s_;
    const std::string& source_;
    std::size_t pos_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        std::size_t line = 1, column = 1;
        for (std::size_t i = 0; i < pos_ && i < s_.size(); ++i) {
            if (s_[i] == '\n') ++line, column = 1;
            else ++column;
        }
        throw std::runtime_error(source_ + ": " + what + " at line " + std::to_string(line) + ", column " +
                                 std::to_string(column));
    }

    void skip_space() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
    }

    char peek() {
        skip_space();
        if (pos_ >= s_.size()) fail("unexpected end of file");
        return s_[pos_];
    }

    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }

    void literal(const char* word) {
        for (const char* p = word; *p; ++p, ++pos_) {
            if (pos_ >= s_.size() || s_[pos_] != *p) fail(std::string("expected '") + word + "'");
        }
    }

    Value value(int depth) {
        if (depth > kMaxDepth) fail("nested too deeply");
        Value v;
        const char c = peek();
        if (c == '{') {
            v.type = Value::Type::kObject;
            ++pos_;
            if (peek() == '}') return ++pos_, v;
            for (;;) {
                if (peek() != '"') fail("expected a member name");
                std::string key = string();
                expect(':');
                v.object.emplace_back(std::move(key), value(depth + 1));
                if (peek() == ',') { ++pos_; continue; }
                expect('}');
                return v;
            }
        }
        if (c == '[') {
            v.type = Value::Type::kArray;
            ++pos_;
            if (peek() == ']') return ++pos_, v;
            for (;;) {
                v.array.push_back(value(depth + 1));
                if (peek() == ',') { ++pos_; continue; }
                expect(']');
                return v;
            }
        }
        if (c == '"') {
            v.type = Value::Type::kString;
            v.string = string();
            return v;
        }
        if (c == 't') return literal("true"), v.type = Value::Type::kBool, v.boolean = true, v;
        if (c == 'f') return literal("false"), v.type = Value::Type::kBool, v;
        if (c == 'n') return literal("null"), v;
        if (c == '-' || (c >= '0' && c <= '9')) {
            const char* begin = s_.c_str() + pos_;
            char* end = nullptr;
            v.type = Value::Type::kNumber;
            v.number = std::strtod(begin, &end);
            if (end == begin) fail("malformed number");
            pos_ += static_cast<std::size_t>(end - begin);
            return v;
        }
        fail(std::string("unexpected character '") + c + "'");
    }

    unsigned hex4() {
        if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
        unsigned code = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return code;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    std::string string() {
        expect('"');
        std::string out;
        for (;;) {
            if (pos_ >= s_.size()) fail("unterminated string");
            const char c = s_[pos_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') { out += c; continue; }
            if (pos_ >= s_.size()) fail("unterminated string");
            const char e = s_[pos_++];
            switch (e) {
                case '"': case '\\': case '/': out += e; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair: Python's json.dumps writes these
                        if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') fail("lone surrogate");
                        pos_ += 2;
                        const unsigned low = hex4();
                        if (low < 0xDC00 || low >= 0xE000) fail("bad surrogate pair");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail(std::string("bad escape '\\") + e + "'");
            }
        }
    }
};

}  // namespace

const Value* Value::find(const std::string& key) const {
    if (type != Type::kObject) return nullptr;
    for (const auto& kv : object) {
        if (kv.first == key) return &kv.second;
    }
    return nullptr;
}

Value parse(const std::string& text, const std::string& source) { return Parser(text, source).document(); }

}  // namespace json
}  // namespace udaseg
