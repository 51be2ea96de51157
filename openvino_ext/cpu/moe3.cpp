#include "moe3.hpp"

#include <xmmintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <cmath>
#include <numeric>
#include <vector>

#include "op_util.hpp"

namespace nncf_moe3 {

MoE3::MoE3(const ov::OutputVector& args, int64_t top_k, bool normalize_topk, int64_t group_size, int64_t k3_version)
    : MoE3(false, args, top_k, normalize_topk, group_size, k3_version) {}

MoE3::MoE3(bool router_in_op, const ov::OutputVector& args, int64_t top_k, bool normalize_topk, int64_t group_size,
           int64_t k3_version)
    : Op(args),
      m_router_in_op(router_in_op),
      m_top_k(top_k),
      m_normalize_topk(normalize_topk),
      m_group_size(group_size),
      m_k3_version(k3_version) {
    constructor_validate_and_infer_types();
    keep_f16_constants(this, {3, 6, 9, 12});  // 12: a 3-bit router's scales (MoE3R with 15 inputs)
}

void MoE3::validate_and_infer_types() {
    const char* op = m_router_in_op ? "MoE3R" : "MoE3";
    if (get_input_size() == packed_leading() + 1) {  // packed form: P's sections are checked at the first evaluate()
        check_act_type(this, 0);
        check_k3_version(this, m_k3_version);
        NODE_VALIDATION_CHECK(this, m_top_k >= 1, "top_k must be >= 1");
        const auto tp = get_input_element_type(get_input_size() - 1);
        NODE_VALIDATION_CHECK(this, tp.is_dynamic() || tp == ov::element::u8, op, ": packed operands must be u8, got ",
                              tp);
        const auto& xs = get_input_partial_shape(0);
        NODE_VALIDATION_CHECK(this, xs.rank().is_dynamic() || xs.rank().get_length() == 2, "X must be [T, H], got ", xs);
        if (const auto* pc = packed_constant(this, get_input_size() - 1)) {
            const auto n = parse_packed(pc->get_data_ptr<uint8_t>(), pc->get_byte_size(), op).size();
            NODE_VALIDATION_CHECK(this, m_router_in_op ? (n == 11 || n == 13 || n == 14) : n == 10, op,
                                  ": packed operands hold ", n, " sections, expected ",
                                  m_router_in_op ? "11, 13 or 14 (inputs 1..)" : "10 (inputs 2..)");
        }
        const auto tx = get_input_element_type(0);
        set_output_type(0, tx.is_dynamic() ? ov::element::f32 : tx, xs);
        return;
    }
    NODE_VALIDATION_CHECK(this, get_input_size() == 12 ||
                                    (m_router_in_op && (get_input_size() == 14 || get_input_size() == 15)), op,
                          " takes 12 inputs (X, ", m_router_in_op ? "router_weight" : "router_logits",
                          ", Wg, Sg, Zg, Wu, Su, Zu, Wd, Sd, Zd, C)",
                          m_router_in_op ? ", 14 (+ router_scale, router_zero_point with a u8 router_weight [E, H]) "
                                           "or 15 (+ router_scale, router_zero_point, router_codebook with a k3 "
                                           "router_weight [E, Hb, 12])" : "",
                          ", or ", packed_leading() + 1, " in the packed form (", m_router_in_op ? "X" : "X, router_logits",
                          ", packed operands), got ", get_input_size());
    const auto tx = get_input_element_type(0);
    check_act_type(this, 0);
    for (size_t p : {2, 5, 8}) check_weight_types(this, p);
    check_codebook(this, 11);
    check_k3_version(this, m_k3_version);
    NODE_VALIDATION_CHECK(this, m_top_k >= 1, "top_k must be >= 1");
    const auto& xs = get_input_partial_shape(0);
    const auto& ls = get_input_partial_shape(1);
    const auto& wg = get_input_partial_shape(2);
    NODE_VALIDATION_CHECK(this, xs.rank().is_dynamic() || xs.rank().get_length() == 2, "X must be [T, H], got ", xs);
    // the expert count E: dim 1 of the logits [T, E] (MoE3) or dim 0 of the router weight [E, H] (MoE3R)
    const int e_axis = m_router_in_op ? 0 : 1;
    if (m_router_in_op && get_input_size() == 15) {  // 3-bit router: k3 codes [E, Hb, 12] + S, Z [E, G] + C
        check_weight_types(this, 1, 12, 13, "router ");
        check_codebook(this, 14);
        NODE_VALIDATION_CHECK(this, ls.rank().is_dynamic() || ls.rank().get_length() == 3,
                              "k3 router_weight must be [E, Hb, 12], got ", ls);
        if (ls.rank().is_static() && xs.rank().is_static() && ls[1].is_static() && xs[1].is_static())
            NODE_VALIDATION_CHECK(this, ls[1].get_length() == k3_blocks(xs[1].get_length()), "k3 router_weight ", ls,
                                  " does not hold H = ", xs[1]);
    } else if (m_router_in_op) {
        const auto tr = get_input_element_type(1);
        const bool int8 = get_input_size() == 14;
        if (int8) {
            NODE_VALIDATION_CHECK(this, tr.is_dynamic() || tr == ov::element::u8, "router_weight with router_scale / "
                                  "router_zero_point must be u8, got ", tr);
            for (size_t p : {12, 13}) {
                const auto t = get_input_element_type(p);
                NODE_VALIDATION_CHECK(this, t.is_dynamic() || t == ov::element::f32, "router_scale / "
                                      "router_zero_point must be f32, got ", t);
                const auto& ps = get_input_partial_shape(p);
                if (ps.is_static() && ls.rank().is_static() && ls[0].is_static())
                    NODE_VALIDATION_CHECK(this, ps.rank().get_length() == 1 && ps[0].get_length() == ls[0].get_length(),
                                          "router_scale / router_zero_point must be [E] = [", ls[0], "], got ", ps);
            }
        } else {
            NODE_VALIDATION_CHECK(this, tr.is_dynamic() || tr == ov::element::f32, "router_weight must be f32, got ",
                                  tr);
        }
        NODE_VALIDATION_CHECK(this, ls.rank().is_dynamic() || ls.rank().get_length() == 2,
                              "router_weight must be [E, H], got ", ls);
        if (ls.rank().is_static() && xs.rank().is_static() && ls[1].is_static() && xs[1].is_static())
            NODE_VALIDATION_CHECK(this, ls[1].get_length() == xs[1].get_length(), "router_weight ", ls, " and X ", xs,
                                  " disagree on the hidden size");
    } else {
        NODE_VALIDATION_CHECK(this, ls.rank().is_dynamic() || ls.rank().get_length() == 2,
                              "router_logits must be [T, E], got ", ls);
    }
    if (ls.rank().is_static() && wg.rank().is_static() && ls[e_axis].is_static() && wg[0].is_static())
        NODE_VALIDATION_CHECK(this, ls[e_axis].get_length() == wg[0].get_length(),
                              m_router_in_op ? "router_weight " : "router_logits ", ls, " and gate weights ", wg,
                              " disagree on the expert count");
    if (ls.rank().is_static() && ls[e_axis].is_static())
        NODE_VALIDATION_CHECK(this, m_top_k <= ls[e_axis].get_length(), "top_k ", m_top_k, " > expert count ",
                              ls[e_axis]);
    set_output_type(0, tx.is_dynamic() ? ov::element::f32 : tx, xs);
}

std::shared_ptr<ov::Node> MoE3::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<MoE3>(new_args, m_top_k, m_normalize_topk, m_group_size, m_k3_version);
}

