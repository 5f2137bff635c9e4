// pybind11 bindings of the C++ runtime, importable as udaseg._runtime. The tests use them to prove that
// C++ and export/prepost.py compute the same bits; Python code should keep using export/prepost.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "udaseg/image_io.hpp"
#include "udaseg/prepost.hpp"

namespace py = pybind11;
using u8_array = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;
using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

// (H, W, 3) uint8 with packed pixels; rows may be padded (a crop of a larger frame), which exercises row_stride.
struct RowView {
    const std::uint8_t* data;
    int height, width;
    std::size_t row_stride;
};

RowView image_view(const py::array_t<std::uint8_t>& image) {
    if (image.ndim() != 3 || image.shape(2) != 3) throw std::invalid_argument("image must be (H, W, 3) uint8");
    if (image.strides(2) != 1 || image.strides(1) != 3 || image.strides(0) < 3 * image.shape(1)) {
        throw std::invalid_argument("image pixels must be packed (strides (row, 3, 1)); pass np.ascontiguousarray");
    }
    return {image.data(), static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)),
            static_cast<std::size_t>(image.strides(0))};
}

void check_chw(const f32_array& logits) {
    if (logits.ndim() != 3) throw std::invalid_argument("logits must be (C, H, W) float32");
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
    m.doc() = "udaseg C++ runtime: pre/post-processing (bit-identical to udaseg.export.prepost)";
#ifdef UDASEG_WITH_TENSORRT
    m.attr("with_tensorrt") = true;
#else
    m.attr("with_tensorrt") = false;
#endif

    m.def("preprocess", [](const py::array_t<std::uint8_t>& image, int height, int width, std::array<float, 3> mean,
                           std::array<float, 3> std) {
        const RowView v = image_view(image);
        py::array_t<float> out({3, height, width});
        udaseg::Normalize norm{mean, std};
        float* dst = out.mutable_data();
        py::gil_scoped_release release;
        udaseg::preprocess(v.data, v.height, v.width, v.row_stride, height, width, norm, dst);
        return out;
    }, py::arg("image"), py::arg("height"), py::arg("width"), py::arg("mean") = std::array<float, 3>{0, 0, 0},
       py::arg("std") = std::array<float, 3>{1, 1, 1}, "(H, W, 3) uint8 -> (3, height, width) float32");

    m.def("preprocess_u8", [](const py::array_t<std::uint8_t>& image, int height, int width) {
        const RowView v = image_view(image);
        py::array_t<std::uint8_t> out({3, height, width});
        std::uint8_t* dst = out.mutable_data();
        py::gil_scoped_release release;
        udaseg::preprocess_u8(v.data, v.height, v.width, v.row_stride, height, width, dst);
        return out;
    }, py::arg("image"), py::arg("height"), py::arg("width"), "(H, W, 3) uint8 -> (3, height, width) uint8");

    m.def("argmax", [](const f32_array& logits, const std::string& dtype) -> py::array {
        check_chw(logits);
        const int c = static_cast<int>(logits.shape(0)), h = static_cast<int>(logits.shape(1)),
                  w = static_cast<int>(logits.shape(2));
        if (dtype == "int32") {
            py::array_t<std::int32_t> out({h, w});
            udaseg::argmax(logits.data(), c, h, w, out.mutable_data());
            return out;
        }
        if (dtype != "uint8") throw std::invalid_argument("dtype must be 'uint8' or 'int32', got '" + dtype + "'");
        py::array_t<std::uint8_t> out({h, w});
        udaseg::argmax(logits.data(), c, h, w, out.mutable_data());
        return out;
    }, py::arg("logits"), py::arg("dtype") = "uint8", "(C, H, W) float32 -> (H, W) class map");

    m.def("confidence", [](const f32_array& logits) {
        check_chw(logits);
        const int c = static_cast<int>(logits.shape(0)), h = static_cast<int>(logits.shape(1)),
                  w = static_cast<int>(logits.shape(2));
        py::array_t<float> out({h, w});
        udaseg::confidence(logits.data(), c, h, w, out.mutable_data());
        return out;
    }, py::arg("logits"), "(C, H, W) float32 -> (H, W) max softmax probability");

    m.def("exp_neg", [](const f32_array& x) {
        py::array_t<float> out(x.request().shape);
        for (py::ssize_t i = 0; i < x.size(); ++i) out.mutable_data()[i] = udaseg::exp_neg(x.data()[i]);
        return out;
    }, py::arg("x"), "elementwise exp for x <= 0 (the softmax exp of confidence)");

    m.def("colorize", [](const u8_array& labels, const u8_array& palette) {
        if (labels.ndim() != 2) throw std::invalid_argument("labels must be (H, W) uint8");
        if (palette.ndim() != 2 || palette.shape(1) != 3) throw std::invalid_argument("palette must be (K, 3) uint8");
        const int h = static_cast<int>(labels.shape(0)), w = static_cast<int>(labels.shape(1));
        py::array_t<std::uint8_t> out({h, w, 3});
        udaseg::colorize(labels.data(), h, w, palette.data(), static_cast<int>(palette.shape(0)), out.mutable_data());
        return out;
    }, py::arg("labels"), py::arg("palette"), "(H, W) uint8 -> (H, W, 3) uint8");

    m.def("resize_nearest", [](const u8_array& labels, int height, int width) {
        if (labels.ndim() != 2) throw std::invalid_argument("labels must be (H, W) uint8");
        py::array_t<std::uint8_t> out({height, width});
        udaseg::resize_nearest(labels.data(), static_cast<int>(labels.shape(0)), static_cast<int>(labels.shape(1)),
                               height, width, out.mutable_data());
        return out;
    }, py::arg("labels"), py::arg("height"), py::arg("width"), "(h, w) uint8 -> (height, width) uint8");

    m.def("cityscapes_palette", [] {
        const auto& p = udaseg::cityscapes_palette();
        py::array_t<std::uint8_t> out({static_cast<py::ssize_t>(p.size() / 3), py::ssize_t{3}});
        std::copy(p.begin(), p.end(), out.mutable_data());
        return out;
    });

    m.def("read_pnm", [](const std::string& path) {
        const udaseg::Image img = udaseg::read_pnm(path);
        std::vector<py::ssize_t> shape{img.height, img.width};
        if (img.channels == 3) shape.push_back(3);
        py::array_t<std::uint8_t> out(shape);
        std::copy(img.data.begin(), img.data.end(), out.mutable_data());
        return out;
    }, py::arg("path"), "binary PPM/PGM -> (H, W, 3) or (H, W) uint8");

    m.def("write_pnm", [](const std::string& path, const u8_array& image) {
        if (image.ndim() != 2 && !(image.ndim() == 3 && image.shape(2) == 3)) {
            throw std::invalid_argument("image must be (H, W) or (H, W, 3) uint8");
        }
        udaseg::Image img{static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)),
                          image.ndim() == 3 ? 3 : 1, {}};
        img.data.assign(image.data(), image.data() + image.size());
        udaseg::write_pnm(path, img);
    }, py::arg("path"), py::arg("image"));
}
