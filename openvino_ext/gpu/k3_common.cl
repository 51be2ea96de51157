// k3_common.cl -- shared helpers for the native 3-bit ("k3" layout) OpenCL kernels.
//
// k3 layout (see openvino_ext/reference.py): per weight row, blocks of 32 K-values, 12 bytes each:
//   uint 0: low 2 bits of values 0..15  (value i at bits 2i..2i+1)
//   uint 1: low 2 bits of values 16..31
//   uint 2: bit 2 of values 0..31       (value i at bit i)
// so one block is exactly one `vload3` of uints. Dequantisation: w = S[g] * (C[q] - Z[g]), S f16, Z u8, C f16[8].
//
// Portable core: OpenCL C 1.2, no fp16 arithmetic (f16 data is read with vload_half), no sub-groups.
// Optional fast paths (all off unless the host defines the K3_USE_* switch AND the device has the extension;
// enabling a switch on a device without the extension silently falls back to the portable code):
//   K3_USE_FP16             + cl_khr_fp16        : local-memory GEMM tiles stored as half (half the SLM traffic)
//   K3_USE_INTEL_SUBGROUPS  + cl_intel_subgroups : sub-group reductions + sub-group block reads of weight planes
//   K3_USE_KHR_SUBGROUPS    + cl_khr_subgroups   : sub-group reductions
//   K3_EMULATE_SUBGROUPS    (testing aid)        : the sub-group code paths with one "sub-group" = the whole
//                                                  work-group, emulated through local memory (runs on PoCL)
//   K3_CB_IDENTITY          : the codebook is [0..7] (int3 modes): C[q] = q, skips the codebook select tree.
//
// This file is included first (the harness concatenates sources; the OpenVINO custom-layer XML lists it as the
// first <Source>).

#ifndef K3_COMMON_CL
#define K3_COMMON_CL

#ifndef __ENDIAN_LITTLE__
#error "k3 kernels assume a little-endian device (the k3 planes are little-endian words)"
#endif

#define K3_BLOCK 32
#define K3_BLOCK_UINTS 3

// ---------------------------------------------------------------- fast-path selection
#if defined(K3_USE_FP16) && defined(cl_khr_fp16)
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
#define K3_FP16 1
typedef half k3_lt;                       // local-tile element type
#define K3_TO_LT(v) convert_half(v)
#define K3_FROM_LT(v) convert_float(v)
#else
typedef float k3_lt;
#define K3_TO_LT(v) (v)
#define K3_FROM_LT(v) (v)
#endif

