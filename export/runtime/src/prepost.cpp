// Pre- and post-processing; the Python reference is export/prepost.py. Keep the two in the same operation order:
// tests compare them bit for bit.
#include "udaseg/prepost.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace udaseg {
namespace {

void check_size(int h, int w, const char* what) {
    if (h <= 0 || w <= 0) {
        throw std::invalid_argument(std::string(what) + ": sizes must be positive, got " + std::to_string(h) + "x" +
                                    std::to_string(w));
    }
}

// Source taps of one axis for a half-pixel bilinear resize (PyTorch area_pixel_compute_source_index).
struct Taps {
    std::vector<int> i0, i1;
    std::vector<float> w0, w1;  // w0 = 1 - w1
};

Taps bilinear_taps(int in_size, int out_size) {
    Taps t;
    t.i0.resize(out_size), t.i1.resize(out_size), t.w0.resize(out_size), t.w1.resize(out_size);
    const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
    for (int o = 0; o < out_size; ++o) {
        float src = (static_cast<float>(o) + 0.5f) * scale - 0.5f;
        if (src < 0.0f) src = 0.0f;
        int i0 = std::min(static_cast<int>(src), in_size - 1);  // src >= 0: the cast is floor
        t.i0[o] = i0;
        t.i1[o] = std::min(i0 + 1, in_size - 1);
        t.w1[o] = src - static_cast<float>(i0);
        t.w0[o] = 1.0f - t.w1[o];
    }
    return t;
}

// Calls fn(c, oy, ox, value) for every resized sample; the one place the interpolation is written.
template <typename Fn>
void resize_bilinear(const std::uint8_t* in, int in_h, int in_w, std::size_t row_stride, int out_h, int out_w,
                     Fn fn) {
    check_size(in_h, in_w, "input image");
    check_size(out_h, out_w, "output size");
    if (row_stride == 0) row_stride = static_cast<std::size_t>(in_w) * 3;
    const Taps ty = bilinear_taps(in_h, out_h), tx = bilinear_taps(in_w, out_w);
    for (int oy = 0; oy < out_h; ++oy) {
        const std::uint8_t* r0 = in + static_cast<std::size_t>(ty.i0[oy]) * row_stride;
        const std::uint8_t* r1 = in + static_cast<std::size_t>(ty.i1[oy]) * row_stride;
        const float hy = ty.w0[oy], ly = ty.w1[oy];
        for (int ox = 0; ox < out_w; ++ox) {
            const int x0 = tx.i0[ox] * 3, x1 = tx.i1[ox] * 3;
            const float hx = tx.w0[ox], lx = tx.w1[ox];
            for (int c = 0; c < 3; ++c) {
                const float top = hx * static_cast<float>(r0[x0 + c]) + lx * static_cast<float>(r0[x1 + c]);
                const float bot = hx * static_cast<float>(r1[x0 + c]) + lx * static_cast<float>(r1[x1 + c]);
                fn(c, oy, ox, hy * top + ly * bot);
            }
        }
    }
}

template <typename T>
void argmax_impl(const float* logits, int num_classes, int height, int width, T* out) {
    check_size(height, width, "logits");
    if (num_classes <= 0 || num_classes > 256) {
        throw std::invalid_argument("argmax: num_classes must be in [1, 256], got " + std::to_string(num_classes));
    }
    const std::size_t plane = static_cast<std::size_t>(height) * width;
    for (std::size_t p = 0; p < plane; ++p) {
        float best = logits[p];
        int idx = 0;
        for (int c = 1; c < num_classes; ++c) {
            const float v = logits[c * plane + p];
            if (v > best) best = v, idx = c;
        }
        out[p] = static_cast<T>(idx);
    }
}

}  // namespace

void preprocess(const std::uint8_t* in, int in_h, int in_w, std::size_t row_stride, int out_h, int out_w,
                const Normalize& norm, float* out) {
    const std::size_t plane = static_cast<std::size_t>(out_h) * out_w;
    resize_bilinear(in, in_h, in_w, row_stride, out_h, out_w, [&](int c, int oy, int ox, float v) {
        out[c * plane + static_cast<std::size_t>(oy) * out_w + ox] = (v / 255.0f - norm.mean[c]) / norm.std[c];
    });
}

