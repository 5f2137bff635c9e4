// Element types of engine inputs/outputs, numbered as nvinfer1::DataType but declared without TensorRT headers,
// so the size table is usable (and tested through the bindings) on machines without TensorRT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace udaseg {

// The values of nvinfer1::DataType (serialized engines store them, so they do not change between releases).
// trt_segmenter.cpp checks every name against the TensorRT headers it is compiled with (static_assert).
enum class TensorType : std::int32_t {
    kFLOAT = 0,   // float32
    kHALF = 1,    // float16
    kINT8 = 2,
    kINT32 = 3,
    kBOOL = 4,    // one byte per element
    kUINT8 = 5,
    kFP8 = 6,     // e4m3, one byte
    kBF16 = 7,    // bfloat16, two bytes
    kINT64 = 8,
    kINT4 = 9,    // packed: two elements per byte
    kFP4 = 10,    // e2m1, packed: two elements per byte
    kE8M0 = 11,   // exponent-only scale type, one byte
};

// Bits per element: 64, 32, 16, 8, or 4 for the packed types (kINT4, kFP4). A value this table does not know
// (a type added by a later TensorRT) throws std::invalid_argument naming it: never a silent guess.
int tensor_type_bits(TensorType t);

// Bytes that `count` elements occupy: ceil(count * bits / 8) (an odd count of 4-bit values fills a last byte).
std::size_t tensor_bytes(TensorType t, std::size_t count);

// "float32", "float16", "bfloat16", "int8", "int32", "int64", "uint8", "bool", "float8_e4m3", "int4",
// "float4_e2m1", "float8_e8m0"; throws like tensor_type_bits.
std::string tensor_type_name(TensorType t);

}  // namespace udaseg
