"""The k3 OpenCL kernels (openvino_ext/gpu/*.cl) on an OpenCL device (PoCL's CPU device in CI) vs the numpy reference."""

import zlib

import numpy as np
import pytest

from openvino_ext import u3
from openvino_ext.gpu import harness as H
from openvino_ext.reference import matmul3_ref, moe3_ref, pack_k3, random_case, unpack_k3

_NO_OCL = H.available()
needs_ocl = pytest.mark.skipif(_NO_OCL is not None, reason=f"OpenCL unavailable: {_NO_OCL} "
                               "(install an ICD, e.g. `apt-get install pocl-opencl-icd`)")
RTOL = 2e-5  # max |err| / max |ref|; f32 accumulation in a different order than numpy


def _err(y, r):
    return float(np.abs(y - r).max() / max(np.abs(r).max(), 1e-12))


def _moe_case(rng, e, h, i, gs, mode):
    ops = []
    for n, k in ((i, h), (i, h), (h, i)):
        w, s, z, _ = random_case(rng, n, k, gs, mode, (e,))
        ops += [w, s, z]
    c = random_case(rng, 1, 32, 32, mode)[3]
    return ops, c


# ------------------------------------------------------------------------------------------------ MatMul3
# (mode, group_size, N, K, M, path): N and K deliberately not multiples of the tiles (GEMV 4 rows x 64 blocks,
# GEMM 32x32); group_size divides K and is a multiple of 32 or K itself (contract). K not a multiple of 64: the
# k3 row is padded to whole 64-value super-blocks (Kb even, the last block may be all padding); K = 80 / 112 with
# group_size == K: a partial last 32-value block.
MATMUL_CASES = [
    ("int3_asym", 32, 23, 160, 2, "gemv"),         # Kb = 6, 5 blocks visited
    ("nf3", 32, 40, 96, 33, "gemm"),
    ("int3_sym", 80, 21, 80, 1, "gemv"),           # K % 32 != 0
    ("int3_asym", 112, 19, 112, 40, "gemm"),       # K % 32 != 0
    ("int3_asym", 32, 9, 32 * 69, 1, "gemv"),      # Kb = 70, 69 blocks: a padding block inside the 2nd K chunk
    ("int3_sym", 32, 45, 320, 1, "gemv"),
    ("int3_asym", 64, 37, 32 * 70, 3, "gemv"),   # KB=70 > 64 work-items: two K chunks, partial second
    ("nf3", 128, 50, 384, 2, "auto"),
    ("int3_asym", 32, 45, 320, 37, "gemm"),
    ("nf3", 64, 33, 192, 70, "gemm"),
    ("int3_sym", 128, 29, 256, 19, "auto"),
]


@needs_ocl
@pytest.mark.parametrize("mode,gs,n,k,m,path", MATMUL_CASES)
def test_matmul3_matches_reference(mode, gs, n, k, m, path):
    rng = np.random.default_rng(zlib.crc32(repr((mode, gs, n, k, m)).encode()))
    w, s, z, c = random_case(rng, n, k, gs, mode)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = H.matmul3(x, w, s, z, c, gs, path=path, fast="none")
    assert y.shape == (m, n)
    assert _err(y, matmul3_ref(x, w, s, z, c, gs)) < RTOL


@needs_ocl
def test_matmul3_leading_dims():
    rng = np.random.default_rng(7)
    w, s, z, c = random_case(rng, 20, 128, 64, "int3_asym")
    x = rng.standard_normal((2, 3, 128)).astype(np.float32)
    y = H.matmul3(x, w, s, z, c, 64)
    assert y.shape == (2, 3, 20)
    assert _err(y, matmul3_ref(x, w, s, z, c, 64)) < RTOL


# ------------------------------------------------------------------------------------------------ MoE3
# (mode, group_size, E, H, I, top_k, normalize, T, path)
MOE_CASES = [
    ("int3_sym", 32, 6, 192, 96, 3, True, 1, "decode"),
    ("int3_asym", 64, 5, 320, 128, 2, False, 2, "decode"),
    ("nf3", 128, 8, 256, 128, 8, True, 1, "auto"),            # top_k == E
    ("int3_asym", 32, 7, 160, 96, 2, True, 45, "prefill"),
    ("nf3", 64, 4, 192, 64, 3, False, 70, "prefill"),         # > 2 token tiles for busy experts
    ("int3_sym", 128, 10, 256, 128, 4, True, 12, "auto"),
    ("int3_asym", 32, 6, 96, 160, 3, True, 2, "fused"),
    ("nf3", 64, 5, 576, 64, 2, False, 3, "fused"),            # > 1 hidden tile per token
    ("int3_asym", 80, 4, 80, 80, 2, True, 2, "decode"),       # H, I not multiples of 32 (group_size == K)
    ("nf3", 80, 4, 80, 80, 3, False, 40, "prefill"),
    ("int3_sym", 80, 4, 80, 80, 2, True, 2, "fused"),
]


