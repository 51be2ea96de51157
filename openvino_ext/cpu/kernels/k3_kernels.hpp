// k3 weight kernels: one function table per ISA (scalar / AVX2 / AVX-512), chosen at runtime.
// Layout and dequantization contract: openvino_ext/reference.py (w = S * (C[q] - Z); k3 version 2: 24-byte
// super-blocks of 64 codes = [16 B low-2-bit plane: value v at byte v % 16, bits 2 (v / 16)] [8 B high-bit plane,
// u64 LE, value v at bit v], addressed as pairs of 32-value "blocks" of 12 bytes; Kb is always even).
#pragma once
#include <cstddef>
#include <cstdint>

namespace nncf_moe3 {
namespace k3 {

constexpr int BLOCK = 32;
constexpr int BLOCK_BYTES = 12;
constexpr int SUPER_BYTES = 24;  // 64 values
constexpr int64_t K3_VERSION = 2;  // the ops' k3_version attribute (IRs transformed with another layout are refused)
constexpr int GEMV_MAX_M = 4;  // token counts up to this use the fused unpack+dot GEMV, above it a GEMM
constexpr int TILE_ROWS = 8;   // rows dequantized at once on the GEMM (prefill) path

// One k3 weight matrix [N, K] (an expert slice or a dense weight).
struct Weight {
    const uint8_t* w;   // [N][Kb][12] (k3 v2: Kb even, row n at w + n * Kb * 12)
    const uint16_t* s;  // f16 [N][G] scales, or nullptr when sf is set
    const float* sf;    // f32 [N][G] scales (the CPU plugin converts f16 constants of unknown ops to f32)
    const uint8_t* z;   // u8 [N][G] per-group zero points, or nullptr (scalar zero point folded into the table)
    int64_t N, K, Kb, G, bpg;  // bpg: 32-blocks per group (Kb when G == 1)
};

// Super-block holding 32-value block b of a row (the block is its half b & 1).
inline const uint8_t* super_of(const uint8_t* row, int64_t b) { return row + (b >> 1) * SUPER_BYTES; }

// The 32 codes of block b of a row (portable; setup code, the scalar kernels and tests).
inline void unpack_block(const uint8_t* row, int64_t b, uint8_t q[32]) {
    const uint8_t* sp = super_of(row, b);
    uint64_t hi;
    __builtin_memcpy(&hi, sp + 16, 8);
    const int h = (int)(b & 1);
    for (int i = 0; i < 32; ++i) {
        const int v = 32 * h + i;
        q[i] = (uint8_t)(((sp[v & 15] >> (2 * (v >> 4))) & 3u) | (((hi >> v) & 1u) << 2));
    }
}

// Codebook table, 16 entries, t[i] = C[i & 7] - z_scalar (the upper 8 duplicate the lower 8 so that index bit 3
// may hold garbage; AVX-512 vpermps reads 4 index bits).
struct Table {
    alignas(64) float t[16];
};

// int8 activations quantized per (token, weight group), symmetric: x ~= dx[g] * q (q in [-127, 127]),
// q zero-padded to ldq >= Kb*32; sum[g] = sum of q over the group (as float, exact).
struct QAct {
    const int8_t* q;
    const float* dx;
    const float* sum;
    int64_t ldq, G;  // row stride of q; groups per row (ld of dx / sum)
};

struct Kernels {
    const char* name;
    // y[m*ldy + (n - n0)] = sum_k x[m*ldx + k] * w[n, k] for n in [n0, n1), m < M <= GEMV_MAX_M.
    // x is padded with zeros to Kb*32; xs [M][G] = per-group sums of x (only read when W.z != nullptr).
    void (*gemv)(const Weight& W, const Table& T, const float* x, int64_t ldx, int M, const float* xs,
                 int64_t n0, int64_t n1, float* y, int64_t ldy);
    // buf[(n - n0) * Kb*32 + k] = w[n, k] (f32, dequantized, including the zero-padded tail block).
    void (*dequant)(const Weight& W, const Table& T, int64_t n0, int64_t n1, float* buf);
    // y[m*ldy + r] = sum_k x[m*ldx + k] * wb[r*ldw + k], m < M, r < nr, k < Kp (Kp multiple of 16).
    void (*gemm)(const float* x, int64_t ldx, int64_t M, const float* wb, int64_t ldw, int nr, int64_t Kp,
                 float* y, int64_t ldy);
    // sum of n floats (bandwidth probe)
    double (*sum)(const float* p, int64_t n);
    // out[i] = silu(g[i]) * u[i] (SwiGLU; vectorized exp)
    void (*swiglu)(const float* g, const float* u, int64_t n, float* out);
    // sum_h x[h] * q[h] over n values, q u8 (the 8-bit router of MoE3R)
    float (*dot_u8)(const float* x, const uint8_t* q, int64_t n);