std::shared_ptr<ov::Node> MoE3R::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<MoE3R>(new_args, m_top_k, m_normalize_topk, m_group_size, m_k3_version);
}

bool MoE3::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("top_k", m_top_k);
    visitor.on_attribute("normalize_topk", m_normalize_topk);
    visitor.on_attribute("group_size", m_group_size);
    visitor.on_attribute("k3_version", m_k3_version);
    return true;
}

bool MoE3::has_evaluate() const {
    if (!is_act_type(get_input_element_type(0))) return false;
    if (get_input_size() == packed_leading() + 1)
        return get_input_element_type(get_input_size() - 1) == ov::element::u8 &&
               (m_router_in_op || get_input_element_type(1) == ov::element::f32);
    if (get_input_size() == 15) {
        if (get_input_element_type(1) != ov::element::u8 || !is_f16_or_f32(get_input_element_type(12)) ||
            get_input_element_type(13) != ov::element::u8 || !is_f16_or_f32(get_input_element_type(14)))
            return false;
    } else if (get_input_size() == 14) {
        if (get_input_element_type(1) != ov::element::u8 || get_input_element_type(12) != ov::element::f32 ||
            get_input_element_type(13) != ov::element::f32)
            return false;
    } else if (get_input_element_type(1) != ov::element::f32) {
        return false;
    }
    for (size_t p : {2, 5, 8})
        if (get_input_element_type(p) != ov::element::u8 || !is_f16_or_f32(get_input_element_type(p + 1)) ||
            get_input_element_type(p + 2) != ov::element::u8)
            return false;
    return is_f16_or_f32(get_input_element_type(11));
}

