// AVX-512 VNNI + VBMI kernels with int8 dynamic quantization of the activations (per token and weight group,
// symmetric), like OpenVINO's own CPU INT4 path (DYNAMIC_QUANTIZATION_GROUP_SIZE). Disabled by env
// NNCF_MOE3_ACT_QUANT=0 (exact f32 kernels instead). No std:: templates in this file (see k3_avx512.cpp).
//
// Unpack of 64 codes (one 24-byte k3 v2 super-block = blocks 2s, 2s+1 of a row) into u8 levels in natural order,
// no cross-lane byte shuffle:
//   v  = vbroadcasti32x4(low plane)      the 16 low-plane bytes in each 128-bit lane
//   q  = vpsrlvd(v, 2j in lane j) & 3    byte 16j + b = low 2 bits of value 16j + b
//        (with GFNI: one vgf2p8affineqb with a per-lane bit-selection matrix instead)
//   q  = vpaddb{k = high plane}(q, 4)    + the high bit (k = the 8 high-plane bytes, kmovq)
//   L  = vpermb(q, lut64)                real codebooks only (NF3): lut64[i] = level[i & 7]
// A block at an odd index (group sizes 32, 96, ...) is the upper half of its super-block: the whole super-block is
// unpacked and the activations are loaded shifted by 32 with the lower half masked to zero.
//
// Decode (GEMV, <= 4 tokens): rows one after another (one sequential stream per thread), L x one vpdpbusd per
// token (64 u8 levels x 64 s8 activations -> 16 int32 lanes along K), int32 accumulators flushed per group into
// f32 with the factor s_g*dx_g/alpha; horizontal sums batched by 4 rows.
//
// Prefill (GEMM): a tile of 64 rows is unpacked ONCE per call into the VNNI layout [K/4][64 rows][4 bytes]
// (the 16 x 64-byte rows of a row block are transposed as a 16x16 dword matrix), the same layout as an AMX
// B tile. Micro-kernel: 6 tokens x 4 row blocks = 24 int32 zmm accumulators; per k-step (4 K values) 4 weight
// loads, 6 activation broadcasts (4 bytes of a token), 24 vpdpbusd; lanes = rows, so the per-group flush needs no
// horizontal sums: C[m][rows] += (s_rows*dx_m/alpha) * (acc - (off + alpha*z_rows) * sum_q(m, g)).
#include <immintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {
namespace {

inline bool same_levels(const Levels& a, const Levels& b) {
    return a.alpha == b.alpha && a.off == b.off && std::memcmp(a.lut, b.lut, 8) == 0;
}

constexpr __mmask64 LOW_HALF = 0x00000000FFFFFFFFull, HIGH_HALF = 0xFFFFFFFF00000000ull;

// GFNI (Ice Lake+, Zen 4+): one vgf2p8affineqb (per-qword bit-matrix: bits 2j, 2j+1 of every byte -> bits 0, 1)
// replaces vpsrlvd + vpand in the unpack (measured 6-8 % faster MoE-stack decode on the session-3 Zen 4 VM).
// NNCF_MOE3_GFNI=0 turns it off (read once per process).
inline bool use_gfni() {
    static const bool on = [] {
        const char* e = std::getenv("NNCF_MOE3_GFNI");
        return __builtin_cpu_supports("gfni") && !(e && e[0] == '0');
    }();
    return on;
}

struct Unpack {
    __m512i shifts, three, four, lut, gfm;
    bool gf;
    explicit Unpack(const Levels& L) {
        gf = use_gfni();
        alignas(64) uint64_t m[8];
        for (int q = 0; q < 8; ++q) {
            const int j = q / 2;
            m[q] = ((uint64_t)(1u << (2 * j)) << 56) | ((uint64_t)(1u << (2 * j + 1)) << 48);
        }
        gfm = _mm512_load_si512(m);
        shifts = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
        three = _mm512_set1_epi8(3);
        four = _mm512_set1_epi8(4);
        lut = _mm512_load_si512(L.lut);
    }
    // u8 levels of the 64 codes of the super-block at sp, the unpack variant fixed at compile time (decode GEMV: no
    // per-super-block test of gf): LV bit 0 = LUT (real codebooks: the 64-entry byte LUT; integer ones: level =
    // code), bit 1 = GFNI
    template <int LV>
    inline __m512i levels_lv(const uint8_t* sp) const {
        const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sp)));
        uint64_t hi;
        std::memcpy(&hi, sp + 16, 8);
        const __m512i q = (LV & 2) ? _mm512_gf2p8affine_epi64_epi8(v, gfm, 0) : _mm512_and_si512(_mm512_srlv_epi32(v, shifts), three);
        const __m512i c = _mm512_mask_add_epi8(q, _cvtu64_mask64(hi), q, four);
        return (LV & 1) ? _mm512_permutexvar_epi8(c, lut) : c;
    }
    // the same with the variant chosen at run time (GEMM tile unpack, once per tile row)
    template <bool LUT>
    inline __m512i levels(const uint8_t* sp) const {
        return gf ? levels_lv<(LUT ? 1 : 0) | 2>(sp) : levels_lv<LUT ? 1 : 0>(sp);
    }
};

// ------------------------------------------------------------------------------------------------------------
// decode GEMV
// ------------------------------------------------------------------------------------------------------------
struct TokX {  // the (<= 4) tokens of a GEMV call
    const int8_t* q[GEMV_MAX_M];
    const float* dx[GEMV_MAX_M];
    const float* sum[GEMV_MAX_M];
};

inline TokX tok_x(const QAct& X, const int32_t* tok, int M) {
    TokX t;
    for (int m = 0; m < M; ++m) {
        const int64_t row = tok ? tok[m] : m;
        t.q[m] = X.q + row * X.ldq;
        t.dx[m] = X.dx + row * X.G;
        t.sum[m] = X.sum + row * X.G;
    }
    return t;
}

