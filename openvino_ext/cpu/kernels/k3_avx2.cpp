// AVX2 + FMA + F16C kernels (fallback for CPUs without AVX-512). Same structure as k3_avx512.cpp, 8 lanes.
// Unpack of 8 codes (chunk c of 32-block b = half h of its k3 v2 super-block), lane i = value 32h + 8c + i:
//   E_c = zero-extend(low-plane bytes 8(c&1) .. 8(c&1)+7) to dwords    (byte 8(c&1)+i)
//   q = ((E_c >> 2(2h + c/2)) & 3) | ((srlv(bcast32(hi dword h), 8c+i) & 1) << 2)
//   value = vpermps(table[0..7], q)   (reads index bits 0..2)
#include <immintrin.h>

#include <cstring>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

struct Unpacker {
    __m256i sh_hi[4], three, one;
    __m256 tab;
    explicit Unpacker(const Table& T) {
        alignas(32) int h[4][8];
        for (int i = 0; i < 8; ++i)
            for (int c = 0; c < 4; ++c) h[c][i] = 8 * c + i;
        for (int c = 0; c < 4; ++c) sh_hi[c] = _mm256_load_si256((const __m256i*)h[c]);
        three = _mm256_set1_epi32(3);
        one = _mm256_set1_epi32(1);
        tab = _mm256_loadu_ps(T.t);
    }
    // table values of the 32 codes of block b of the row at `row`
    inline void values(const uint8_t* row, int64_t b, __m256 v[4]) const {
        const uint8_t* sp = super_of(row, b);
        const int h = (int)(b & 1);
        int32_t hh;
        std::memcpy(&hh, sp + 16 + 4 * h, 4);
        const __m256i H = _mm256_set1_epi32(hh);
        const __m256i E0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sp))),
                      E1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sp + 8)));
        const __m128i c0 = _mm_cvtsi32_si128(4 * h), c1 = _mm_cvtsi32_si128(4 * h + 2);
        const __m256i lo[4] = {_mm256_srl_epi32(E0, c0), _mm256_srl_epi32(E1, c0), _mm256_srl_epi32(E0, c1),
                               _mm256_srl_epi32(E1, c1)};
        for (int c = 0; c < 4; ++c) {
            __m256i hb = _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(H, sh_hi[c]), one), 2);
            __m256i q = _mm256_or_si256(_mm256_and_si256(lo[c], three), hb);
            v[c] = _mm256_permutevar8x32_ps(tab, q);
        }
    }
};

