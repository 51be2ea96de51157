#include "op_util.hpp"

#include <openvino/core/except.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/parameter.hpp>

#include <cstring>

namespace nncf_moe3 {

void check_weight_types(const ov::Node* node, size_t pw) { check_weight_types(node, pw, pw + 1, pw + 2, ""); }

void check_weight_types(const ov::Node* node, size_t pw, size_t ps, size_t pz, const char* what) {
    const auto tw = node->get_input_element_type(pw), ts = node->get_input_element_type(ps),
               tz = node->get_input_element_type(pz);
    NODE_VALIDATION_CHECK(node, tw.is_dynamic() || tw == ov::element::u8, what, "k3 weights must be u8, got ", tw);
    NODE_VALIDATION_CHECK(node, ts.is_dynamic() || ts == ov::element::f16 || ts == ov::element::f32, what,
                          "scales must be f16 (or f32), got ", ts);
    NODE_VALIDATION_CHECK(node, tz.is_dynamic() || tz == ov::element::u8, what, "zero points must be u8, got ", tz);
    const auto& ws = node->get_input_partial_shape(pw);
    if (ws.rank().is_static() && ws[ws.rank().get_length() - 1].is_static())
        NODE_VALIDATION_CHECK(node, ws[ws.rank().get_length() - 1].get_length() == k3::BLOCK_BYTES, what,
                              "k3 weights must end in a dimension of 12 bytes, got ", ws);
}

void keep_f16_constants(ov::Node* node, std::initializer_list<size_t> ports) {
    // ov::KeepConstPrecision's rt_info key (name "keep_const_precision", version "0"); only its presence is checked
    static const std::string key = "keep_const_precision_0";
    for (size_t p : ports) {
        if (p >= node->get_input_size()) continue;
        const auto src = node->get_input_node_shared_ptr(p);
        if (ov::is_type<ov::op::v0::Constant>(src) && src->get_output_element_type(0) == ov::element::f16)
            src->get_rt_info()[key] = std::string();
    }
}

void check_codebook(const ov::Node* node, size_t pc) {
    const auto tc = node->get_input_element_type(pc);
    NODE_VALIDATION_CHECK(node, tc.is_dynamic() || tc == ov::element::f16 || tc == ov::element::f32,
                          "codebook must be f16 (or f32), got ", tc);
    const auto& cs = node->get_input_partial_shape(pc);
    NODE_VALIDATION_CHECK(node, cs.is_dynamic() || ov::shape_size(cs.to_shape()) == 8,
                          "codebook must hold 8 values, got ", cs);
}

void check_k3_version(const ov::Node* node, int64_t version) {
    NODE_VALIDATION_CHECK(node, version == k3::K3_VERSION, "k3 weight layout version ", version,
                          " (an IR transformed by another nncf_moe3 build; a missing k3_version attribute means 1), "
                          "this build reads version ", k3::K3_VERSION,
                          ": re-run openvino_ext.transform on the u3 IR (the k3 bytes would be read wrongly)");
}

k3::WeightSet weight_set(const ov::Tensor& w, const ov::Tensor& s, const ov::Tensor& z, int64_t K, int64_t gs,
                         const char* what) {
    k3::WeightSet ws;
    const auto wsh = w.get_shape(), ssh = s.get_shape();
    OPENVINO_ASSERT(wsh.size() >= 3 && wsh.back() == (size_t)k3::BLOCK_BYTES, what, ": bad k3 weight shape ", wsh);
    OPENVINO_ASSERT(gs > 0 && K % gs == 0 && (gs % k3::BLOCK == 0 || gs == K), what, ": group_size ", gs,
                    " must divide K=", K, " and be a multiple of 32 or K");
    ws.K = K;
    ws.gs = gs;
    ws.G = K / gs;
    ws.N = (int64_t)wsh[wsh.size() - 3];
    ws.Kb = (int64_t)wsh[wsh.size() - 2];
    OPENVINO_ASSERT(ws.Kb == k3_blocks(K), what, ": k3 weights ", wsh, " do not match K=", K,
                    " (k3 v2: Kb = 2 * ceil(K / 64))");
    OPENVINO_ASSERT(ssh.size() == wsh.size() - 1 && (int64_t)ssh.back() == ws.G &&
                        (int64_t)ssh[ssh.size() - 2] == ws.N,
                    what, ": scales ", ssh, " do not match weights ", wsh, " with G=", ws.G);
    ws.w = static_cast<const uint8_t*>(w.data());
    if (s.get_element_type() == ov::element::f32)
        ws.sf = static_cast<const float*>(s.data());
    else
        ws.s = static_cast<const uint16_t*>(s.data());
    if (z.get_size() == 1) {
        ws.z = nullptr;
        ws.z_scalar = (float)*static_cast<const uint8_t*>(z.data());
    } else {
        OPENVINO_ASSERT(z.get_shape() == ssh, what, ": zero points ", z.get_shape(), " must be [1] or ", ssh);
        ws.z = static_cast<const uint8_t*>(z.data());
    }
    return ws;
}

void check_act_type(const ov::Node* node, size_t port) {
    const auto t = node->get_input_element_type(port);
    NODE_VALIDATION_CHECK(node, t.is_dynamic() || is_act_type(t), "X must be f32 or bf16, got ", t);
}

const float* f32_activations(const ov::Tensor& t, std::vector<float>& buf) {
    if (t.get_element_type() == ov::element::f32) return static_cast<const float*>(t.data());
    OPENVINO_ASSERT(t.get_element_type() == ov::element::bf16, "activations of type ", t.get_element_type());
    const size_t n = t.get_size();
    buf.resize(n);
    const uint16_t* s = static_cast<const uint16_t*>(t.data());
    uint32_t* d = reinterpret_cast<uint32_t*>(buf.data());
    for (size_t i = 0; i < n; ++i) d[i] = (uint32_t)s[i] << 16;
    return buf.data();
}

float* f32_result(ov::Tensor& out, size_t n, std::vector<float>& buf) {
    if (out.get_element_type() == ov::element::f32) return static_cast<float*>(out.data());
    buf.resize(n);
    return buf.data();
}

void store_result(ov::Tensor& out, const float* y, size_t n) {
    if (out.get_element_type() == ov::element::f32) return;
    uint16_t* d = static_cast<uint16_t*>(out.data());
    const uint32_t* s = reinterpret_cast<const uint32_t*>(y);
    for (size_t i = 0; i < n; ++i) {
        const uint32_t b = s[i];
        // round to nearest even (as the plugin's f32 -> bf16 reorder); NaN stays a quiet NaN
        d[i] = (b & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((b >> 16) | 0x40u)
                                               : (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
}

// ---- packed operands
namespace {
template <class T>
T rd(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}
}  // namespace

std::vector<PackedSection> parse_packed(const uint8_t* data, size_t bytes, const char* what) {
    OPENVINO_ASSERT(data && bytes >= PACK_HEADER && rd<uint32_t>(data) == PACK_MAGIC, what,
                    ": the packed operand is not a blob written by openvino_ext.reference.pack_operands "
                    "(bad magic / too short: ", bytes, " bytes)");
    const uint32_t version = rd<uint32_t>(data + 4), count = rd<uint32_t>(data + 8), header = rd<uint32_t>(data + 12);
    OPENVINO_ASSERT(version == PACK_VERSION, what, ": packed operands of format version ", version,
                    ", this build reads version ", PACK_VERSION, ": re-run openvino_ext.transform on the u3 IR");
    OPENVINO_ASSERT(count >= 1 && count <= PACK_MAX_SECTIONS && header == PACK_HEADER + count * PACK_DESC &&
                        header <= bytes,
                    what, ": corrupt packed operand header (", count, " sections, header ", header, " of ", bytes,
                    " bytes)");
    std::vector<PackedSection> out(count);
    for (uint32_t i = 0; i < count; ++i) {
        const uint8_t* d = data + PACK_HEADER + (size_t)i * PACK_DESC;
        const uint32_t code = rd<uint32_t>(d), rank = rd<uint32_t>(d + 4);
        PackedSection& sec = out[i];
        sec.type = code == 1 ? ov::element::u8 : code == 2 ? ov::element::f16 : code == 3 ? ov::element::f32
                                                                                          : ov::element::dynamic;
        OPENVINO_ASSERT(sec.type != ov::element::dynamic && rank >= 1 && rank <= 4, what, ": packed section ", i,
                        " has element type code ", code, " / rank ", rank, " (expected u8 / f16 / f32, rank 1..4)");
        size_t n = 1;
        for (uint32_t r = 0; r < rank; ++r) {
            const uint64_t dim = rd<uint64_t>(d + 8 + 8 * r);
            OPENVINO_ASSERT(dim < (uint64_t(1) << 40), what, ": packed section ", i, " has dimension ", dim);
            sec.shape.push_back((size_t)dim);
            n *= (size_t)dim;
        }
        sec.offset = (size_t)rd<uint64_t>(d + 40);
        sec.bytes = (size_t)rd<uint64_t>(d + 48);
        OPENVINO_ASSERT(sec.bytes == n * sec.type.size() && sec.offset % PACK_ALIGN == 0 && sec.offset >= header &&
                            sec.offset <= bytes && sec.bytes <= bytes - sec.offset,
                        what, ": packed section ", i, " ", sec.type, sec.shape, " at offset ", sec.offset, " (",
                        sec.bytes, " bytes) lies outside the ", bytes, "-byte blob or has the wrong size");
    }
    return out;
}

const ov::op::v0::Constant* packed_constant(const ov::Node* node, size_t port) {
    if (port >= node->get_input_size()) return nullptr;
    const auto* c = ov::as_type<const ov::op::v0::Constant>(node->get_input_node_ptr(port));
    return c && c->get_output_element_type(0) == ov::element::u8 ? c : nullptr;
}

void PackedViews::check_blob(const ov::Tensor& blob, const char* what) {
    OPENVINO_ASSERT(blob.get_element_type() == ov::element::u8 && blob.get_shape().size() == 1, what,
                    ": packed operands must be a 1-D u8 tensor, got ", blob.get_element_type(), blob.get_shape());
}

ov::TensorVector PackedViews::make_views(const uint8_t* data, size_t bytes, const char* what) {
    uint8_t* base = const_cast<uint8_t*>(data);  // views are only read
    ov::TensorVector views;
    for (const auto& sec : parse_packed(base, bytes, what)) views.emplace_back(sec.type, sec.shape, base + sec.offset);
    return views;
}

ov::TensorVector logical_inputs(const ov::TensorVector& inputs, size_t leading, const ov::TensorVector& views) {
    ov::TensorVector all;
    all.reserve(leading + views.size());
    all.insert(all.end(), inputs.begin(), inputs.begin() + leading);
    all.insert(all.end(), views.begin(), views.end());
    return all;
}

void check_unpacked(const ov::TensorVector& inputs, size_t leading, const ov::TensorVector& views,
                    const std::function<std::shared_ptr<ov::Node>(const ov::OutputVector&)>& make) {
    ov::OutputVector args;
    for (size_t i = 0; i < leading; ++i)
        args.push_back(std::make_shared<ov::op::v0::Parameter>(inputs[i].get_element_type(), inputs[i].get_shape()));
    for (const auto& v : views) args.push_back(std::make_shared<ov::op::v0::Constant>(v));
    make(args);  // the unpacked op's constructor validates (throws NodeValidationFailure)
}

}  // namespace nncf_moe3
