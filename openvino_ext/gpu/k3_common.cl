// k3_common.cl -- shared helpers for the native 3-bit ("k3" layout, version 2) OpenCL kernels.
//
// k3 layout version 2 (spec and numpy oracle: openvino_ext/reference.py). Weights are uint8[.., N, KB, 12] with
// KB = 2 * ceil(K / 64) (always even). Per row, super-blocks of 64 K-values, 24 bytes = 6 uints each:
//   uints 0..3: low-2-bit plane; byte b holds the low 2 bits of values b, 16+b, 32+b, 48+b at bits 0-1, 2-3,
//               4-5, 6-7 (value v at byte v % 16, bits 2 * (v / 16))
//   uints 4..5: high-bit plane, a little-endian uint64: bit 2 of value v at bit v
// A 32-value block kb is half h = kb & 1 of super-block kb >> 1 (its 12 bytes are NOT self-contained): its value
// i (0..31) is super-block value 32h + i, i.e. low bits at (uint (i%16)/4) >> (8*(i%4) + 2*(2h + i/16)) & 3 and
// high bit at (uint 4+h) >> i & 1. k3_load_block() reads the 4 low-plane uints + the block's high-plane uint and
// pre-shifts the low plane by 4h, so a block in registers (k3_blk) decodes the same way for both halves.
// The row tail is zero-padded up to a multiple of 64 values: only ceil(K/32) blocks are visited, and a partial
// last block (K not a multiple of 32, possible when group_size == K) is read with zero activations past K.
// Dequantisation: w = S[g] * (C[q] - Z[g]), S f16, Z u8, C f16[8].
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

// Layout version these kernels read (the ops' k3_version attribute; the custom-layer XML passes it as K3_VERSION,
// default 1 = an IR without the attribute, i.e. the old self-contained 12-byte blocks, which is refused here).
#define K3_LAYOUT_VERSION 2
#if defined(K3_VERSION) && (K3_VERSION != K3_LAYOUT_VERSION)
#error "k3 weights of another layout version (k3_version attribute != 2): re-run the transformation"
#endif

#define K3_BLOCK 32         // values per block (the tensor's Kb granularity)
#define K3_SUPER_UINTS 6    // uints per 64-value super-block (= 2 blocks)
// Row stride in blocks (KB, even) and number of blocks holding real values (NB = KB or KB - 1) of a K-value row.
#define K3_ROW_BLOCKS(K) (2u * (((K) + 63u) / 64u))
#define K3_USED_BLOCKS(K) (((K) + 31u) / 32u)

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

// Helpers that may shuffle take the emulation scratch as an extra parameter (K3_EMU_PARAM / K3_GEMV_EMU_ARG).
#ifdef K3_SG_EMU
#define K3_EMU_PARAM , __local uint* k3_emu
#define K3_GEMV_EMU_ARG , k3_emu
#else
#define K3_EMU_PARAM
#define K3_GEMV_EMU_ARG
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

// ---------------------------------------------------------------- k3 blocks in registers
// One 32-value block: lo = the 4 low-plane uints of its super-block shifted right by 4h (h = kb & 1), so byte b of
// lo.sj holds the low 2 bits of block value 4j+b at bits 0-1 and of value 16+4j+b at bits 2-3 (bits 4-7: junk,
// masked off); hi = the block's high-plane uint (bit 2 of value i at bit i).
typedef struct {
    uint4 lo;
    uint hi;
} k3_blk;

inline k3_blk k3_make_block(uint4 lo_plane, uint hi, uint h) {
    k3_blk b;
    b.lo = lo_plane >> (4u * h);
    b.hi = hi;
    return b;
}

// Block kb of weight row `row` (row stride KB blocks): one 16-byte vload4 of the super-block's low plane (8-byte
// aligned) + one uint of its high plane.
inline k3_blk k3_load_block(__global const uint* W, uint row, uint KB, uint kb) {
    __global const uint* p = W + (row * KB + (kb & ~1u)) * 3u;  // super-block start (6 uints)
    return k3_make_block(vload4(0, p), p[4u + (kb & 1u)], kb & 1u);
}

// Low-plane uint j (0..3) of a block; j is a compile-time constant after unrolling (no private-array indexing).
inline uint k3_lo_word(uint4 lo, uint j) { return j == 0u ? lo.s0 : (j == 1u ? lo.s1 : (j == 2u ? lo.s2 : lo.s3)); }

