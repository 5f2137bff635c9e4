// Segments one image file with a TensorRT engine written by export/to_trt.py.
//
//   segment_image model.engine frame.ppm out_prefix     -> out_prefix_labels.pgm (mono8 train ids),
//                                                          out_prefix_color.ppm (rgb8, the model's palette)
// model.engine.json (written by export/to_trt.py beside the engine) supplies the input name and dtype, the
// normalisation, the output names, the class names and the palette; nothing is hard-coded here.
// Images are binary PPM/PGM to stay dependency-free; convert a PNG with
//   python -c "from PIL import Image; Image.open('frame.png').convert('RGB').save('frame.ppm')"
// Built without TensorRT, the program still compiles (so CI checks the library API) and says what is missing.
#include <chrono>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

#include "udaseg/image_io.hpp"
#include "udaseg/prepost.hpp"
#ifdef UDASEG_WITH_TENSORRT
#include "udaseg/trt_segmenter.hpp"
#endif

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s MODEL.engine IMAGE.ppm OUT_PREFIX\n", argv[0]);
        return 2;
    }
    try {
        const udaseg::Image image = udaseg::read_pnm(argv[2]);
        if (image.channels != 3) throw std::runtime_error(std::string(argv[2]) + ": expected an RGB PPM (P6)");
#ifdef UDASEG_WITH_TENSORRT
        udaseg::TrtSegmenter segmenter(argv[1]);
        const auto t0 = std::chrono::steady_clock::now();
        const udaseg::Segmentation s = segmenter.segment(image.data.data(), image.height, image.width);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        // Back to the camera resolution: class ids by nearest neighbour, then colours from the resized ids.
        udaseg::Image labels{image.height, image.width, 1, {}}, color{image.height, image.width, 3, {}};
        labels.data.resize(static_cast<std::size_t>(image.height) * image.width);
        color.data.resize(labels.data.size() * 3);
        udaseg::resize_nearest(s.labels.data(), s.height, s.width, image.height, image.width, labels.data.data());
        const auto& meta = segmenter.metadata();
        const auto& palette = meta.palette.empty() ? udaseg::cityscapes_palette() : meta.palette;
        udaseg::colorize(labels.data.data(), image.height, image.width, palette.data(),
                         static_cast<int>(palette.size() / 3), color.data.data());
        const std::string prefix = argv[3];
        udaseg::write_pnm(prefix + "_labels.pgm", labels);
        udaseg::write_pnm(prefix + "_color.ppm", color);
        std::printf("%s: %dx%d -> network %dx%d in %.2f ms (pre + engine + post), %d classes, %s\n", argv[2],
                    image.width, image.height, s.width, s.height, ms, meta.num_classes,
                    meta.precision.empty() ? "precision unknown" : meta.precision.c_str());
        return 0;
#else
        std::fprintf(stderr, "segment_image: this build has no TensorRT runner (CMake did not find TensorRT and CUDA; "
                             "set TENSORRT_ROOT and reconfigure). Read %s: %dx%d.\n", argv[2], image.width, image.height);
        return 3;
#endif
    } catch (const std::exception& e) {
        std::fprintf(stderr, "segment_image: %s\n", e.what());
        return 1;
    }
}
