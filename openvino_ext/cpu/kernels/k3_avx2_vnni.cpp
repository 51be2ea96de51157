// AVX2 + AVX-VNNI int8-activation kernels (VEX-encoded vpdpbusd on 256-bit registers: Intel Alder Lake and later
// client CPUs, Sierra Forest, AMD Zen 5 -- CPUs without AVX-512 VNNI otherwise get the exact f32 kernels of
// k3_avx2.cpp). Same contract and numerics as k3_avx512_vnni.cpp: activations quantized to int8 per (token, weight
// group) with the same rounding, u8 levels from make_levels, per-group flush y += s_g*dx_g/alpha * (sum xq*L) and the
// zero-point / level-offset correction (off + alpha*z_g) * s_g*dx_g/alpha * sum_g(xq) subtracted per row.
// No std:: templates in this file (see k3_avx512.cpp).
//
// Unpack of one 32-value block b (half h = b & 1 of the 24-byte super-block b / 2) into 32 u8 codes in natural order:
//   v  = vbroadcasti128(low plane)            the 16 low-plane bytes in both 128-bit lanes
//   q  = vpsrlvd(v, 2(2h + lane)) & 3         byte 16 lane + i = low 2 bits of value 32h + 16 lane + i
//   hb = vpshufb(bcast64(high plane), i / 8 + 4h)  the high-plane byte holding bit (32h + i) of every value
//   q += (hb & (1 << i % 8)) == (1 << i % 8) ? 4 : 0
//   L  = vpshufb(lut, q)                      real codebooks only (NF3): lut[i] = level[i & 7] in both lanes
// Decode (<= 4 tokens): rows one after another, per block one vpdpbusd per token into 8 int32 lanes, flushed per
// group. Prefill (> 4 tokens): the same GEMV over 4-token chunks of 16-row tiles (the tile stays in L1 across the
// chunks); slower per token than the AVX-512 GEMM, but int8 like it.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

struct Unpack2 {
    __m256i sh[2], three, four, bitsel, lut;
    __m256i hsel[2];
    explicit Unpack2(const Levels& L) {
        sh[0] = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);  // half 0: values 0..15 (bits 0-1), 16..31 (bits 2-3)
        sh[1] = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);  // half 1: values 32..47 (bits 4-5), 48..63 (bits 6-7)
        three = _mm256_set1_epi8(3);
        four = _mm256_set1_epi8(4);
        alignas(32) uint8_t sel[32], hs0[32], hs1[32];
        for (int i = 0; i < 32; ++i) {
            sel[i] = (uint8_t)(1u << (i % 8));
            hs0[i] = (uint8_t)(i / 8);      // byte i / 8 of the high plane (values 0..31)
            hs1[i] = (uint8_t)(4 + i / 8);  // values 32..63
        }
        bitsel = _mm256_load_si256(reinterpret_cast<const __m256i*>(sel));
        hsel[0] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hs0));
        hsel[1] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hs1));
        alignas(32) uint8_t lt[32];
        for (int i = 0; i < 32; ++i) lt[i] = L.lut[i & 7];
        lut = _mm256_load_si256(reinterpret_cast<const __m256i*>(lt));
    }
    // u8 levels of half h (values 32h..32h+31) of a super-block given its broadcast planes
    template <bool LUT>
    inline __m256i half(__m256i low, __m256i high, int h) const {
        __m256i q = _mm256_and_si256(_mm256_srlv_epi32(low, sh[h]), three);
        const __m256i hb = _mm256_and_si256(_mm256_shuffle_epi8(high, hsel[h]), bitsel);
        q = _mm256_add_epi8(q, _mm256_and_si256(_mm256_cmpeq_epi8(hb, bitsel), four));
        return LUT ? _mm256_shuffle_epi8(lut, q) : q;
    }
    static inline __m256i low_plane(const uint8_t* sp) {
        return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp)));
    }
    static inline __m256i high_plane(const uint8_t* sp) {
        int64_t hi;
        std::memcpy(&hi, sp + 16, 8);
        return _mm256_set1_epi64x(hi);
    }
    // u8 levels of the 32 values of half h of the super-block at sp
    template <bool LUT>
    inline __m256i levels(const uint8_t* sp, int h) const {
        return half<LUT>(low_plane(sp), high_plane(sp), h);
    }
};

inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float scale_at(const Weight& W, int64_t i) { return W.sf ? W.sf[i] : _cvtsh_ss(W.s[i]); }

