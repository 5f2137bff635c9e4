#include "udaseg/engine_meta.hpp"

#include <cmath>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "json.hpp"

namespace udaseg {
namespace {

using json::Value;

struct Reader {
    const std::string& source;

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        throw std::runtime_error(source + ": runtime metadata '" + key + "' " + what +
                                 " (rewrite it with export/to_trt.py)");
    }

    const Value& need(const Value& obj, const std::string& key, Value::Type type, const char* type_name) const {
        const Value* v = obj.find(key);
        if (!v) fail(key, "is missing");
        if (!v->is(type)) fail(key, std::string("must be ") + type_name);
        return *v;
    }

    std::string text(const Value& obj, const std::string& key) const {
        return need(obj, key, Value::Type::kString, "a string").string;
    }

    std::string text_or(const Value& obj, const std::string& key, const std::string& fallback) const {
        const Value* v = obj.find(key);
        if (!v || v->is(Value::Type::kNull)) return fallback;
        if (!v->is(Value::Type::kString)) fail(key, "must be a string");
        return v->string;
    }

    long long integer(const Value& v, const std::string& key) const {
        if (!v.is(Value::Type::kNumber) || std::floor(v.number) != v.number) fail(key, "must be an integer");
        return static_cast<long long>(v.number);
    }

    int int_or(const Value& obj, const std::string& key, int fallback) const {
        const Value* v = obj.find(key);
        return (!v || v->is(Value::Type::kNull)) ? fallback : static_cast<int>(integer(*v, key));
    }

    std::vector<std::int64_t> ints(const Value* v, const std::string& key) const {
        std::vector<std::int64_t> out;
        if (!v || v->is(Value::Type::kNull)) return out;
        if (!v->is(Value::Type::kArray)) fail(key, "must be a list of integers");
        for (const Value& e : v->array) out.push_back(e.is(Value::Type::kNull) ? -1 : integer(e, key));
        return out;
    }

    std::array<float, 3> triple(const Value& obj, const std::string& key) const {
        const Value& v = need(obj, key, Value::Type::kArray, "a list of 3 numbers");
        if (v.array.size() != 3) fail(key, "must have 3 values (R, G, B)");
        std::array<float, 3> out{};
        for (int c = 0; c < 3; ++c) {
            if (!v.array[c].is(Value::Type::kNumber)) fail(key, "must hold numbers");
            out[c] = static_cast<float>(v.array[c].number);
        }
        return out;
    }
};

void read_input(const Reader& r, const Value& input, EngineMetadata& m) {
    m.input_name = r.text(input, "name");
    m.input_layout = r.text(input, "layout");
    m.input_dtype = r.text(input, "dtype");
    if (m.input_layout != "NCHW") r.fail("input.layout", "is '" + m.input_layout + "'; this runtime feeds NCHW");
    if (m.input_dtype != "float32" && m.input_dtype != "uint8") {
        r.fail("input.dtype", "is '" + m.input_dtype + "'; expected float32 or uint8");
    }
    m.channel_order = r.text_or(input, "channels", "RGB");
    m.input_shape = r.ints(input.find("shape"), "input.shape");
    if (const Value* host = input.find("host_preprocess")) {
        m.resize = r.text_or(*host, "resize", m.resize);
        if (m.input_dtype == "float32") m.host_normalize = Normalize{r.triple(*host, "mean"), r.triple(*host, "std")};
    }
    const Value* graph = input.find("graph_normalize");
    m.graph_normalizes = graph && graph->is(Value::Type::kObject);
    if (m.graph_normalizes) m.graph_mean = r.triple(*graph, "mean"), m.graph_std = r.triple(*graph, "std");
}

void read_outputs(const Reader& r, const Value& outputs, EngineMetadata& m) {
    for (const Value& o : outputs.array) {
        if (!o.is(Value::Type::kObject)) r.fail("outputs", "must be a list of objects");
        const std::string name = r.text(o, "name"), kind = r.text_or(o, "kind", name);
        m.output_names.push_back(name);
        if (kind == "labels") m.labels_output = name, m.labels_dtype = r.text(o, "dtype");
        if (kind == "logits") m.logits_output = name;
    }
    if (m.labels_output.empty() && m.logits_output.empty()) r.fail("outputs", "has neither a labels nor a logits output");
}

void read_classes(const Reader& r, const Value& rt, EngineMetadata& m) {
    m.num_classes = r.int_or(rt, "num_classes", 0);
    if (const Value* names = rt.find("class_names")) {
        for (const Value& n : names->array) {
            if (!n.is(Value::Type::kString)) r.fail("class_names", "must be a list of strings");
            m.class_names.push_back(n.string);
        }
        if (m.num_classes && static_cast<int>(m.class_names.size()) != m.num_classes) {
            r.fail("class_names", "has " + std::to_string(m.class_names.size()) + " names for " +
                                      std::to_string(m.num_classes) + " classes");
        }
    }
    if (const Value* palette = rt.find("palette")) {
        for (const Value& rgb : palette->array) {
            if (!rgb.is(Value::Type::kArray) || rgb.array.size() != 3) r.fail("palette", "must be a list of [R, G, B]");
            for (const Value& c : rgb.array) {
                const long long v = r.integer(c, "palette");
                if (v < 0 || v > 255) r.fail("palette", "values must lie in [0, 255]");
                m.palette.push_back(static_cast<std::uint8_t>(v));
            }
        }
    }
    m.ignore_index = r.int_or(rt, "ignore_index", 255);
    if (const Value* protocol = rt.find("protocol"); protocol && protocol->is(Value::Type::kObject)) {
        m.protocol = r.int_or(*protocol, "classes", 0);
        for (std::int64_t c : r.ints(protocol->find("class_ids"), "protocol.class_ids")) {
            m.protocol_classes.push_back(static_cast<int>(c));
        }
    }
}

}  // namespace

EngineMetadata parse_engine_metadata(const std::string& json_text, const std::string& source) {
    const Value doc = json::parse(json_text, source);
    const Value* rt = doc.find("runtime");
    if (!rt) rt = &doc;  // a bare runtime block
    Reader r{source};
    if (!rt->is(Value::Type::kObject) || !rt->find("input")) {
        r.fail("runtime", "is missing: not an engine metadata file of export/to_trt.py >= schema 1");
    }
    EngineMetadata m;
    m.schema = r.int_or(*rt, "schema", 0);
    if (m.schema != 1) r.fail("schema", "is " + std::to_string(m.schema) + "; this runtime reads schema 1");
    read_input(r, r.need(*rt, "input", Value::Type::kObject, "an object"), m);
    read_outputs(r, r.need(*rt, "outputs", Value::Type::kArray, "a list"), m);
    read_classes(r, *rt, m);
    if (const Value* profile = rt->find("profile"); profile && profile->is(Value::Type::kObject)) {
        m.profile_min = r.ints(profile->find("min"), "profile.min");
        m.profile_opt = r.ints(profile->find("opt"), "profile.opt");
        m.profile_max = r.ints(profile->find("max"), "profile.max");
    }
    m.precision = r.text_or(*rt, "precision", "");
    return m;
}

EngineMetadata read_engine_metadata(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot open engine metadata (written by export/to_trt.py)");
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return parse_engine_metadata(text, path);
}

std::string engine_metadata_path(const std::string& engine_path) { return engine_path + ".json"; }

}  // namespace udaseg