// Code of value i (0..31) of a block held in registers.
inline uint k3_code(k3_blk b, uint i) {
    const uint l = k3_lo_word(b.lo, (i & 15u) >> 2) >> (8u * (i & 3u) + 2u * (i >> 4));
    return (l & 3u) | (((b.hi >> i) & 1u) << 2);
}

// sum_i x[i] * C[q_i] over one block (x: 32 private floats), i in order 0..31.
inline float k3_block_dot(k3_blk b, const float* x, float8 cb) {
    float acc = 0.f;
#pragma unroll
    for (uint i = 0; i < 16u; ++i) {
        const uint q = ((k3_lo_word(b.lo, i >> 2) >> (8u * (i & 3u))) & 3u) | (((b.hi >> i) & 1u) << 2);
        acc = mad(x[i], K3_LUT(q, cb), acc);
    }
#pragma unroll
    for (uint i = 0; i < 16u; ++i) {
        const uint q = ((k3_lo_word(b.lo, i >> 2) >> (8u * (i & 3u) + 2u)) & 3u) | (((b.hi >> (i + 16u)) & 1u) << 2);
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

// Block kb of an activation row of K values (zeros past K: the last block may be partial); returns the sum.
inline float k3_load_xblock(__global const float* xrow, uint kb, uint K, float* x) {
    const uint k0 = kb * K3_BLOCK;
    if (k0 + K3_BLOCK <= K) return k3_load_x32(xrow + k0, x);
    float s = 0.f;
#pragma unroll
    for (uint i = 0; i < 32u; ++i) {
        x[i] = (k0 + i < K) ? xrow[k0 + i] : 0.f;
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
    const k3_blk w = k3_load_block(W, row, KB, kb);
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

// ---------------------------------------------------------------- sub-group block reads of weight planes
#ifdef K3_SG_BLOCK_READS
// Uint j (< 3 * sgs) of a sub-group chunk read as three block reads r0, r1, r2 (read c holds uint c * sgs + lane).
// Uniform call (shuffles). 3 shuffles + 2 selects.
inline uint k3_sg_pick(uint r0, uint r1, uint r2, uint j, uint sgs K3_EMU_PARAM) {
    const uint src = j % sgs, which = j / sgs;
    const uint a = K3_SG_SHUFFLE(r0, src), b = K3_SG_SHUFFLE(r1, src), d = K3_SG_SHUFFLE(r2, src);
    return which == 0u ? a : (which == 1u ? b : d);
}

// Lane l of a sub-group handling the sgs consecutive blocks first..first+sgs-1 (first and sgs even, so the chunk
// is sgs/2 whole super-blocks = 3*sgs consecutive uints starting at p): three coalesced block reads, then each
// lane picks the 4 low-plane uints and its high-plane uint of super-block l/2 (5 picks = 15 shuffles).
inline k3_blk k3_sg_load_blocks(__global const uint* p, uint sgs K3_EMU_PARAM) {
    const uint r0 = K3_SG_BLOCK_READ(p), r1 = K3_SG_BLOCK_READ(p + sgs), r2 = K3_SG_BLOCK_READ(p + 2u * sgs);
    const uint lane = K3_SG_LANE(), h = lane & 1u, base = (lane >> 1) * K3_SUPER_UINTS;
    uint4 lo;
    lo.s0 = k3_sg_pick(r0, r1, r2, base, sgs K3_GEMV_EMU_ARG);
    lo.s1 = k3_sg_pick(r0, r1, r2, base + 1u, sgs K3_GEMV_EMU_ARG);
    lo.s2 = k3_sg_pick(r0, r1, r2, base + 2u, sgs K3_GEMV_EMU_ARG);
    lo.s3 = k3_sg_pick(r0, r1, r2, base + 3u, sgs K3_GEMV_EMU_ARG);
    const uint hi = k3_sg_pick(r0, r1, r2, base + 4u + h, sgs K3_GEMV_EMU_ARG);
    return k3_make_block(lo, hi, h);
}
#endif

// ---------------------------------------------------------------- GEMV core
// Accumulates, for R weight rows row0..row0+R-1 (rows >= nrows skipped), partial dot products with the
// activation row xrow (K values) over the K blocks assigned to this work-item (kb = lid, lid+lsz, ... < NB),
// with weight `wt` folded in: part[r] += wt * sum_g S*(sum x*C[q] - Z*sum x).
// The loop runs over uniform chunks of lsz blocks, so the sub-group fast paths may use block reads.
#define K3_GEMV_ROWS_MAX 8
inline void k3_gemv_accumulate(float* part, uint R, __global const float* xrow, __global const uint* W,
                               __global const half* S, __global const uchar* Z, int zpg, uint row0, uint nrows,
                               uint K, uint G, uint gs, float8 cb, float wt K3_EMU_PARAM) {
    const uint lid = get_local_id(0), lsz = get_local_size(0);
    const uint KB = K3_ROW_BLOCKS(K), NB = K3_USED_BLOCKS(K);
    for (uint kb0 = 0; kb0 < NB; kb0 += lsz) {
        const uint kb = kb0 + lid;
        const bool valid = kb < NB;
        // x is loaded unconditionally (zeros past K, no memory read for blocks kb >= NB): with `if (valid)` here,
        // PoCL 3.1 with emulated sub-groups got lane 63's block wrong when a later block-read chunk held invalid
        // lanes (K = 32*127; tests/test_opencl.py::test_emulated_subgroup_block_reads_with_padding_blocks).
        float x[32];
        const float sx = k3_load_xblock(xrow, kb, K, x);
        const uint g = valid ? (kb * K3_BLOCK) / gs : 0u;
        for (uint r = 0; r < R; ++r) {
            const uint row = row0 + r;
            if (row >= nrows) break;  // uniform
            k3_blk w;
#ifdef K3_SG_BLOCK_READS
            const uint sgs = K3_SG_SIZE();
            const uint first = kb0 + K3_SG_ID() * sgs;                   // first block of this sub-group
            const uint off = (row * KB + first) * 3u;                    // its uint offset (super-block start)
            // full chunk of whole super-blocks, 16-byte aligned: uniform over the sub-group
            if (first + sgs <= KB && ((first | sgs) & 1u) == 0u && (off & 3u) == 0u) {
                w = k3_sg_load_blocks(W + off, sgs K3_GEMV_EMU_ARG);
            } else if (valid) {
                w = k3_load_block(W, row, KB, kb);
            }
#else
            if (valid) w = k3_load_block(W, row, KB, kb);
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

// ---------------------------------------------------------------- tiled GEMM core (local memory)
// Work-group (8, 8): a 32 (weight rows) x 32 (activation rows) output tile, 4x4 per work-item.
// Per K block: the 32x32 weight tile is dequantised into local memory once (2 work-items per row, 16 values
// each) and the 32x32 activation tile is staged next to it; then 32 rank-1 updates from local memory.
#define K3_TILE 32
#define K3_TILE_LD 33  // padded leading dimension (avoids local-memory bank conflicts)

// xrows[i]: activation row index of tile row i (< 0: none); X rows have K values (ld K). acc: 16 private floats,
// acc[i*4+j] for activation row ly+8i and weight row lx+8j.
inline void k3_gemm_tile(float* acc, __local const int* xrows, __global const float* X, uint K,
                         __global const uint* W, __global const half* S, __global const uchar* Z, int zpg,
                         uint wrow0, uint n0, uint N, uint G, uint gs, float8 cb, __local k3_lt* Ws,
                         __local k3_lt* Xs) {
    const uint lx = get_local_id(0), ly = get_local_id(1);
    const uint l = ly * 8u + lx;
    const uint tr = l >> 1, half_ = (l & 1u) * 16u;  // tile row (0..31) and which 16 values this work-item loads
    const uint KB = K3_ROW_BLOCKS(K), NB = K3_USED_BLOCKS(K);
    for (uint kb = 0; kb < NB; ++kb) {
        // weight tile: row n0+tr
        if (n0 + tr < N) {
            k3_dequant_block_part(W, S, Z, zpg, wrow0 + n0 + tr, KB, G, gs, kb, cb, half_, 16u, Ws + tr * K3_TILE_LD);
        } else {
            for (uint i = half_; i < half_ + 16u; ++i) Ws[tr * K3_TILE_LD + i] = K3_TO_LT(0.f);
        }
        // activation tile: row xrows[tr]
        const int xr = xrows[tr];
        const uint k0 = kb * K3_BLOCK + half_;
        if (xr >= 0 && k0 + 16u <= K) {
            __global const float* p = X + (size_t)xr * K + k0;
            for (uint i = 0; i < 16u; ++i) Xs[tr * K3_TILE_LD + half_ + i] = K3_TO_LT(p[i]);
        } else if (xr >= 0) {  // partial last block: zeros past K
            __global const float* p = X + (size_t)xr * K;
            for (uint i = 0; i < 16u; ++i) Xs[tr * K3_TILE_LD + half_ + i] = K3_TO_LT(k0 + i < K ? p[k0 + i] : 0.f);
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