namespace {

// Env NNCF_MOE3_PROFILE=1: per-phase wall time of every MoE3 call, summed and printed to stderr at exit.
struct Profile {  // not thread-safe: MoE3 calls of one model run one after another
    const char* names[6] = {"route", "quantize_x", "gate_up", "quantize_act", "down", "total"};
    double t[6] = {0, 0, 0, 0, 0, 0};
    int64_t calls = 0;
    bool on;
    Profile() {
        const char* v = std::getenv("NNCF_MOE3_PROFILE");
        on = v && *v && std::strcmp(v, "0") != 0;
    }
    ~Profile() {
        if (!on || !calls) return;
        std::fprintf(stderr, "[nncf_moe3] MoE3 profile over %lld calls (ms per call):", (long long)calls);
        for (int i = 0; i < 6; ++i) std::fprintf(stderr, " %s %.4f", names[i], t[i] / calls * 1e3);
        std::fprintf(stderr, "\n");
    }
};
Profile g_profile;

}  // namespace

bool profiling_on() { return g_profile.on; }

}  // namespace nncf_moe3

// C entry point (ctypes, examples/bench_cpu.py): accumulated per-phase seconds t[6] (route, quantize_x, gate_up,
// quantize_act, down, total) and the call count since the last reset; profiling is on when env
// NNCF_MOE3_PROFILE is set (not "0") at load time, or after enable = 1.
extern "C" __attribute__((visibility("default"))) int64_t nncf_moe3_profile(double* t, int reset, int enable) {
    auto& p = nncf_moe3::g_profile;
    if (enable) p.on = true;
    if (t)
        for (int i = 0; i < 6; ++i) t[i] = p.t[i];
    const int64_t calls = p.calls;
    if (reset) {
        for (double& v : p.t) v = 0;
        p.calls = 0;
    }
    return calls;
}

