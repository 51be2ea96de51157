#include "matmul3.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

#include "op_util.hpp"

namespace nncf_moe3 {

int64_t k3_version_current() { return k3::K3_VERSION; }

namespace {
// NNCF_MOE3_PROFILE: summed wall time of MatMul3 evaluate() calls (MatMul3 calls of one model run one after another)
double g_mm_seconds = 0;
int64_t g_mm_calls = 0;
}  // namespace
}  // namespace nncf_moe3

// C entry point (ctypes, examples/bench_cpu.py): seconds spent in MatMul3 evaluate() and the call count since the
// last reset (profiling on as for nncf_moe3_profile).
extern "C" __attribute__((visibility("default"))) int64_t nncf_moe3_profile_matmul3(double* seconds, int reset) {
    if (seconds) *seconds = nncf_moe3::g_mm_seconds;
    const int64_t calls = nncf_moe3::g_mm_calls;
    if (reset) {
        nncf_moe3::g_mm_seconds = 0;
        nncf_moe3::g_mm_calls = 0;
    }
    return calls;
}

namespace nncf_moe3 {

MatMul3::MatMul3(const ov::OutputVector& args, int64_t group_size, int64_t k3_version)
    : Op(args), m_group_size(group_size), m_k3_version(k3_version) {
    constructor_validate_and_infer_types();
    keep_f16_constants(this, {2});
}

void MatMul3::validate_and_infer_types() {
    const bool packed = get_input_size() == 2;  // (X, P): P's sections are checked at the first evaluate()
    NODE_VALIDATION_CHECK(this, packed || get_input_size() == 5, "MatMul3 takes 5 inputs (X, W, S, Z, C) or 2 (X, "
                          "packed operands), got ", get_input_size());
    const auto tx = get_input_element_type(0);
    check_act_type(this, 0);
    check_k3_version(this, m_k3_version);
    ov::PartialShape ws = ov::PartialShape::dynamic();  // W [N, Kb, 12]
    if (packed) {
        const auto tp = get_input_element_type(1);
        NODE_VALIDATION_CHECK(this, tp.is_dynamic() || tp == ov::element::u8, "packed operands must be u8, got ", tp);
        if (const auto* pc = packed_constant(this, 1)) {  // W's shape from the header (section 0)
            const auto secs = parse_packed(pc->get_data_ptr<uint8_t>(), pc->get_byte_size(), "MatMul3");
            NODE_VALIDATION_CHECK(this, secs.size() == 4 && secs[0].shape.size() == 3,
                                  "packed MatMul3 operands must be (W [N, Kb, 12], S, Z, C), got ", secs.size(),
                                  " sections");
            ws = ov::PartialShape(secs[0].shape);
        }
    } else {
        check_weight_types(this, 1);
        check_codebook(this, 4);
        ws = get_input_partial_shape(1);
    }
    const auto& xs = get_input_partial_shape(0);
    ov::PartialShape out = ov::PartialShape::dynamic();
    if (xs.rank().is_static()) {
        NODE_VALIDATION_CHECK(this, xs.rank().get_length() >= 1, "X must have rank >= 1");
        std::vector<ov::Dimension> dims(xs.begin(), xs.end());
        dims.back() = ws.rank().is_static() && ws.rank().get_length() == 3 ? ws[0] : ov::Dimension::dynamic();
        out = ov::PartialShape(dims);
        if (ws.rank().is_static() && ws.rank().get_length() == 3 && xs[xs.rank().get_length() - 1].is_static() &&
            ws[1].is_static())
            NODE_VALIDATION_CHECK(this,
                                  ws[1].get_length() == k3_blocks(xs[xs.rank().get_length() - 1].get_length()),
                                  "W ", ws, " does not hold K = ", xs[xs.rank().get_length() - 1]);
    }
    set_output_type(0, tx.is_dynamic() ? ov::element::f32 : tx, out);
}

std::shared_ptr<ov::Node> MatMul3::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<MatMul3>(new_args, m_group_size, m_k3_version);
}

bool MatMul3::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("group_size", m_group_size);
    visitor.on_attribute("k3_version", m_k3_version);
    return true;
}

bool MatMul3::has_evaluate() const {
    if (get_input_size() == 2) return is_act_type(get_input_element_type(0)) && get_input_element_type(1) == ov::element::u8;
    return is_act_type(get_input_element_type(0)) && get_input_element_type(1) == ov::element::u8 &&
           is_f16_or_f32(get_input_element_type(2)) && get_input_element_type(3) == ov::element::u8 &&
           is_f16_or_f32(get_input_element_type(4));
}

