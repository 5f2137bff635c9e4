// TensorRT engine runner; compiled only when CMake finds TensorRT (10 or 11) and the CUDA runtime.
// API: IRuntime::deserializeCudaEngine, name-based I/O (getNbIOTensors/getIOTensorName/getTensorIOMode),
// IExecutionContext::setInputShape/setTensorAddress/enqueueV3. Objects are released with delete (TensorRT >= 10).
#include "udaseg/trt_segmenter.hpp"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>

namespace udaseg {
namespace {

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
    }
};

void cuda_check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

std::string dtype_name(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: return "float32";
        case nvinfer1::DataType::kHALF: return "float16";
        case nvinfer1::DataType::kINT8: return "int8";
        case nvinfer1::DataType::kINT32: return "int32";
        case nvinfer1::DataType::kINT64: return "int64";
        case nvinfer1::DataType::kUINT8: return "uint8";
        case nvinfer1::DataType::kBOOL: return "bool";
        default: return "other";
    }
}

std::size_t dtype_size(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kINT64: return 8;
        default: return 1;
    }
}

std::string dims_str(const nvinfer1::Dims& d) {
    std::string s = "(";
    for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
    return s + ")";
}

struct DeviceBuffer {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
};

}  // namespace

struct TrtSegmenter::Impl {
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    cudaStream_t stream = nullptr;
    std::vector<TensorInfo> io;
    std::map<std::string, DeviceBuffer> buffers;
    std::string input, labels, logits;  // tensor names ("" = absent)
    nvinfer1::DataType input_type{}, labels_type{};
    int height = 0, width = 0, classes = 0;

    ~Impl() { if (stream) cudaStreamDestroy(stream); }

    void load(const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw std::runtime_error(path + ": cannot open engine file");
        std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        runtime.reset(nvinfer1::createInferRuntime(logger));
        engine.reset(runtime->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine) {
            throw std::runtime_error(path + ": deserializeCudaEngine failed; engines only load with the TensorRT "
                                            "version and GPU they were built with: rebuild with export/to_trt.py");
        }
        context.reset(engine->createExecutionContext());
        if (!context) throw std::runtime_error(path + ": createExecutionContext failed");
    }

    // Picks the input size (profile opt by default) and checks it against the profile's min/max.
    void set_input_shape(int h, int w) {
        nvinfer1::Dims shape = engine->getTensorShape(input.c_str());
        if (shape.nbDims != 4 || shape.d[1] != 3) {
            throw std::runtime_error("engine input '" + input + "' must be (B, 3, H, W), found " + dims_str(shape));
        }
        const bool dynamic = shape.d[0] < 0 || shape.d[2] < 0 || shape.d[3] < 0;
        nvinfer1::Dims lo = shape, opt = shape, hi = shape;  // a static input is its own profile
        if (dynamic) {
            lo = engine->getProfileShape(input.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
            opt = engine->getProfileShape(input.c_str(), 0, nvinfer1::OptProfileSelector::kOPT);
            hi = engine->getProfileShape(input.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
        }
        if (shape.d[0] < 0) shape.d[0] = 1;
        if (shape.d[2] < 0) shape.d[2] = h > 0 ? h : opt.d[2];
        if (shape.d[3] < 0) shape.d[3] = w > 0 ? w : opt.d[3];
        if ((h > 0 && shape.d[2] != h) || (w > 0 && shape.d[3] != w)) {
            throw std::runtime_error("engine input '" + input + "' is static " + dims_str(shape) + ", asked for " +
                                     std::to_string(h) + "x" + std::to_string(w));
        }
        if (dynamic) {
            for (int i = 0; i < 4; ++i) {
                if (shape.d[i] < lo.d[i] || shape.d[i] > hi.d[i]) {
                    throw std::runtime_error("input shape " + dims_str(shape) + " is outside the engine profile: dim " +
                                             std::to_string(i) + " must be in [" + std::to_string(lo.d[i]) + ", " +
                                             std::to_string(hi.d[i]) + "]; rebuild with wider --min/--max shapes");
                }
            }
        }
        if (!context->setInputShape(input.c_str(), shape)) {
            throw std::runtime_error("setInputShape" + dims_str(shape) + " rejected for '" + input + "'");
        }
        height = static_cast<int>(shape.d[2]), width = static_cast<int>(shape.d[3]);
    }

    void discover_io() {
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const std::string name = engine->getIOTensorName(i);
            const bool is_input = engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
            if (is_input) {
                if (!input.empty()) throw std::runtime_error("engine has more than one input: '" + input + "', '" + name + "'");
                input = name, input_type = engine->getTensorDataType(name.c_str());
            } else if (name == "labels") {
                labels = name, labels_type = engine->getTensorDataType(name.c_str());
            } else if (name == "logits") {
                logits = name;
            }
        }
        if (input.empty() || (labels.empty() && logits.empty())) {
            throw std::runtime_error("engine I/O does not follow export/to_onnx.py: one input and a 'labels' and/or "
                                     "'logits' output expected");
        }
        if (input_type != nvinfer1::DataType::kFLOAT && input_type != nvinfer1::DataType::kUINT8) {
            throw std::runtime_error("engine input must be float32 or uint8, found " + dtype_name(input_type));
        }
    }

    // Allocates one device buffer per I/O tensor at the shapes the context resolved, and binds it by name.
    void allocate() {
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            const nvinfer1::Dims d = context->getTensorShape(name);
            const nvinfer1::DataType t = engine->getTensorDataType(name);
            TensorInfo info{name, dtype_name(t), {}, engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT};
            std::size_t count = 1;
            for (int k = 0; k < d.nbDims; ++k) info.shape.push_back(d.d[k]), count *= static_cast<std::size_t>(d.d[k]);
            if (name == logits) classes = static_cast<int>(d.d[1]);
            DeviceBuffer& buf = buffers[name];
            buf.bytes = count * dtype_size(t);
            cuda_check(cudaMalloc(&buf.ptr, buf.bytes), "cudaMalloc");
            if (!context->setTensorAddress(name, buf.ptr)) throw std::runtime_error(std::string("setTensorAddress ") + name);
            io.push_back(info);
        }
    }
};