#if defined(K3_USE_INTEL_SUBGROUPS) && defined(cl_intel_subgroups)
#pragma OPENCL EXTENSION cl_intel_subgroups : enable
#define K3_SG 1
#define K3_SG_BLOCK_READS 1
#define K3_SG_SIZE() ((uint)get_sub_group_size())
#define K3_SG_LANE() ((uint)get_sub_group_local_id())
#define K3_SG_ID() ((uint)get_sub_group_id())
#define K3_SG_NUM() ((uint)get_num_sub_groups())
#define K3_SG_REDUCE(v) sub_group_reduce_add(v)
#define K3_SG_SHUFFLE(v, l) intel_sub_group_shuffle((v), (l))
#define K3_SG_BLOCK_READ(p) intel_sub_group_block_read(p)
#elif defined(K3_USE_KHR_SUBGROUPS) && defined(cl_khr_subgroups)
#pragma OPENCL EXTENSION cl_khr_subgroups : enable
#define K3_SG 1
#define K3_SG_SIZE() ((uint)get_sub_group_size())
#define K3_SG_LANE() ((uint)get_sub_group_local_id())
#define K3_SG_ID() ((uint)get_sub_group_id())
#define K3_SG_NUM() ((uint)get_num_sub_groups())
#define K3_SG_REDUCE(v) sub_group_reduce_add(v)
#elif defined(K3_EMULATE_SUBGROUPS)
// One emulated sub-group = the whole (1-D) work-group. Every call must be work-group uniform (they contain
// barriers); the kernels only call them at uniform points. Needs `K3_SG_EMU_DECL` at kernel scope.
#define K3_SG 1
#define K3_SG_BLOCK_READS 1
#define K3_SG_EMU 1
#define K3_SG_EMU_DECL __local uint k3_emu[K3_SG_EMU_MAX];
#ifndef K3_SG_EMU_MAX
#define K3_SG_EMU_MAX 256
#endif
#define K3_SG_SIZE() ((uint)get_local_size(0))
#define K3_SG_LANE() ((uint)get_local_id(0))
#define K3_SG_ID() 0u
#define K3_SG_NUM() 1u
inline float k3_emu_reduce(float v, __local uint* s) {
    s[get_local_id(0)] = as_uint(v);
    barrier(CLK_LOCAL_MEM_FENCE);
    float r = 0.f;
    for (uint i = 0; i < get_local_size(0); ++i) r += as_float(s[i]);
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
inline uint k3_emu_shuffle(uint v, uint lane, __local uint* s) {
    s[get_local_id(0)] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    uint r = s[lane];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
#define K3_SG_REDUCE(v) k3_emu_reduce((v), k3_emu)
#define K3_SG_SHUFFLE(v, l) k3_emu_shuffle((v), (l), k3_emu)
#define K3_SG_BLOCK_READ(p) ((p)[get_local_id(0)])
#endif

#ifndef K3_SG_EMU_DECL
#define K3_SG_EMU_DECL
#endif

// ---------------------------------------------------------------- codebook
inline float8 k3_load_cb(__global const half* c) { return vload_half8(0, c); }

// C[q] for q in [0, 7] without dynamic private-array indexing (3-level select tree).
inline float k3_cb(uint q, float8 cb) {
    float4 h = (q & 4u) ? cb.hi : cb.lo;
    float2 p = (q & 2u) ? h.hi : h.lo;
    return (q & 1u) ? p.y : p.x;
}

#ifdef K3_CB_IDENTITY
#define K3_LUT(q, cb) ((float)(q))
#else
#define K3_LUT(q, cb) k3_cb((q), (cb))
#endif

// Code of value i (0..31) of a block held in registers.
inline uint k3_code(uint3 w, uint i) {
    uint lo = (i < 16u) ? (w.s0 >> (2u * i)) : (w.s1 >> (2u * (i - 16u)));
    return (lo & 3u) | (((w.s2 >> i) & 1u) << 2);
}

// sum_i x[i] * C[q_i] over one block (x: 32 private floats).
inline float k3_block_dot(uint3 w, const float* x, float8 cb) {
    float acc = 0.f;
#pragma unroll
    for (uint i = 0; i < 16u; ++i) {
        uint q = ((w.s0 >> (2u * i)) & 3u) | (((w.s2 >> i) & 1u) << 2);
        acc = mad(x[i], K3_LUT(q, cb), acc);
    }
#pragma unroll
    for (uint i = 0; i < 16u; ++i) {
        uint q = ((w.s1 >> (2u * i)) & 3u) | (((w.s2 >> (i + 16u)) & 1u) << 2);
        acc = mad(x[16u + i], K3_LUT(q, cb), acc);
    }
    return acc;
}

// Load 32 consecutive floats (a K block of an activation row) into private registers; returns their sum.
inline float k3_load_x32(__global const float* p, float* x) {
    float s = 0.f;
#pragma unroll
    for (uint i = 0; i < 32u; ++i) {
        x[i] = p[i];
        s += x[i];
    }
    return s;
}

// Scale and zero point of weight row `row` (global row index over all experts), group g.
// zpg != 0: Z is per group [rows, G]; else Z is one scalar.
inline float k3_scale(__global const half* S, uint row, uint G, uint g) { return vload_half(row * G + g, S); }
inline float k3_zero(__global const uchar* Z, int zpg, uint row, uint G, uint g) {
    return (float)(zpg ? Z[row * G + g] : Z[0]);
}

// Dequantised block (32 floats) of weight row `row`, block kb, into local memory dst[0..31] (stride 1).
// Only `cnt` values starting at `first` are produced (used to split one block across work-items).
inline void k3_dequant_block_part(__global const uint* W, __global const half* S, __global const uchar* Z, int zpg,
                                  uint row, uint KB, uint G, uint gs, uint kb, float8 cb, uint first, uint cnt,
                                  __local k3_lt* dst) {
    uint3 w = vload3(row * KB + kb, W);
    uint g = (kb * K3_BLOCK) / gs;
    float s = k3_scale(S, row, G, g);
    float z = k3_zero(Z, zpg, row, G, g);
    for (uint i = first; i < first + cnt; ++i) dst[i] = K3_TO_LT(s * (K3_LUT(k3_code(w, i), cb) - z));
}

// ---------------------------------------------------------------- work-group reduction of R partial sums
// part[r] per work-item -> returned (valid in every work-item) sums. scratch: R * local_size floats (portable)
// or R * num_sub_groups (sub-group path). Must be called uniformly by the whole work-group.
#ifndef K3_SG
#define K3_WG_REDUCE_ARRAY(part, R, scratch)                                                   \
    do {                                                                                        \
        const uint lid_ = get_local_id(0), lsz_ = get_local_size(0);                            \
        for (uint r_ = 0; r_ < (R); ++r_) scratch[r_ * lsz_ + lid_] = part[r_];                 \
        barrier(CLK_LOCAL_MEM_FENCE);                                                           \
        for (uint s_ = lsz_ / 2; s_ > 0; s_ >>= 1) {                                            \
            if (lid_ < s_)                                                                      \
                for (uint r_ = 0; r_ < (R); ++r_) scratch[r_ * lsz_ + lid_] += scratch[r_ * lsz_ + lid_ + s_]; \
            barrier(CLK_LOCAL_MEM_FENCE);                                                       \
        }                                                                                       \
        for (uint r_ = 0; r_ < (R); ++r_) part[r_] = scratch[r_ * lsz_];                        \
        barrier(CLK_LOCAL_MEM_FENCE);                                                           \
    } while (0)
#else
#define K3_WG_REDUCE_ARRAY(part, R, scratch)                                                   \
    do {                                                                                        \
        const uint nsg_ = K3_SG_NUM(), sg_ = K3_SG_ID();                                        \
        for (uint r_ = 0; r_ < (R); ++r_) {                                                     \
            float v_ = K3_SG_REDUCE(part[r_]);                                                  \
            if (K3_SG_LANE() == 0) scratch[r_ * nsg_ + sg_] = v_;                               \
        }                                                                                       \
        barrier(CLK_LOCAL_MEM_FENCE);                                                           \
        for (uint r_ = 0; r_ < (R); ++r_) {                                                     \
            float t_ = 0.f;                                                                     \
            for (uint i_ = 0; i_ < nsg_; ++i_) t_ += scratch[r_ * nsg_ + i_];                   \
            part[r_] = t_;                                                                      \
        }                                                                                       \
        barrier(CLK_LOCAL_MEM_FENCE);                                                           \
    } while (0)
#endif

// ---------------------------------------------------------------- GEMV core
// Accumulates, for R weight rows row0..row0+R-1 (rows >= nrows skipped), partial dot products with the
// activation row xrow (length KB*32) over the K blocks assigned to this work-item (kb = lid, lid+lsz, ...),
// with weight `wt` folded in: part[r] += wt * sum_g S*(sum x*C[q] - Z*sum x).
// The loop runs over uniform chunks of lsz blocks, so the sub-group fast paths may use block reads.
#define K3_GEMV_ROWS_MAX 8
inline void k3_gemv_accumulate(float* part, uint R, __global const float* xrow, __global const uint* W,
                               __global const half* S, __global const uchar* Z, int zpg, uint row0, uint nrows,
                               uint KB, uint G, uint gs, float8 cb, float wt
#ifdef K3_SG_EMU
                               , __local uint* k3_emu
#endif
) {
    const uint lid = get_local_id(0), lsz = get_local_size(0);
    for (uint kb0 = 0; kb0 < KB; kb0 += lsz) {
        const uint kb = kb0 + lid;
        const bool valid = kb < KB;
        float x[32];
        float sx = 0.f;
        if (valid) sx = k3_load_x32(xrow + kb * K3_BLOCK, x);
        const uint g = valid ? (kb * K3_BLOCK) / gs : 0u;
        for (uint r = 0; r < R; ++r) {
            const uint row = row0 + r;
            if (row >= nrows) break;  // uniform
            uint3 w = (uint3)(0u);
#ifdef K3_SG_BLOCK_READS
            // Sub-group block read: the sub-group's S consecutive blocks are 3*S consecutive uints; read them as
            // three coalesced block reads and route uint j = 3*lane + c to its lane with shuffles.
            const uint sgs = K3_SG_SIZE();
            const uint first = kb0 + K3_SG_ID() * sgs;                   // first block of this sub-group
            const uint off = (row * KB + first) * K3_BLOCK_UINTS;        // uint offset
            if (first + sgs <= KB && (off & 3u) == 0u) {                 // full chunk, 16-byte aligned: uniform
                __global const uint* p = W + off;
                uint r0 = K3_SG_BLOCK_READ(p);
                uint r1 = K3_SG_BLOCK_READ(p + sgs);
                uint r2 = K3_SG_BLOCK_READ(p + 2u * sgs);
                const uint lane = K3_SG_LANE();
                uint v[3];
                for (uint c = 0; c < 3u; ++c) {
                    const uint j = 3u * lane + c, src = j % sgs, which = j / sgs;
                    uint a = K3_SG_SHUFFLE(r0, src), b = K3_SG_SHUFFLE(r1, src), d = K3_SG_SHUFFLE(r2, src);
                    v[c] = which == 0u ? a : (which == 1u ? b : d);
                }
                w = (uint3)(v[0], v[1], v[2]);
            } else if (valid) {
                w = vload3(row * KB + kb, W);
            }
#else
            if (valid) w = vload3(row * KB + kb, W);
#endif
            if (valid) {
                const float d = k3_block_dot(w, x, cb);
                const float s = k3_scale(S, row, G, g);
                const float z = k3_zero(Z, zpg, row, G, g);
                part[r] = mad(wt * s, d - z * sx, part[r]);
            }
        }
    }
}

#ifdef K3_SG_EMU
#define K3_GEMV_EMU_ARG , k3_emu
#else
#define K3_GEMV_EMU_ARG
#endif

// ---------------------------------------------------------------- tiled GEMM core (local memory)
// Work-group (8, 8): a 32 (weight rows) x 32 (activation rows) output tile, 4x4 per work-item.
// Per K block: the 32x32 weight tile is dequantised into local memory once (2 work-items per row, 16 values
// each) and the 32x32 activation tile is staged next to it; then 32 rank-1 updates from local memory.
#define K3_TILE 32
#define K3_TILE_LD 33  // padded leading dimension (avoids local-memory bank conflicts)

// xrows[i]: activation row index of tile row i (< 0: none). acc: 16 private floats, acc[i*4+j] for activation
// row ly+8i and weight row lx+8j.
inline void k3_gemm_tile(float* acc, __local const int* xrows, __global const float* X, uint ldx,
                         __global const uint* W, __global const half* S, __global const uchar* Z, int zpg,
                         uint wrow0, uint n0, uint N, uint KB, uint G, uint gs, float8 cb, __local k3_lt* Ws,
                         __local k3_lt* Xs) {
    const uint lx = get_local_id(0), ly = get_local_id(1);
    const uint l = ly * 8u + lx;
    const uint tr = l >> 1, half_ = (l & 1u) * 16u;  // tile row (0..31) and which 16 values this work-item loads
    for (uint kb = 0; kb < KB; ++kb) {
        // weight tile: row n0+tr
        if (n0 + tr < N) {
            k3_dequant_block_part(W, S, Z, zpg, wrow0 + n0 + tr, KB, G, gs, kb, cb, half_, 16u, Ws + tr * K3_TILE_LD);
        } else {
            for (uint i = half_; i < half_ + 16u; ++i) Ws[tr * K3_TILE_LD + i] = K3_TO_LT(0.f);
        }
        // activation tile: row xrows[tr]
        const int xr = xrows[tr];
        if (xr >= 0) {
            __global const float* p = X + (size_t)xr * ldx + kb * K3_BLOCK + half_;
            for (uint i = 0; i < 16u; ++i) Xs[tr * K3_TILE_LD + half_ + i] = K3_TO_LT(p[i]);
        } else {
            for (uint i = 0; i < 16u; ++i) Xs[tr * K3_TILE_LD + half_ + i] = K3_TO_LT(0.f);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint k = 0; k < K3_TILE; ++k) {
            float a[4], b[4];
            for (uint i = 0; i < 4u; ++i) a[i] = K3_FROM_LT(Xs[(ly + 8u * i) * K3_TILE_LD + k]);
            for (uint j = 0; j < 4u; ++j) b[j] = K3_FROM_LT(Ws[(lx + 8u * j) * K3_TILE_LD + k]);
            for (uint i = 0; i < 4u; ++i)
                for (uint j = 0; j < 4u; ++j) acc[i * 4u + j] = mad(a[i], b[j], acc[i * 4u + j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

#endif  // K3_COMMON_CL