void preprocess_u8(const std::uint8_t* in, int in_h, int in_w, std::size_t row_stride, int out_h, int out_w,
                   std::uint8_t* out) {
    const std::size_t plane = static_cast<std::size_t>(out_h) * out_w;
    resize_bilinear(in, in_h, in_w, row_stride, out_h, out_w, [&](int c, int oy, int ox, float v) {
        const float r = std::min(255.0f, std::max(0.0f, std::nearbyint(v)));  // half to even, as np.rint
        out[c * plane + static_cast<std::size_t>(oy) * out_w + ox] = static_cast<std::uint8_t>(r);
    });
}

void argmax(const float* logits, int num_classes, int height, int width, std::uint8_t* out) {
    argmax_impl(logits, num_classes, height, width, out);
}

void argmax(const float* logits, int num_classes, int height, int width, std::int32_t* out) {
    argmax_impl(logits, num_classes, height, width, out);
}

float exp_neg(float x) {
    // Cephes expf: exp(x) = 2^n * exp(r), r = x - n ln2 split in two constants so that n * C1 is exact.
    if (!(x >= -87.0f)) x = -87.0f;  // NaN and -inf clamp too: no undefined float->int conversion below
    const float n = std::nearbyint(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    return std::ldexp(p, static_cast<int>(n));
}

void confidence(const float* logits, int num_classes, int height, int width, float* out) {
    check_size(height, width, "logits");
    const std::size_t plane = static_cast<std::size_t>(height) * width;
    for (std::size_t p = 0; p < plane; ++p) {
        float m = logits[p];
        for (int c = 1; c < num_classes; ++c) m = std::max(m, logits[c * plane + p]);
        float s = 0.0f;
        for (int c = 0; c < num_classes; ++c) s += exp_neg(logits[c * plane + p] - m);
        out[p] = 1.0f / s;
    }
}

void colorize(const std::uint8_t* labels, int height, int width, const std::uint8_t* palette, int num_colors,
              std::uint8_t* out) {
    check_size(height, width, "class map");
    std::array<std::uint8_t, 256 * 3> lut{};  // black for every id without a colour (ignore = 255)
    std::copy(palette, palette + 3 * std::min(num_colors, 256), lut.begin());
    const std::size_t plane = static_cast<std::size_t>(height) * width;
    for (std::size_t p = 0; p < plane; ++p) {
        const std::uint8_t* rgb = &lut[3 * labels[p]];
        out[3 * p] = rgb[0], out[3 * p + 1] = rgb[1], out[3 * p + 2] = rgb[2];
    }
}

void resize_nearest(const std::uint8_t* in, int in_h, int in_w, int out_h, int out_w, std::uint8_t* out) {
    check_size(in_h, in_w, "class map");
    check_size(out_h, out_w, "output size");
    const float sy = static_cast<float>(in_h) / static_cast<float>(out_h);
    const float sx = static_cast<float>(in_w) / static_cast<float>(out_w);
    std::vector<int> xs(out_w);
    for (int ox = 0; ox < out_w; ++ox) xs[ox] = std::min(static_cast<int>(std::floor(ox * sx)), in_w - 1);
    for (int oy = 0; oy < out_h; ++oy) {
        const int iy = std::min(static_cast<int>(std::floor(oy * sy)), in_h - 1);
        const std::uint8_t* row = in + static_cast<std::size_t>(iy) * in_w;
        for (int ox = 0; ox < out_w; ++ox) out[static_cast<std::size_t>(oy) * out_w + ox] = row[xs[ox]];
    }
}

const std::vector<std::uint8_t>& cityscapes_palette() {
    static const std::vector<std::uint8_t> palette = {
        128, 64,  128, 244, 35,  232, 70,  70,  70,  102, 102, 156, 190, 153, 153, 153, 153, 153, 250, 170,
        30,  220, 220, 0,   107, 142, 35,  152, 251, 152, 70,  130, 180, 220, 20,  60,  255, 0,   0,   0,
        0,   142, 0,   0,   70,  0,   60,  100, 0,   80,  100, 0,   0,   230, 119, 11,  32,
    };
    return palette;
}

Segmentation postprocess(const float* logits, int num_classes, int height, int width, bool with_confidence,
                         const std::vector<std::uint8_t>& palette) {
    Segmentation s;
    s.height = height, s.width = width;
    const std::size_t plane = static_cast<std::size_t>(height) * width;
    s.labels.resize(plane);
    s.color.resize(3 * plane);
    argmax(logits, num_classes, height, width, s.labels.data());
    colorize(s.labels.data(), height, width, palette.data(), static_cast<int>(palette.size() / 3), s.color.data());
    if (with_confidence) {
        s.confidence.resize(plane);
        confidence(logits, num_classes, height, width, s.confidence.data());
    }
    return s;
}

}  // namespace udaseg
