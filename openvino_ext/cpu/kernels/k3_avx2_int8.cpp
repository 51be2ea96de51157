// Plain-AVX2 int8-activation kernels ("avx2_int8": AVX2 CPUs without AVX-VNNI or AVX-512 VNNI -- Intel Haswell ..
// Comet Lake client, AMD Zen 1-3) and the activation quantizer shared with "avx2_vnni".
// The kernels are k3_avx2_q8.inc with a vpmaddubsw dot product:
//   integer levels (every int3 mode: level = code, 0..7): vpmaddubsw(levels u8, xq s8) gives 16 int16 sums of two
//     products (|.| <= 2 * 7 * 127 = 1778), added up in int16 over <= 16 blocks per accumulator (<= 28448, no
//     saturation), widened once per group (or chunk) by vpmaddwd with ones;
//   real codebooks (NF3; levels 0..255), decode: the levels split into nibbles by two vpshufb tables, one
//     vpmaddubsw each (|.| <= 2 * 15 * 127 = 3810, <= 8 blocks per accumulator: <= 30480), widened by vpmaddwd with
//     1 and 16; prefill GEMM: signed levels with vpsignb (DotSign).
// Exact integer sums like vpdpbusd, so the results equal avx2_vnni's and avx512_vnni's up to float summation order.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <new>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

#include "k3_avx2_q8.inc"

struct DotInt {  // levels = codes 0..7
    static constexpr int64_t CHUNK = 32;
    static constexpr int MT = 4;  // 8 int16 accumulators + 2 weight vectors + broadcast + product: no spills
    static constexpr int64_t KCHUNK = 16;  // <= 16 * 1778 per int16 lane
    struct Lv {
        __m256i l;
    };
    struct Acc {
        __m256i s16;
    };
    static inline Lv levels(const Unpack2&, __m256i q) { return {q}; }
    static inline void zero(Acc& a) { a.s16 = _mm256_setzero_si256(); }
    static inline void dot(Acc& a, const Lv& l, __m256i x) {
        a.s16 = _mm256_add_epi16(a.s16, _mm256_maddubs_epi16(l.l, x));
    }
    // the GEMM micro-kernel's form: the add through inline asm ties the accumulator to its register (with the
    // intrinsic GCC 12 rotated the 8 accumulators through copies and kept one on the stack): MoE-stack prefill
    // 279 -> 219 ms. The decode GEMV keeps the intrinsic (with the asm form it ran ~5 % slower).
    static inline void dot_tied(Acc& a, const Lv& l, __m256i x) {
        const __m256i p = _mm256_maddubs_epi16(l.l, x);
        __asm__("vpaddw %1, %0, %0" : "+x"(a.s16) : "x"(p));
    }
    static inline __m256i widen(const Acc& a) { return _mm256_madd_epi16(a.s16, _mm256_set1_epi16(1)); }
};

struct DotLut {  // any u8 levels: low and high nibble
    static constexpr int64_t CHUNK = 16;
    struct Lv {
        __m256i lo, hi;
    };
    struct Acc {
        __m256i lo, hi;
    };
    static inline Lv levels(const Unpack2& U, __m256i q) {
        return {_mm256_shuffle_epi8(U.lut_lo, q), _mm256_shuffle_epi8(U.lut_hi, q)};
    }
    static inline void zero(Acc& a) { a.lo = a.hi = _mm256_setzero_si256(); }
    static inline void dot(Acc& a, const Lv& l, __m256i x) {
        a.lo = _mm256_add_epi16(a.lo, _mm256_maddubs_epi16(l.lo, x));
        a.hi = _mm256_add_epi16(a.hi, _mm256_maddubs_epi16(l.hi, x));
    }
    static inline __m256i widen(const Acc& a) {
        return _mm256_add_epi32(_mm256_madd_epi16(a.lo, _mm256_set1_epi16(1)),
                                _mm256_madd_epi16(a.hi, _mm256_set1_epi16(16)));
    }
};

// The prefill GEMM's dot for real-codebook levels (NF3: 1..255): the levels shifted to signed l - 128 (-127..127),
// vpmaddubsw(|xq|, sign(l - 128, xq)) = (l - 128) * xq per byte, at most 2 * 127 * 127 = 32258 per pair (no
// saturation), widened at once (vpmaddwd) into int32; the shift by 128 moves into the level offset.
struct DotSign {
    static constexpr int MT = 4;
    static constexpr int64_t KCHUNK = (int64_t)1 << 40;
    struct Lv {
        __m256i l;
    };
    struct Acc {
        __m256i s32;
    };
    static inline Lv levels(const Unpack2& U, __m256i q) { return {_mm256_shuffle_epi8(U.lut, q)}; }
    static inline void zero(Acc& a) { a.s32 = _mm256_setzero_si256(); }
    static inline __m256i widen(const Acc& a) { return a.s32; }
    static inline void dot_tied(Acc& a, const Lv& l, __m256i x) {
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(l.l, x)),
                                            _mm256_set1_epi16(1));
        __asm__("vpaddd %1, %0, %0" : "+x"(a.s32) : "x"(p));
    }
    // every level in 1..255 (l - 128 = -128 has no positive counterpart for vpsignb)
    static inline bool usable(const Levels& L) {
        for (int i = 0; i < 8; ++i)
            if (L.lut[i] == 0) return false;
        return true;
    }
    static inline Levels adapt(const Levels& L) {
        Levels S = L;
        for (int i = 0; i < 64; ++i) S.lut[i] = (uint8_t)(L.lut[i] - 128u);
        S.off = L.off - 128.f;
        S.ident = false;
        return S;
    }
};

}  // namespace

void avx2_q8_quantize(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs, int8_t* q,
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

void avx2_int8_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
    gemv_q8_impl<DotInt, DotLut>(W, T, X, tok, M, n0, n1, y, ldy);
}

void avx2_int8_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                        const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy) {
    gemv2_q8_impl<DotInt, DotLut>(Wa, Ta, Wb, Tb, X, tok, M, n0, n1, ya, yb, ldy);
}

void avx2_int8_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
    gemm_q8_impl<DotInt, DotLut, DotSign>(W, T, X, tok, M, n0, n1, y, ldy);
}

}  // namespace k3
}  // namespace nncf_moe3
