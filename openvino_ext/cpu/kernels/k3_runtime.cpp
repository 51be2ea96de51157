#include "k3_runtime.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#ifdef NNCF_MOE3_WITH_TBB
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#else
#include <atomic>
#include <thread>
#endif

namespace nncf_moe3 {
namespace k3 {

static int env_threads() {
    const char* v = std::getenv("NNCF_MOE3_NUM_THREADS");
    return (v && *v) ? std::max(1, std::atoi(v)) : 0;
}

#ifdef NNCF_MOE3_WITH_TBB
static tbb::task_arena& arena_for(int n) {
    static std::mutex mu;
    static std::vector<std::unique_ptr<tbb::task_arena>> arenas(257);
    n = std::min(n, 256);
    std::lock_guard<std::mutex> lock(mu);
    if (!arenas[n]) arenas[n].reset(new tbb::task_arena(n));
    return *arenas[n];
}

int max_threads() {
    int e = env_threads();
    return e ? e : tbb::this_task_arena::max_concurrency();
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    auto body = [&] {
        tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1), [&](const tbb::blocked_range<int64_t>& r) {
            for (int64_t i = r.begin(); i < r.end(); ++i) fn(i);
        });
    };
    int e = env_threads();
    if (e == 1 || n == 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
    } else if (e > 1) {
        arena_for(e).execute(body);
    } else {
        body();
    }
}
#else
int max_threads() {
    int e = env_threads();
    return e ? e : (int)std::max(1u, std::thread::hardware_concurrency());
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    int t = (int)std::min<int64_t>(max_threads(), n);
    if (t <= 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<int64_t> next{0};
    auto work = [&] {
        for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i);
    };
    std::vector<std::thread> th;
    for (int i = 1; i < t; ++i) th.emplace_back(work);
    work();
    for (auto& x : th) x.join();
}
#endif

Weight WeightSet::slice(int64_t e) const {
    Weight W;
    W.w = w + e * N * Kb * BLOCK_BYTES;
    W.s = s ? s + e * N * G : nullptr;
    W.sf = sf ? sf + e * N * G : nullptr;
    W.z = z ? z + e * N * G : nullptr;
    W.N = N;
    W.K = K;
    W.Kb = Kb;
    W.G = G;
    W.bpg = G == 1 ? Kb : gs / BLOCK;
    return W;
}

Table make_table(const void* c, bool is_f32, float z_scalar) {
    Table T;
    for (int i = 0; i < 16; ++i)
        T.t[i] = (is_f32 ? static_cast<const float*>(c)[i & 7] : f16_to_f32(static_cast<const uint16_t*>(c)[i & 7])) -
                 z_scalar;
    return T;
}

void pad_rows(const float* src, int64_t ldsrc, int64_t M, int64_t K, int64_t Kp, float* dst) {
    for (int64_t m = 0; m < M; ++m) {
        std::memcpy(dst + m * Kp, src + m * ldsrc, K * sizeof(float));
        std::memset(dst + m * Kp + K, 0, (Kp - K) * sizeof(float));
    }
}

void group_sums(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t G, float* xs) {
    const int64_t gs = K / G;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t g = 0; g < G; ++g) {
            float a = 0.f;
            for (int64_t k = g * gs; k < (g + 1) * gs; ++k) a += x[m * ldx + k];
            xs[m * G + g] = a;
        }
}

void rows_product(const Kernels& Kn, const Weight& W, const Table& T, const float* x, int64_t ldx, int64_t M,
                  const float* xs, int64_t n0, int64_t n1, float* out, int64_t ldo) {
    if (M <= GEMV_MAX_M) {
        Kn.gemv(W, T, x, ldx, (int)M, xs, n0, n1, out, ldo);
        return;
    }
    thread_local std::vector<float> buf;
    const int64_t kp = W.Kb * BLOCK;
    if ((int64_t)buf.size() < TILE_ROWS * kp) buf.resize(TILE_ROWS * kp);
    for (int64_t n = n0; n < n1; n += TILE_ROWS) {
        const int nr = (int)std::min<int64_t>(TILE_ROWS, n1 - n);
        dequant_rows(Kn, W, T, n, n + nr, buf.data());
        Kn.gemm(x, ldx, M, buf.data(), kp, nr, kp, out + (n - n0), ldo);
    }
}