@needs_ocl
@pytest.mark.parametrize("mode,gs,e,h,i,top_k,norm,t,path", MOE_CASES)
def test_moe3_matches_reference(mode, gs, e, h, i, top_k, norm, t, path):
    rng = np.random.default_rng(zlib.crc32(repr((mode, gs, e, h, i, top_k, t)).encode()))
    ops, c = _moe_case(rng, e, h, i, gs, mode)
    x = rng.standard_normal((t, h)).astype(np.float32)
    logits = (2 * rng.standard_normal((t, e))).astype(np.float32)
    kw = dict(top_k=top_k, normalize_topk=norm, group_size=gs)
    y = H.moe3(x, logits, *ops, c, path=path, fast="none", **kw)
    assert y.shape == (t, h)
    assert _err(y, moe3_ref(x, logits, *ops, c, **kw)) < RTOL


@needs_ocl
def test_moe3_routing_ties_prefer_lower_expert():
    rng = np.random.default_rng(11)
    ops, c = _moe_case(rng, 6, 64, 32, 32, "int3_sym")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    logits = np.array([[1, 3, 3, 0, 3, 1], [0, 0, 0, 0, 0, 0]], np.float32)  # ties across the top-k boundary
    kw = dict(top_k=2, normalize_topk=False, group_size=32)
    for path in ("decode", "fused"):
        assert _err(H.moe3(x, logits, *ops, c, path=path, **kw), moe3_ref(x, logits, *ops, c, **kw)) < RTOL


