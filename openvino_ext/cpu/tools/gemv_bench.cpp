// Kernel-only decode benchmark: the shipped int8-activation GEMV kernels (avx512_vnni_gemv_q8 / gemv2_q8) on the
// weight shapes of one decode step of examples/bench_cpu.py's MoE stack (8 layers: fused q/k/v 5120 x 2048, o
// 2048 x 4096, top-8 of 16 experts with gate+up 768 x 2048 and down 2048 x 768; group 128, f16 scales, scalar zero
// point), with the same task split as the ops (oneTBB parallel_for over 256-row tasks) but none of the OpenVINO
// plugin around them. Distinct random weights per layer / expert: 0.3 GB, > 9x the L3. Comparing its ms/token with
// the plugin's (examples/bench_cpu.py) separates kernel time from the per-node cost of running as extension ops.
//
// Build and run (the oneTBB headers and library ship with the openvino wheel):
//   OV=$(python -c "import openvino, os; print(os.path.dirname(openvino.__file__))")
//   g++ -O3 -march=icelake-server -Iopenvino_ext/cpu -I$OV/include openvino_ext/cpu/tools/gemv_bench.cpp \
//       openvino_ext/cpu/kernels/k3_avx512_vnni.cpp openvino_ext/cpu/kernels/k3_runtime.cpp -o /tmp/gemv_bench $OV/libs/libtbb.so.12 -Wl,-rpath,$OV/libs
//   /tmp/gemv_bench 2 20 [0]  # threads, decode steps [, 0 = 4 KB pages]
//   /tmp/gemv_bench rows 65536 2048 3   # one core: N x K rows (g128) in `mats` matrices read in turn (3 x 50 MB:
//                                       # from DRAM; `rows 256 2048 1`: L2-resident) -> weights/ns, GB/s
// Prints ms per decode step and GB/s (codes + scales) per projection kind. The codes live in 2 MB pages
// (madvise(MADV_HUGEPAGE), as the ops arrange since session 4: weight_pages.cpp); a third argument 0 keeps 4 KB pages.
#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "kernels/k3_kernels.hpp"

using namespace nncf_moe3::k3;

namespace {

bool g_huge = true;

// page-aligned code buffer, 2 MB pages when g_huge (freed at exit)
uint8_t* alloc_codes(size_t bytes) {
    const size_t hp = size_t(2) << 20, len = (bytes + hp - 1) / hp * hp;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    if (g_huge) madvise(p, len, MADV_HUGEPAGE);
    return static_cast<uint8_t*>(p);
}

struct Mat {
    uint8_t* w = nullptr;
    size_t nw = 0;
    std::vector<uint16_t> s;
    Weight W;
};

Mat make(int64_t N, int64_t K, int64_t gs, unsigned seed) {
    Mat m;
    const int64_t Kb = 2 * ((K + 63) / 64), G = K / gs;
    m.nw = N * Kb * BLOCK_BYTES;
    m.w = alloc_codes(m.nw);
    m.s.resize(N * G, 0x2000);  // f16 ~0.0078
    unsigned x = seed * 2654435761u + 1u;
    for (size_t i = 0; i < m.nw; ++i) {
        x = x * 1103515245u + 12345u;
        m.w[i] = (uint8_t)(x >> 16);
    }
    m.W = Weight{m.w, m.s.data(), nullptr, nullptr, N, K, Kb, G, gs / BLOCK};
    return m;
}

struct Act {
    std::vector<int8_t> q;
    std::vector<float> dx, sum;
    QAct v;
};

Act act(int64_t K, int64_t gs) {
    Act a;
    const int64_t Kp = 2 * ((K + 63) / 64) * BLOCK, G = K / gs;
    a.q.resize(Kp);
    a.dx.resize(G);
    a.sum.resize(G);
    std::vector<float> x(K);
    for (int64_t i = 0; i < K; ++i) x[i] = (float)((i * 7919) % 200 - 100) / 50.f;
    avx512_vnni_quantize(x.data(), K, 1, K, Kp, gs, a.q.data(), a.dx.data(), a.sum.data());
    a.v = QAct{a.q.data(), a.dx.data(), a.sum.data(), Kp, G};
    return a;
}

// rows [0, N) in 256-row tasks, as MatMul3 / MoE3 split a decode GEMV
void par(int64_t N, const std::function<void(int64_t, int64_t)>& fn) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, (N + 255) / 256, 1), [&](const tbb::blocked_range<int64_t>& r) {
        for (int64_t i = r.begin(); i < r.end(); ++i) fn(i * 256, std::min(N, i * 256 + 256));
    });
}

double bytes(const Weight& W, int64_t n) { return (double)n * (W.Kb * BLOCK_BYTES + W.G * 2); }

}  // namespace