// prefetch distance: at least 4 rows (the next row group) and at least ~4 KB ahead for short rows (down
// projections, K = 768 -> 288 B per row); measured on K = 4096: 4 rows 1.65x faster than none, 8/16 rows slower
// (Zen 4). Zen 5 (session 8), where one core streams ~33 GB/s: a 3 KB floor covers only ~90 ns of DRAM latency;
// 4 KB: one core from DRAM (`gemv_bench rows 65536 2048 3`) 79-89 -> 94-96 weights/ns, `gemv_bench 1 20` median
// 6.17 -> 5.80 ms, 2 threads 3.74 -> 3.70 ms (5 alternating runs); the MoE stack through OpenVINO within noise.
// tunables (compile-time, for experiments): prefetch distance floor in bytes (0 = no software prefetch) and hint
#ifndef K3_PF_BYTES
#define K3_PF_BYTES 4096
#endif
#ifndef K3_PF_HINT
#define K3_PF_HINT _MM_HINT_T0
#endif
inline int64_t prefetch_bytes(int64_t row_bytes) {
    const int64_t rows = (K3_PF_BYTES + row_bytes - 1) / row_bytes;
    return (rows > 4 ? rows : 4) * row_bytes;
}

// Software prefetch of the scales (and zero points) of rows n..n+3: a second, thin stream next to the codes whose
// line misses otherwise stall the per-row factor computation (measured ~7 % of decode time in block_factors).
inline void prefetch_factors(const Weight& W, int64_t n, int64_t n1) {
    if (n >= n1) return;
    const int64_t rows = n1 - n < 4 ? n1 - n : 4;
    const char* s = W.sf ? reinterpret_cast<const char*>(W.sf + n * W.G) : reinterpret_cast<const char*>(W.s + n * W.G);
    const int64_t sb = rows * W.G * (W.sf ? 4 : 2);
    for (int64_t i = 0; i < sb; i += 64) _mm_prefetch(s + i, _MM_HINT_T0);
    if (W.z)
        for (int64_t i = 0; i < rows * W.G; i += 64) _mm_prefetch(reinterpret_cast<const char*>(W.z + n * W.G + i), _MM_HINT_T0);
}

// 16 consecutive per-group factors starting at group index i (= n * G + g); lanes outside mask k are undefined:
// sv = s / alpha, zo = off + alpha * z (zo = off without per-group zero points).
// Plain 16-lane loads wherever they stay inside the [N][G] tensor (lanes past the row then hold the next row's
// scales, ignored by the callers): with masked loads here the one-core decode GEMV ran ~15 % slower from DRAM on
// a Zen 5 VM (kernel_design_3bit.md §4.3), so the mask is used only at the tensor's end.
inline void group_factors(const Weight& W, const Levels& L, int64_t i, __mmask16 k, __m512& sv, __m512& zo) {
    const bool full = i + 16 <= W.N * W.G;
    if (W.sf)
        sv = full ? _mm512_loadu_ps(W.sf + i) : _mm512_maskz_loadu_ps(k, W.sf + i);
    else
        sv = _mm512_cvtph_ps(full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W.s + i))
                                  : _mm256_maskz_loadu_epi16(k, W.s + i));
    sv = _mm512_mul_ps(sv, _mm512_set1_ps(L.inv_alpha));
    zo = _mm512_set1_ps(L.off);
    if (W.z) {
        const __m128i z = full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(W.z + i)) : _mm_maskz_loadu_epi8(k, W.z + i);
        zo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z)), _mm512_set1_ps(L.alpha), zo);
    }
}

// Stride of a token's factors in row_factors' buffers: Q8_MAX_G + 16 lanes, so that every store is a full vector.
constexpr int64_t ROW_FS = Q8_MAX_G + 16;

// Per-row group factors f[m][g] = s_g / alpha * dx[m][g] (vectorized over groups) and the terms of the zero-point /
// level-offset correction c[m][g] = f[m][g] * (off + alpha * z_g) * sum_q[m][g] (row1 starts its accumulator at
// -sum_g c[m][g], so no scalar reduction is needed).
template <int M>
inline void row_factors(const Weight& W, const Levels& L, const TokX& X, int64_t n, float* f, float* c) {
    for (int64_t g = 0; g < W.G; g += 16) {
        const int rem = W.G - g < 16 ? (int)(W.G - g) : 16;
        const __mmask16 k = (__mmask16)((1u << rem) - 1u);
        __m512 s, zo;
        group_factors(W, L, n * W.G + g, k, s, zo);
        for (int m = 0; m < M; ++m) {
            const __m512 fm = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, X.dx[m] + g));
            _mm512_storeu_ps(f + m * ROW_FS + g, fm);  // ROW_FS: 16 lanes of padding per token
            _mm512_storeu_ps(c + m * ROW_FS + g, _mm512_mul_ps(_mm512_mul_ps(fm, zo), _mm512_maskz_loadu_ps(k, X.sum[m] + g)));
        }
    }
}

// -(c[0] + ... + c[G-1]) as 16 lanes whose sum is the negated correction (the start of a row's accumulator); the
// buffers have 16 readable lanes past any c + G, so the tail is a full load masked in registers (masked loads
// from memory are slow on AMD Zen, see group_factors).
inline __m512 neg_corr(const float* c, int64_t G) {
    __m512 t = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g += 16) {
        const int rem = G - g < 16 ? (int)(G - g) : 16;
        t = _mm512_mask_sub_ps(t, (__mmask16)((1u << rem) - 1u), t, _mm512_loadu_ps(c + g));
    }
    return t;
}

// vpdpbusd through inline asm: with the intrinsic GCC 12 fails to tie the destination register (extra moves, and in
// the GEMM micro-kernel a stack store of every accumulator on each k-step: measured 1.5 vs 2.8 G vpdpbusd/s).
#define K3_DPBUSD(acc, w, x) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x))

