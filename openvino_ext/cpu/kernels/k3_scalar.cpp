// Scalar reference kernels (any x86-64 / other CPU). Straightforward, used as the fallback and as a test oracle.
#include <cmath>
#include <cstring>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

void gemv(const Weight& W, const Table& T, const float* x, int64_t ldx, int M, const float* xs, int64_t n0,
          int64_t n1, float* y, int64_t ldy) {
    uint8_t q[32];
    for (int64_t n = n0; n < n1; ++n) {
        float tot[GEMV_MAX_M] = {0, 0, 0, 0};
        for (int64_t g = 0; g < W.G; ++g) {
            float acc[GEMV_MAX_M] = {0, 0, 0, 0};
            int64_t b1 = (g + 1) * W.bpg < W.Kb ? (g + 1) * W.bpg : W.Kb;
            for (int64_t b = g * W.bpg; b < b1; ++b) {
                unpack_block(W.w + n * W.Kb * BLOCK_BYTES, b, q);
                for (int m = 0; m < M; ++m) {
                    const float* xp = x + m * ldx + b * BLOCK;
                    float a = 0.f;
                    for (int i = 0; i < 32; ++i) a += xp[i] * T.t[q[i]];
                    acc[m] += a;
                }
            }
            float s = (W.sf ? W.sf[n * W.G + g] : f16_to_f32(W.s[n * W.G + g]));
            float zz = W.z ? (float)W.z[n * W.G + g] : 0.f;
            for (int m = 0; m < M; ++m) tot[m] += s * (acc[m] - (W.z ? zz * xs[m * W.G + g] : 0.f));
        }
        for (int m = 0; m < M; ++m) y[m * ldy + (n - n0)] = tot[m];
    }
}

void dequant(const Weight& W, const Table& T, int64_t n0, int64_t n1, float* buf) {
    uint8_t q[32];
    const int64_t kp = W.Kb * BLOCK;
    for (int64_t n = n0; n < n1; ++n) {
        float* out = buf + (n - n0) * kp;
        const int64_t used = W.G == 1 ? W.Kb : W.G * W.bpg;  // blocks past the last group: padding (caller zeros)
        for (int64_t b = 0; b < used; ++b) {
            int64_t g = b / W.bpg;
            float s = (W.sf ? W.sf[n * W.G + g] : f16_to_f32(W.s[n * W.G + g]));
            float zz = W.z ? (float)W.z[n * W.G + g] : 0.f;
            unpack_block(W.w + n * W.Kb * BLOCK_BYTES, b, q);
            for (int i = 0; i < 32; ++i) out[b * BLOCK + i] = s * (T.t[q[i]] - zz);
        }
    }
}

void gemm(const float* x, int64_t ldx, int64_t M, const float* wb, int64_t ldw, int nr, int64_t Kp, float* y,
          int64_t ldy) {
    for (int64_t m = 0; m < M; ++m)
        for (int r = 0; r < nr; ++r) {
            float a = 0.f;
            for (int64_t k = 0; k < Kp; ++k) a += x[m * ldx + k] * wb[r * ldw + k];
            y[m * ldy + r] = a;
        }
}

double sum(const float* p, int64_t n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) a[j] += p[i + j];
    double s = 0;
    for (; i < n; ++i) s += p[i];
    for (int j = 0; j < 8; ++j) s += a[j];
    return s;
}

void swiglu(const float* g, const float* u, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

float dot_u8(const float* x, const uint8_t* q, int64_t n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t h = 0;
    for (; h + 8 <= n; h += 8)
        for (int j = 0; j < 8; ++j) a[j] += x[h + j] * (float)q[h + j];
    float dot = 0.f;
    for (; h < n; ++h) dot += x[h] * (float)q[h];
    for (int j = 0; j < 8; ++j) dot += a[j];
    return dot;
}

}  // namespace

const Kernels scalar_kernels = {"scalar", gemv, dequant, gemm, sum, swiglu, dot_u8, nullptr, nullptr, nullptr, nullptr};

}  // namespace k3
}  // namespace nncf_moe3
