// moe3.cl -- MoE3: routed SwiGLU experts with k3 (layout version 2) weights (needs k3_common.cl first).
//
// Compile-time parameters (#define):
//   TOP_K, NORMALIZE_TOPK (0/1), GROUP_SIZE     op attributes
//   K3_VERSION                                  op attribute k3_version (optional, must be 2 when given)
//   MOE_T, MOE_E, MOE_H, MOE_I                  tokens, experts, hidden, expert intermediate size
//   ZG_PG, ZU_PG, ZD_PG                         1: that Z is per group; 0: scalar
//   GEMV_ROWS (default 4), FUSED_RPT (default 8)
// In the OpenVINO custom layer the dims come from the built-in INPUTn_DIMS macros (see below).
//
// Pipelines (the harness runs them; each kernel is one launch):
//   decode   moe3_route -> moe3_gate_up_gemv -> moe3_down_gemv
//            gate_up: work-group = (token, slot k, tile of GEMV_ROWS intermediate rows of expert idx[t,k]);
//                     gate and up rows are dotted in the same pass over x, SwiGLU applied in registers.
//            down:    work-group = (token, tile of GEMV_ROWS hidden rows); loops over the TOP_K slots, so the
//                     weighted reduction over experts happens in registers (no atomics, deterministic).
//   prefill  moe3_route -> moe3_group -> moe3_gate_up_gemm -> moe3_down_gemm -> moe3_reduce
//            tokens grouped per expert (lists[e][0..count_e)), 32x32 tiles with the weight tile dequantised once
//            into local memory and shared by 32 tokens of that expert.
//   fused    moe3_fused: everything in ONE kernel (what an OpenVINO SimpleGPU custom layer can run):
//            work-group = (token, tile of FUSED_RPT*local_size hidden rows); routing, gate/up for chunks of
//            local_size intermediate values into local memory, then the down rows of the tile. Gate/up are
//            recomputed by each hidden tile (H / tile times) -- the price of having no second launch.

#ifndef GROUP_SIZE
#define GROUP_SIZE 128
#endif
#ifndef TOP_K
#define TOP_K 8
#endif
#ifndef NORMALIZE_TOPK
#define NORMALIZE_TOPK 1
#endif
#ifndef GEMV_ROWS
#define GEMV_ROWS 4
#endif
#ifndef FUSED_RPT
#define FUSED_RPT 8
#endif

// ---- OpenVINO GPU custom layer: inputs 0 X [T,H], 1 logits [T,E], 2 Wg [E,I,Hb,12], 3 Sg, 4 Zg, 5 Wu, 6 Su,
// 7 Zu, 8 Wd [E,H,Ib,12], 9 Sd, 10 Zd, 11 C.
#if !defined(MOE_H) && defined(INPUT2_DIMS)
#define MOE_T (INPUT0_DIMS[0])
#define MOE_H (INPUT0_DIMS[1])
#define MOE_E (INPUT1_DIMS[1])
#define MOE_I (INPUT2_DIMS[1])
#define ZG_PG ((INPUT4_DIMS[0] * INPUT4_DIMS[1] * INPUT4_DIMS[2] * INPUT4_DIMS[3]) > 1)
#define ZU_PG ((INPUT7_DIMS[0] * INPUT7_DIMS[1] * INPUT7_DIMS[2] * INPUT7_DIMS[3]) > 1)
#define ZD_PG ((INPUT10_DIMS[0] * INPUT10_DIMS[1] * INPUT10_DIMS[2] * INPUT10_DIMS[3]) > 1)
#endif

inline float moe3_silu_mul(float g, float u) { return g / (1.f + exp(-g)) * u; }