// One row x M tokens. Rows are processed one at a time so that each thread reads ONE sequential stream (the
// hardware prefetchers follow it; measured on a Zen 4 VM, K = 2048, 1 thread from DRAM: 4 interleaved rows
// 8 GB/s, 1 row 12 GB/s), plus a software prefetch >= 4 KB ahead (prefetch_bytes). For M = 1 two accumulators alternate along K
// so that the vpdpbusd latency (4-5 cycles) does not bound the loop.
template <int M, int LV, int BPG>
inline void row1(const Weight& W, int64_t n, const float* f, const float* c, int64_t fs, const TokX& X, __m512* tot,
                 const Unpack& U) {
    const int64_t bpg = BPG ? BPG : W.bpg;  // blocks per group (compile-time for group sizes 64 / 128)
    const uint8_t* p = W.w + n * W.Kb * BLOCK_BYTES;
    const int64_t pf = prefetch_bytes(W.Kb * BLOCK_BYTES);
    const int8_t* x0 = X.q[0];
    const int8_t* x1 = M > 1 ? X.q[1] : x0;
    const int8_t* x2 = M > 2 ? X.q[2] : x0;
    const int8_t* x3 = M > 3 ? X.q[3] : x0;
    // f[m * fs + g]: group factors of token m; c[m * fs + g]: its correction terms
    __m512 t0 = neg_corr(c, W.G), t1 = t0, t2 = t0, t3 = t0;
    if (M > 1) t1 = neg_corr(c + fs, W.G);
    if (M > 2) t2 = neg_corr(c + 2 * fs, W.G);
    if (M > 3) t3 = neg_corr(c + 3 * fs, W.G);
    for (int64_t g = 0; g < W.G; ++g) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, c0 = a0;
        int64_t b = g * bpg;
        const int64_t b1 = b + bpg;
        if (b & 1) {  // odd block: upper half of super-block b - 1 (activations shifted, lower half masked)
            const __m512i lv = U.levels_lv<LV>(p + (b - 1) * BLOCK_BYTES);
            __m512i xv = _mm512_maskz_loadu_epi8(HIGH_HALF, x0 + (b - 1) * BLOCK);
            K3_DPBUSD(a0, lv, xv);
            if (M > 1) {
                xv = _mm512_maskz_loadu_epi8(HIGH_HALF, x1 + (b - 1) * BLOCK);
                K3_DPBUSD(a1, lv, xv);
            }
            if (M > 2) {
                xv = _mm512_maskz_loadu_epi8(HIGH_HALF, x2 + (b - 1) * BLOCK);
                K3_DPBUSD(a2, lv, xv);
            }
            if (M > 3) {
                xv = _mm512_maskz_loadu_epi8(HIGH_HALF, x3 + (b - 1) * BLOCK);
                K3_DPBUSD(a3, lv, xv);
            }
            ++b;
        }
        if (M == 1)
            for (; b + 4 <= b1; b += 4) {
                if (K3_PF_BYTES) _mm_prefetch((const char*)(p + b * BLOCK_BYTES + pf), K3_PF_HINT);
                const __m512i lv = U.levels_lv<LV>(p + b * BLOCK_BYTES), lw = U.levels_lv<LV>(p + (b + 2) * BLOCK_BYTES);
                const __m512i xa = _mm512_loadu_si512(x0 + b * BLOCK), xb = _mm512_loadu_si512(x0 + (b + 2) * BLOCK);
                K3_DPBUSD(a0, lv, xa);
                K3_DPBUSD(c0, lw, xb);
            }
        for (; b + 2 <= b1; b += 2) {
            if (K3_PF_BYTES) _mm_prefetch((const char*)(p + b * BLOCK_BYTES + pf), K3_PF_HINT);
            const __m512i lv = U.levels_lv<LV>(p + b * BLOCK_BYTES);
            __m512i xv = _mm512_loadu_si512(x0 + b * BLOCK);
            K3_DPBUSD(a0, lv, xv);
            if (M > 1) {
                xv = _mm512_loadu_si512(x1 + b * BLOCK);
                K3_DPBUSD(a1, lv, xv);
            }
            if (M > 2) {
                xv = _mm512_loadu_si512(x2 + b * BLOCK);
                K3_DPBUSD(a2, lv, xv);
            }
            if (M > 3) {
                xv = _mm512_loadu_si512(x3 + b * BLOCK);
                K3_DPBUSD(a3, lv, xv);
            }
        }
        if (b < b1) {  // one even block left (group size 32, 96, ...): lower half of its super-block
            const __m512i lv = U.levels_lv<LV>(p + b * BLOCK_BYTES);
            const __mmask64 k = LOW_HALF;
            __m512i xv = _mm512_maskz_loadu_epi8(k, x0 + b * BLOCK);
            K3_DPBUSD(a0, lv, xv);
            if (M > 1) {
                xv = _mm512_maskz_loadu_epi8(k, x1 + b * BLOCK);
                K3_DPBUSD(a1, lv, xv);
            }
            if (M > 2) {
                xv = _mm512_maskz_loadu_epi8(k, x2 + b * BLOCK);
                K3_DPBUSD(a2, lv, xv);
            }
            if (M > 3) {
                xv = _mm512_maskz_loadu_epi8(k, x3 + b * BLOCK);
                K3_DPBUSD(a3, lv, xv);
            }
        }
        if (M == 1) a0 = _mm512_add_epi32(a0, c0);
        t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(f[g]), t0);
        if (M > 1) t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(f[fs + g]), t1);
        if (M > 2) t2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a2), _mm512_set1_ps(f[2 * fs + g]), t2);
        if (M > 3) t3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a3), _mm512_set1_ps(f[3 * fs + g]), t3);
    }
    tot[0] = t0;
    if (M > 1) tot[1] = t1;
    if (M > 2) tot[2] = t2;
    if (M > 3) tot[3] = t3;
}

// horizontal sums of 4 vectors -> out[0..3]
inline void reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3, float* out) {
    const __m512 s0 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xEE));
    const __m512 s1 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xEE));
    // lane l of s0: [v0 lane l + v0 lane l+2] for l < 2, [v1 ...] for l >= 2
    __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x88), _mm512_shuffle_f32x4(s0, s1, 0xDD));
    u = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E));
    u = _mm512_add_ps(u, _mm512_permute_ps(u, 0xB1));
    alignas(64) float t[16];
    _mm512_store_ps(t, u);
    out[0] = t[0];
    out[1] = t[4];
    out[2] = t[8];
    out[3] = t[12];
}

