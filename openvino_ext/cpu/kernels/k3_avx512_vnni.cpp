// AVX-512 VNNI + VBMI decode GEMV with int8 dynamic quantization of the activations (per weight group, symmetric),
// like OpenVINO's own CPU INT4 path (DYNAMIC_QUANTIZATION_GROUP_SIZE). Used for M <= GEMV_MAX_M tokens when the
// group size is a multiple of 64; disabled by env NNCF_MOE3_ACT_QUANT=0 (exact f32 kernels instead).
//
// Unpack of 64 codes (two 12-byte blocks, 24 bytes, one masked load) into u8 levels, 5 ALU ops:
//   v  = vpermb(arrange, bytes)        qword m = [lo byte 2(m%4), lo byte 2(m%4)+1, hi byte m%4] of block m/4
//   A  = vpmultishiftqb(2j, v)          byte j of qword: bits 0..1 = low 2 bits of code 8m+j
//   B  = vpmultishiftqb(14+j, v)        byte j: bit 2 = high bit of code 8m+j (bits 3..7 garbage)
//   q  = ternlog(A, B, 3) = (A&3)|(B&~3)
//   L  = vpermb(q, lut64)               lut64[i] = level[i & 7] (vpermb reads 6 index bits: masks the garbage)
// then one vpdpbusd per token: 64 u8 levels x 64 s8 activations -> 16 int32 lanes.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

inline float scale_at(const Weight& W, int64_t i) { return W.sf ? W.sf[i] : _cvtsh_ss(W.s[i]); }

struct Levels {
    alignas(64) uint8_t lut[64];
    float alpha, off;  // T[q] ~= (lut[q] - off) / alpha
};

Levels make_levels(const Table& T) {
    Levels L;
    bool integral = true;
    float mn = T.t[0], mx = T.t[0], amax = 0.f;
    for (int i = 0; i < 8; ++i) {
        integral &= T.t[i] == std::nearbyint(T.t[i]);
        mn = T.t[i] < mn ? T.t[i] : mn;
        mx = T.t[i] > mx ? T.t[i] : mx;
        amax = std::fabs(T.t[i]) > amax ? std::fabs(T.t[i]) : amax;
    }
    if (integral && mx - mn <= 255.f) {
        L.alpha = 1.f;
        L.off = -mn;
    } else {
        L.alpha = amax > 0.f ? 127.f / amax : 1.f;
        L.off = 128.f;
    }
    for (int i = 0; i < 64; ++i) L.lut[i] = (uint8_t)(int)std::nearbyint(T.t[i & 7] * L.alpha + L.off);
    return L;
}

struct Quantized {  // per-call activation quantization, [M][Kp] int8, per-group scale and sum
    int8_t* q;
    float* dx;
    int32_t* sum;
};

constexpr int64_t MAX_G = 1024;
// prefetch distance: at least 4 rows (the next row group) and at least ~3 KB ahead for short rows (down
// projections, K = 768 -> 288 B per row); measured on K = 4096: 4 rows 1.65x faster than none, 8/16 rows slower
inline int64_t prefetch_bytes(int64_t row_bytes) {
    const int64_t rows = (3072 + row_bytes - 1) / row_bytes;
    return (rows > 4 ? rows : 4) * row_bytes;
}  // prefetch distance in rows  // groups per row handled by this kernel (K <= 65536 at group size 64)