void dequant_rows(const Kernels& Kn, const Weight& W, const Table& T, int64_t n0, int64_t n1, float* buf) {
    Kn.dequant(W, T, n0, n1, buf);
    // k3 v2 pads rows to 64 values: with G > 1 and K / 32 odd the last block belongs to no group (the dequant
    // kernels skip it) and must read as zero in the GEMM
    const int64_t kp = W.Kb * BLOCK, used = W.G == 1 ? W.Kb : W.G * W.bpg;
    if (used < W.Kb)
        for (int64_t r = 0; r < n1 - n0; ++r)
            std::memset(buf + r * kp + used * BLOCK, 0, (W.Kb - used) * BLOCK * sizeof(float));
}

void quantize_rows(const Kernels& Kn, const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t gs,
                   QActBuf& out) {
    const int64_t G = (K + gs - 1) / gs;
    out.ldq = Kp;
    out.G = G;
    out.q.resize(M * Kp);
    out.dx.resize(M * G);
    out.sum.resize(M * G);
    const int64_t per = 8;  // rows per task
    if (M * K < (1 << 16)) {
        Kn.quantize(x, ldx, M, K, Kp, gs, out.q.data(), out.dx.data(), out.sum.data());
        return;
    }
    parallel_for((M + per - 1) / per, [&](int64_t t) {
        const int64_t m0 = t * per, mm = std::min(per, M - m0);
        Kn.quantize(x + m0 * ldx, ldx, mm, K, Kp, gs, out.q.data() + m0 * Kp, out.dx.data() + m0 * G,
                    out.sum.data() + m0 * G);
    });
}

void rows_product_q8(const Kernels& Kn, const Weight& W, const Table& T, const QAct& X, const int32_t* tok,
                     int64_t M, int64_t n0, int64_t n1, float* out, int64_t ldo) {
    if (M <= GEMV_MAX_M)
        Kn.gemv_q8(W, T, X, tok, (int)M, n0, n1, out, ldo);
    else
        Kn.gemm_q8(W, T, X, tok, M, n0, n1, out, ldo);
}

int64_t row_chunk(int64_t n, int64_t units, int64_t want, int64_t cap) {
    int64_t rc = cap;
    while (rc > 16 && units * ((n + rc - 1) / rc) < want) rc /= 2;
    return rc;
}

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
    } else {  // NF3 and other real codebooks: 8-bit levels round(127 * C / max|C|) + 128
        L.alpha = amax > 0.f ? 127.f / amax : 1.f;
        L.off = 128.f;
    }
    L.inv_alpha = 1.f / L.alpha;
    L.ident = true;
    for (int i = 0; i < 64; ++i) {
        L.lut[i] = (uint8_t)(int)std::nearbyint(T.t[i & 7] * L.alpha + L.off);
        if (i < 8) L.ident &= L.lut[i] == i;
    }
    return L;
}

void tile_factors(const Weight& W, const Levels& L, int64_t rt, int64_t nrows, int64_t tr, float* sv, float* zt) {
    for (int64_t g = 0; g < W.G; ++g)
        for (int64_t r = 0; r < tr; ++r) {
            const bool ok = r < nrows;
            const int64_t i = (rt + r) * W.G + g;
            sv[g * tr + r] = ok ? (W.sf ? W.sf[i] : f16_to_f32(W.s[i])) * L.inv_alpha : 0.f;
            zt[g * tr + r] = L.off + (ok && W.z ? L.alpha * (float)W.z[i] : 0.f);
        }
}

// memoized per thread: every GEMV task calls it, and the tables of one model are a handful of distinct ones
Levels levels_of(const Table& T) {
    thread_local Table key[2];
    thread_local Levels val[2];
    thread_local int n = 0, next = 0;
    for (int i = 0; i < n; ++i)
        if (std::memcmp(key[i].t, T.t, sizeof T.t) == 0) return val[i];
    key[next] = T;
    val[next] = make_levels(T);
    const Levels& L = val[next];
    next ^= 1;
    n = n < 2 ? n + 1 : 2;
    return L;
}

}  // namespace k3
}  // namespace nncf_moe3