// R consecutive rows (one after the other in memory), factors computed before, horizontal sums batched by 4
// Activation factors replicated over 4 rows' groups (dx[m][i % G], sum[m][i % G], i < 4G), once per GEMV call:
// lets the factors of 4 consecutive rows (scales contiguous in memory) be computed in one vector pass when
// 4G <= 256 (down projections: G = 6 at K = 768 / g128, where per-row factor passes cost ~25 %).
constexpr int64_t REP = 256;
struct FactorRep {
    bool on;
    alignas(64) float dx[GEMV_MAX_M][REP];
    alignas(64) float sum[GEMV_MAX_M][REP];
};

template <int M>
inline void make_rep(const Weight& W, const TokX& X, FactorRep& fr) {
    fr.on = 4 * W.G <= REP;
    if (!fr.on) return;
    for (int m = 0; m < M; ++m)
        for (int64_t i = 0; i < 4 * W.G; ++i) {
            fr.dx[m][i] = X.dx[m][i % W.G];
            fr.sum[m][i] = X.sum[m][i % W.G];
        }
}

// f[m][r*G + g] and the correction terms c[m][r*G + g] (see row_factors) for rows n..n+3 in one pass over their
// 4G contiguous scales; token m's factors start at m * REP (full-vector stores: 4G <= REP - 16 when fr.on)
template <int M>
inline void block_factors(const Weight& W, const Levels& L, const FactorRep& fr, int64_t n, float* f, float* c) {
    const int64_t len = 4 * W.G;
    for (int64_t i = 0; i < len; i += 16) {
        const int rem = len - i < 16 ? (int)(len - i) : 16;
        const __mmask16 k = (__mmask16)((1u << rem) - 1u);
        __m512 sv, zo;
        group_factors(W, L, n * W.G + i, k, sv, zo);
        for (int m = 0; m < M; ++m) {
            const __m512 fm = _mm512_mul_ps(sv, _mm512_load_ps(fr.dx[m] + i));
            _mm512_storeu_ps(f + m * REP + i, fm);
            _mm512_storeu_ps(c + m * REP + i, _mm512_mul_ps(_mm512_mul_ps(fm, zo), _mm512_load_ps(fr.sum[m] + i)));
        }
    }
}

// R consecutive rows (one after the other in memory), factors computed before, horizontal sums batched by 4
template <int M, int R, int LV, int BPG>
inline void row_block(const Weight& W, int64_t n, const Levels& L, const TokX& X, const FactorRep& fr, float* y,
                      int64_t ldy, const Unpack& U) {
    __m512 tot[R][M];
    if (R == 4 && fr.on) {
        alignas(64) float f[M * REP + 16], c[M * REP + 16];  // [M][REP]: rows' 4G factors, then padding
        block_factors<M>(W, L, fr, n, f, c);
        for (int r = 0; r < R; ++r) row1<M, LV, BPG>(W, n + r, f + r * W.G, c + r * W.G, REP, X, tot[r], U);
    } else {
        alignas(64) float f[M * ROW_FS], c[M * ROW_FS];  // [M][G + padding], reused row by row
        for (int r = 0; r < R; ++r) {
            row_factors<M>(W, L, X, n + r, f, c);
            row1<M, LV, BPG>(W, n + r, f, c, ROW_FS, X, tot[r], U);
        }
    }
    for (int m = 0; m < M; ++m) {
        if (R == 4) {
            float s[4];
            reduce4(tot[0][m], tot[R > 1 ? 1 : 0][m], tot[R > 2 ? 2 : 0][m], tot[R > 3 ? 3 : 0][m], s);
            for (int r = 0; r < R; ++r) y[m * ldy + r] = s[r];
        } else {
            for (int r = 0; r < R; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(tot[r][m]);
        }
    }
}

// rows [n0, n1) of Wa (-> ya) and, when Wb is set, of Wb (-> yb; fused gate + up: one task, row n of both)
template <int M, int LV>
void gemv_m(const Weight& Wa, const Weight* Wb, const Levels& L, const TokX& X, int64_t n0, int64_t n1, float* ya,
            float* yb, int64_t ldy, const Unpack& U) {
    FactorRep fr;
    make_rep<M>(Wa, X, fr);
    for (int w = 0; w < 2; ++w) {
        const Weight* W = w ? Wb : &Wa;
        if (!W) continue;
        float* y = w ? yb : ya;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            prefetch_factors(*W, n + 8, n1);
            if (W->bpg == 4)
                row_block<M, 4, LV, 4>(*W, n, L, X, fr, y + (n - n0), ldy, U);
            else if (W->bpg == 2)
                row_block<M, 4, LV, 2>(*W, n, L, X, fr, y + (n - n0), ldy, U);
            else
                row_block<M, 4, LV, 0>(*W, n, L, X, fr, y + (n - n0), ldy, U);
        }
        for (; n < n1; ++n) row_block<M, 1, LV, 0>(*W, n, L, X, fr, y + (n - n0), ldy, U);
    }
}

template <int LV>
void gemv_any(const Weight& Wa, const Weight* Wb, const Levels& L, const TokX& X, int M, int64_t n0, int64_t n1,
              float* ya, float* yb, int64_t ldy) {
    const Unpack U(L);
    switch (M) {
    case 1: gemv_m<1, LV>(Wa, Wb, L, X, n0, n1, ya, yb, ldy, U); break;
    case 2: gemv_m<2, LV>(Wa, Wb, L, X, n0, n1, ya, yb, ldy, U); break;
    case 3: gemv_m<3, LV>(Wa, Wb, L, X, n0, n1, ya, yb, ldy, U); break;
    default: gemv_m<4, LV>(Wa, Wb, L, X, n0, n1, ya, yb, ldy, U); break;
    }
}

