// matmul3.cl -- MatMul3: Y[M, N] = X[M, K] @ dequant(W)^T, W [N, KB, 12] in the k3 layout version 2 (KB =
// 2*ceil(K/64), see k3_common.cl; needs k3_common.cl first).
//
// Compile-time parameters (#define; the harness passes -D, the OpenVINO custom layer derives them from the
// op attribute `group_size` and the built-in INPUTn_DIMS / OUTPUT0_DIMS macros, see below):
//   GROUP_SIZE   quantisation group size (attribute group_size)
//   K3_VERSION   k3 layout version (attribute k3_version; optional, must be 2 when given)
//   K3_K, K3_N, K3_M  reduction length, output features, rows of X (all leading dims flattened)
//   K3_ZPG       1: Z is per group [N, G]; 0: Z is a scalar [1]
//   GEMV_ROWS    weight rows per work-group in the GEMV kernel (default 4)
//
// Kernels
//   matmul3_gemv  few rows (decode): work-group = (row of X, tile of GEMV_ROWS weight rows); work-items split K
//                 blocks; grid-stride over jobs, so any global size works (the custom layer relies on that).
//   matmul3_gemm  many rows (prefill): 32x32 output tiles, local (8, 8), weight tile dequantised once into
//                 local memory and shared by 32 activation rows.

#ifndef GROUP_SIZE
#define GROUP_SIZE 128
#endif
#ifndef GEMV_ROWS
#define GEMV_ROWS 4
#endif

// ---- OpenVINO GPU custom layer: derive dims from the built-in layout macros (inputs: 0 X, 1 W, 2 S, 3 Z, 4 C).
#if !defined(K3_N) && defined(INPUT1_DIMS)
#define K3_N (INPUT1_DIMS[0])
#define K3_K (INPUT2_DIMS[1] * GROUP_SIZE)
#define K3_M ((OUTPUT0_DIMS[0] * OUTPUT0_DIMS[1] * OUTPUT0_DIMS[2] * OUTPUT0_DIMS[3]) / K3_N)
#define K3_ZPG ((INPUT3_DIMS[0] * INPUT3_DIMS[1] * INPUT3_DIMS[2] * INPUT3_DIMS[3]) > 1)
#endif

__kernel void matmul3_gemv(__global const float* X, __global const uint* W, __global const half* S,
                           __global const uchar* Z, __global const half* C, __global float* Y) {
    K3_SG_EMU_DECL
    __local float scratch[GEMV_ROWS * 256];
    const uint K = K3_K, N = K3_N, M = K3_M;
    const uint G = K / GROUP_SIZE;
    const float8 cb = k3_load_cb(C);
    const uint tiles = (N + GEMV_ROWS - 1) / GEMV_ROWS;
    for (uint job = get_group_id(0); job < tiles * M; job += get_num_groups(0)) {
        const uint m = job / tiles, n0 = (job % tiles) * GEMV_ROWS;
        float part[GEMV_ROWS];
        for (uint r = 0; r < GEMV_ROWS; ++r) part[r] = 0.f;
        k3_gemv_accumulate(part, GEMV_ROWS, X + (size_t)m * K, W, S, Z, K3_ZPG, n0, N, K, G, GROUP_SIZE, cb, 1.f
                           K3_GEMV_EMU_ARG);
        K3_WG_REDUCE_ARRAY(part, GEMV_ROWS, scratch);
        const uint lid = get_local_id(0);
        if (lid < GEMV_ROWS && n0 + lid < N) {
            float v = 0.f;
            for (uint r = 0; r < GEMV_ROWS; ++r) v = (r == lid) ? part[r] : v;
            Y[(size_t)m * N + n0 + lid] = v;
        }
    }
}

__kernel void matmul3_gemm(__global const float* X, __global const uint* W, __global const half* S,
                           __global const uchar* Z, __global const half* C, __global float* Y) {
    __local k3_lt Ws[K3_TILE * K3_TILE_LD];
    __local k3_lt Xs[K3_TILE * K3_TILE_LD];
    __local int xrows[K3_TILE];
    const uint K = K3_K, N = K3_N, M = K3_M;
    const uint G = K / GROUP_SIZE;
    const float8 cb = k3_load_cb(C);
    const uint lx = get_local_id(0), ly = get_local_id(1), l = ly * 8u + lx;
    const uint ntiles = (N + K3_TILE - 1) / K3_TILE, mtiles = (M + K3_TILE - 1) / K3_TILE;
    const uint nwg = get_num_groups(0) * get_num_groups(1);
    for (uint job = get_group_id(1) * get_num_groups(0) + get_group_id(0); job < ntiles * mtiles; job += nwg) {
        const uint n0 = (job % ntiles) * K3_TILE, m0 = (job / ntiles) * K3_TILE;
        if (l < K3_TILE) xrows[l] = (m0 + l < M) ? (int)(m0 + l) : -1;
        barrier(CLK_LOCAL_MEM_FENCE);
        float acc[16];
        for (uint i = 0; i < 16u; ++i) acc[i] = 0.f;
        k3_gemm_tile(acc, xrows, X, K, W, S, Z, K3_ZPG, 0u, n0, N, G, GROUP_SIZE, cb, Ws, Xs);
        for (uint i = 0; i < 4u; ++i) {
            const uint m = m0 + ly + 8u * i;
            for (uint j = 0; j < 4u; ++j) {
                const uint n = n0 + lx + 8u * j;
                if (m < M && n < N) Y[(size_t)m * N + n] = acc[i * 4u + j];
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}
