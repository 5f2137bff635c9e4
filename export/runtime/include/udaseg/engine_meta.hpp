// What a C++ program needs to run an engine written by export/to_trt.py, without Python: the "runtime" block of
// <engine>.json (the same block sits in the ONNX file's udaseg metadata). Written by runtime_spec() in
// export/profiles.py; tests/export/test_engine_metadata.py checks that this reader and that writer agree.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "udaseg/prepost.hpp"

namespace udaseg {

struct EngineMetadata {
    int schema = 0;                          // version of the runtime block (1)
    // Input: what to feed, and how to make it from an (H, W, 3) uint8 RGB frame.
    std::string input_name = "input";
    std::string input_layout = "NCHW";       // the only layout udaseg graphs take
    std::string input_dtype = "float32";     // float32: preprocess(); uint8: preprocess_u8()
    std::string channel_order = "RGB";
    std::vector<std::int64_t> input_shape;   // as exported; -1 marks a dynamic dim
    std::string resize = "bilinear_half_pixel";  // PyTorch align_corners=False, no antialias (prepost.hpp)
    Normalize host_normalize;                // float32 inputs: (v / 255 - mean) / std on the host
    bool graph_normalizes = false;           // the graph applies graph_mean/graph_std itself (its first layer)
    std::array<float, 3> graph_mean{0.0f, 0.0f, 0.0f}, graph_std{1.0f, 1.0f, 1.0f};
    // Profile the engine was built for (empty when unknown): (B, 3, H, W) each.
    std::vector<std::int64_t> profile_min, profile_opt, profile_max;
    // Outputs.
    std::vector<std::string> output_names;   // every output, in graph order
    std::string labels_output, logits_output;  // "" when absent
    std::string labels_dtype;                // int32 | uint8 | int64 ("" without labels)
    // Classes.
    int num_classes = 0;
    std::vector<std::string> class_names;    // num_classes names (train ids in order)
    std::vector<std::uint8_t> palette;       // (num_classes, 3) RGB colours, row c for class c
    int ignore_index = 255;                  // label value drawn black, never a class
    int protocol = 0;                        // evaluation protocol (19, 16 or 13 classes; 0 = unknown)
    std::vector<int> protocol_classes;       // train ids scored under the protocol
    std::string precision;                   // fp32 | fp16 | int8 (what the engine computes in)
};

// Parses <engine>.json (its "runtime" member) or a bare runtime block. Throws std::runtime_error naming
// `source` and the key that is missing or malformed.
EngineMetadata parse_engine_metadata(const std::string& json_text, const std::string& source = "<metadata>");

// Reads and parses a metadata file; throws std::runtime_error naming the file.
EngineMetadata read_engine_metadata(const std::string& path);

// "<engine_path>.json", the file export/to_trt.py writes beside every engine.
std::string engine_metadata_path(const std::string& engine_path);

}  // namespace udaseg
