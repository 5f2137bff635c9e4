// TensorRT engine runner; compiled when CMake finds TensorRT (10 or 11) and the CUDA runtime, and compiled (not
// linked) against both header generations by the UDASEG_TRT_COMPILE_ONLY check (tests/export/test_trt_compile.py).
// API: IRuntime::deserializeCudaEngine, name-based I/O (getNbIOTensors/getIOTensorName/getTensorIOMode),
// IExecutionContext::setInputShape/setTensorAddress/enqueueV3. Objects are released with delete (TensorRT >= 10).
// Everything used here exists unchanged in TensorRT 10 and 11 (11 removed weak typing, calibrators and the
// platformHasFast* queries: builder-side APIs this runner never calls).
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

#if NV_TENSORRT_MAJOR < 10
#error "udaseg's TensorRT runner needs TensorRT 10 or 11 (name-based I/O, enqueueV3, delete-released objects)"
#endif

// TensorType mirrors nvinfer1::DataType value for value; a renumbering fails to compile here.
#define UDASEG_SAME_TYPE(name)                                                                     \
    static_assert(static_cast<std::int32_t>(nvinfer1::DataType::name) ==                           \
                      static_cast<std::int32_t>(TensorType::name),                                 \
                  "udaseg::TensorType::" #name " differs from nvinfer1::DataType::" #name)
UDASEG_SAME_TYPE(kFLOAT);
UDASEG_SAME_TYPE(kHALF);
UDASEG_SAME_TYPE(kINT8);
UDASEG_SAME_TYPE(kINT32);
UDASEG_SAME_TYPE(kBOOL);
UDASEG_SAME_TYPE(kUINT8);
UDASEG_SAME_TYPE(kFP8);
UDASEG_SAME_TYPE(kBF16);
UDASEG_SAME_TYPE(kINT64);
UDASEG_SAME_TYPE(kINT4);
// kFP4 arrived in TensorRT 10.8, kE8M0 later in 10.x; both are in the 10.16 and 11.1 headers the check uses.
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 8
UDASEG_SAME_TYPE(kFP4);
#endif
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 16
UDASEG_SAME_TYPE(kE8M0);
#endif
#undef UDASEG_SAME_TYPE

// Every nvinfer1::DataType by name, no default: with -Wall (-Wswitch) a type that a later TensorRT adds is a
// warning here (an error in the compile check), and at run time tensor_type_bits() rejects it by value.
TensorType tensor_type(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: return TensorType::kFLOAT;
        case nvinfer1::DataType::kHALF: return TensorType::kHALF;
        case nvinfer1::DataType::kINT8: return TensorType::kINT8;
        case nvinfer1::DataType::kINT32: return TensorType::kINT32;
        case nvinfer1::DataType::kBOOL: return TensorType::kBOOL;
        case nvinfer1::DataType::kUINT8: return TensorType::kUINT8;
        case nvinfer1::DataType::kFP8: return TensorType::kFP8;
        case nvinfer1::DataType::kBF16: return TensorType::kBF16;
        case nvinfer1::DataType::kINT64: return TensorType::kINT64;
        case nvinfer1::DataType::kINT4: return TensorType::kINT4;
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 8
        case nvinfer1::DataType::kFP4: return TensorType::kFP4;
#endif
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 16
        case nvinfer1::DataType::kE8M0: return TensorType::kE8M0;
#endif
    }
    return static_cast<TensorType>(static_cast<std::int32_t>(t));  // unknown value: tensor_type_bits throws
}

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
    }
};

void cuda_check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

std::string dims_str(const nvinfer1::Dims& d) {
    std::string s = "(";
    for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
    return s + ")";
}

struct DeviceBuffer {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
};

bool file_exists(const std::string& path) { return static_cast<bool>(std::ifstream(path)); }

}  // namespace

struct TrtSegmenter::Impl {
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    cudaStream_t stream = nullptr;
    EngineMetadata meta;
    bool has_meta = false;
    std::vector<TensorInfo> io;
    std::map<std::string, DeviceBuffer> buffers;
    std::string input, labels, logits;  // tensor names ("" = absent)
    TensorType input_type{}, labels_type{};
    int height = 0, width = 0, classes = 0;

    ~Impl() { if (stream) cudaStreamDestroy(stream); }

    void load(const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw std::runtime_error(path + ": cannot open engine file");
        std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        runtime.reset(nvinfer1::createInferRuntime(logger));
        if (!runtime) throw std::runtime_error("createInferRuntime failed (TensorRT library/driver mismatch?)");
        engine.reset(runtime->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine) {
            throw std::runtime_error(path + ": deserializeCudaEngine failed; engines only load with the TensorRT "
                                            "version and GPU they were built with: rebuild with export/to_trt.py");
        }
        context.reset(engine->createExecutionContext());
        if (!context) throw std::runtime_error(path + ": createExecutionContext failed");
    }