namespace nncf_moe3 {
namespace {

struct Clock {
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now(), last = t0;
    void lap(int i) {
        if (!g_profile.on) return;
        const auto now = std::chrono::steady_clock::now();
        g_profile.t[i] += std::chrono::duration<double>(now - last).count();
        last = now;
    }
    void done() {
        if (!g_profile.on) return;
        g_profile.t[5] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ++g_profile.calls;
    }
};

// Software prefetch (to L2) of the first 2 KB of rows n0.. of W: the start of a weight stream a task reads next
// (the kernels prefetch ~3 KB ahead only inside a stream).
inline void prefetch_rows(const k3::Weight& W, int64_t n0) {
    const char* p = reinterpret_cast<const char*>(W.w + n0 * W.Kb * k3::BLOCK_BYTES);
    for (int i = 0; i < 2048; i += 64) _mm_prefetch(p + i, _MM_HINT_T1);
}

// 8-bit router rows [e0, e1) for tokens [0, T): lg[t * E + e] = s[e] * (x_t . q_e - z[e] * sum(x_t)) (NNCF's
// INT8_ASYM per row)
void router_u8(const k3::Kernels& Kn, const float* x, int64_t T, int64_t H, const uint8_t* q, const float* s,
               const float* z, int64_t e0, int64_t e1, int64_t E, float* lg) {
    for (int64_t t = 0; t < T; ++t) {
        const float* xt = x + t * H;
        const float xs = (float)Kn.sum(xt, H);
        for (int64_t e = e0; e < e1; ++e) lg[t * E + e] = s[e] * (Kn.dot_u8(xt, q + e * H, H) - z[e] * xs);
    }
}

// Per-thread buffers reused across calls (a decode step calls MoE3 once per layer: ~60 small allocations and frees
// per call otherwise). evaluate() runs on the plugin's calling thread; concurrent infer requests use other threads.
struct Scratch {
    std::vector<std::vector<int32_t>> tok;  // [E] tokens routed to e
    std::vector<std::vector<float>> wts;    // [E] their routing weights
    std::vector<float> p, logits, xpad, wpad, xsum;
    std::vector<int64_t> idx, active;
    k3::QActBuf qx;
    std::vector<std::vector<float>> act;  // [A][Te][I]
    std::vector<k3::QActBuf> qa;          // [A]
    void reset(int64_t E) {
        if ((int64_t)tok.size() < E) {
            tok.resize(E);
            wts.resize(E);
        }
        for (int64_t e = 0; e < E; ++e) {
            tok[e].clear();
            wts[e].clear();
        }
        p.resize(E);
        idx.resize(E);
        active.clear();
    }
};

}  // namespace

bool MoE3::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    using namespace k3;
    const size_t lead = packed_leading();
    if (inputs.size() == lead + 1) {  // packed form: the same op on views of the sections (made and checked once)
        const char* op = m_router_in_op ? "MoE3R" : "MoE3";
        const auto place = [&](const uint8_t* p, size_t n) { return m_pages.view(p, n); };
        const ov::TensorVector& views = m_packed.get(inputs[lead], op, place, [&](const ov::TensorVector& v) {
            check_unpacked(inputs, lead, v, [&](const ov::OutputVector& args) -> std::shared_ptr<ov::Node> {
                if (m_router_in_op) return std::make_shared<MoE3R>(args, m_top_k, m_normalize_topk, m_group_size, m_k3_version);
                return std::make_shared<MoE3>(args, m_top_k, m_normalize_topk, m_group_size, m_k3_version);
            });
        });
        return evaluate(outputs, logical_inputs(inputs, lead, views));
    }
    if (inputs[0].get_element_type() == ov::element::bf16) {
        // bf16 activations: the f32 op on f32 copies (per-thread buffers in decode, per call in prefill), the result
        // rounded back to bf16
        const auto xshape = inputs[0].get_shape();
        const size_t n = ov::shape_size(xshape);
        thread_local std::vector<float> xbuf_decode, ybuf_decode;
        std::vector<float> xbuf_local, ybuf_local;
        const bool small = xshape.size() == 2 && (int64_t)xshape[0] <= GEMV_MAX_M;
        ov::TensorVector in32 = inputs;
        in32[0] = ov::Tensor(ov::element::f32, xshape,
                             const_cast<float*>(f32_activations(inputs[0], small ? xbuf_decode : xbuf_local)));
        outputs[0].set_shape(xshape);
        ov::TensorVector out32{ov::Tensor(ov::element::f32, xshape, f32_result(outputs[0], n, small ? ybuf_decode
                                                                                                   : ybuf_local))};
        const bool ok = evaluate(out32, in32);
        store_result(outputs[0], static_cast<const float*>(out32[0].data()), n);
        return ok;
    }
    Clock clk;
    const auto xshape = inputs[0].get_shape();
    const auto lshape = inputs[1].get_shape();
    if (m_router_in_op && inputs.size() == 15)  // k3 router [E, Hb, 12]: checked against H by weight_set below
        OPENVINO_ASSERT(xshape.size() == 2 && lshape.size() == 3, "MoE3R: X ", xshape, " / k3 router_weight ", lshape,
                        " mismatch");
    else if (m_router_in_op)
        OPENVINO_ASSERT(xshape.size() == 2 && lshape.size() == 2 && lshape[1] == xshape[1], "MoE3R: X ", xshape,
                        " / router_weight ", lshape, " mismatch");
    else
        OPENVINO_ASSERT(xshape.size() == 2 && lshape.size() == 2 && lshape[0] == xshape[0], "MoE3: X ", xshape,
                        " / router_logits ", lshape, " mismatch");
    const int64_t T = (int64_t)xshape[0], H = (int64_t)xshape[1], E = (int64_t)lshape[m_router_in_op ? 0 : 1];
    const auto sg_shape = inputs[3].get_shape();
    OPENVINO_ASSERT(sg_shape.size() == 3 && (int64_t)sg_shape[0] == E, "MoE3: gate scales ", sg_shape,
                    " do not match E=", E);
    const int64_t I = (int64_t)sg_shape[1];
    const int64_t gs_h = m_group_size > 0 && m_group_size <= H ? m_group_size : H;
    const int64_t gs_i = m_group_size > 0 && m_group_size <= I ? m_group_size : I;
    WeightSet wg = weight_set(inputs[2], inputs[3], inputs[4], H, gs_h, "MoE3 gate");
    WeightSet wu = weight_set(inputs[5], inputs[6], inputs[7], H, gs_h, "MoE3 up");
    WeightSet wd = weight_set(inputs[8], inputs[9], inputs[10], I, gs_i, "MoE3 down");
    wg.w = m_pages.view(wg.w, inputs[2].get_byte_size());
    wu.w = m_pages.view(wu.w, inputs[5].get_byte_size());
    wd.w = m_pages.view(wd.w, inputs[8].get_byte_size());
    OPENVINO_ASSERT(wg.N == I && wu.N == I && wd.N == H, "MoE3: expert weight shapes disagree");
    outputs[0].set_shape(xshape);
    float* out = static_cast<float*>(outputs[0].data());
    std::fill(out, out + T * H, 0.f);
    if (T == 0) return true;
    const int64_t top_k = std::min<int64_t>(m_top_k, E);