TrtSegmenter::TrtSegmenter(const std::string& engine_path, int height, int width, int device) : impl_(new Impl) {
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    impl_->load(engine_path);
    impl_->discover_io();
    impl_->set_input_shape(height, width);
    impl_->allocate();
    cuda_check(cudaStreamCreate(&impl_->stream), "cudaStreamCreate");
}

TrtSegmenter::~TrtSegmenter() = default;

Segmentation TrtSegmenter::segment(const std::uint8_t* rgb, int height, int width, std::size_t row_stride,
                                   bool with_confidence) {
    Impl& m = *impl_;
    const int h = m.height, w = m.width;
    const std::size_t plane = static_cast<std::size_t>(h) * w;
    std::vector<float> input_f;
    std::vector<std::uint8_t> input_u8;
    const void* host_input = nullptr;
    if (m.input_type == nvinfer1::DataType::kUINT8) {
        input_u8.resize(3 * plane);
        preprocess_u8(rgb, height, width, row_stride, h, w, input_u8.data());
        host_input = input_u8.data();
    } else {
        input_f.resize(3 * plane);
        preprocess(rgb, height, width, row_stride, h, w, Normalize{}, input_f.data());
        host_input = input_f.data();
    }
    const DeviceBuffer& in = m.buffers.at(m.input);
    cuda_check(cudaMemcpyAsync(in.ptr, host_input, in.bytes, cudaMemcpyHostToDevice, m.stream), "copy input");
    if (!m.context->enqueueV3(m.stream)) throw std::runtime_error("enqueueV3 failed");

    std::vector<float> logits;
    std::vector<std::int32_t> labels32;
    Segmentation s;
    s.height = h, s.width = w;
    s.labels.resize(plane);
    if (!m.logits.empty() && (with_confidence || m.labels.empty())) {
        const DeviceBuffer& b = m.buffers.at(m.logits);
        logits.resize(b.bytes / sizeof(float));
        cuda_check(cudaMemcpyAsync(logits.data(), b.ptr, b.bytes, cudaMemcpyDeviceToHost, m.stream), "copy logits");
    }
    if (!m.labels.empty()) {
        const DeviceBuffer& b = m.buffers.at(m.labels);
        if (m.labels_type == nvinfer1::DataType::kINT32) {
            labels32.resize(plane);
            cuda_check(cudaMemcpyAsync(labels32.data(), b.ptr, b.bytes, cudaMemcpyDeviceToHost, m.stream), "copy labels");
        } else {
            cuda_check(cudaMemcpyAsync(s.labels.data(), b.ptr, b.bytes, cudaMemcpyDeviceToHost, m.stream), "copy labels");
        }
    }
    cuda_check(cudaStreamSynchronize(m.stream), "cudaStreamSynchronize");

    if (m.labels.empty()) {
        argmax(logits.data(), m.classes, h, w, s.labels.data());
    } else if (!labels32.empty()) {
        for (std::size_t p = 0; p < plane; ++p) s.labels[p] = static_cast<std::uint8_t>(labels32[p]);
    }
    const std::vector<std::uint8_t>& palette = cityscapes_palette();
    s.color.resize(3 * plane);
    colorize(s.labels.data(), h, w, palette.data(), static_cast<int>(palette.size() / 3), s.color.data());
    if (with_confidence && !logits.empty()) {
        s.confidence.resize(plane);
        confidence(logits.data(), m.classes, h, w, s.confidence.data());
    }
    return s;
}

int TrtSegmenter::input_height() const { return impl_->height; }
int TrtSegmenter::input_width() const { return impl_->width; }
int TrtSegmenter::num_classes() const { return impl_->classes; }
const std::vector<TensorInfo>& TrtSegmenter::io() const { return impl_->io; }

}  // namespace udaseg
