// TensorRT engine runner (TensorRT 10 and 11 C++ API: name-based I/O, setInputShape/setTensorAddress/enqueueV3).
// Compiled only when CMake finds TensorRT and CUDA (UDASEG_WITH_TENSORRT). Neither TensorRT nor CUDA headers are
// included here (pointer to implementation): a perception node includes this header and links udaseg_runtime
// without NvInfer.h or cuda_runtime_api.h on its include path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "udaseg/engine_meta.hpp"
#include "udaseg/prepost.hpp"
#include "udaseg/tensor_types.hpp"

namespace udaseg {

struct TensorInfo {
    std::string name;
    std::string dtype;                 // tensor_type_name(type): "float32", "bfloat16", "int4", ...
    TensorType type = TensorType::kFLOAT;
    std::vector<std::int64_t> shape;   // as set for this runner (batch 1, the chosen H and W)
    std::size_t bytes = 0;             // device buffer size (packed 4-bit types: half a byte per element)
    bool is_input = false;
};

class TrtSegmenter {
public:
    // Loads a serialized engine written by export/to_trt.py and its metadata (`metadata_path`, default
    // "<engine_path>.json" when that file exists: input name/dtype, normalisation, output names, palette). Without
    // metadata the export conventions apply (outputs 'labels'/'logits', [0, 1] input, Cityscapes colours).
    // For engines with a dynamic height/width, `height`/`width` pick the input size (0 = the profile's opt shape);
    // it must lie inside the profile.
    explicit TrtSegmenter(const std::string& engine_path, int height = 0, int width = 0, int device = 0,
                          const std::string& metadata_path = "");
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
    const EngineMetadata& metadata() const;  // defaults when the engine has no metadata file
    bool has_metadata() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace udaseg
