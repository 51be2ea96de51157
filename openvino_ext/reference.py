"""The contract of the native 3-bit ops (``MatMul3``, ``MoE3``) and their numpy reference (the oracle every CPU
and GPU kernel is tested against).

Kernel weight layout "k3" (produced by the companion transformation, consumed by every kernel)
------------------------------------------------------------------------------------------------
A weight ``W[.., N, K]`` with codes ``q`` in [0, 7] is stored per row in blocks of 32 consecutive K values;
each block is 12 bytes::

    bytes 0..7   low-2-bit plane: uint64 little-endian, value i (0..31) at bits 2i..2i+1
    bytes 8..11  high-bit plane:  uint32 little-endian, value i at bit i

-> ``uint8[.., N, ceil(K/32), 12]`` (exactly 3 bits per weight; the tail block of a row is zero-padded and the
kernels never read past K). No value straddles a byte boundary within a plane.

Dequantization (one formula for every mode)::

    w[n, k] = S[n, k // gs] * (C[q[n, k]] - Z[n, k // gs])

* ``S`` f16 ``[.., N, G]``, ``G = K / gs`` (gs = ``group_size`` attribute; must divide K; a multiple of 32
  or K itself).
* ``Z`` u8 ``[.., N, G]`` (int3_asym) or ``[1]`` (a scalar broadcast: 4 for int3_sym, 0 for nf3).
* ``C`` f16 ``[8]``: ``[0, 1, ..., 7]`` for the integer modes, the NF3 codebook for nf3.

MatMul3 (opset "nncf_moe3"): inputs ``X f32 [.., K]``, ``W u8 [N, Kb, 12]``, ``S``, ``Z``, ``C``;
attribute ``group_size``; output ``Y f32 [.., N] = X @ w^T``.

MoE3 (opset "nncf_moe3"): routed experts of one MoE block, SwiGLU experts::

    inputs  0 X f32 [T, H]            1 router_logits f32 [T, E]
            2 Wg u8 [E, I, Hb, 12]    3 Sg f16 [E, I, H/gs]   4 Zg u8 [E, I, H/gs] | [1]
            5 Wu, 6 Su, 7 Zu          (same shapes as gate)
            8 Wd u8 [E, H, Ib, 12]    9 Sd f16 [E, H, I/gs]   10 Zd u8 [E, H, I/gs] | [1]
            11 C f16 [8]
    attributes  top_k, normalize_topk (bool), group_size
    routing     p = softmax(router_logits) over E; top-k by p; weights p_topk (/ sum(p_topk) if normalize_topk)
                (Qwen3-MoE: normalize_topk=True; Mixtral's softmax-over-top-k equals this with True;
                Qwen2-MoE with norm_topk_prob=False: False)
    output  Y f32 [T, H] = sum_k w_k * down_e(silu(gate_e(x)) * up_e(x)),  e = k-th selected expert
A shared expert (Qwen2-MoE) stays outside MoE3 (its 2-D weights become MatMul3 ops).
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = 12
INT_CODEBOOK = np.arange(8, dtype=np.float16)


def pack_k3(codes: np.ndarray) -> np.ndarray:
    """Codes ``[.., N, K]`` (ints 0..7) -> ``uint8[.., N, ceil(K/32), 12]`` in the k3 layout."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > 7):
        raise ValueError("k3 codes must lie in [0, 7]")
    *lead, k = codes.shape
    kb = -(-k // BLOCK)
    padded = np.zeros((*lead, kb * BLOCK), dtype=np.uint64)
    padded[..., :k] = codes
    blocks = padded.reshape(*lead, kb, BLOCK)
    shifts = np.arange(BLOCK, dtype=np.uint64)
    low = np.bitwise_or.reduce((blocks & np.uint64(3)) << (np.uint64(2) * shifts), axis=-1)
    high = np.bitwise_or.reduce(((blocks >> np.uint64(2)) & np.uint64(1)) << shifts, axis=-1)
    out = np.empty((*lead, kb, BLOCK_BYTES), dtype=np.uint8)
    out[..., :8] = low.astype("<u8")[..., None].view(np.uint8).reshape(*lead, kb, 8)
    out[..., 8:] = high.astype("<u4")[..., None].view(np.uint8).reshape(*lead, kb, 4)
    return out


def unpack_k3(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_k3`: ``uint8[.., N, Kb, 12]`` -> codes ``uint8[.., N, k]``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    *lead, kb, nb = packed.shape
    if nb != BLOCK_BYTES or kb * BLOCK < k:
        raise ValueError(f"k3 weights of shape {packed.shape} cannot hold K={k}")
    low = packed[..., :8].copy().view("<u8")[..., 0]
    high = packed[..., 8:].copy().view("<u4")[..., 0].astype(np.uint64)
    shifts = np.arange(BLOCK, dtype=np.uint64)
    lo = (low[..., None] >> (np.uint64(2) * shifts)) & np.uint64(3)
    hi = (high[..., None] >> shifts) & np.uint64(1)
    return (lo | (hi << np.uint64(2))).astype(np.uint8).reshape(*lead, kb * BLOCK)[..., :k]


def dequantize(w: np.ndarray, s: np.ndarray, z: np.ndarray, c: np.ndarray, group_size: int, k: int) -> np.ndarray:
    """Float32 weights ``[.., N, K]`` from k3 codes, scales, zero points and codebook (see module docstring)."""
    if k % group_size:
        raise ValueError(f"group_size {group_size} does not divide K={k}")
    q = unpack_k3(w, k)
    lv = np.asarray(c, dtype=np.float16).astype(np.float32)[q]
    g = k // group_size
    s = np.asarray(s, dtype=np.float16).astype(np.float32)
    z = np.asarray(z).astype(np.float32)
    if s.shape[-1] != g:
        raise ValueError(f"scales have {s.shape[-1]} groups, expected K/group_size = {g}")
    lvg = lv.reshape(*lv.shape[:-1], g, group_size)
    zz = z[..., None] if z.size > 1 else z.reshape(())
    return (s[..., None] * (lvg - zz)).reshape(lv.shape)


def matmul3_ref(x, w, s, z, c, group_size: int) -> np.ndarray:
    """``Y = X @ dequantize(W)^T`` in float32 (MatMul3 reference)."""
    x = np.asarray(x, dtype=np.float32)
    wf = dequantize(w, s, z, c, group_size, x.shape[-1])
    return x @ wf.T


def route(logits: np.ndarray, top_k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Softmax -> top-k (ties: lower expert index first) -> optional renormalisation. Returns (idx, weights)."""
    logits = np.asarray(logits, dtype=np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
    wts = np.take_along_axis(p, idx, -1)
    if normalize:
        wts = wts / wts.sum(-1, keepdims=True)
    return idx, wts


def moe3_ref(x, router_logits, wg, sg, zg, wu, su, zu, wd, sd, zd, c, *, top_k: int, normalize_topk: bool,
             group_size: int) -> np.ndarray:
    """MoE3 reference: routed SwiGLU experts with k3 weights (see module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    t, h = x.shape
    e = wg.shape[0]
    inter = sg.shape[1]
    idx, wts = route(router_logits, top_k, normalize_topk)
    out = np.zeros((t, h), dtype=np.float32)

    def zsel(zarr, ex):
        zarr = np.asarray(zarr)
        return zarr if zarr.size == 1 else zarr[ex]

    for ex in range(e):
        rows, slot = np.nonzero(idx == ex)
        if rows.size == 0:
            continue
        xe = x[rows]
        gate = xe @ dequantize(wg[ex], sg[ex], zsel(zg, ex), c, group_size, h).T
        up = xe @ dequantize(wu[ex], su[ex], zsel(zu, ex), c, group_size, h).T
        act = gate / (1.0 + np.exp(-gate)) * up
        down = act @ dequantize(wd[ex], sd[ex], zsel(zd, ex), c, group_size, inter).T
        out[rows] += wts[rows, slot][:, None] * down
    return out


def random_case(rng: np.random.Generator, n: int, k: int, group_size: int, mode: str, lead: tuple = ()):
    """Random k3 weight operands ``(W, S, Z, C)`` of shape ``[*lead, n, k]`` for tests and benchmarks."""
    from nncf_moe3.quantization import NF3_CODEBOOK

    codes = rng.integers(0, 8, (*lead, n, k))
    g = k // group_size
    s = (rng.uniform(0.5, 1.5, (*lead, n, g)) * 0.02).astype(np.float16)
    if mode == "int3_sym":
        z, c = np.array([4], np.uint8), INT_CODEBOOK
    elif mode == "int3_asym":
        z, c = rng.integers(0, 8, (*lead, n, g)).astype(np.uint8), INT_CODEBOOK
    elif mode == "nf3":
        z, c = np.array([0], np.uint8), NF3_CODEBOOK.astype(np.float16)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return pack_k3(codes), s, z, c.astype(np.float16)