// Per-row group factors f[m][g] = s_g / alpha * dx[m][g] (vectorized over groups) and the zero-point / level-offset
// correction sum_g f[m][g] * (off + alpha * z_g) * sum_k xq.
template <int M>
inline void row_factors(const Weight& W, const Levels& L, const Quantized& X, int64_t n, float* f, float* corr) {
    const __m512 inv_alpha = _mm512_set1_ps(1.f / L.alpha), offv = _mm512_set1_ps(L.off),
                 alphav = _mm512_set1_ps(L.alpha);
    __m512 c[M];
    for (int m = 0; m < M; ++m) c[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < W.G; g += 16) {
        const int rem = W.G - g < 16 ? (int)(W.G - g) : 16;
        const __mmask16 k = (__mmask16)((1u << rem) - 1u);
        __m512 s;
        if (W.sf)
            s = _mm512_maskz_loadu_ps(k, W.sf + n * W.G + g);
        else
            s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, W.s + n * W.G + g));
        s = _mm512_mul_ps(s, inv_alpha);
        __m512 zo = offv;
        if (W.z)
            zo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, W.z + n * W.G + g))),
                                 alphav, offv);
        for (int m = 0; m < M; ++m) {
            const __m512 fm = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, X.dx + m * W.G + g));
            _mm512_mask_storeu_ps(f + m * MAX_G + g, k, fm);
            const __m512 sm = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, X.sum + m * W.G + g));
            c[m] = _mm512_fmadd_ps(_mm512_mul_ps(fm, zo), sm, c[m]);
        }
    }
    for (int m = 0; m < M; ++m) corr[m] = _mm512_reduce_add_ps(c[m]);
}

template <int M, int R, bool LUT>
inline void rows(const Weight& W, const Levels& L, const Quantized& X, int64_t Kp, int64_t n, float* y, int64_t ldy,
                 const __m512i arrange, const __m512i ctl_lo, const __m512i ctl_hi, const __m512i three,
                 const __m512i lut) {
    alignas(64) float f[R][M * MAX_G];
    float corr[R][M];
    for (int r = 0; r < R; ++r) row_factors<M>(W, L, X, n + r, f[r], corr[r]);
    const __m512i seven = _mm512_set1_epi8(7);
    __m512 tot[M][R];
    for (int m = 0; m < M; ++m)
        for (int r = 0; r < R; ++r) tot[m][r] = _mm512_setzero_ps();
    const int64_t pairs = W.bpg / 2;
    const int64_t pf = prefetch_bytes(W.Kb * BLOCK_BYTES);
    for (int64_t g = 0; g < W.G; ++g) {
        __m512i acc[M][R];
        for (int m = 0; m < M; ++m)
            for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_si512();
        for (int64_t pp = 0; pp < pairs; ++pp) {
            const int64_t b = g * W.bpg + 2 * pp;
            __m512i xv[M];
            for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_si512(X.q + m * Kp + b * BLOCK);
            for (int r = 0; r < R; ++r) {
                const uint8_t* p = W.w + ((n + r) * W.Kb + b) * BLOCK_BYTES;
                // software prefetch of the same position R rows further (the next row group): the hardware
                // prefetchers alone leave this DRAM-bound loop at ~1/3 of the read bandwidth
                _mm_prefetch((const char*)(p + pf), _MM_HINT_T0);
                const __m512i raw = _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(0xFFFFFFu, p));
                const __m512i v = _mm512_permutexvar_epi8(arrange, raw);
                const __m512i q = _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(ctl_lo, v),
                                                            _mm512_multishift_epi64_epi8(ctl_hi, v), three, 0xE4);
                // integer codebooks: level = code (q & 7, port 0/5); otherwise a 64-entry byte LUT (port 5)
                const __m512i lv = LUT ? _mm512_permutexvar_epi8(q, lut) : _mm512_and_si512(q, seven);
                for (int m = 0; m < M; ++m) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], lv, xv[m]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < M; ++m)
                tot[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][r]), _mm512_set1_ps(f[r][m * MAX_G + g]),
                                            tot[m][r]);
    }
    for (int m = 0; m < M; ++m)
        for (int r = 0; r < R; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(tot[m][r]) - corr[r][m];
}