// Routing of one token: softmax over E, top-k (descending p, ties -> lower expert index), optional renorm.
// Selection without a mask: the k-th pick is the best candidate strictly after the (k-1)-th in that order.
inline void moe3_route_token(__global const float* lg, uint E, int* idx, float* wts) {
    float mx = lg[0];
    for (uint e = 1; e < E; ++e) mx = fmax(mx, lg[e]);
    float sum = 0.f;
    for (uint e = 0; e < E; ++e) sum += exp(lg[e] - mx);
    float prev_p = INFINITY;
    int prev_i = -1;
    float tot = 0.f;
    for (uint k = 0; k < TOP_K; ++k) {
        int best = -1;
        float bp = -1.f;
        for (uint e = 0; e < E; ++e) {
            const float p = exp(lg[e] - mx) / sum;
            const bool after = (p < prev_p) || (p == prev_p && (int)e > prev_i);
            if (after && p > bp) {
                bp = p;
                best = (int)e;
            }
        }
        idx[k] = best;
        wts[k] = bp;
        tot += bp;
        prev_p = bp;
        prev_i = best;
    }
#if NORMALIZE_TOPK
    for (uint k = 0; k < TOP_K; ++k) wts[k] /= tot;
#endif
}

// One work-item per token. topk_idx int [T, TOP_K], topk_w float [T, TOP_K].
__kernel void moe3_route(__global const float* logits, __global int* topk_idx, __global float* topk_w) {
    const uint t = get_global_id(0);
    if (t >= MOE_T) return;
    int idx[TOP_K];
    float w[TOP_K];
    moe3_route_token(logits + (size_t)t * MOE_E, MOE_E, idx, w);
    for (uint k = 0; k < TOP_K; ++k) {
        topk_idx[t * TOP_K + k] = idx[k];
        topk_w[t * TOP_K + k] = w[k];
    }
}

// ------------------------------------------------------------------------------------------------ decode
// act f32 [T, TOP_K, I]. Grid-stride over jobs (t, k, row tile); local size: power of two <= 256.
__kernel void moe3_gate_up_gemv(__global const float* X, __global const int* topk_idx, __global const uint* Wg,
                                __global const half* Sg, __global const uchar* Zg, __global const uint* Wu,
                                __global const half* Su, __global const uchar* Zu, __global const half* C,
                                __global float* act) {
    K3_SG_EMU_DECL
    __local float scratch[2 * GEMV_ROWS * 256];
    const uint H = MOE_H, I = MOE_I;
    const uint G = H / GROUP_SIZE;
    const float8 cb = k3_load_cb(C);
    const uint tiles = (I + GEMV_ROWS - 1) / GEMV_ROWS;
    for (uint job = get_group_id(0); job < MOE_T * TOP_K * tiles; job += get_num_groups(0)) {
        const uint tk = job / tiles, n0 = (job % tiles) * GEMV_ROWS, t = tk / TOP_K;
        const uint e = (uint)topk_idx[tk];
        float part[2 * GEMV_ROWS];
        for (uint r = 0; r < 2 * GEMV_ROWS; ++r) part[r] = 0.f;
        __global const float* xrow = X + (size_t)t * H;
        k3_gemv_accumulate(part, GEMV_ROWS, xrow, Wg, Sg, Zg, ZG_PG, e * I + n0, e * I + I, H, G, GROUP_SIZE, cb,
                           1.f K3_GEMV_EMU_ARG);
        k3_gemv_accumulate(part + GEMV_ROWS, GEMV_ROWS, xrow, Wu, Su, Zu, ZU_PG, e * I + n0, e * I + I, H, G,
                           GROUP_SIZE, cb, 1.f K3_GEMV_EMU_ARG);
        K3_WG_REDUCE_ARRAY(part, 2 * GEMV_ROWS, scratch);
        const uint lid = get_local_id(0);
        if (lid < GEMV_ROWS && n0 + lid < I) {
            float g = 0.f, u = 0.f;
            for (uint r = 0; r < GEMV_ROWS; ++r) {
                g = (r == lid) ? part[r] : g;
                u = (r == lid) ? part[GEMV_ROWS + r] : u;
            }
            act[(size_t)tk * I + n0 + lid] = moe3_silu_mul(g, u);
        }
    }
}

