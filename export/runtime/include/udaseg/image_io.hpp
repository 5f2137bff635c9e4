// Dependency-free image files for the example and the tests: binary PPM (P6, rgb8) and PGM (P5, mono8).
// Perception stacks hand the runtime raw buffers (sensor_msgs/Image); files are only for the example program.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace udaseg {

struct Image {
    int height = 0, width = 0, channels = 0;  // channels: 3 (P6) or 1 (P5)
    std::vector<std::uint8_t> data;            // (H, W, channels), rows packed
};

// Reads a binary PPM (P6) or PGM (P5) with maxval 255; throws std::runtime_error naming the file and the problem.
Image read_pnm(const std::string& path);

// Writes `image` as P6 (3 channels) or P5 (1 channel).
void write_pnm(const std::string& path, const Image& image);

}  // namespace udaseg