// Group factors of row n, 8 groups at a time: f[m][g] = s_g / alpha * dx[m][g] and the row's correction
// corr[m] = sum_g f[m][g] * (off + alpha * z_g) * sum_q[m][g] (subtracted once per row)
template <int M>
inline void row_factors(const Weight& W, const Levels& L, const QAct& X, const int64_t* xr, int64_t n, float* f,
                        float* corr) {
    __m256 c[M];
    for (int m = 0; m < M; ++m) c[m] = _mm256_setzero_ps();
    const __m256 ia = _mm256_set1_ps(L.inv_alpha), al = _mm256_set1_ps(L.alpha), off = _mm256_set1_ps(L.off);
    int64_t g = 0;
    for (; g + 8 <= W.G; g += 8) {
        const int64_t i = n * W.G + g;
        const __m256 s = _mm256_mul_ps(W.sf ? _mm256_loadu_ps(W.sf + i)
                                            : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.s + i))),
                                       ia);
        const __m256 zo = W.z ? _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(W.z + i)))),
                                                al, off)
                              : off;
        for (int m = 0; m < M; ++m) {
            const __m256 fm = _mm256_mul_ps(s, _mm256_loadu_ps(X.dx + xr[m] * X.G + g));
            _mm256_storeu_ps(f + m * Q8_MAX_G + g, fm);
            c[m] = _mm256_fmadd_ps(_mm256_mul_ps(fm, zo), _mm256_loadu_ps(X.sum + xr[m] * X.G + g), c[m]);
        }
    }
    for (int m = 0; m < M; ++m) corr[m] = hsum8(c[m]);
    for (; g < W.G; ++g) {  // tail groups
        const float sg = scale_at(W, n * W.G + g) * L.inv_alpha;
        const float zo = L.off + (W.z ? L.alpha * (float)W.z[n * W.G + g] : 0.f);
        for (int m = 0; m < M; ++m) {
            const float fm = sg * X.dx[xr[m] * X.G + g];
            f[m * Q8_MAX_G + g] = fm;
            corr[m] += fm * zo * X.sum[xr[m] * X.G + g];
        }
    }
}

// rows [n0, n1) of W for M <= GEMV_MAX_M tokens; token m reads q / dx / sum rows xr[m]
// BPG: blocks per group at compile time for the common group sizes (4 = 128, 2 = 64; 0 = W.bpg at run time): the
// block loop then unrolls with no parity test (MoE-stack decode 11.6-11.9 -> 8.1-8.8 ms on the Zen 5 VM)
template <int M, bool LUT, int BPG>
void gemv_rows(const Weight& W, const Levels& L, const Unpack2& U, const int64_t* xr, const QAct& X, int64_t n0,
               int64_t n1, float* y, int64_t ldy) {
    const int64_t rb = W.Kb * BLOCK_BYTES;
    alignas(32) float f[M * Q8_MAX_G];  // this row's group factors [m][g]
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* p = W.w + n * rb;
        _mm_prefetch(reinterpret_cast<const char*>(p + 4 * rb), _MM_HINT_T0);
        __m256 t[M];
        float corr[M];
        row_factors<M>(W, L, X, xr, n, f, corr);
        for (int m = 0; m < M; ++m) t[m] = _mm256_setzero_ps();
        for (int64_t g = 0; g < W.G; ++g) {
            // two accumulators per token (even / odd block of the group): the vpdpbusd latency does not chain
            __m256i acc[M], ac2[M];
            for (int m = 0; m < M; ++m) acc[m] = ac2[m] = _mm256_setzero_si256();
            const int64_t bpg = BPG ? BPG : W.bpg;
            int64_t b = g * bpg;
            const int64_t b1 = b + bpg;
            for (; b + 2 <= b1; b += 2) {
                __m256i lv, lw;
                if ((BPG && BPG % 2 == 0) || !(b & 1)) {  // one super-block: its planes loaded once for both halves
                    const uint8_t* sp = p + (b >> 1) * SUPER_BYTES;
                    const __m256i lo = Unpack2::low_plane(sp), hp = Unpack2::high_plane(sp);
                    lv = U.half<LUT>(lo, hp, 0);
                    lw = U.half<LUT>(lo, hp, 1);
                } else {  // odd start (group sizes 32, 96, ..): upper half of one, lower half of the next
                    lv = U.levels<LUT>(p + (b >> 1) * SUPER_BYTES, 1);
                    lw = U.levels<LUT>(p + ((b + 1) >> 1) * SUPER_BYTES, 0);
                }
                for (int m = 0; m < M; ++m) {
                    const int8_t* xq = X.q + xr[m] * X.ldq + b * BLOCK;
                    acc[m] = _mm256_dpbusd_avx_epi32(acc[m], lv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
                    ac2[m] = _mm256_dpbusd_avx_epi32(ac2[m], lw,
                                                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + BLOCK)));
                }
            }
            if (b < b1) {  // odd block count (group size 32, 96, ..)
                const __m256i lv = U.levels<LUT>(p + (b >> 1) * SUPER_BYTES, (int)(b & 1));
                for (int m = 0; m < M; ++m)
                    acc[m] = _mm256_dpbusd_avx_epi32(
                        acc[m], lv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(X.q + xr[m] * X.ldq + b * BLOCK)));
            }
            for (int m = 0; m < M; ++m) acc[m] = _mm256_add_epi32(acc[m], ac2[m]);
            for (int m = 0; m < M; ++m)
                t[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m]), _mm256_set1_ps(f[m * Q8_MAX_G + g]), t[m]);
        }
        for (int m = 0; m < M; ++m) y[m * ldy + (n - n0)] = hsum8(t[m]) - corr[m];
    }
}