    // ---- int8-activation kernels (AVX512-VNNI + VBMI); all nullptr when unavailable or NNCF_MOE3_ACT_QUANT=0.
    // Token m of a call is row tok[m] of X (tok == nullptr: row m); X.G must equal W.G.
    // q[m][0..K) = round(x/dx) per group of gs (the last group may end at K), zero up to Kp; dx, sum [M][G].
    void (*quantize)(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs, int8_t* q,
                     float* dx, float* sum);
    // decode GEMV, 1 <= M <= GEMV_MAX_M (same output contract as gemv)
    void (*gemv_q8)(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                    int64_t n1, float* y, int64_t ldy);
    // fused pair (gate + up): ya from Wa, yb from Wb (same shape), one pass over the activations
    void (*gemv2_q8)(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                     const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy);
    // prefill GEMM, any M >= 1: each weight tile is unpacked once per call (per 256 tokens) and reused by all tokens
    void (*gemm_q8)(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                    int64_t n1, float* y, int64_t ldy);
};

// u8 levels of the int8-activation kernels for a codebook table: T[q] ~= (lut[q] - off) / alpha. Integer codebooks
// (every int3 mode): exact, alpha = 1, off = -min; real codebooks (NF3): round(127 * C / max|C|) + 128.
struct Levels {
    alignas(64) uint8_t lut[64];  // lut[i] = level of code i & 7
    float alpha, off;
    float inv_alpha;  // 1 / alpha
    bool ident;       // lut[q] == q (integer codebook, scalar zero point folded into off)
};
Levels make_levels(const Table& T);
// make_levels memoized per thread (two entries: a GEMV task's gate + up tables), k3_runtime.cpp
Levels levels_of(const Table& T);
// Per-(group, row) factors of a prefill GEMM tile of tr rows starting at row rt (nrows <= tr valid), k3_runtime.cpp:
// sv[g * tr + r] = s / alpha and zt[g * tr + r] = off + alpha * z (rows past nrows: 0 / off)
void tile_factors(const Weight& W, const Levels& L, int64_t rt, int64_t nrows, int64_t tr, float* sv, float* zt);

constexpr int64_t Q8_MAX_G = 1024;  // groups per row the int8 kernels handle (K <= 32768 at group size 32)
inline bool q8_eligible(const Kernels& Kn, const Weight& W) { return Kn.gemm_q8 && W.G <= Q8_MAX_G; }

void avx512_vnni_quantize(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs, int8_t* q,
                          float* dx, float* sum);
void avx512_vnni_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                         int64_t n1, float* y, int64_t ldy);
void avx512_vnni_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                          const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy);
void avx512_vnni_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                         int64_t n1, float* y, int64_t ldy);
void avx512_amx_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                        int64_t n1, float* y, int64_t ldy);
// the same tiling with a scalar emulation of the tile instructions (tests on CPUs without AMX)
void avx512_amx_emu_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M,
                            int64_t n0, int64_t n1, float* y, int64_t ldy);
// 256-bit forms of the int8-activation kernels (k3_avx2_q8.inc): the quantizer (k3_avx2_int8.cpp, AVX2 + FMA), the
// plain-AVX2 vpmaddubsw kernels "avx2_int8" (k3_avx2_int8.cpp) and the AVX-VNNI ones "avx2_vnni" (k3_avx2_vnni.cpp,
// built when the compiler has -mavxvnni)
void avx2_q8_quantize(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs, int8_t* q,
                      float* dx, float* sum);
void avx2_int8_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy);
void avx2_int8_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                        const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy);
void avx2_int8_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy);
void avx2_vnni_gemv_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy);
void avx2_vnni_gemv2_q8(const Weight& Wa, const Table& Ta, const Weight& Wb, const Table& Tb, const QAct& X,
                        const int32_t* tok, int M, int64_t n0, int64_t n1, float* ya, float* yb, int64_t ldy);
void avx2_vnni_gemm_q8(const Weight& W, const Table& T, const QAct& X, const int32_t* tok, int64_t M, int64_t n0,
                       int64_t n1, float* y, int64_t ldy);
bool cpu_has_avx512_vnni();
// AVX2 + FMA + F16C + AVX-VNNI, and the kernels for it were built
bool cpu_has_avx2_vnni();
// AMX-TILE + AMX-INT8 in CPUID and the Linux permission to use tile data (arch_prctl ARCH_REQ_XCOMP_PERM,
// requested once per process)
bool cpu_has_amx();

extern const Kernels scalar_kernels;
extern const Kernels avx2_kernels;
extern const Kernels avx512_kernels;

// Best kernels the CPU supports, lowered by env NNCF_MOE3_ISA=avx512|avx2|scalar (read on every call);
// NNCF_MOE3_ISA=amx opts into the AMX-INT8 prefill GEMM (not validated on AMX hardware yet), amx_emulate runs the
// same GEMM with emulated tile instructions (any AVX512-VNNI CPU; slow, for tests). On CPUs
// with AVX512-VNNI/VBMI the int8-activation kernels (quantize / gemv_q8 / gemv2_q8 / gemm_q8) are set unless
// NNCF_MOE3_ACT_QUANT=0; CPUs (or NNCF_MOE3_ISA=avx2) with AVX2 + AVX-VNNI get their 256-bit form ("avx2_vnni"),
// other AVX2 CPUs (or NNCF_MOE3_ISA=avx2_int8 on any AVX2 CPU) the plain-AVX2 form ("avx2_int8").
const Kernels& select();
bool cpu_has_avx512();
bool cpu_has_avx2();

// IEEE half -> float (portable, used by the scalar path and setup code).
inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal
            int e = -1;
            do {
                ++e;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | (uint32_t)(112 - e) << 23 | (man & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 112) << 23 | man << 13;
    }
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}

}  // namespace k3
}  // namespace nncf_moe3