void gemv_pair(const Weight& Wa, const Weight* Wb, const Levels& L, const TokX& X, int M, int64_t n0, int64_t n1,
               float* ya, float* yb, int64_t ldy) {
    switch ((L.ident ? 0 : 1) | (use_gfni() ? 2 : 0)) {
    case 0: gemv_any<0>(Wa, Wb, L, X, M, n0, n1, ya, yb, ldy); break;
    case 1: gemv_any<1>(Wa, Wb, L, X, M, n0, n1, ya, yb, ldy); break;
    case 2: gemv_any<2>(Wa, Wb, L, X, M, n0, n1, ya, yb, ldy); break;
    default: gemv_any<3>(Wa, Wb, L, X, M, n0, n1, ya, yb, ldy); break;
    }
}

// ------------------------------------------------------------------------------------------------------------
// prefill GEMM
// ------------------------------------------------------------------------------------------------------------
constexpr int MT = 6;         // tokens per micro-tile
constexpr int NBMAX = 4;      // 16-row blocks per tile (a partial tile is zero-padded)
constexpr int64_t TR = 64;    // rows per tile

// 16x16 dword transpose: r[i] dword j -> r[j] dword i
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // r[4i + d], 128-bit lane l: rows 4i..4i+3 of column 4l + d
    for (int d = 0; d < 4; ++d) {
        const __m512i a = _mm512_shuffle_i32x4(r[d], r[4 + d], 0x88), b = _mm512_shuffle_i32x4(r[d], r[4 + d], 0xDD),
                      c = _mm512_shuffle_i32x4(r[8 + d], r[12 + d], 0x88),
                      e = _mm512_shuffle_i32x4(r[8 + d], r[12 + d], 0xDD);
        t[d] = _mm512_shuffle_i32x4(a, c, 0x88);
        t[8 + d] = _mm512_shuffle_i32x4(a, c, 0xDD);
        t[4 + d] = _mm512_shuffle_i32x4(b, e, 0x88);
        t[12 + d] = _mm512_shuffle_i32x4(b, e, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Rows [rt, rt + nrows) (nrows <= 64) -> wb[k-step j][nb][16 rows][4 bytes] for the whole row (Kb*8 k-steps):
// dword (j, row) = levels of codes 4j..4j+3. Rows past nrows are zero.
template <bool LUT>
void unpack_tile(const Weight& W, const Unpack& U, int64_t rt, int64_t nrows, int NB, uint8_t* wb) {
    const int64_t rb = W.Kb * BLOCK_BYTES;
    for (int nb = 0; nb < NB; ++nb) {
        const int64_t r0 = rt + nb * 16;
        const int rv = nrows - nb * 16 < 16 ? (int)(nrows - nb * 16) : 16;
        for (int64_t b = 0; b < W.Kb; b += 2) {  // Kb is even (k3 v2)
            __m512i L[16];
            for (int r = 0; r < 16; ++r)
                L[r] = r < rv ? U.levels<LUT>(W.w + (r0 + r) * rb + b * BLOCK_BYTES) : _mm512_setzero_si512();
            transpose16(L);
            const int nj = 16;
            uint8_t* dst = wb + (b * 8 * NB + nb) * 64;
            for (int j = 0; j < nj; ++j) _mm512_store_si512(dst + j * NB * 64, L[j]);
        }
    }
}

// One 64-row tile of a GEMM call (VNNI and AMX): codes unpacked into the tile layout, and per (group, row) the factors
// sv = s / alpha and zt = off + alpha * z (rows past nrows: 0 / off).
inline void prepare_tile(const Weight& W, const Levels& L, const Unpack& U, int64_t rt, int64_t nrows, uint8_t* tile,
                         float* sv, float* zt) {
    if (L.ident)
        unpack_tile<false>(W, U, rt, nrows, NBMAX, tile);
    else
        unpack_tile<true>(W, U, rt, nrows, NBMAX, tile);
    tile_factors(W, L, rt, nrows, TR, sv, zt);
}

struct TileCtx {
    const uint8_t* wb;   // unpacked tile [Kb*8][NB][64]
    int64_t ksg, G;      // k-steps per group, groups
    const float* sv;     // [G][64] s / alpha per row
    const float* zt;     // [G][64] off + alpha * z per row
};

// C[m][0..NB*16) = sum over groups for MTt tokens (token m: int8 row xq[m], dx / sum rows dx[m], sm[m])
// Named accumulators a<m><nb> (see K3_DPBUSD).
#define K3_DP(m)                                                                   \
    if (MTt > m) {                                                                 \
        int32_t xi;                                                                \
        std::memcpy(&xi, xp[m] + 4 * j, 4);                                        \
        const __m512i xb = _mm512_set1_epi32(xi);                                  \
        K3_DPBUSD(a##m##0, w0, xb);                                            \
        K3_DPBUSD(a##m##1, w1, xb);                                            \
        K3_DPBUSD(a##m##2, w2, xb);                                            \
        K3_DPBUSD(a##m##3, w3, xb);                                            \
    }
#define K3_FLUSH1(m, nb)                                                                                          \
    {                                                                                                             \
        const __m512 a = _mm512_fnmadd_ps(_mm512_load_ps(zt + nb * 16), _mm512_set1_ps(sm[m][g]),                \
                                          _mm512_cvtepi32_ps(a##m##nb));                                          \
        const __m512 f = _mm512_mul_ps(_mm512_load_ps(sv + nb * 16), _mm512_set1_ps(dx[m][g]));                  \
        float* cp = C + m * 64 + nb * 16;                                                                         \
        _mm512_store_ps(cp, _mm512_fmadd_ps(a, f, _mm512_load_ps(cp)));                                          \
    }
#define K3_FLUSH(m)         \
    if (MTt > m) {          \
        K3_FLUSH1(m, 0)     \
        K3_FLUSH1(m, 1)     \
        K3_FLUSH1(m, 2)     \
        K3_FLUSH1(m, 3)     \
    }
#define K3_ZERO(m) __m512i a##m##0 = z0i, a##m##1 = z0i, a##m##2 = z0i, a##m##3 = z0i;

// C[m][0..64) for MTt <= 6 tokens over all groups; the tile always has 4 row blocks (rows past the end are zero).
template <int MTt>
void micro(const TileCtx& c, const int8_t* const* xq, const float* const* dx, const float* const* sm, float* C) {
    // f32 totals live in C (L1): the 24 int32 accumulators + 4 weight vectors use the register file
    for (int m = 0; m < MTt; ++m)
        for (int nb = 0; nb < NBMAX; ++nb) _mm512_store_ps(C + m * 64 + nb * 16, _mm512_setzero_ps());
    for (int64_t g = 0; g < c.G; ++g) {
        const __m512i z0i = _mm512_setzero_si512();
        K3_ZERO(0) K3_ZERO(1) K3_ZERO(2) K3_ZERO(3) K3_ZERO(4) K3_ZERO(5)
        const uint8_t* w = c.wb + g * c.ksg * NBMAX * 64;
        const int8_t* xp[MT];
        for (int m = 0; m < MTt; ++m) xp[m] = xq[m] + g * c.ksg * 4;
        for (int64_t j = 0; j < c.ksg; ++j, w += NBMAX * 64) {
            const __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 64), w2 = _mm512_load_si512(w + 128),
                          w3 = _mm512_load_si512(w + 192);
            K3_DP(0) K3_DP(1) K3_DP(2) K3_DP(3) K3_DP(4) K3_DP(5)
        }
        // factors read from memory inside the flush: 8 more live vectors here would make GCC spill accumulators
        // inside the k loop
        const float* sv = c.sv + g * 64;
        const float* zt = c.zt + g * 64;
        K3_FLUSH(0) K3_FLUSH(1) K3_FLUSH(2) K3_FLUSH(3) K3_FLUSH(4) K3_FLUSH(5)
    }
}
#undef K3_DP
#undef K3_FLUSH1
#undef K3_FLUSH
#undef K3_ZERO

struct Scratch {  // 64-byte aligned thread-local buffer
    uint8_t* p = nullptr;
    int64_t cap = 0;
    uint8_t* get(int64_t n) {
        if (cap < n) {
            _mm_free(p);
            p = static_cast<uint8_t*>(_mm_malloc((size_t)n, 64));
            cap = n;
        }
        return p;
    }
    ~Scratch() { _mm_free(p); }
};

typedef void (*MicroFn)(const TileCtx&, const int8_t* const*, const float* const*, const float* const*, float*);

MicroFn micro_fn(int mt) {
    switch (mt) {
    case 1: return micro<1>;
    case 2: return micro<2>;
    case 3: return micro<3>;
    case 4: return micro<4>;
    case 5: return micro<5>;
    default: return micro<6>;
    }
}

}  // namespace

void avx512_vnni_quantize(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs, int8_t* q,
                          float* dx, float* sum) {
    const int64_t G = (K + gs - 1) / gs;
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * ldx;
        int8_t* qr = q + m * Kp;
        for (int64_t g = 0; g < G; ++g) {
            const int64_t k0 = g * gs, k1 = k0 + gs < K ? k0 + gs : K;
            __m512 amax = _mm512_setzero_ps();
            for (int64_t k = k0; k < k1; k += 16) {
                const __mmask16 msk = k1 - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k1 - k)) - 1u);
                amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(msk, xr + k)));
            }
            const float a = _mm512_reduce_max_ps(amax);
            const float d = a > 0.f ? a / 127.f : 1.f;
            const __m512 inv = _mm512_set1_ps(1.f / d);
            __m512i s = _mm512_setzero_si512();
            for (int64_t k = k0; k < k1; k += 16) {
                const __mmask16 msk = k1 - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k1 - k)) - 1u);
                const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(msk, xr + k), inv));
                s = _mm512_add_epi32(s, qi);
                _mm_mask_storeu_epi8(qr + k, msk, _mm512_cvtsepi32_epi8(qi));
            }
            dx[m * G + g] = d;
            sum[m * G + g] = (float)_mm512_reduce_add_epi32(s);
        }
        if (Kp > K) std::memset(qr + K, 0, Kp - K);
    }
}