// Y f32 [T, H] = sum_k w[t,k] * down_{idx[t,k]}(act[t,k]). Grid-stride over jobs (t, row tile).
__kernel void moe3_down_gemv(__global const float* act, __global const int* topk_idx,
                             __global const float* topk_w, __global const uint* Wd, __global const half* Sd,
                             __global const uchar* Zd, __global const half* C, __global float* Y) {
    K3_SG_EMU_DECL
    __local float scratch[GEMV_ROWS * 256];
    const uint H = MOE_H, I = MOE_I;
    const uint G = I / GROUP_SIZE;
    const float8 cb = k3_load_cb(C);
    const uint tiles = (H + GEMV_ROWS - 1) / GEMV_ROWS;
    for (uint job = get_group_id(0); job < MOE_T * tiles; job += get_num_groups(0)) {
        const uint t = job / tiles, n0 = (job % tiles) * GEMV_ROWS;
        float part[GEMV_ROWS];
        for (uint r = 0; r < GEMV_ROWS; ++r) part[r] = 0.f;
        for (uint k = 0; k < TOP_K; ++k) {
            const uint tk = t * TOP_K + k, e = (uint)topk_idx[tk];
            k3_gemv_accumulate(part, GEMV_ROWS, act + (size_t)tk * I, Wd, Sd, Zd, ZD_PG, e * H + n0, e * H + H, I,
                               G, GROUP_SIZE, cb, topk_w[tk] K3_GEMV_EMU_ARG);
        }
        K3_WG_REDUCE_ARRAY(part, GEMV_ROWS, scratch);
        const uint lid = get_local_id(0);
        if (lid < GEMV_ROWS && n0 + lid < H) {
            float v = 0.f;
            for (uint r = 0; r < GEMV_ROWS; ++r) v = (r == lid) ? part[r] : v;
            Y[(size_t)t * H + n0 + lid] = v;
        }
    }
}

// ------------------------------------------------------------------------------------------------ prefill
// One work-item per expert: lists[e * T + j] = t * TOP_K + k for the j-th (token, slot) routed to e (token
// order), counts[e]. No atomics, deterministic.
__kernel void moe3_group(__global const int* topk_idx, __global int* counts, __global int* lists) {
    const uint e = get_global_id(0);
    if (e >= MOE_E) return;
    int c = 0;
    for (uint tk = 0; tk < MOE_T * TOP_K; ++tk)
        if (topk_idx[tk] == (int)e) lists[e * MOE_T + c++] = (int)tk;
    counts[e] = c;
}