// One core, one GEMV call per matrix over all N rows, `mats` distinct matrices in turn: the per-core rate of the
// decode kernel from DRAM (working set > L3) or from L2 (one small matrix), without the task split.
int rows_main(int64_t N, int64_t K, int64_t mats) {
    const int64_t gs = 128;
    Table tab;
    for (int i = 0; i < 16; ++i) tab.t[i] = (float)(i & 7) - 4.f;
    std::vector<Mat> ms;
    for (int64_t i = 0; i < mats; ++i) ms.push_back(make(N, K, gs, 7000 + (unsigned)i));
    Act xa = act(K, gs);
    std::vector<float> y(N);
    const int64_t reps = std::max<int64_t>(mats, (int64_t)(4e9 / (double)(N * K)));
    using clk = std::chrono::steady_clock;
    for (int w = 0; w < 2; ++w) {  // w = 0 warms up
        const auto t0 = clk::now();
        for (int64_t r = 0; r < reps; ++r) avx512_vnni_gemv_q8(ms[r % mats].W, tab, xa.v, nullptr, 1, 0, N, y.data(), 0);
        const double sec = std::chrono::duration<double>(clk::now() - t0).count();
        if (w)
            std::printf("rows: N %lld x K %lld, %lld matrices (%.1f MB), one core: %.1f weights/ns, %.1f GB/s of codes + "
                        "scales\n", (long long)N, (long long)K, (long long)mats, mats * bytes(ms[0].W, N) / 1e6,
                        (double)N * K * reps / sec / 1e9, bytes(ms[0].W, N) * reps / sec / 1e9);
    }
    return 0;
}

int main(int argc, char** argv) {
    if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vbmi")) {
        std::fprintf(stderr, "needs AVX512-VNNI/VBMI\n");
        return 1;
    }
    if (argc > 1 && std::string(argv[1]) == "rows") {
        tbb::global_control gc(tbb::global_control::max_allowed_parallelism, 1);
        return rows_main(argc > 2 ? std::atoll(argv[2]) : 65536, argc > 3 ? std::atoll(argv[3]) : 2048,
                         argc > 4 ? std::atoll(argv[4]) : 3);
    }
    const int T = argc > 1 ? std::atoi(argv[1]) : 2, steps = argc > 2 ? std::atoi(argv[2]) : 20;
    g_huge = argc > 3 ? std::atoi(argv[3]) != 0 : true;
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism, T);
    const int64_t gs = 128, H = 2048, I = 768, L = 8, E = 16, TOPK = 8, QKV = 5120, O_K = 4096;
    Table tab;
    for (int i = 0; i < 16; ++i) tab.t[i] = (float)(i & 7) - 4.f;
    std::vector<Mat> qkv, o, gate, up, down;
    for (int l = 0; l < L; ++l) {
        qkv.push_back(make(QKV, H, gs, l));
        o.push_back(make(H, O_K, gs, 100 + l));
        for (int e = 0; e < E; ++e) {
            gate.push_back(make(I, H, gs, 1000 + l * E + e));
            up.push_back(make(I, H, gs, 2000 + l * E + e));
            down.push_back(make(H, I, gs, 3000 + l * E + e));
        }
    }
    Act xh = act(H, gs), x4 = act(O_K, gs), xi = act(I, gs);
    std::vector<float> y(8192), y2(8192);
    double t[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
    using clk = std::chrono::steady_clock;
    const auto sec = [](clk::time_point a, clk::time_point z) { return std::chrono::duration<double>(z - a).count(); };
    for (int r = -1; r < steps; ++r)  // r = -1 warms up
        for (int l = 0; l < L; ++l) {
            const auto t0 = clk::now();
            par(QKV, [&](int64_t a, int64_t z) {
                avx512_vnni_gemv_q8(qkv[l].W, tab, xh.v, nullptr, 1, a, z, y.data() + a, 0);
            });
            const auto t1 = clk::now();
            par(H, [&](int64_t a, int64_t z) { avx512_vnni_gemv_q8(o[l].W, tab, x4.v, nullptr, 1, a, z, y.data() + a, 0); });
            const auto t2 = clk::now();
            par(TOPK * I, [&](int64_t a, int64_t z) {  // (expert, 256-row chunk) tasks
                const int64_t k = a / I, r0 = a % I, r1 = std::min(I, r0 + (z - a));
                const int64_t e = l * E + (k * 2 + r + 1) % E;  // a different expert set every step
                avx512_vnni_gemv2_q8(gate[e].W, tab, up[e].W, tab, xh.v, nullptr, 1, r0, r1, y.data(), y2.data(), 0);
            });
            const auto t3 = clk::now();
            par(H, [&](int64_t a, int64_t z) {
                for (int k = 0; k < TOPK; ++k)
                    avx512_vnni_gemv_q8(down[l * E + (k * 2 + r + 1) % E].W, tab, xi.v, nullptr, 1, a, z, y.data() + a, 0);
            });
            const auto t4 = clk::now();
            if (r < 0) continue;
            t[0] += sec(t0, t1), t[1] += sec(t1, t2), t[2] += sec(t2, t3), t[3] += sec(t3, t4);
            b[0] += bytes(qkv[l].W, QKV), b[1] += bytes(o[l].W, H), b[2] += 2 * TOPK * bytes(gate[0].W, I),
                b[3] += TOPK * bytes(down[0].W, H);
        }
    const char* names[4] = {"qkv", "o", "gate+up", "down"};
    double tt = 0, bt = 0;
    std::printf("threads %d, %d decode steps (8 layers each), codes in %s pages:\n", T, steps, g_huge ? "2 MB" : "4 KB");
    for (int i = 0; i < 4; ++i) {
        std::printf("  %-8s %7.3f ms/step  %5.1f GB/s\n", names[i], t[i] / steps * 1e3, b[i] / t[i] / 1e9);
        tt += t[i], bt += b[i];
    }
    std::printf("  %-8s %7.3f ms/step  %5.1f GB/s  (%.1f MB per step)\n", "total", tt / steps * 1e3, bt / tt / 1e9,
                bt / steps / 1e6);
    return 0;
}