template <int M>
void gemv_m(const Weight& W, const Levels& L, const Quantized& X, int64_t Kp, int64_t n0, int64_t n1, float* y,
            int64_t ldy) {
    alignas(64) uint8_t arr[64], clo[64], chi[64];
    for (int i = 0; i < 64; ++i) {
        const int m = i / 8, j = i % 8, base = 12 * (m / 4), c = m % 4;
        arr[i] = (uint8_t)(j == 0 ? base + 2 * c : j == 1 ? base + 2 * c + 1 : base + 8 + c);
        clo[i] = (uint8_t)(2 * j);
        chi[i] = (uint8_t)(14 + j);
    }
    const __m512i arrange = _mm512_load_si512(arr), ctl_lo = _mm512_load_si512(clo), ctl_hi = _mm512_load_si512(chi);
    const __m512i three = _mm512_set1_epi8(3), lut = _mm512_load_si512(L.lut);
    constexpr int R = M <= 2 ? 4 : 2;
    bool ident = true;  // levels == codes (integer codebook with the scalar zero point folded into off)
    for (int i = 0; i < 8; ++i) ident &= L.lut[i] == i;
    int64_t n = n0;
    if (ident) {
        for (; n + R <= n1; n += R)
            rows<M, R, false>(W, L, X, Kp, n, y + (n - n0), ldy, arrange, ctl_lo, ctl_hi, three, lut);
        for (; n < n1; ++n) rows<M, 1, false>(W, L, X, Kp, n, y + (n - n0), ldy, arrange, ctl_lo, ctl_hi, three, lut);
    } else {
        for (; n + R <= n1; n += R)
            rows<M, R, true>(W, L, X, Kp, n, y + (n - n0), ldy, arrange, ctl_lo, ctl_hi, three, lut);
        for (; n < n1; ++n) rows<M, 1, true>(W, L, X, Kp, n, y + (n - n0), ldy, arrange, ctl_lo, ctl_hi, three, lut);
    }
}

}  // namespace

// Returns false (nothing done) when the shape is not eligible (group size not a multiple of 64).
bool avx512_vnni_gemv_q8(const Weight& W, const Table& T, const float* x, int64_t ldx, int M, int64_t n0,
                         int64_t n1, float* y, int64_t ldy, void* scratch) {
    if (W.bpg % 2 || W.G * W.bpg != W.Kb || W.G > MAX_G || M < 1 || M > GEMV_MAX_M) return false;
    const Levels L = make_levels(T);
    const int64_t Kp = W.Kb * BLOCK, gsz = W.bpg * BLOCK;
    uint8_t* sp = static_cast<uint8_t*>(scratch);  // M*Kp int8 + M*G floats + M*G ints
    Quantized X{reinterpret_cast<int8_t*>(sp), reinterpret_cast<float*>(sp + ((M * Kp + 63) / 64) * 64),
                nullptr};
    X.sum = reinterpret_cast<int32_t*>(X.dx + M * W.G);
    for (int m = 0; m < M; ++m)
        for (int64_t g = 0; g < W.G; ++g) {
            const float* xp = x + m * ldx + g * gsz;
            __m512 amax = _mm512_setzero_ps();
            for (int64_t k = 0; k < gsz; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(xp + k)));
            const float a = _mm512_reduce_max_ps(amax);
            const float dx = a > 0.f ? a / 127.f : 1.f;
            const __m512 inv = _mm512_set1_ps(1.f / dx);
            __m512i s = _mm512_setzero_si512();
            int8_t* qp = X.q + m * Kp + g * gsz;
            for (int64_t k = 0; k < gsz; k += 16) {
                const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xp + k), inv));  // round-nearest
                s = _mm512_add_epi32(s, qi);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(qp + k), _mm512_cvtsepi32_epi8(qi));
            }
            X.dx[m * W.G + g] = dx;
            X.sum[m * W.G + g] = _mm512_reduce_add_epi32(s);
        }
    switch (M) {
    case 1: gemv_m<1>(W, L, X, Kp, n0, n1, y, ldy); break;
    case 2: gemv_m<2>(W, L, X, Kp, n0, n1, y, ldy); break;
    case 3: gemv_m<3>(W, L, X, Kp, n0, n1, y, ldy); break;
    default: gemv_m<4>(W, L, X, Kp, n0, n1, y, ldy); break;
    }
    return true;
}

}  // namespace k3
}  // namespace nncf_moe3