// Grid (ceil(I/32)*8, ceil(T/32)*8, E), local (8, 8, 1). act f32 [T*TOP_K, I].
__kernel void moe3_gate_up_gemm(__global const float* X, __global const int* counts, __global const int* lists,
                                __global const uint* Wg, __global const half* Sg, __global const uchar* Zg,
                                __global const uint* Wu, __global const half* Su, __global const uchar* Zu,
                                __global const half* C, __global float* act) {
    __local k3_lt Ws[K3_TILE * K3_TILE_LD];
    __local k3_lt Xs[K3_TILE * K3_TILE_LD];
    __local int xrows[K3_TILE];
    __local int entries[K3_TILE];
    const uint H = MOE_H, I = MOE_I, G = H / GROUP_SIZE;
    const uint e = get_group_id(2), n0 = get_group_id(0) * K3_TILE, m0 = get_group_id(1) * K3_TILE;
    const int cnt = counts[e];
    if ((int)m0 >= cnt) return;  // uniform for the work-group
    const uint lx = get_local_id(0), ly = get_local_id(1), l = ly * 8u + lx;
    if (l < K3_TILE) {
        const int ent = ((int)(m0 + l) < cnt) ? lists[e * MOE_T + m0 + l] : -1;
        entries[l] = ent;
        xrows[l] = ent >= 0 ? ent / TOP_K : -1;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const float8 cb = k3_load_cb(C);
    float ga[16], ua[16];
    for (uint i = 0; i < 16u; ++i) ga[i] = ua[i] = 0.f;
    k3_gemm_tile(ga, xrows, X, H, Wg, Sg, Zg, ZG_PG, e * I, n0, I, G, GROUP_SIZE, cb, Ws, Xs);
    k3_gemm_tile(ua, xrows, X, H, Wu, Su, Zu, ZU_PG, e * I, n0, I, G, GROUP_SIZE, cb, Ws, Xs);
    for (uint i = 0; i < 4u; ++i) {
        const int ent = entries[ly + 8u * i];
        for (uint j = 0; j < 4u; ++j) {
            const uint n = n0 + lx + 8u * j;
            if (ent >= 0 && n < I) act[(size_t)ent * I + n] = moe3_silu_mul(ga[i * 4u + j], ua[i * 4u + j]);
        }
    }
}

// Grid (ceil(H/32)*8, ceil(T/32)*8, E), local (8, 8, 1). tmp f32 [T*TOP_K, H] = w * down(act).
__kernel void moe3_down_gemm(__global const float* act, __global const int* counts, __global const int* lists,
                             __global const float* topk_w, __global const uint* Wd, __global const half* Sd,
                             __global const uchar* Zd, __global const half* C, __global float* tmp) {
    __local k3_lt Ws[K3_TILE * K3_TILE_LD];
    __local k3_lt Xs[K3_TILE * K3_TILE_LD];
    __local int xrows[K3_TILE];
    const uint H = MOE_H, I = MOE_I, G = I / GROUP_SIZE;
    const uint e = get_group_id(2), n0 = get_group_id(0) * K3_TILE, m0 = get_group_id(1) * K3_TILE;
    const int cnt = counts[e];
    if ((int)m0 >= cnt) return;
    const uint lx = get_local_id(0), ly = get_local_id(1), l = ly * 8u + lx;
    if (l < K3_TILE) xrows[l] = ((int)(m0 + l) < cnt) ? lists[e * MOE_T + m0 + l] : -1;
    barrier(CLK_LOCAL_MEM_FENCE);
    const float8 cb = k3_load_cb(C);
    float acc[16];
    for (uint i = 0; i < 16u; ++i) acc[i] = 0.f;
    k3_gemm_tile(acc, xrows, act, I, Wd, Sd, Zd, ZD_PG, e * H, n0, H, G, GROUP_SIZE, cb, Ws, Xs);
    for (uint i = 0; i < 4u; ++i) {
        const int ent = xrows[ly + 8u * i];
        if (ent < 0) continue;
        const float w = topk_w[ent];
        for (uint j = 0; j < 4u; ++j) {
            const uint n = n0 + lx + 8u * j;
            if (n < H) tmp[(size_t)ent * H + n] = w * acc[i * 4u + j];
        }
    }
}

// Y[t, n] = sum_k tmp[t*TOP_K + k, n]; one work-item per output element.
__kernel void moe3_reduce(__global const float* tmp, __global float* Y) {
    const uint i = get_global_id(0);
    if (i >= MOE_T * MOE_H) return;
    const uint t = i / MOE_H, n = i % MOE_H;
    float s = 0.f;
    for (uint k = 0; k < TOP_K; ++k) s += tmp[((size_t)t * TOP_K + k) * MOE_H + n];
    Y[i] = s;
}

// ------------------------------------------------------------------------------------------------ fused
// Single-launch MoE3 for the OpenVINO SimpleGPU custom layer. 1-D local size L (power of two, multiple of 32,
// <= 256); hidden tile = FUSED_RPT * L rows; grid-stride over jobs (token, hidden tile).
__kernel void moe3_fused(__global const float* X, __global const float* logits, __global const uint* Wg,
                         __global const half* Sg, __global const uchar* Zg, __global const uint* Wu,
                         __global const half* Su, __global const uchar* Zu, __global const uint* Wd,
                         __global const half* Sd, __global const uchar* Zd, __global const half* C,
                         __global float* Y) {
    __local int sel[TOP_K];
    __local float selw[TOP_K];
    __local float actl[256];
    const uint H = MOE_H, I = MOE_I, E = MOE_E;
    // row strides (KB, even) and visited blocks (NB) of gate/up rows (H values) and down rows (I values)
    const uint HB = K3_ROW_BLOCKS(H), HNB = K3_USED_BLOCKS(H), HG = H / GROUP_SIZE;
    const uint IB = K3_ROW_BLOCKS(I), IG = I / GROUP_SIZE;
    const uint lid = get_local_id(0), L = get_local_size(0);
    const uint HT = FUSED_RPT * L, tiles = (H + HT - 1) / HT;
    const float8 cb = k3_load_cb(C);
    for (uint job = get_group_id(0); job < MOE_T * tiles; job += get_num_groups(0)) {
        const uint t = job / tiles, h0 = (job % tiles) * HT;
        if (lid == 0) {
            int idx[TOP_K];
            float w[TOP_K];
            moe3_route_token(logits + (size_t)t * E, E, idx, w);
            for (uint k = 0; k < TOP_K; ++k) {
                sel[k] = idx[k];
                selw[k] = w[k];
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        float acc[FUSED_RPT];
        for (uint j = 0; j < FUSED_RPT; ++j) acc[j] = 0.f;
        __global const float* xrow = X + (size_t)t * H;
        for (uint k = 0; k < TOP_K; ++k) {
            const uint e = (uint)sel[k];
            const float wk = selw[k];
            for (uint c0 = 0; c0 < I; c0 += L) {
                // gate/up: one intermediate value per work-item, full dot over H
                const uint i = c0 + lid;
                float a = 0.f;
                if (i < I) {
                    const uint row = e * I + i;
                    float g = 0.f, u = 0.f;
                    for (uint kb = 0; kb < HNB; ++kb) {
                        float x[32];
                        const float sx = k3_load_xblock(xrow, kb, H, x);
                        const uint gg = (kb * K3_BLOCK) / GROUP_SIZE;
                        const float dg = k3_block_dot(k3_load_block(Wg, row, HB, kb), x, cb);
                        const float du = k3_block_dot(k3_load_block(Wu, row, HB, kb), x, cb);
                        g = mad(k3_scale(Sg, row, HG, gg), dg - k3_zero(Zg, ZG_PG, row, HG, gg) * sx, g);
                        u = mad(k3_scale(Su, row, HG, gg), du - k3_zero(Zu, ZU_PG, row, HG, gg) * sx, u);
                    }
                    a = moe3_silu_mul(g, u);
                }
                actl[lid] = a;
                barrier(CLK_LOCAL_MEM_FENCE);
                // down: this work-item's hidden rows over the chunk's columns [c0, c0 + L) (actl is zero past I,
                // so a partial last block reads zeros)
                const uint nb = (min(L, I - c0) + K3_BLOCK - 1u) / K3_BLOCK;
                for (uint j = 0; j < FUSED_RPT; ++j) {
                    const uint h = h0 + lid + j * L;
                    if (h >= H) break;
                    const uint row = e * H + h;
                    for (uint b = 0; b < nb; ++b) {
                        const uint kb = c0 / K3_BLOCK + b, gg = (kb * K3_BLOCK) / GROUP_SIZE;
                        float x[32];
                        float sx = 0.f;
                        for (uint q = 0; q < 32u; ++q) {
                            x[q] = actl[b * K3_BLOCK + q];
                            sx += x[q];
                        }
                        const float d = k3_block_dot(k3_load_block(Wd, row, IB, kb), x, cb);
                        acc[j] = mad(wk * k3_scale(Sd, row, IG, gg), d - k3_zero(Zd, ZD_PG, row, IG, gg) * sx, acc[j]);
                    }
                }
                barrier(CLK_LOCAL_MEM_FENCE);
            }
        }
        for (uint j = 0; j < FUSED_RPT; ++j) {
            const uint h = h0 + lid + j * L;
            if (h < H) Y[(size_t)t * H + h] = acc[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}