    // ---- routing: [logits = X . W_r^T (MoE3R)], softmax over E, top-k (ties: lower index), optional renormalisation
    thread_local Scratch sc;
    sc.reset(E);
    const float* logits = static_cast<const float*>(inputs[1].data());
    if (m_router_in_op) {
        const Kernels& Kr = select();
        const float* x0 = static_cast<const float*>(inputs[0].data());
        sc.logits.resize(T * E);
        float* lg = sc.logits.data();
        // rows(xs, nt, e0, e1, out): logits of router rows [e0, e1) for nt tokens (out = their first logits row)
        std::function<void(const float*, int64_t, int64_t, int64_t, float*)> rows;
        int64_t ldx = H;  // row stride of x0 (the zero-padded copy for the f32 GEMM when H % 16 != 0)
        const bool router_decode = T <= 8;  // router thread split below: decode by expert chunks, prefill by token chunks
        WeightSet wr;
        if (inputs.size() == 15) {  // 3-bit router (k3): exact f32 dot products, as MatMul3's f32 path
            wr = weight_set(inputs[1], inputs[12], inputs[13], H, gs_h, "MoE3R router");
            OPENVINO_ASSERT(wr.N == E, "MoE3R: router ", inputs[1].get_shape(), " does not have E=", E, " rows");
            const Table Tr = make_table(inputs[14].data(), inputs[14].get_element_type() == ov::element::f32,
                                        wr.z_scalar);
            const int64_t Kp = wr.Kb * BLOCK;
            if (Kp != H) {  // the kernels read whole 32-value blocks: zero-padded rows
                sc.xpad.resize(T * Kp);
                pad_rows(x0, H, T, H, Kp, sc.xpad.data());
                x0 = sc.xpad.data();
            }
            ldx = Kp;
            if (!router_decode) {  // prefill: the router dequantized once per call ([E, Kp] f32), then the f32 GEMM per chunk
                sc.wpad.resize(E * Kp);
                float* wf = sc.wpad.data();
                parallel_for((E + 15) / 16, [&](int64_t c) {
                    dequant_rows(Kr, wr.slice(0), Tr, c * 16, std::min<int64_t>(E, c * 16 + 16), wf + c * 16 * Kp);
                });
                rows = [&, wf, Kp](const float* xs, int64_t nt, int64_t e0, int64_t e1, float* out) {
                    Kr.gemm(xs, Kp, nt, wf + e0 * Kp, Kp, (int)(e1 - e0), Kp, out + e0, E);
                };
            } else {  // decode: fused unpack + dot (GEMV) over the router rows
                if (wr.z) {  // per-group zero points: the kernels subtract z * (group sum of x)
                    sc.xsum.resize(T * wr.G);
                    group_sums(x0, Kp, T, H, wr.G, sc.xsum.data());
                }
                const float* xs_all = wr.z ? sc.xsum.data() : nullptr;
                rows = [&, Tr, Kp, xs_all](const float* xs, int64_t nt, int64_t e0, int64_t e1, float* out) {
                    // decode calls pass the first token row: group sums from row 0
                    rows_product(Kr, wr.slice(0), Tr, xs, Kp, nt, xs_all, e0, e1, out + e0, E);
                };
            }
        } else if (inputs.size() == 14) {  // INT8 router: s * (x . q - z * sum(x))
            const uint8_t* q = static_cast<const uint8_t*>(inputs[1].data());
            const float* rs = static_cast<const float*>(inputs[12].data());
            const float* rz = static_cast<const float*>(inputs[13].data());
            rows = [&, q, rs, rz](const float* xs, int64_t nt, int64_t e0, int64_t e1, float* out) {
                router_u8(Kr, xs, nt, H, q, rs, rz, e0, e1, E, out);
            };
        } else {  // f32 router through the f32 GEMM kernel, which reads K in steps of 16: zero-pad otherwise
            const float* wr = logits;
            if (H % 16) {  // hidden sizes that are not multiples of 16: setup-sized copies, rare
                ldx = (H + 15) / 16 * 16;
                sc.xpad.assign(T * ldx, 0.f);
                sc.wpad.assign(E * ldx, 0.f);
                for (int64_t t = 0; t < T; ++t) std::copy(x0 + t * H, x0 + t * H + H, sc.xpad.data() + t * ldx);
                for (int64_t e = 0; e < E; ++e) std::copy(wr + e * H, wr + e * H + H, sc.wpad.data() + e * ldx);
                x0 = sc.xpad.data();
                wr = sc.wpad.data();
            }
            const int64_t ld = ldx;
            rows = [&, wr, ld](const float* xs, int64_t nt, int64_t e0, int64_t e1, float* out) {
                Kr.gemm(xs, ld, nt, wr + e0 * ld, ld, (int)(e1 - e0), ld, out + e0, E);
            };
        }
        if (router_decode && E * H < 65536)  // small router, decode: on the calling thread
            rows(x0, T, 0, E, lg);
        else if (router_decode)  // decode, large router (Qwen3-30B: 128 x 2048): 16-expert chunks over the threads
            parallel_for((E + 15) / 16, [&](int64_t c) { rows(x0, T, c * 16, std::min<int64_t>(E, c * 16 + 16), lg); });
        else  // prefill: 12-token chunks over the threads
            parallel_for((T + 11) / 12, [&](int64_t c) {
                const int64_t t0 = c * 12;
                rows(x0 + t0 * ldx, std::min<int64_t>(12, T - t0), 0, E, lg + t0 * E);
            });
        logits = sc.logits.data();
    }
    auto& tok = sc.tok;  // tokens routed to e, in token order
    auto& wts = sc.wts;
    {
        auto& p = sc.p;
        auto& idx = sc.idx;
        for (int64_t t = 0; t < T; ++t) {
            const float* l = logits + t * E;
            const float mx = *std::max_element(l, l + E);
            float sum = 0.f;
            for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(l[e] - mx));
            for (int64_t e = 0; e < E; ++e) p[e] /= sum;
            // the top_k largest p, ties by the lower expert index (the order of a stable sort), O(E log k)
            std::iota(idx.begin(), idx.end(), 0);
            std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(),
                              [&](int64_t a, int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
            float norm = 0.f;
            for (int64_t k = 0; k < top_k; ++k) norm += p[idx[k]];
            for (int64_t k = 0; k < top_k; ++k) {
                tok[idx[k]].push_back((int32_t)t);
                wts[idx[k]].push_back(m_normalize_topk ? p[idx[k]] / norm : p[idx[k]]);
            }
        }
    }
    auto& active = sc.active;
    for (int64_t e = 0; e < E; ++e)
        if (!tok[e].empty()) active.push_back(e);
    const int64_t A = (int64_t)active.size();
    clk.lap(0);

