// Shared runtime helpers for the ops: threading, operand views, row products (GEMV or dequant + GEMM).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "k3_kernels.hpp"

namespace nncf_moe3 {
namespace k3 {

// Runs fn(i) for i in [0, n) on the oneTBB arena of the calling thread (OpenVINO's CPU plugin calls evaluate()
// from its TBB workers, so nested work shares its threads instead of oversubscribing cores). Env
// NNCF_MOE3_NUM_THREADS=<n> runs inside a dedicated arena of n threads (1 = serial).
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);
int max_threads();

// Operands of one k3 weight tensor [.., N, Kb, 12] with scales [.., N, G] and zero points [.., N, G] | [1].
struct WeightSet {
    const uint8_t* w = nullptr;
    const uint16_t* s = nullptr;
    const float* sf = nullptr;  // f32 scales instead of f16
    const uint8_t* z = nullptr;  // nullptr: scalar zero point (folded into the table)
    float z_scalar = 0.f;
    int64_t N = 0, K = 0, Kb = 0, G = 0, gs = 0;
    Weight slice(int64_t e) const;  // expert e (0 for 2-D weights)
};

// codebook: 8 values, f16 (is_f32 false) or f32
Table make_table(const void* codebook, bool is_f32, float z_scalar);

// dst [M][Kp] = src [M][K] zero-padded (Kp = Kb*32); xs [M][G] group sums (when need_xs).
void pad_rows(const float* src, int64_t ldsrc, int64_t M, int64_t K, int64_t Kp, float* dst);
void group_sums(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t G, float* xs);

// Exact f32 path: out[m*ldo + (n - n0)] = x[m] . w[n] for n in [n0, n1): GEMV for M <= GEMV_MAX_M, else
// dequantize TILE_ROWS rows at a time into a thread-local f32 buffer and run the GEMM micro-kernel.
void rows_product(const Kernels& Kn, const Weight& W, const Table& T, const float* x, int64_t ldx, int64_t M,
                  const float* xs, int64_t n0, int64_t n1, float* out, int64_t ldo);

// buf [(n - n0) * Kb*32 + k] = w[n, k] in f32 for n in [n0, n1), the padded tail of each row zero.
void dequant_rows(const Kernels& Kn, const Weight& W, const Table& T, int64_t n0, int64_t n1, float* buf);

// int8 activations of M rows (see QAct), owned.
struct QActBuf {
    std::vector<int8_t> q;
    std::vector<float> dx, sum;
    int64_t ldq = 0, G = 0;
    QAct view() const { return QAct{q.data(), dx.data(), sum.data(), ldq, G}; }
};

// Quantizes M rows of x ([M][ldx], K values, groups of gs) with Kn.quantize into out (rows padded to Kp);
// parallel over rows when M is large.
void quantize_rows(const Kernels& Kn, const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs,
                   QActBuf& out);

// int8 path: out[m*ldo + (n - n0)] = x[tok[m]] . w[n]: gemv_q8 for M <= GEMV_MAX_M, else gemm_q8.
void rows_product_q8(const Kernels& Kn, const Weight& W, const Table& T, const QAct& X, const int32_t* tok,
                     int64_t M, int64_t n0, int64_t n1, float* out, int64_t ldo);

// Task rows for a row range of n rows split into >= want tasks: a multiple of 16 (the GEMM row block) when
// possible, at most cap.
int64_t row_chunk(int64_t n, int64_t tasks_per_row_chunk_unit, int64_t want, int64_t cap);

}  // namespace k3
}  // namespace nncf_moe3
