#include "udaseg/tensor_types.hpp"

#include <limits>
#include <stdexcept>

namespace udaseg {
namespace {

struct Entry {
    const char* name;
    int bits;
};

// Indexed by the TensorType value.
constexpr Entry kTable[] = {
    {"float32", 32},     {"float16", 16}, {"int8", 8},   {"int32", 32}, {"bool", 8},    {"uint8", 8},
    {"float8_e4m3", 8},  {"bfloat16", 16}, {"int64", 64}, {"int4", 4},   {"float4_e2m1", 4}, {"float8_e8m0", 8},
};
constexpr int kCount = static_cast<int>(sizeof(kTable) / sizeof(kTable[0]));

const Entry& entry(TensorType t) {
    const int code = static_cast<int>(t);
    if (code < 0 || code >= kCount) {
        throw std::invalid_argument("unsupported tensor data type " + std::to_string(code) +
                                    " (nvinfer1::DataType value unknown to udaseg's runtime; a newer TensorRT?)");
    }
    return kTable[code];
}

}  // namespace

int tensor_type_bits(TensorType t) { return entry(t).bits; }

std::string tensor_type_name(TensorType t) { return entry(t).name; }

std::size_t tensor_bytes(TensorType t, std::size_t count) {
    const auto bits = static_cast<std::size_t>(tensor_type_bits(t));
    if (count > (std::numeric_limits<std::size_t>::max() - 7) / bits) {
        throw std::overflow_error("tensor of " + std::to_string(count) + " elements is too large to allocate");
    }
    return (count * bits + 7) / 8;
}

}  // namespace udaseg