    const Kernels& Kn = select();
    const void* cb = inputs[11].data();
    const bool cb32 = inputs[11].get_element_type() == ov::element::f32;
    const Table Tg = make_table(cb, cb32, wg.z_scalar), Tu = make_table(cb, cb32, wu.z_scalar),
                Td = make_table(cb, cb32, wd.z_scalar);
    const int64_t Hp = wg.Kb * BLOCK, Ip = wd.Kb * BLOCK;
    const float* x = static_cast<const float*>(inputs[0].data());
    const int threads = std::max(1, max_threads());
    int64_t max_te = 0;
    for (int64_t e : active) max_te = std::max<int64_t>(max_te, (int64_t)tok[e].size());
    // Row chunks: decode (every expert <= GEMV_MAX_M tokens) 256 rows, so that each task streams long
    // contiguous weight ranges (gate / up: 2 x 192 KB, down: 72 KB per expert); prefill 64 rows (one GEMM
    // tile). Halved until there are >= 4 tasks per thread.
    const int64_t cap = max_te <= GEMV_MAX_M ? 256 : 64;
    const int64_t rc1 = row_chunk(I, A, 4 * threads, cap), nch1 = (I + rc1 - 1) / rc1;
    const int64_t rc2 = row_chunk(H, 1, 4 * threads, cap), nch2 = (H + rc2 - 1) / rc2;

