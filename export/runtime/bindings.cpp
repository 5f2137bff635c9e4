// pybind11 bindings of the C++ runtime, importable as udaseg._runtime. The tests use them to prove that
// C++ and export/prepost.py compute the same bits; Python code should keep using export/prepost.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "udaseg/engine_meta.hpp"
#include "udaseg/image_io.hpp"
#include "udaseg/prepost.hpp"
#include "udaseg/tensor_types.hpp"
#ifdef UDASEG_WITH_TENSORRT
#include "udaseg/trt_segmenter.hpp"
#endif

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

// EngineMetadata as a dict with the field names of the C++ struct (what a C++ program sees).
py::dict metadata_dict(const udaseg::EngineMetadata& m) {
    py::dict d;
    d["schema"] = m.schema;
    d["input_name"] = m.input_name, d["input_layout"] = m.input_layout, d["input_dtype"] = m.input_dtype;
    d["channel_order"] = m.channel_order, d["input_shape"] = m.input_shape, d["resize"] = m.resize;
    d["host_mean"] = m.host_normalize.mean, d["host_std"] = m.host_normalize.std;
    d["graph_normalizes"] = m.graph_normalizes, d["graph_mean"] = m.graph_mean, d["graph_std"] = m.graph_std;
    d["profile_min"] = m.profile_min, d["profile_opt"] = m.profile_opt, d["profile_max"] = m.profile_max;
    d["output_names"] = m.output_names, d["labels_output"] = m.labels_output, d["logits_output"] = m.logits_output;
    d["labels_dtype"] = m.labels_dtype, d["num_classes"] = m.num_classes, d["class_names"] = m.class_names;
    d["palette"] = m.palette, d["ignore_index"] = m.ignore_index, d["protocol"] = m.protocol;
    d["protocol_classes"] = m.protocol_classes, d["precision"] = m.precision;
    return d;
}

udaseg::TensorType tensor_type(int code) { return static_cast<udaseg::TensorType>(code); }

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

    m.def("parse_engine_metadata", [](const std::string& text) { return metadata_dict(udaseg::parse_engine_metadata(text)); },
          py::arg("text"), "<engine>.json text (or its runtime block) -> dict of EngineMetadata fields");
    m.def("read_engine_metadata", [](const std::string& path) { return metadata_dict(udaseg::read_engine_metadata(path)); },
          py::arg("path"), "<engine>.json -> dict of EngineMetadata fields");

    m.def("tensor_type_bits", [](int code) { return udaseg::tensor_type_bits(tensor_type(code)); }, py::arg("code"),
          "bits per element of nvinfer1::DataType value `code` (4 for the packed int4/fp4)");
    m.def("tensor_type_name", [](int code) { return udaseg::tensor_type_name(tensor_type(code)); }, py::arg("code"));
    m.def("tensor_bytes", [](int code, std::size_t count) { return udaseg::tensor_bytes(tensor_type(code), count); },
          py::arg("code"), py::arg("count"), "bytes of `count` elements (packed types rounded up to whole bytes)");

#ifdef UDASEG_WITH_TENSORRT
    py::class_<udaseg::TrtSegmenter>(m, "TrtSegmenter", "a TensorRT engine with the C++ pre/post-processing")
        .def(py::init<const std::string&, int, int, int, const std::string&>(), py::arg("engine"),
             py::arg("height") = 0, py::arg("width") = 0, py::arg("device") = 0, py::arg("metadata") = "")
        .def("segment", [](udaseg::TrtSegmenter& self, const py::array_t<std::uint8_t>& image, bool with_confidence) {
            const RowView v = image_view(image);
            udaseg::Segmentation s;
            {
                py::gil_scoped_release release;
                s = self.segment(v.data, v.height, v.width, v.row_stride, with_confidence);
            }
            py::dict out;
            py::array_t<std::uint8_t> labels({s.height, s.width}), color({s.height, s.width, 3});
            std::copy(s.labels.begin(), s.labels.end(), labels.mutable_data());
            std::copy(s.color.begin(), s.color.end(), color.mutable_data());
            out["labels"] = labels, out["color"] = color;
            if (!s.confidence.empty()) {
                py::array_t<float> conf({s.height, s.width});
                std::copy(s.confidence.begin(), s.confidence.end(), conf.mutable_data());
                out["confidence"] = conf;
            }
            return out;
        }, py::arg("image"), py::arg("with_confidence") = false, "(H, W, 3) uint8 RGB -> labels, color[, confidence]")
        .def_property_readonly("input_height", &udaseg::TrtSegmenter::input_height)
        .def_property_readonly("input_width", &udaseg::TrtSegmenter::input_width)
        .def_property_readonly("num_classes", &udaseg::TrtSegmenter::num_classes)
        .def_property_readonly("metadata", [](const udaseg::TrtSegmenter& self) { return metadata_dict(self.metadata()); });
#endif

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