    void load_metadata(const std::string& engine_path, const std::string& metadata_path) {
        const std::string path = metadata_path.empty() ? engine_metadata_path(engine_path) : metadata_path;
        if (metadata_path.empty() && !file_exists(path)) {
            std::cerr << "[udaseg] " << path << " not found: using the export conventions (outputs 'labels'/"
                      << "'logits', [0, 1] input, Cityscapes colours)\n";
            return;
        }
        meta = read_engine_metadata(path);
        has_meta = true;
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

    // Finds the input and the labels/logits outputs: by the metadata's names, else by the export's names.
    void discover_io() {
        const std::string want_labels = has_meta ? meta.labels_output : "labels";
        const std::string want_logits = has_meta ? meta.logits_output : "logits";
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const std::string name = engine->getIOTensorName(i);
            const TensorType type = tensor_type(engine->getTensorDataType(name.c_str()));
            if (engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT) {
                if (!input.empty()) throw std::runtime_error("engine has more than one input: '" + input + "', '" + name + "'");
                input = name, input_type = type;
            } else if (!want_labels.empty() && name == want_labels) {
                labels = name, labels_type = type;
            } else if (!want_logits.empty() && name == want_logits) {
                logits = name;
            }
        }
        if (input.empty() || (labels.empty() && logits.empty())) {
            throw std::runtime_error("engine I/O does not follow export/to_onnx.py: one input and a '" + want_labels +
                                     "' and/or '" + want_logits + "' output expected");
        }
        if (input_type != TensorType::kFLOAT && input_type != TensorType::kUINT8) {
            throw std::runtime_error("engine input must be float32 or uint8, found " + tensor_type_name(input_type));
        }
        if (!labels.empty() && labels_type != TensorType::kINT32 && labels_type != TensorType::kUINT8 &&
            labels_type != TensorType::kINT64) {
            throw std::runtime_error("labels output must be int32, int64 or uint8, found " + tensor_type_name(labels_type));
        }
        if (has_meta && (meta.input_name != input || meta.input_dtype != tensor_type_name(input_type))) {
            throw std::runtime_error("engine input '" + input + "' (" + tensor_type_name(input_type) +
                                     ") does not match its metadata ('" + meta.input_name + "', " + meta.input_dtype +
                                     "): the .json belongs to another engine");
        }
    }

    // Allocates one device buffer per I/O tensor at the shapes the context resolved, and binds it by name.
    void allocate() {
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            const nvinfer1::Dims d = context->getTensorShape(name);
            const TensorType t = tensor_type(engine->getTensorDataType(name));
            TensorInfo info{name, tensor_type_name(t), t, {}, 0,
                            engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT};
            std::size_t count = 1;
            for (int k = 0; k < d.nbDims; ++k) info.shape.push_back(d.d[k]), count *= static_cast<std::size_t>(d.d[k]);
            if (name == logits) classes = static_cast<int>(d.d[1]);
            DeviceBuffer& buf = buffers[name];
            buf.bytes = info.bytes = tensor_bytes(t, count);
            cuda_check(cudaMalloc(&buf.ptr, buf.bytes), "cudaMalloc");
            if (!context->setTensorAddress(name, buf.ptr)) throw std::runtime_error(std::string("setTensorAddress ") + name);
            io.push_back(info);
        }
    }

    // Host copy of the labels output as uint8 train ids (int32/int64 narrowed; ids are < 256).
    void copy_labels(std::uint8_t* out, std::size_t plane) {
        const DeviceBuffer& b = buffers.at(labels);
        if (labels_type == TensorType::kUINT8) {
            cuda_check(cudaMemcpyAsync(out, b.ptr, plane, cudaMemcpyDeviceToHost, stream), "copy labels");
            return;
        }
        std::vector<unsigned char> raw(b.bytes);
        cuda_check(cudaMemcpyAsync(raw.data(), b.ptr, b.bytes, cudaMemcpyDeviceToHost, stream), "copy labels");
        cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        for (std::size_t p = 0; p < plane; ++p) {
            if (labels_type == TensorType::kINT32) {
                out[p] = static_cast<std::uint8_t>(reinterpret_cast<const std::int32_t*>(raw.data())[p]);
            } else {
                out[p] = static_cast<std::uint8_t>(reinterpret_cast<const std::int64_t*>(raw.data())[p]);
            }
        }
    }
};

TrtSegmenter::TrtSegmenter(const std::string& engine_path, int height, int width, int device,
                           const std::string& metadata_path)
    : impl_(new Impl) {
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    impl_->load_metadata(engine_path, metadata_path);
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
    if (m.input_type == TensorType::kUINT8) {
        input_u8.resize(3 * plane);
        preprocess_u8(rgb, height, width, row_stride, h, w, input_u8.data());
        host_input = input_u8.data();
    } else {
        input_f.resize(3 * plane);
        preprocess(rgb, height, width, row_stride, h, w, m.meta.host_normalize, input_f.data());
        host_input = input_f.data();
    }
    const DeviceBuffer& in = m.buffers.at(m.input);
    cuda_check(cudaMemcpyAsync(in.ptr, host_input, in.bytes, cudaMemcpyHostToDevice, m.stream), "copy input");
    if (!m.context->enqueueV3(m.stream)) throw std::runtime_error("enqueueV3 failed");

    std::vector<float> logits;
    Segmentation s;
    s.height = h, s.width = w;
    s.labels.resize(plane);
    if (!m.logits.empty() && (with_confidence || m.labels.empty())) {
        const DeviceBuffer& b = m.buffers.at(m.logits);
        logits.resize(b.bytes / sizeof(float));
        cuda_check(cudaMemcpyAsync(logits.data(), b.ptr, b.bytes, cudaMemcpyDeviceToHost, m.stream), "copy logits");
    }
    if (!m.labels.empty()) m.copy_labels(s.labels.data(), plane);
    cuda_check(cudaStreamSynchronize(m.stream), "cudaStreamSynchronize");

    if (m.labels.empty()) argmax(logits.data(), m.classes, h, w, s.labels.data());
    const std::vector<std::uint8_t>& palette = m.meta.palette.empty() ? cityscapes_palette() : m.meta.palette;
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
const EngineMetadata& TrtSegmenter::metadata() const { return impl_->meta; }
bool TrtSegmenter::has_metadata() const { return impl_->has_meta; }

}  // namespace udaseg