bool MatMul3::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    using namespace k3;
    if (inputs.size() == 2) {  // packed form: the same op on views of the sections (made and checked once)
        const auto place = [&](const uint8_t* p, size_t n) { return m_pages.view(p, n); };
        const ov::TensorVector& views = m_packed.get(inputs[1], "MatMul3", place, [&](const ov::TensorVector& v) {
            check_unpacked(inputs, 1, v, [&](const ov::OutputVector& args) {
                return std::make_shared<MatMul3>(args, m_group_size, m_k3_version);
            });
        });
        return evaluate(outputs, logical_inputs(inputs, 1, views));
    }
    const bool prof = profiling_on();
    const auto t0 = prof ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    const auto& X = inputs[0];
    const auto xshape = X.get_shape();
    OPENVINO_ASSERT(!xshape.empty(), "MatMul3: scalar X");
    const int64_t K = (int64_t)xshape.back();
    const int64_t M = K ? (int64_t)(ov::shape_size(xshape) / K) : 0;
    const int64_t gs = m_group_size > 0 && m_group_size <= K ? m_group_size : K;
    WeightSet ws = weight_set(inputs[1], inputs[2], inputs[3], K, gs, "MatMul3");
    ws.w = m_pages.view(ws.w, inputs[1].get_byte_size());
    auto oshape = xshape;
    oshape.back() = (size_t)ws.N;
    outputs[0].set_shape(oshape);
    if (M == 0 || ws.N == 0) return true;
    // bf16 activations: f32 copies (per-thread buffers in decode, per call in prefill)
    thread_local std::vector<float> xbuf_decode, ybuf_decode;
    std::vector<float> xbuf_local, ybuf_local;
    const bool small = M <= GEMV_MAX_M;
    float* y = f32_result(outputs[0], (size_t)(M * ws.N), small ? ybuf_decode : ybuf_local);
    const float* x = f32_activations(X, small ? xbuf_decode : xbuf_local);
    compute(inputs, x, y, M, K, ws);
    store_result(outputs[0], y, (size_t)(M * ws.N));
    if (prof) {
        g_mm_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ++g_mm_calls;
    }
    return true;
}

void MatMul3::compute(const ov::TensorVector& inputs, const float* x, float* y, int64_t M, int64_t K,
                      const k3::WeightSet& ws) const {
    using namespace k3;
    const Kernels& Kn = select();
    const Table T = make_table(inputs[4].data(), inputs[4].get_element_type() == ov::element::f32, ws.z_scalar);
    const Weight W = ws.slice(0);
    const int64_t Kp = ws.Kb * BLOCK;
    const int threads = std::max(1, max_threads());
    if (q8_eligible(Kn, W)) {
        // int8 activations quantized once; tasks = row chunks (64 rows = one GEMM tile, fewer for small N)
        // x token chunks (only when there are too few row chunks)
        // decode: a per-thread buffer reused across calls (16+ MatMul3 calls per decode step); prefill: per call
        thread_local QActBuf qx_decode;
        QActBuf qx_local;
        QActBuf& qx = M <= GEMV_MAX_M ? qx_decode : qx_local;
        quantize_rows(Kn, x, K, M, K, Kp, ws.gs, qx);
        const QAct Q = qx.view();
        // decode: up to 256 rows per task (one long sequential weight stream, as in MoE3), >= 4 tasks per thread
        const int64_t rchunk = M <= GEMV_MAX_M ? row_chunk(ws.N, 1, 4 * threads, 256) : 64;
        const int64_t rtasks = (ws.N + rchunk - 1) / rchunk;
        int64_t mchunk = M;
        if (M > GEMV_MAX_M)
            while (mchunk > 24 && rtasks * ((M + mchunk - 1) / mchunk) < 4 * threads) mchunk = (mchunk + 1) / 2;
        const int64_t mtasks = (M + mchunk - 1) / mchunk;
        parallel_for(rtasks * mtasks, [&](int64_t t) {
            const int64_t r = t % rtasks, mt = t / rtasks;
            const int64_t n0 = r * rchunk, n1 = std::min(ws.N, n0 + rchunk);
            const int64_t m0 = mt * mchunk, mm = std::min(M - m0, mchunk);
            const QAct Qm{Q.q + m0 * Q.ldq, Q.dx + m0 * Q.G, Q.sum + m0 * Q.G, Q.ldq, Q.G};
            rows_product_q8(Kn, W, T, Qm, nullptr, mm, n0, n1, y + m0 * ws.N + n0, ws.N);
        });
        return;
    }
    std::vector<float> xpad;
    if (Kp != K) {
        xpad.resize(M * Kp);
        pad_rows(x, K, M, K, Kp, xpad.data());
        x = xpad.data();
    }
    std::vector<float> xs;
    if (ws.z) {
        xs.resize(M * ws.G);
        group_sums(x, Kp, M, K, ws.G, xs.data());
    }
    // tasks: row chunks x token chunks
    const int64_t mchunk = M <= GEMV_MAX_M ? M : 256;
    const int64_t mtasks = (M + mchunk - 1) / mchunk;
    int64_t rchunk = M <= GEMV_MAX_M ? 64 : 4 * TILE_ROWS;
    while (rchunk > TILE_ROWS && ((ws.N + rchunk - 1) / rchunk) * mtasks < 4 * threads) rchunk /= 2;
    const int64_t rtasks = (ws.N + rchunk - 1) / rchunk;
    parallel_for(rtasks * mtasks, [&](int64_t t) {
        const int64_t r = t % rtasks, mt = t / rtasks;
        const int64_t n0 = r * rchunk, n1 = std::min(ws.N, n0 + rchunk);
        const int64_t m0 = mt * mchunk, mm = std::min(M - m0, mchunk);
        rows_product(Kn, W, T, x + m0 * Kp, Kp, mm, xs.empty() ? nullptr : xs.data() + m0 * ws.G, n0, n1,
                     y + m0 * ws.N + n0, ws.N);
    });
}

}  // namespace nncf_moe3