    if (q8_eligible(Kn, wg.slice(0)) && q8_eligible(Kn, wu.slice(0)) && q8_eligible(Kn, wd.slice(0))) {
        // ---- int8 activations: X quantized once (shared by every expert and by gate / up)
        // decode reuses the per-thread buffers; prefill (large, rare) allocates per call and frees at the end
        const bool decode = max_te <= GEMV_MAX_M;
        QActBuf qx_local;
        std::vector<std::vector<float>> act_local;
        std::vector<QActBuf> qa_local;
        QActBuf& qx = decode ? sc.qx : qx_local;
        quantize_rows(Kn, x, H, T, H, Hp, wg.gs, qx);
        const QAct X = qx.view();
        clk.lap(1);
        auto& act = decode ? sc.act : act_local;  // [Te][I]
        if ((int64_t)act.size() < A) act.resize(A);
        for (int64_t a = 0; a < A; ++a) act[a].resize(tok[active[a]].size() * I);
        parallel_for(A * nch1, [&](int64_t task) {
            const int64_t a = task / nch1, c = task % nch1, e = active[a];
            const int64_t Te = (int64_t)tok[e].size();
            const int64_t n0 = c * rc1, n1 = std::min(I, n0 + rc1), nr = n1 - n0;
            thread_local std::vector<float> gu;
            if ((int64_t)gu.size() < 2 * Te * nr) gu.resize(2 * Te * nr);
            float *g = gu.data(), *u = g + Te * nr;
            const Weight Wg = wg.slice(e), Wu = wu.slice(e);
            if (Te <= GEMV_MAX_M) {
                prefetch_rows(Wu, n0);  // the up rows follow the gate rows in this task
                Kn.gemv2_q8(Wg, Tg, Wu, Tu, X, tok[e].data(), (int)Te, n0, n1, g, u, nr);
            } else {
                Kn.gemm_q8(Wg, Tg, X, tok[e].data(), Te, n0, n1, g, nr);
                Kn.gemm_q8(Wu, Tu, X, tok[e].data(), Te, n0, n1, u, nr);
            }
            for (int64_t t = 0; t < Te; ++t) Kn.swiglu(g + t * nr, u + t * nr, nr, act[a].data() + t * I + n0);
        });
        clk.lap(2);
        auto& qa = decode ? sc.qa : qa_local;
        if ((int64_t)qa.size() < A) qa.resize(A);
        const auto quantize_act = [&](int64_t a) {
            const int64_t Te = (int64_t)tok[active[a]].size();
            qa[a].ldq = Ip;
            qa[a].G = wd.G;
            qa[a].q.resize(Te * Ip);
            qa[a].dx.resize(Te * wd.G);
            qa[a].sum.resize(Te * wd.G);
            Kn.quantize(act[a].data(), I, Te, I, Ip, wd.gs, qa[a].q.data(), qa[a].dx.data(), qa[a].sum.data());
        };
        if (decode)  // A x I values, cheaper than a fork / join of the thread pool
            for (int64_t a = 0; a < A; ++a) quantize_act(a);
        else
            parallel_for(A, quantize_act);
        clk.lap(3);
        parallel_for(nch2, [&](int64_t c) {
            const int64_t n0 = c * rc2, n1 = std::min(H, n0 + rc2), nr = n1 - n0;
            thread_local std::vector<float> d;
            for (int64_t a = 0; a < A; ++a) {
                const int64_t e = active[a];
                const int64_t Te = (int64_t)tok[e].size();
                if ((int64_t)d.size() < Te * nr) d.resize(Te * nr);
                if (a + 1 < A) prefetch_rows(wd.slice(active[a + 1]), n0);  // start of the next expert's stream
                rows_product_q8(Kn, wd.slice(e), Td, qa[a].view(), nullptr, Te, n0, n1, d.data(), nr);
                for (int64_t t = 0; t < Te; ++t) {
                    float* o = out + (int64_t)tok[e][t] * H + n0;
                    const float w = wts[e][t];
                    const float* dt = d.data() + t * nr;
                    for (int64_t r = 0; r < nr; ++r) o[r] += w * dt[r];
                }
            }
        });
        clk.lap(4);
        clk.done();
        return true;
    }

