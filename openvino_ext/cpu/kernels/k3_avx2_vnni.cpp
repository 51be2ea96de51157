// AVX2 + AVX-VNNI int8-activation kernels ("avx2_vnni": VEX-encoded vpdpbusd on 256-bit registers -- Intel Alder
// Lake and later client CPUs, Sierra Forest, AMD Zen 5): k3_avx2_q8.inc with a vpdpbusd dot product (u8 levels,
// through a vpshufb table for real codebooks). The activation quantizer is k3_avx2_int8.cpp's.
#include <immintrin.h>

#include <cstring>
#include <new>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

#include "k3_avx2_q8.inc"

template <bool LUT>
struct DotVnni {
    static constexpr int64_t CHUNK = (int64_t)1 << 40;  // int32 sums: no widening needed
    static constexpr int MT = 6;  // 12 int32 accumulators + 2 weight vectors + broadcast
    static constexpr int64_t KCHUNK = (int64_t)1 << 40;
    struct Lv {
        __m256i l;
    };
    struct Acc {
        __m256i s32;
    };
    static inline Lv levels(const Unpack2& U, __m256i q) { return {LUT ? _mm256_shuffle_epi8(U.lut, q) : q}; }
    static inline void zero(Acc& a) { a.s32 = _mm256_setzero_si256(); }
    static inline void dot(Acc& a, const Lv& l, __m256i x) { a.s32 = _mm256_dpbusd_avx_epi32(a.s32, l.l, x); }
    // the GEMM micro-kernel's form, through inline asm: with the intrinsic GCC 12 kept its 12 accumulators on the
    // stack (a store per accumulator per k-step; see K3_DPBUSD in k3_avx512_vnni.cpp): MoE-stack prefill 267 ->
    // 175 ms. The decode GEMV keeps the intrinsic (with the asm form it ran ~5 % slower).
    static inline void dot_tied(Acc& a, const Lv& l, __m256i x) {
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(a.s32) : "x"(l.l), "x"(x));
    }
    static inline __m256i widen(const Acc& a) { return a.s32; }
    static inline bool usable(const Levels&) { return true; }
    static inline const Levels& adapt(const Levels& L) { return L; }
};

}  // namespace

void avx2_vnni_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
    gemv_q8_impl<DotVnni<false>, DotVnni<true>>(W, T, X, tok, M, n0, n1, y, ldy);
}

void avx2_vnni_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                        const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy) {
    gemv2_q8_impl<DotVnni<false>, DotVnni<true>>(Wa, Ta, Wb, Tb, X, tok, M, n0, n1, ya, yb, ldy);
}

void avx2_vnni_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
    gemm_q8_impl<DotVnni<false>, DotVnni<true>, DotVnni<true>>(W, T, X, tok, M, n0, n1, y, ldy);
}

}  // namespace k3
}  // namespace nncf_moe3
