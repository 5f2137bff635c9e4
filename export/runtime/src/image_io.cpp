#include "udaseg/image_io.hpp"

#include <cctype>
#include <fstream>
#include <stdexcept>

namespace udaseg {
namespace {

// Next header integer, skipping whitespace and '#' comments (netpbm header grammar).
int read_header_int(std::istream& in, const std::string& path) {
    int ch = in.get();
    while (ch != EOF && (std::isspace(ch) || ch == '#')) {
        if (ch == '#') {
            while (ch != EOF && ch != '\n') ch = in.get();
        }
        ch = in.get();
    }
    if (ch == EOF || !std::isdigit(ch)) throw std::runtime_error(path + ": malformed PNM header");
    long value = 0;
    while (ch != EOF && std::isdigit(ch)) {
        value = value * 10 + (ch - '0');
        if (value > (1 << 20)) throw std::runtime_error(path + ": PNM header value too large");
        ch = in.get();
    }
    return static_cast<int>(value);  // the single whitespace after maxval has been consumed
}

}  // namespace

Image read_pnm(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (magic[0] != 'P' || (magic[1] != '6' && magic[1] != '5')) {
        throw std::runtime_error(path + ": not a binary PPM/PGM (expected magic P6 or P5); convert it first, e.g. "
                                        "python -c \"from PIL import Image; Image.open('in.png').convert('RGB').save('in.ppm')\"");
    }
    Image img;
    img.channels = magic[1] == '6' ? 3 : 1;
    img.width = read_header_int(in, path);
    img.height = read_header_int(in, path);
    const int maxval = read_header_int(in, path);
    if (maxval != 255) throw std::runtime_error(path + ": only 8-bit PNM (maxval 255) is supported, found " +
                                                std::to_string(maxval));
    img.data.resize(static_cast<std::size_t>(img.height) * img.width * img.channels);
    in.read(reinterpret_cast<char*>(img.data.data()), static_cast<std::streamsize>(img.data.size()));
    if (in.gcount() != static_cast<std::streamsize>(img.data.size())) {
        throw std::runtime_error(path + ": truncated pixel data");
    }
    return img;
}

void write_pnm(const std::string& path, const Image& image) {
    if (image.channels != 1 && image.channels != 3) throw std::invalid_argument("write_pnm: channels must be 1 or 3");
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error(path + ": cannot open for writing");
    out << (image.channels == 3 ? "P6" : "P5") << "\n" << image.width << " " << image.height << "\n255\n";
    out.write(reinterpret_cast<const char*>(image.data.data()), static_cast<std::streamsize>(image.data.size()));
    if (!out) throw std::runtime_error(path + ": write failed");
}

}  // namespace udaseg