    // ---- exact f32 path: per active expert gathered padded tokens [Te][Hp], group sums, activations [Te][Ip]
    std::vector<std::vector<float>> xe(A), xse(A), act(A), ase(A);
    for (int64_t a = 0; a < A; ++a) {
        const auto& tl = tok[active[a]];
        const int64_t Te = (int64_t)tl.size();
        xe[a].assign(Te * Hp, 0.f);
        for (int64_t i = 0; i < Te; ++i) std::copy(x + tl[i] * H, x + tl[i] * H + H, xe[a].data() + i * Hp);
        if ((wg.z || wu.z) && Te <= GEMV_MAX_M) {
            xse[a].resize(Te * wg.G);
            group_sums(xe[a].data(), Hp, Te, H, wg.G, xse[a].data());
        }
        act[a].assign(Te * Ip, 0.f);
    }
    clk.lap(1);
    // ---- phase 1: gate/up rows (expert, row chunk) -> act = silu(gate) * up
    parallel_for(A * nch1, [&](int64_t task) {
        const int64_t a = task / nch1, c = task % nch1, e = active[a];
        const int64_t Te = (int64_t)tok[e].size();
        const int64_t n0 = c * rc1, n1 = std::min(I, n0 + rc1), nr = n1 - n0;
        std::vector<float> g(Te * nr), u(Te * nr);
        const float* xs = xse[a].empty() ? nullptr : xse[a].data();
        rows_product(Kn, wg.slice(e), Tg, xe[a].data(), Hp, Te, xs, n0, n1, g.data(), nr);
        rows_product(Kn, wu.slice(e), Tu, xe[a].data(), Hp, Te, xs, n0, n1, u.data(), nr);
        for (int64_t t = 0; t < Te; ++t) Kn.swiglu(g.data() + t * nr, u.data() + t * nr, nr, act[a].data() + t * Ip + n0);
    });
    clk.lap(2);
    if (wd.z)
        for (int64_t a = 0; a < A; ++a) {
            const int64_t Te = (int64_t)tok[active[a]].size();
            if (Te > GEMV_MAX_M) continue;
            ase[a].resize(Te * wd.G);
            group_sums(act[a].data(), Ip, Te, I, wd.G, ase[a].data());
        }
    clk.lap(3);

    // ---- phase 2: down rows (row chunk over H, all experts) -> out += w * down (each task owns its rows)
    parallel_for(nch2, [&](int64_t c) {
        const int64_t n0 = c * rc2, n1 = std::min(H, n0 + rc2), nr = n1 - n0;
        std::vector<float> d;
        for (int64_t a = 0; a < A; ++a) {
            const int64_t e = active[a];
            const int64_t Te = (int64_t)tok[e].size();
            d.resize(Te * nr);
            rows_product(Kn, wd.slice(e), Td, act[a].data(), Ip, Te, ase[a].empty() ? nullptr : ase[a].data(), n0,
                         n1, d.data(), nr);
            for (int64_t t = 0; t < Te; ++t) {
                float* o = out + tok[e][t] * H + n0;
                const float w = wts[e][t];
                for (int64_t r = 0; r < nr; ++r) o[r] += w * d[t * nr + r];
            }
        }
    });
    clk.lap(4);
    clk.done();
    return true;
}

}  // namespace nncf_moe3