# ------------------------------------------------------------------------------------------------ k3 layout v2
def _hand_packed(k, entries):
    """k3 version-2 bytes written straight from the spec (not via pack_k3): one row per (v, q), code q at K index v,
    every other code 0. Super-block s = v // 64, u = v % 64: low 2 bits at byte u % 16, bits 2 * (u // 16); bit 2
    at bit u of the little-endian uint64 in bytes 16..23."""
    kb = 2 * -(-k // 64)
    w = np.zeros((len(entries), kb // 2, 24), np.uint8)
    for r, (v, q) in enumerate(entries):
        s, u = divmod(v, 64)
        w[r, s, u % 16] |= (q & 3) << (2 * (u // 16))
        w[r, s, 16 + u // 8] |= ((q >> 2) & 1) << (u % 8)
    return w.reshape(len(entries), kb, 12)


@needs_ocl
@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_kernels_read_k3_v2_bytes(path):
    """Hand-written version-2 bytes: Y = X @ W^T with X = identity picks out each code, so every (value index,
    code) lands exactly where the spec says -- independent of pack_k3 (checked against it too)."""
    k = 160  # 3 super-blocks, the last half padding
    entries = [(0, 5), (15, 3), (16, 6), (31, 7), (32, 1), (47, 4), (48, 2), (63, 7), (64, 6), (100, 5), (127, 3),
               (159, 7)]
    w = _hand_packed(k, entries)
    codes = np.zeros((len(entries), k), np.uint8)
    for r, (v, q) in enumerate(entries):
        codes[r, v] = q
    np.testing.assert_array_equal(w, pack_k3(codes))
    s = np.ones((len(entries), k // 32), np.float16)
    z, c = np.array([0], np.uint8), np.arange(8, dtype=np.float16)
    x = np.eye(k, dtype=np.float32)[: (8 if path == "gemv" else k)]
    y = H.matmul3(x, w, s, z, c, 32, path=path, fast="none")
    np.testing.assert_array_equal(y, codes[:, : x.shape[0]].T.astype(np.float32))


@needs_ocl
def test_harness_rejects_version1_shapes():
    """Version-1 tensors had Kb = K/32 (odd for K = 96): refused instead of read with the wrong row stride."""
    rng = np.random.default_rng(1)
    w, s, z, c = random_case(rng, 4, 96, 32, "int3_sym")
    assert w.shape == (4, 4, 12)
    with pytest.raises(ValueError, match="k3"):
        H.MatMul3Plan(w[:, :3], s, z, c, 32)


# ------------------------------------------------------------------------------------------------ fast paths
@needs_ocl
@pytest.mark.parametrize("kind", ["matmul3", "moe3"])
def test_kernels_compile_with_and_without_each_fast_path(kind):
    rt = H.runtime()
    names = sorted(H.FAST_PATHS)
    H.build(kind, fast=())  # portable core / every #else branch
    for name in names:
        H.build(kind, fast=(name,))
    H.build(kind, fast=tuple(names))  # all switches at once (emulation + real extensions: real ones win)
    # fast paths whose extension the device lacks must be guarded: the build above succeeded, and the kernels
    # must not have taken the extension branch (checked numerically in the next test)
    assert rt.device is not None


@needs_ocl
@pytest.mark.parametrize("name", sorted(H.FAST_PATHS))
def test_fast_paths_numerics(name):
    """Each fast-path switch gives reference results: emulated sub-groups exercise the block-read/shuffle and
    sub-group reduction code; extension paths the device lacks fall back to the portable code."""
    rng = np.random.default_rng(5)
    w, s, z, c = random_case(rng, 13, 32 * 70, 64, "int3_sym")  # KB=70: full aligned + partial chunks
    x = rng.standard_normal((2, 32 * 70)).astype(np.float32)
    ref = matmul3_ref(x, w, s, z, c, 64)
    ext = H._EXTENSION_OF.get(name)
    guarded = ext is not None and not H.runtime().has_extension(ext)
    tol = 3e-3 if name == "fp16" and not guarded else RTOL
    for path in ("gemv", "gemm"):
        y = H.matmul3(x, w, s, z, c, 64, path=path, fast=(name,))
        assert _err(y, ref) < tol, path
        if guarded:  # switch on, extension absent: must be exactly the portable kernel
            np.testing.assert_array_equal(y, H.matmul3(x, w, s, z, c, 64, path=path, fast="none"))
    ops, cb = _moe_case(rng, 4, 96, 64, 32, "int3_sym")
    xm = rng.standard_normal((33, 96)).astype(np.float32)
    lg = rng.standard_normal((33, 4)).astype(np.float32)
    kw = dict(top_k=2, normalize_topk=True, group_size=32)
    mref = moe3_ref(xm, lg, *ops, cb, **kw)
    assert _err(H.moe3(xm, lg, *ops, cb, path="prefill", fast=(name,), **kw), mref) < tol
    assert _err(H.moe3(xm[:1], lg[:1], *ops, cb, path="decode", fast=(name,), **kw), mref[:1]) < tol


@needs_ocl
@pytest.mark.parametrize("k", [32 * 69, 32 * 127])
def test_emulated_subgroup_block_reads_with_padding_blocks(k):
    """Sub-group block reads (emulated: one sub-group = the work-group of 64 lanes) on rows with an all-padding
    last block (K % 64 == 32). K = 32*69: Kb = 70, a full block-read chunk then a partial (fallback) one; even rows
    are 16-byte aligned (block reads), odd rows not (fallback). K = 32*127: Kb = 128 = two full chunks, the
    padding block inside a block-read chunk (its lane reads but does not accumulate)."""
    rng = np.random.default_rng(k)
    w, s, z, c = random_case(rng, 7, k, 32, "nf3")
    x = rng.standard_normal((2, k)).astype(np.float32)
    ref = matmul3_ref(x, w, s, z, c, 32)
    assert _err(H.matmul3(x, w, s, z, c, 32, path="gemv", fast=("emulate_subgroups",)), ref) < RTOL


@needs_ocl
def test_unknown_fast_path_rejected():
    with pytest.raises(ValueError):
        H.resolve_fast(H.runtime(), "warp_speed")


# ------------------------------------------------------------------------------------------------ u3 layouts
@pytest.mark.parametrize("layout", u3.LAYOUTS)
def test_u3_layout_roundtrip_to_k3(layout):
    """Either OpenVINO u3 layout -> codes -> k3 kernel layout -> codes (what the transformation must do)."""
    rng = np.random.default_rng(3)
    n, k = 5, 96
    codes = rng.integers(0, 8, (n, k)).astype(np.uint8)
    packed = u3.pack(codes, layout)
    back = u3.unpack(packed, codes.size, layout).reshape(n, k)
    np.testing.assert_array_equal(unpack_k3(pack_k3(back), k), codes)


# ------------------------------------------------------------------------------------------------ benchmark smoke
@needs_ocl
def test_bench_gpu_quick_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "decode" in out and "prefill" in out and "roofline" in out
