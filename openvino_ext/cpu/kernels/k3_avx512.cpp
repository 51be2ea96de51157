// AVX-512F kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; only called when the
// CPU has them). No std:: templates in this file: an inline template instantiated here with AVX-512 code could be
// picked by the linker for other translation units.
//
// Unpack of the 32 codes of block b (half h = b & 1 of its k3 v2 super-block) straight into vpermps indices:
//   E = zero-extend(16 low-plane bytes) to dwords      -> dword i = byte i (values i, 16+i, 32+i, 48+i)
//   A_c = E >> 2(2h + c)                               -> bits 0..1 = low 2 bits of value 32h + 16c + i
//   B_c = rorv(bcast32(hi plane dword h), (16c + i - 2) & 31) -> bit 2 = its high bit (bit 3: garbage)
//   q_c = ternlog(A_c, B_c, 3) = (A_c & 3) | (B_c & ~3) -> vpermps reads bits 0..3; table entries 8..15 = 0..7
#include <immintrin.h>

#include <cstring>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

struct Unpacker {
    __m512i rot0, rot1, three;
    __m512 tab;
    explicit Unpacker(const Table& T) {
        alignas(64) int a[16], b[16], c[16];
        for (int i = 0; i < 16; ++i) {
            a[i] = 2 * i;
            b[i] = (i - 2) & 31;
            c[i] = (16 + i - 2) & 31;
        }
        rot0 = _mm512_load_si512(b);
        rot1 = _mm512_load_si512(c);
        three = _mm512_set1_epi32(3);
        tab = _mm512_load_ps(T.t);
    }
    // table values of the 32 codes of block b of the row at `row`
    inline void values(const uint8_t* row, int64_t b, __m512& v0, __m512& v1) const {
        const uint8_t* sp = super_of(row, b);
        const int h = (int)(b & 1);
        int32_t hw;
        std::memcpy(&hw, sp + 16 + 4 * h, 4);
        const __m512i hb = _mm512_set1_epi32(hw);
        const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp)));
        const __m512i q0 = _mm512_ternarylogic_epi32(_mm512_srl_epi32(e, _mm_cvtsi32_si128(4 * h)),
                                                     _mm512_rorv_epi32(hb, rot0), three, 0xE4);
        const __m512i q1 = _mm512_ternarylogic_epi32(_mm512_srl_epi32(e, _mm_cvtsi32_si128(4 * h + 2)),
                                                     _mm512_rorv_epi32(hb, rot1), three, 0xE4);
        v0 = _mm512_permutexvar_ps(q0, tab);
        v1 = _mm512_permutexvar_ps(q1, tab);
    }
};

inline float scale_at(const Weight& W, int64_t i) { return W.sf ? W.sf[i] : _cvtsh_ss(W.s[i]); }