void avx512_vnni_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                         int64_t n1, float* y, int64_t ldy) {
    const Levels L = levels_of(T);
    gemv_pair(W, nullptr, L, tok_x(X, tok, M), M, n0, n1, y, nullptr, ldy);
}

void avx512_vnni_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                          const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy) {
    const Levels La = levels_of(Ta), Lb = levels_of(Tb);
    const TokX tx = tok_x(X, tok, M);
    if (!same_levels(La, Lb) || Wa.Kb != Wb.Kb || Wa.G != Wb.G) {
        gemv_pair(Wa, nullptr, La, tx, M, n0, n1, ya, nullptr, ldy);
        gemv_pair(Wb, nullptr, Lb, tx, M, n0, n1, yb, nullptr, ldy);
        return;
    }
    gemv_pair(Wa, &Wb, La, tx, M, n0, n1, ya, yb, ldy);
}

void avx512_vnni_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                         int64_t n1, float* y, int64_t ldy) {
    const Levels L = levels_of(T);
    const Unpack U(L);
    const int64_t ksteps = W.Kb * 8, ksg = W.bpg * 8;
    // thread-local buffers: unpacked tile (64 rows x Kp bytes), per-row group factors, one output micro-tile
    thread_local Scratch scratch;
    const int64_t need = ksteps * NBMAX * 64 + 2 * W.G * TR * 4 + MT * TR * 4 + 64;
    uint8_t* wb = scratch.get(need);
    uint8_t* tile = wb;
    float* sv = reinterpret_cast<float*>(wb + ksteps * NBMAX * 64);
    float* zt = sv + W.G * TR;
    float* C = zt + W.G * TR;
    for (int64_t rt = n0; rt < n1; rt += TR) {
        const int64_t nrows = n1 - rt < TR ? n1 - rt : TR;
        prepare_tile(W, L, U, rt, nrows, tile, sv, zt);
        const TileCtx c{tile, ksg, W.G, sv, zt};
        for (int64_t m0 = 0; m0 < M; m0 += MT) {
            const int mt = M - m0 < MT ? (int)(M - m0) : MT;
            const int8_t* xq[MT];
            const float* dxp[MT];
            const float* smp[MT];
            for (int m = 0; m < mt; ++m) {
                const int64_t row = tok ? tok[m0 + m] : m0 + m;
                xq[m] = X.q + row * X.ldq;
                dxp[m] = X.dx + row * X.G;
                smp[m] = X.sum + row * X.G;
            }
            micro_fn(mt)(c, xq, dxp, smp, C);
            for (int m = 0; m < mt; ++m) {
                float* yr = y + (m0 + m) * ldy + (rt - n0);
                for (int64_t r = 0; r < nrows; r += 16) {
                    const int rem = nrows - r < 16 ? (int)(nrows - r) : 16;
                    _mm512_mask_storeu_ps(yr + r, (__mmask16)((1u << rem) - 1u), _mm512_load_ps(C + m * 64 + r));
                }
            }
        }
    }
}


