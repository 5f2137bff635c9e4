// Pre- and post-processing of the udaseg runtime: the C++ twin of export/prepost.py.
//
// Every function here computes the same bits as its Python reference: float32 arithmetic in the same order,
// no fused multiply-add (the library is compiled with -ffp-contract=off), and an exp written out as a polynomial
// instead of the platform's expf. tests/export/test_runtime_cpp.py checks that bit for bit through the bindings.
//
// Layouts: images are HWC uint8 RGB (rows may be padded: `row_stride` bytes per row); network tensors are CHW.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace udaseg {

// Per-channel normalisation applied after the resize: out = (v / 255 - mean[c]) / std[c].
// The default gives the [0, 1] input that udaseg graphs take (ImageNet mean/std is the first layer of the model).
struct Normalize {
    std::array<float, 3> mean{0.0f, 0.0f, 0.0f};
    std::array<float, 3> std{1.0f, 1.0f, 1.0f};
};

// Bilinear resize with half-pixel centres (PyTorch align_corners=False, no antialias) + normalise + HWC -> CHW.
// in: (in_h, in_w, 3) uint8, `row_stride` bytes per row (0 = in_w * 3); out: (3, out_h, out_w) float32.
void preprocess(const std::uint8_t* in, int in_h, int in_w, std::size_t row_stride, int out_h, int out_w,
                const Normalize& norm, float* out);

// Same resize, rounded to uint8 (half to even) for graphs that take uint8 input; out: (3, out_h, out_w) uint8.
void preprocess_u8(const std::uint8_t* in, int in_h, int in_w, std::size_t row_stride, int out_h, int out_w,
                   std::uint8_t* out);

// Class map: index of the largest logit per pixel, the first one on ties (numpy/PyTorch argmax; NaN never wins
// over channel 0). logits: (C, H, W) float32, C <= 256; out: (H, W).
void argmax(const float* logits, int num_classes, int height, int width, std::uint8_t* out);
void argmax(const float* logits, int num_classes, int height, int width, std::int32_t* out);

// Confidence: the largest softmax probability per pixel, 1 / sum_c exp(l_c - max_c l). out: (H, W) float32.
void confidence(const float* logits, int num_classes, int height, int width, float* out);

// exp(x) for x <= 0 (softmax arguments): Cephes' expf polynomial, relative error < 2e-7, clamped below at -87 (NaN too).
float exp_neg(float x);

// Colour map: out (H, W, 3) uint8 = palette[label]; labels >= num_colors (ignore = 255) are black.
// palette: (num_colors, 3) uint8 RGB.
void colorize(const std::uint8_t* labels, int height, int width, const std::uint8_t* palette, int num_colors,
              std::uint8_t* out);

// Nearest-neighbour resize of a class map (PyTorch mode="nearest": src = min(floor(dst * in / out), in - 1)).
void resize_nearest(const std::uint8_t* in, int in_h, int in_w, int out_h, int out_w, std::uint8_t* out);

// The 19 Cityscapes train-id colours, (19, 3) RGB, identical to udaseg.data.labels.PALETTE.
const std::vector<std::uint8_t>& cityscapes_palette();

// Convenience for perception code: a whole frame in one call.
struct Segmentation {
    int height = 0, width = 0;                 // of the class map (the network's output size)
    std::vector<std::uint8_t> labels;          // (H, W) mono8 train ids
    std::vector<std::uint8_t> color;           // (H, W, 3) rgb8
    std::vector<float> confidence;             // (H, W), empty unless asked for
};

// logits (C, H, W) -> class map, colour map and (optionally) confidence.
Segmentation postprocess(const float* logits, int num_classes, int height, int width, bool with_confidence,
                         const std::vector<std::uint8_t>& palette = cityscapes_palette());

}  // namespace udaseg