// R rows x M tokens, fused unpack + FMA; one accumulator per (token, row) per group, scaled at group end.
template <int M, int R>
inline void gemv_rows(const Weight& W, const Unpacker& U, const float* x, int64_t ldx, const float* xs, int64_t n,
                      float* y, int64_t ldy) {
    __m512 tot[M][R];
    float corr[M][R];
    for (int m = 0; m < M; ++m)
        for (int r = 0; r < R; ++r) {
            tot[m][r] = _mm512_setzero_ps();
            corr[m][r] = 0.f;
        }
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = W.w + (n + r) * W.Kb * BLOCK_BYTES;
    const int64_t rb = W.Kb * BLOCK_BYTES, pf = ((3072 + rb - 1) / rb > 4 ? (3072 + rb - 1) / rb : 4) * rb;
    for (int64_t g = 0; g < W.G; ++g) {
        __m512 acc[M][R];
        for (int m = 0; m < M; ++m)
            for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
        const int64_t b0 = g * W.bpg;
        const int64_t b1 = b0 + W.bpg < W.Kb ? b0 + W.bpg : W.Kb;
        for (int64_t b = b0; b < b1; ++b) {
            __m512 xv[M][2];
            for (int m = 0; m < M; ++m) {
                xv[m][0] = _mm512_loadu_ps(x + m * ldx + b * BLOCK);
                xv[m][1] = _mm512_loadu_ps(x + m * ldx + b * BLOCK + 16);
            }
            for (int r = 0; r < R; ++r) {
                __m512 v0, v1;
                // software prefetch 4 rows ahead (next row group; hardware prefetch alone is far from bandwidth)
                _mm_prefetch((const char*)(rows[r] + b * BLOCK_BYTES + pf), _MM_HINT_T0);
                U.values(rows[r], b, v0, v1);
                for (int m = 0; m < M; ++m) {
                    acc[m][r] = _mm512_fmadd_ps(v0, xv[m][0], acc[m][r]);
                    acc[m][r] = _mm512_fmadd_ps(v1, xv[m][1], acc[m][r]);
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const float s = scale_at(W, (n + r) * W.G + g);
            const __m512 sv = _mm512_set1_ps(s);
            for (int m = 0; m < M; ++m) tot[m][r] = _mm512_fmadd_ps(acc[m][r], sv, tot[m][r]);
            if (W.z) {
                const float sz = s * (float)W.z[(n + r) * W.G + g];
                for (int m = 0; m < M; ++m) corr[m][r] += sz * xs[m * W.G + g];
            }
        }
    }
    for (int m = 0; m < M; ++m)
        for (int r = 0; r < R; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(tot[m][r]) - corr[m][r];
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
        const uint8_t* row = W.w + n * W.Kb * BLOCK_BYTES;
        for (int64_t g = 0; g < W.G; ++g) {
            const float s = scale_at(W, n * W.G + g);
            const float z = W.z ? (float)W.z[n * W.G + g] : 0.f;
            const __m512 sv = _mm512_set1_ps(s), off = _mm512_set1_ps(-s * z);
            const int64_t b0 = g * W.bpg;
            const int64_t b1 = b0 + W.bpg < W.Kb ? b0 + W.bpg : W.Kb;
            for (int64_t b = b0; b < b1; ++b) {
                __m512 v0, v1;
                U.values(row, b, v0, v1);
                _mm512_storeu_ps(out + b * BLOCK, _mm512_fmadd_ps(v0, sv, off));
                _mm512_storeu_ps(out + b * BLOCK + 16, _mm512_fmadd_ps(v1, sv, off));
            }
        }
    }
}

// MM tokens x RR rows register block of dot products along K.
template <int MM, int RR>
inline void gemm_block(const float* x, int64_t ldx, const float* wb, int64_t ldw, int64_t Kp, float* y,
                       int64_t ldy) {
    __m512 acc[MM][RR];
    for (int m = 0; m < MM; ++m)
        for (int r = 0; r < RR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < Kp; k += 16) {
        __m512 wv[RR];
        for (int r = 0; r < RR; ++r) wv[r] = _mm512_loadu_ps(wb + r * ldw + k);
        for (int m = 0; m < MM; ++m) {
            const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
            for (int r = 0; r < RR; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    for (int m = 0; m < MM; ++m)
        for (int r = 0; r < RR; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[m][r]);
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
    for (; m + 6 <= M; m += 6) gemm_rows<6>(x + m * ldx, ldx, wb, ldw, nr, Kp, y + m * ldy, ldy);
    for (; m < M; ++m) gemm_rows<1>(x + m * ldx, ldx, wb, ldw, nr, Kp, y + m * ldy, ldy);
}

double sum(const float* p, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
    }
    double s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; ++i) s += p[i];
    return s;
}

// exp(x): x = n ln2 + r, |r| <= ln2/2, Cephes expf polynomial (~1 ulp), 2^n by vscalefps (no overflow handling
// needed: scalef saturates to inf / 0)
inline __m512 exp512(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

void swiglu(const float* g, const float* u, int64_t n, float* out) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 gv = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, u + i)));
    }
}

float dot_u8(const float* x, const uint8_t* q, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int64_t h = 0;
    for (; h + 32 <= n; h += 32) {
        const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(q + h))));
        const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(q + h + 16))));
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + h), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + h + 16), a1);
    }
    for (; h < n; h += 16) {  // masked tail
        const __mmask16 k = n - h >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - h)) - 1u);
        const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, q + h)));
        a0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, x + h), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

}  // namespace

const Kernels avx512_kernels = {"avx512", gemv, dequant, gemm, sum, swiglu, dot_u8, nullptr, nullptr, nullptr, nullptr};

}  // namespace k3
}  // namespace nncf_moe3