// ------------------------------------------------------------------------------------------------------------
// AMX-INT8 prefill GEMM (opt-in: NNCF_MOE3_ISA=amx; NOT validated on AMX hardware yet, see kernel_design_3bit.md §4)
// ------------------------------------------------------------------------------------------------------------
// Same unpacked 64-row tile as the VNNI GEMM: its [k-step][4 row blocks][64 B] layout is the AMX B layout
// (B tile row = one k-step = 16 weight rows x 4 u8 levels; stride 256 B between k-steps). A tiles = 16 tokens x
// 64 s8 activations (tokens gathered into a contiguous zero-padded buffer). TDPBSUD (signed A x unsigned B) into
// 4 int32 C tiles = 32 tokens x 32 rows; per weight group the C tiles are stored and flushed with AVX-512 exactly
// like the VNNI micro-kernel (C[m][rows] += s*dx/alpha * (acc - (off + alpha*z) * sum_q)).
// Tiles: tmm0..3 C, tmm4..5 A, tmm6..7 B. Needs group size and Kb*32 multiples of 64 (else the VNNI GEMM runs).
// The tile operations are a policy: AmxHw (the instructions) or AmxEmu (a scalar emulation of the same
// instructions, NNCF_MOE3_ISA=amx_emulate), so that the tiling / layout logic is tested on CPUs without AMX.
namespace {
struct alignas(64) TileConfig {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// Tile roles: tmm0..3 C (c = 2 * token half + row-block half), tmm4..5 A (token halves), tmm6..7 B (row blocks).
// (GCC's tile intrinsics stringify the register number: the indices must be literals.)
#ifdef NNCF_MOE3_WITH_AMX
struct AmxHw {
    static void config(const TileConfig* c) { _tile_loadconfig(c); }
    static void release() { _tile_release(); }
    static void zero_c() {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    static void load_ab(const void* a0, const void* a1, int64_t lda, const void* b0, const void* b1, int64_t ldb) {
        _tile_loadd(4, a0, lda);
        _tile_loadd(5, a1, lda);
        _tile_loadd(6, b0, ldb);
        _tile_loadd(7, b1, ldb);
    }
    static void dp4() {
        _tile_dpbsud(0, 4, 6);
        _tile_dpbsud(1, 4, 7);
        _tile_dpbsud(2, 5, 6);
        _tile_dpbsud(3, 5, 7);
    }
    static void store_c(int32_t* c) {  // 4 tiles of 16 x 16 int32, tile t at c + 256 t
        _tile_stored(0, c, 64);
        _tile_stored(1, c + 256, 64);
        _tile_stored(2, c + 512, 64);
        _tile_stored(3, c + 768, 64);
    }
};
#endif

struct AmxEmu {  // TDPBSUD: C[m][n] += sum_{k < colsb(A)/4} sum_{i < 4} int8(A[m][4k+i]) * uint8(B[k][4n+i])
    struct State {
        alignas(64) uint8_t t[8][16 * 64];
        TileConfig cfg;
    };
    static State& st() {
        thread_local State s;
        return s;
    }
    static void config(const TileConfig* c) { st().cfg = *c; }
    static void release() {}
    static void load(int t, const void* p, int64_t stride) {
        for (int r = 0; r < st().cfg.rows[t]; ++r)
            std::memcpy(st().t[t] + r * 64, static_cast<const uint8_t*>(p) + r * stride, st().cfg.colsb[t]);
    }
    static void dp(int c, int a, int b) {
        State& s = st();
        for (int m = 0; m < s.cfg.rows[a]; ++m)
            for (int n = 0; n < s.cfg.colsb[b] / 4; ++n) {
                int32_t acc;
                std::memcpy(&acc, s.t[c] + m * 64 + 4 * n, 4);
                for (int k = 0; k < s.cfg.colsb[a] / 4; ++k)
                    for (int i = 0; i < 4; ++i)
                        acc += (int32_t)(int8_t)s.t[a][m * 64 + 4 * k + i] * (int32_t)s.t[b][k * 64 + 4 * n + i];
                std::memcpy(s.t[c] + m * 64 + 4 * n, &acc, 4);
            }
    }
    static void zero_c() {
        for (int t = 0; t < 4; ++t) std::memset(st().t[t], 0, sizeof(st().t[t]));
    }
    static void load_ab(const void* a0, const void* a1, int64_t lda, const void* b0, const void* b1, int64_t ldb) {
        load(4, a0, lda);
        load(5, a1, lda);
        load(6, b0, ldb);
        load(7, b1, ldb);
    }
    static void dp4() {
        dp(0, 4, 6);
        dp(1, 4, 7);
        dp(2, 5, 6);
        dp(3, 5, 7);
    }
    static void store_c(int32_t* c) {
        for (int t = 0; t < 4; ++t)
            for (int r = 0; r < st().cfg.rows[t]; ++r) std::memcpy(c + 256 * t + 16 * r, st().t[t] + r * 64, 64);
    }
};

template <class TO>
void amx_gemm(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0, int64_t n1,
              float* y, int64_t ldy) {
    const Levels L = levels_of(T);
    const Unpack U(L);
    const int64_t ksteps = W.Kb * 8, Kp = W.Kb * BLOCK, chunks_per_group = W.bpg / 2;
    constexpr int64_t MCH = 256;  // tokens gathered per chunk
    const int64_t mch = M < MCH ? (M + 31) / 32 * 32 : MCH;
    thread_local Scratch scratch;
    const int64_t need = ksteps * NBMAX * 64 + 2 * W.G * TR * 4 + (mch * Kp + 63) / 64 * 64 + 4 * 256 * 4 +
                         32 * 32 * 4 + 256;
    uint8_t* base = scratch.get(need);
    uint8_t* tile = base;
    float* sv = reinterpret_cast<float*>(tile + ksteps * NBMAX * 64);
    float* zt = sv + W.G * TR;
    int8_t* xa = reinterpret_cast<int8_t*>(zt + W.G * TR);
    int32_t* cb = reinterpret_cast<int32_t*>(xa + (mch * Kp + 63) / 64 * 64);  // 4 C tiles [16][16]
    float* Ct = reinterpret_cast<float*>(cb + 4 * 256);                     // f32 totals [32 tokens][32 rows]
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    TO::config(&cfg);
    for (int64_t rt = n0; rt < n1; rt += TR) {
        const int64_t nrows = n1 - rt < TR ? n1 - rt : TR;
        prepare_tile(W, L, U, rt, nrows, tile, sv, zt);
        for (int64_t mc0 = 0; mc0 < M; mc0 += MCH) {
            const int64_t mc = M - mc0 < MCH ? M - mc0 : MCH, mcp = (mc + 31) / 32 * 32;
            for (int64_t m = 0; m < mcp; ++m) {  // gather (and zero-pad to 32 tokens) the int8 activations
                if (m < mc)
                    std::memcpy(xa + m * Kp, X.q + (tok ? tok[mc0 + m] : mc0 + m) * X.ldq, Kp);
                else
                    std::memset(xa + m * Kp, 0, Kp);
            }
            for (int64_t tb = 0; tb < mcp; tb += 32) {
                const int64_t mm = mc - tb < 32 ? mc - tb : 32;
                for (int h = 0; h < 2; ++h) {  // row blocks 2h, 2h+1 (32 rows)
                    if (h * 32 >= nrows) break;
                    std::memset(Ct, 0, 32 * 32 * 4);
                    for (int64_t g = 0; g < W.G; ++g) {
                        TO::zero_c();
                        for (int64_t kc = 0; kc < chunks_per_group; ++kc) {
                            const int64_t ks0 = (g * chunks_per_group + kc) * 16;  // first k-step of the chunk
                            TO::load_ab(xa + tb * Kp + ks0 * 4, xa + (tb + 16) * Kp + ks0 * 4, Kp,
                                        tile + (ks0 * NBMAX + 2 * h) * 64, tile + (ks0 * NBMAX + 2 * h + 1) * 64,
                                        NBMAX * 64);
                            TO::dp4();
                        }
                        TO::store_c(cb);
                        const __m512 s0 = _mm512_load_ps(sv + g * TR + 32 * h),
                                     s1 = _mm512_load_ps(sv + g * TR + 32 * h + 16),
                                     z0 = _mm512_load_ps(zt + g * TR + 32 * h),
                                     z1 = _mm512_load_ps(zt + g * TR + 32 * h + 16);
                        for (int64_t m = 0; m < mm; ++m) {
                            const int64_t row = tok ? tok[mc0 + tb + m] : mc0 + tb + m;
                            const __m512 dxv = _mm512_set1_ps(X.dx[row * X.G + g]),
                                         smv = _mm512_set1_ps(X.sum[row * X.G + g]);
                            // C tile 2 * (m / 16) (row block 2h) row m % 16; row block 2h+1 is the next tile
                            const int32_t* c0 = cb + (m < 16 ? 0 : 512) + (m & 15) * 16;
                            const __m512 a0 = _mm512_fnmadd_ps(z0, smv, _mm512_cvtepi32_ps(_mm512_load_si512(c0)));
                            const __m512 a1 =
                                _mm512_fnmadd_ps(z1, smv, _mm512_cvtepi32_ps(_mm512_load_si512(c0 + 256)));
                            float* ct = Ct + m * 32;
                            _mm512_store_ps(ct, _mm512_fmadd_ps(a0, _mm512_mul_ps(s0, dxv), _mm512_load_ps(ct)));
                            _mm512_store_ps(ct + 16,
                                            _mm512_fmadd_ps(a1, _mm512_mul_ps(s1, dxv), _mm512_load_ps(ct + 16)));
                        }
                    }
                    const int64_t r0 = 32 * h, rv = nrows - r0 < 32 ? nrows - r0 : 32;
                    for (int64_t m = 0; m < mm; ++m) {
                        float* yr = y + (mc0 + tb + m) * ldy + (rt - n0) + r0;
                        for (int64_t r = 0; r < rv; r += 16) {
                            const int rem = rv - r < 16 ? (int)(rv - r) : 16;
                            _mm512_mask_storeu_ps(yr + r, (__mmask16)((1u << rem) - 1u),
                                                  _mm512_load_ps(Ct + m * 32 + r));
                        }
                    }
                }
            }
        }
    }
    TO::release();
}
}  // namespace

void avx512_amx_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                        int64_t n1, float* y, int64_t ldy) {
#ifdef NNCF_MOE3_WITH_AMX
    if (W.bpg % 2 == 0 && W.Kb % 2 == 0) {
        amx_gemm<AmxHw>(W, T, X, tok, M, n0, n1, y, ldy);
        return;
    }
#endif
    avx512_vnni_gemm_q8(W, T, X, tok, M, n0, n1, y, ldy);
}

void avx512_amx_emu_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M,
                            int64_t n0, int64_t n1, float* y, int64_t ldy) {
    if (W.bpg % 2 == 0 && W.Kb % 2 == 0)
        amx_gemm<AmxEmu>(W, T, X, tok, M, n0, n1, y, ldy);
    else
        avx512_vnni_gemm_q8(W, T, X, tok, M, n0, n1, y, ldy);
}

}  // namespace k3
}  // namespace nncf_moe3
