// The only registration point of the nncf_moe3 CPU extension (core.add_extension("libnncf_moe3_cpu.so")).
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>

#include <chrono>
#include <cstdlib>
#include <vector>

#include "kernels/k3_runtime.hpp"
#include "matmul3.hpp"
#include "moe3.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<nncf_moe3::MatMul3>>(),
    std::make_shared<ov::OpExtension<nncf_moe3::MoE3>>(),
    std::make_shared<ov::OpExtension<nncf_moe3::MoE3R>>(),
}));

// ---- plain C entry points for Python (ctypes): kernel ISA in use, read-bandwidth probe
extern "C" {

__attribute__((visibility("default"))) const char* nncf_moe3_isa() { return nncf_moe3::k3::select().name; }

// Best-of-`reps` read bandwidth in GB/s: `bytes` of floats summed by the kernels' threading (same threads as the ops).
__attribute__((visibility("default"))) double nncf_moe3_read_bandwidth(int64_t bytes, int reps) {
    using namespace nncf_moe3::k3;
    const int64_t n = bytes / 4;
    std::vector<float> buf(n, 1.f);
    const int threads = std::max(1, max_threads());
    const int64_t chunks = 64 * threads;
    const int64_t per = (n / chunks + 15) / 16 * 16;
    std::vector<double> part(chunks);
    const Kernels& Kn = select();
    double best = 0.0;
    for (int r = 0; r < reps; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        parallel_for(chunks, [&](int64_t c) {
            const int64_t b = c * per, e = std::min(n, b + per);
            part[c] = b < e ? Kn.sum(buf.data() + b, e - b) : 0.0;
        });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double acc = 0;
        for (double p : part) acc += p;
        if (acc < 0) return -1;  // keep the sums alive
        best = std::max(best, (double)bytes / s / 1e9);
    }
    return best;
}
}
