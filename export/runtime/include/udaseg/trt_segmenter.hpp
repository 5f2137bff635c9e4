// TensorRT engine runner (TensorRT 10 and 11 C++ API: name-based I/O, setInputShape/setTensorAddress/enqueueV3).
// Compiled only when CMake finds TensorRT and CUDA (UDASEG_WITH_TENSORRT); TensorRT headers stay out of this file,
// so a perception node links udaseg_runtime without seeing NvInfer.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "udaseg/prepost.hpp"

namespace udaseg {

struct TensorInfo {
    std::string name;
    std::string dtype;                 // "float32", "float16", "int32", "uint8", ...
    std::vector<std::int64_t> shape;   // as set for this runner (batch 1, the chosen H and W)
    bool is_input = false;
};

class TrtSegmenter {
public:
    // Loads a serialized engine written by export/to_trt.py. For engines with a dynamic height/width,
    // `height`/`width` pick the input size (0 = the profile's opt shape); it must lie inside the profile.
    explicit TrtSegmenter(const std::string& engine_path, int height = 0, int width = 0, int device = 0);
    ~TrtSegmenter();
    TrtSegmenter(const TrtSegmenter&) = delete;
    TrtSegmenter& operator=(const TrtSegmenter&) = delete;

    // rgb: (height, width, 3) uint8, `row_stride` bytes per row (0 = packed). Returns the class map, colour map
    // and (engines with a logits output) confidence at the network's input size; resize_nearest maps it back.
    Segmentation segment(const std::uint8_t* rgb, int height, int width, std::size_t row_stride = 0,
                         bool with_confidence = false);

    int input_height() const;
    int input_width() const;
    int num_classes() const;  // 0 when the engine has no logits output
    const std::vector<TensorInfo>& io() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace udaseg
