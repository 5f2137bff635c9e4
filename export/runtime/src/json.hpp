// A small JSON reader for the runtime's metadata files (<engine>.json): objects, arrays, strings with escapes,
// numbers, true/false/null. Internal to the library: no dependency for the perception stack to vendor.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace udaseg {
namespace json {

struct Value {
    enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
    Type type = Type::kNull;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Value> array;
    std::vector<std::pair<std::string, Value>> object;  // in file order

    // Member `key` of an object, or nullptr (also when this is not an object).
    const Value* find(const std::string& key) const;
    bool is(Type t) const { return type == t; }
};

// Parses `text`; throws std::runtime_error "<source>: <what> at line L, column C" on malformed input.
Value parse(const std::string& text, const std::string& source = "<json>");

}  // namespace json
}  // namespace udaseg