template <int M, bool LUT>
void gemv_bpg(const Weight& W, const Levels& L, const Unpack2& U, const int64_t* xr, const QAct& X, int64_t n0,
              int64_t n1, float* y, int64_t ldy) {
    if (W.bpg == 4)
        gemv_rows<M, LUT, 4>(W, L, U, xr, X, n0, n1, y, ldy);
    else if (W.bpg == 2)
        gemv_rows<M, LUT, 2>(W, L, U, xr, X, n0, n1, y, ldy);
    else
        gemv_rows<M, LUT, 0>(W, L, U, xr, X, n0, n1, y, ldy);
}

template <bool LUT>
void gemv_any(const Weight& W, const Levels& L, const int64_t* xr, const QAct& X, int M, int64_t n0, int64_t n1,
              float* y, int64_t ldy) {
    const Unpack2 U(L);
    switch (M) {
    case 1: gemv_bpg<1, LUT>(W, L, U, xr, X, n0, n1, y, ldy); break;
    case 2: gemv_bpg<2, LUT>(W, L, U, xr, X, n0, n1, y, ldy); break;
    case 3: gemv_bpg<3, LUT>(W, L, U, xr, X, n0, n1, y, ldy); break;
    default: gemv_bpg<4, LUT>(W, L, U, xr, X, n0, n1, y, ldy); break;
    }
}

void gemv_tokens(const Weight& W, const Levels& L, const QAct& X, const int32_t* tok, int64_t m0, int M, int64_t n0,
                 int64_t n1, float* y, int64_t ldy) {
    int64_t xr[GEMV_MAX_M];
    for (int m = 0; m < M; ++m) xr[m] = tok ? tok[m0 + m] : m0 + m;
    if (L.ident)
        gemv_any<false>(W, L, xr, X, M, n0, n1, y, ldy);
    else
        gemv_any<true>(W, L, xr, X, M, n0, n1, y, ldy);
}

}  // namespace

void avx2_vnni_quantize(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs, int8_t* q,
                        float* dx, float* sum) {
    const int64_t G = (K + gs - 1) / gs;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * ldx;
        int8_t* qr = q + m * Kp;
        for (int64_t g = 0; g < G; ++g) {
            const int64_t k0 = g * gs, k1 = k0 + gs < K ? k0 + gs : K;
            __m256 amax = _mm256_setzero_ps();
            int64_t k = k0;
            for (; k + 8 <= k1; k += 8) amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(xr + k), absmask));
            __m128 a4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            a4 = _mm_max_ps(a4, _mm_movehl_ps(a4, a4));
            a4 = _mm_max_ss(a4, _mm_movehdup_ps(a4));
            float a = _mm_cvtss_f32(a4);
            for (; k < k1; ++k) a = std::fabs(xr[k]) > a ? std::fabs(xr[k]) : a;
            const float d = a > 0.f ? a / 127.f : 1.f;
            const float inv = 1.f / d;
            const __m256 vinv = _mm256_set1_ps(inv);
            __m256i s = _mm256_setzero_si256();
            for (k = k0; k + 8 <= k1; k += 8) {
                const __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vinv));
                s = _mm256_add_epi32(s, qi);
                alignas(32) int32_t t[8];
                _mm256_store_si256(reinterpret_cast<__m256i*>(t), qi);
                for (int i = 0; i < 8; ++i) qr[k + i] = (int8_t)t[i];
            }
            alignas(32) int32_t t[8];
            _mm256_store_si256(reinterpret_cast<__m256i*>(t), s);
            int32_t total = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
            for (; k < k1; ++k) {  // the same rounding as the vector lanes (round to nearest even)
                const int32_t qi = (int32_t)std::nearbyint(xr[k] * inv);
                qr[k] = (int8_t)qi;
                total += qi;
            }
            dx[m * G + g] = d;
            sum[m * G + g] = (float)total;
        }
        if (Kp > K) std::memset(qr + K, 0, Kp - K);
    }
}

void avx2_vnni_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
    gemv_tokens(W, levels_of(T), X, tok, 0, M, n0, n1, y, ldy);
}

void avx2_vnni_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                        const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy) {
    gemv_tokens(Wa, levels_of(Ta), X, tok, 0, M, n0, n1, ya, ldy);
    gemv_tokens(Wb, levels_of(Tb), X, tok, 0, M, n0, n1, yb, ldy);
}

void avx2_vnni_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
    const Levels L = levels_of(T);
    constexpr int64_t ROWS = 16;  // 16 rows x K codes stay in L1 / L2 while every 4-token chunk reads them
    for (int64_t r0 = n0; r0 < n1; r0 += ROWS) {
        const int64_t r1 = r0 + ROWS < n1 ? r0 + ROWS : n1;
        for (int64_t m0 = 0; m0 < M; m0 += GEMV_MAX_M) {
            const int mm = (int)(M - m0 < GEMV_MAX_M ? M - m0 : GEMV_MAX_M);
            gemv_tokens(W, L, X, tok, m0, mm, r0, r1, y + m0 * ldy + (r0 - n0), ldy);
        }
    }
}

}  // namespace k3
}  // namespace nncf_moe3