inline float scale_at(const Weight& W, int64_t i) { return W.sf ? W.sf[i] : _cvtsh_ss(W.s[i]); }

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <int M, int R>
inline void gemv_rows(const Weight& W, const Unpacker& U, const float* x, int64_t ldx, const float* xs, int64_t n,
                      float* y, int64_t ldy) {
    __m256 tot[M][R];
    float corr[M][R];
    for (int m = 0; m < M; ++m)
        for (int r = 0; r < R; ++r) {
            tot[m][r] = _mm256_setzero_ps();
            corr[m][r] = 0.f;
        }
    const int64_t rb = W.Kb * BLOCK_BYTES, pf = ((3072 + rb - 1) / rb > 4 ? (3072 + rb - 1) / rb : 4) * rb;
    for (int64_t g = 0; g < W.G; ++g) {
        __m256 acc[M][R];
        for (int m = 0; m < M; ++m)
            for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
        const int64_t b0 = g * W.bpg;
        const int64_t b1 = b0 + W.bpg < W.Kb ? b0 + W.bpg : W.Kb;
        for (int64_t b = b0; b < b1; ++b) {
            for (int r = 0; r < R; ++r) {
                __m256 v[4];
                const uint8_t* row = W.w + (n + r) * W.Kb * BLOCK_BYTES;
                _mm_prefetch((const char*)(row + b * BLOCK_BYTES + pf), _MM_HINT_T0);  // next row group
                U.values(row, b, v);
                for (int m = 0; m < M; ++m) {
                    const float* xp = x + m * ldx + b * BLOCK;
                    for (int c = 0; c < 4; ++c) acc[m][r] = _mm256_fmadd_ps(v[c], _mm256_loadu_ps(xp + 8 * c), acc[m][r]);
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const float s = scale_at(W, (n + r) * W.G + g);
            const __m256 sv = _mm256_set1_ps(s);
            for (int m = 0; m < M; ++m) tot[m][r] = _mm256_fmadd_ps(acc[m][r], sv, tot[m][r]);
            if (W.z) {
                const float sz = s * (float)W.z[(n + r) * W.G + g];
                for (int m = 0; m < M; ++m) corr[m][r] += sz * xs[m * W.G + g];
            }
        }
    }
    for (int m = 0; m < M; ++m)
        for (int r = 0; r < R; ++r) y[m * ldy + r] = hsum(tot[m][r]) - corr[m][r];
}

template <int M>
void gemv_m(const Weight& W, const Unpacker& U, const float* x, int64_t ldx, const float* xs, int64_t n0,
            int64_t n1, float* y, int64_t ldy) {
    constexpr int R = M <= 2 ? 4 : 2;
    int64_t n = n0;
    for (; n + R <= n1; n += R) gemv_rows<M, R>(W, U, x, ldx, xs, n, y + (n - n0), ldy);
    for (; n < n1; ++n) gemv_rows<M, 1>(W, U, x, ldx, xs, n, y + (n - n0), ldy);
}

void gemv(const Weight& W, const Table& T, const float* x, int64_t ldx, int M, const float* xs, int64_t n0,
          int64_t n1, float* y, int64_t ldy) {
    const Unpacker U(T);
    switch (M) {
    case 1: gemv_m<1>(W, U, x, ldx, xs, n0, n1, y, ldy); break;
    case 2: gemv_m<2>(W, U, x, ldx, xs, n0, n1, y, ldy); break;
    case 3: gemv_m<3>(W, U, x, ldx, xs, n0, n1, y, ldy); break;
    default: gemv_m<4>(W, U, x, ldx, xs, n0, n1, y, ldy); break;
    }
}

void dequant(const Weight& W, const Table& T, int64_t n0, int64_t n1, float* buf) {
    const Unpacker U(T);
    const int64_t kp = W.Kb * BLOCK;
    for (int64_t n = n0; n < n1; ++n) {
        float* out = buf + (n - n0) * kp;
        for (int64_t g = 0; g < W.G; ++g) {
            const float s = scale_at(W, n * W.G + g);
            const float z = W.z ? (float)W.z[n * W.G + g] : 0.f;
            const __m256 sv = _mm256_set1_ps(s), off = _mm256_set1_ps(-s * z);
            const int64_t b0 = g * W.bpg;
            const int64_t b1 = b0 + W.bpg < W.Kb ? b0 + W.bpg : W.Kb;
            for (int64_t b = b0; b < b1; ++b) {
                __m256 v[4];
                U.values(W.w + n * W.Kb * BLOCK_BYTES, b, v);
                for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + b * BLOCK + 8 * c, _mm256_fmadd_ps(v[c], sv, off));
            }
        }
    }
}

template <int MM, int RR>
inline void gemm_block(const float* x, int64_t ldx, const float* wb, int64_t ldw, int64_t Kp, float* y,
                       int64_t ldy) {
    __m256 acc[MM][RR];
    for (int m = 0; m < MM; ++m)
        for (int r = 0; r < RR; ++r) acc[m][r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < Kp; k += 8) {
        __m256 wv[RR];
        for (int r = 0; r < RR; ++r) wv[r] = _mm256_loadu_ps(wb + r * ldw + k);
        for (int m = 0; m < MM; ++m) {
            const __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
            for (int r = 0; r < RR; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    for (int m = 0; m < MM; ++m)
        for (int r = 0; r < RR; ++r) y[m * ldy + r] = hsum(acc[m][r]);
}

template <int MM>
inline void gemm_rows(const float* x, int64_t ldx, const float* wb, int64_t ldw, int nr, int64_t Kp, float* y,
                      int64_t ldy) {
    int r = 0;
    for (; r + 4 <= nr; r += 4) gemm_block<MM, 4>(x, ldx, wb + r * ldw, ldw, Kp, y + r, ldy);
    for (; r < nr; ++r) gemm_block<MM, 1>(x, ldx, wb + r * ldw, ldw, Kp, y + r, ldy);
}

void gemm(const float* x, int64_t ldx, int64_t M, const float* wb, int64_t ldw, int nr, int64_t Kp, float* y,
          int64_t ldy) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) gemm_rows<2>(x + m * ldx, ldx, wb, ldw, nr, Kp, y + m * ldy, ldy);
    for (; m < M; ++m) gemm_rows<1>(x + m * ldx, ldx, wb, ldw, nr, Kp, y + m * ldy, ldy);
}

double sum(const float* p, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    double s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; ++i) s += p[i];
    return s;
}

// exp(x) for x clamped to [-87, 87]: x = n ln2 + r, Cephes expf polynomial, 2^n built in the exponent field
inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(87.f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

void swiglu(const float* g, const float* u, int64_t n, float* out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.f), e)),
                                                _mm256_loadu_ps(u + i)));
    }
    for (; i < n; ++i) {  // tail through the same vector code (one lane)
        alignas(32) float a[8] = {g[i]}, b[8] = {u[i]}, c[8];
        _mm256_store_ps(c, _mm256_mul_ps(_mm256_div_ps(_mm256_load_ps(a), _mm256_add_ps(_mm256_set1_ps(1.f),
                                         exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_load_ps(a))))),
                                         _mm256_load_ps(b)));
        out[i] = c[0];
    }
}

float dot_u8(const float* x, const uint8_t* q, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t h = 0;
    for (; h + 16 <= n; h += 16) {
        const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(q + h))));
        const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(q + h + 8))));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + h), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + h + 8), a1);
    }
    alignas(32) float v[8];
    _mm256_store_ps(v, _mm256_add_ps(a0, a1));
    float dot = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    for (; h < n; ++h) dot += x[h] * (float)q[h];
    return dot;
}

}  // namespace

const Kernels avx2_kernels = {"avx2", gemv, dequant, gemm, sum, swiglu, dot_u8, nullptr, nullptr, nullptr, nullptr};

}  // namespace k3
}  // namespace nncf_moe3
