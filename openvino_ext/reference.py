"""The contract of the native 3-bit ops (``MatMul3``, ``MoE3``) and their numpy reference (the oracle every CPU
and GPU kernel is tested against).

Kernel weight layout "k3" version 2 (produced by the companion transformation, consumed by every kernel)
-----------------------------------------------------------------------------------------------------------
A weight ``W[.., N, K]`` with codes ``q`` in [0, 7] is stored per row in super-blocks of 64 consecutive K values,
24 bytes each (exactly 3 bits per weight)::

    bytes 0..15   low-2-bit plane: byte b holds the low 2 bits of values b, 16+b, 32+b, 48+b at bits 0-1, 2-3,
                  4-5, 6-7 (value v at byte v % 16, bits 2*(v // 16))
    bytes 16..23  high-bit plane: uint64 little-endian, bit 2 of value v at bit v

The tensor keeps a 32-value block granularity: ``uint8[.., N, Kb, 12]`` with ``Kb = 2 * ceil(K/64)`` (always even;
block ``b`` is half ``b % 2`` of super-block ``b // 2``, its 12 bytes are NOT self-contained). The row tail is
zero-padded up to a multiple of 64; kernels multiply padded positions by zero activations.

Why this layout: broadcasting the 16 low bytes to the four 128-bit lanes and shifting lane j right by 2j puts
value ``16j + b`` at byte ``16j + b`` (natural order, no cross-lane byte shuffle); one 64-bit mask load then adds
the high bits (AVX-512: ``vbroadcasti32x4 / vpsrlvd / vpandd / kmovq / vpaddb{k}`` per 64 values — measured 1.45x
the decode throughput of version 1's ``vpermb + 2 vpmultishiftqb`` unpack on a Zen 4 core). Version 1 (12-byte
self-contained blocks, value i at bits 2i of a uint64) is refused by the ops (attribute ``k3_version``).

Dequantization (one formula for every mode)::

    w[n, k] = S[n, k // gs] * (C[q[n, k]] - Z[n, k // gs])

* ``S`` f16 ``[.., N, G]``, ``G = K / gs`` (gs = ``group_size`` attribute; must divide K; a multiple of 32
  or K itself).
* ``Z`` u8 ``[.., N, G]`` (int3_asym) or ``[1]`` (a scalar broadcast: 4 for int3_sym, 0 for nf3).
* ``C`` f16 ``[8]``: ``[0, 1, ..., 7]`` for the integer modes, the NF3 codebook for nf3.

MatMul3 (opset "nncf_moe3"): inputs ``X f32 [.., K]``, ``W u8 [N, Kb, 12]``, ``S``, ``Z``, ``C``;
attributes ``group_size``, ``k3_version`` (= :data:`K3_VERSION`); output ``Y f32 [.., N] = X @ w^T``.

MoE3 (opset "nncf_moe3"): routed experts of one MoE block, SwiGLU experts::

    inputs  0 X f32 [T, H]            1 router_logits f32 [T, E]
            2 Wg u8 [E, I, Hb, 12]    3 Sg f16 [E, I, H/gs]   4 Zg u8 [E, I, H/gs] | [1]
            5 Wu, 6 Su, 7 Zu          (same shapes as gate)
            8 Wd u8 [E, H, Ib, 12]    9 Sd f16 [E, H, I/gs]   10 Zd u8 [E, H, I/gs] | [1]
            11 C f16 [8]
    attributes  top_k, normalize_topk (bool), group_size, k3_version
    routing     p = softmax(router_logits) over E; top-k by p; weights p_topk (/ sum(p_topk) if normalize_topk)
                (Qwen3-MoE: normalize_topk=True; Mixtral's softmax-over-top-k equals this with True;
                Qwen2-MoE with norm_topk_prob=False: False)
    output  Y f32 [T, H] = sum_k w_k * down_e(silu(gate_e(x)) * up_e(x)),  e = k-th selected expert
A shared expert (Qwen2-MoE) stays outside MoE3 (its 2-D weights become MatMul3 ops).

MoE3R (opset "nncf_moe3"): MoE3 with the router MatMul inside -- input 1 is the router weight
``W_r f32 [E, H]`` and ``router_logits = X @ W_r^T`` (f32) is computed by the op; everything else as MoE3. With
14 inputs the router is kept in 8 bits: input 1 ``u8 [E, H]``, 12 ``router_scale f32 [E]``, 13
``router_zero_point f32 [E]``, ``W_r[e] = scale[e] * (q[e] - zero_point[e])`` (NNCF's INT8_ASYM per row). With
15 inputs the router is kept in 3 bits like the experts: input 1 ``u8 [E, Hb, 12]`` (k3 codes), 12 ``router_scale
f16 [E, H/gs]``, 13 ``router_zero_point u8 [E, H/gs] | [1]``, 14 ``router_codebook f16 [8]``, ``W_r =
dequantize(..)`` with the op's ``group_size``; the op computes these logits in f32 (no int8 activations). A
separate op type so that a runtime implementing only MoE3 (the GPU custom layer) refuses it instead of reading
the router weight as logits. ``transform(model, "cpu")`` emits it when the router weight is a constant
(INT8_ASYM per row: kept u8; a u3 decompression subgraph with the experts' group size, as upstream INT3_SYM
writes it: kept k3; other float / u8 / i8 / u3 subgraphs: dequantized to f32 at transform time).

Packed operands (the CPU form; ``transform(model, "cpu")`` emits it): ``MatMul3(X, P)``, ``MoE3R(X, P)``,
``MoE3(X, router_logits, P)`` -- the same ops with every constant operand (inputs 1.. of MatMul3 / MoE3R, 2.. of
MoE3, in their order) in ONE ``u8 [bytes]`` tensor ``P`` written by :func:`pack_operands`. The CPU plugin's work per
extension node grows with its input count (it makes a Constant and a tensor view per input on every inference), so
MoE3R with 12 inputs costs it ~2-4 us per input more than a 2-input op. ``P``: a 16-byte header (uint32 LE magic
``0x4B50334B`` = bytes ``K3PK``, format version 1, section count n, header bytes 16 + 64 n), n 64-byte section
descriptors (uint32 element type 1 u8 / 2 f16 / 3 f32, uint32 rank 1..4, uint64 dims[4], uint64 offset, uint64
bytes), then the sections' data, each at a 64-byte aligned offset. The ops check the sections as they check the
unpacked inputs at their first inference; the GPU custom layer implements the unpacked form only.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = 12
SUPER = 64  # values per super-block (24 bytes)
K3_VERSION = 2
INT_CODEBOOK = np.arange(8, dtype=np.float16)


PACK_MAGIC = 0x4B50334B  # bytes "K3PK"
PACK_VERSION = 1
_PACK_TYPES = {np.dtype(np.uint8): 1, np.dtype(np.float16): 2, np.dtype(np.float32): 3}
_PACK_DTYPES = {v: k for k, v in _PACK_TYPES.items()}


def pack_operands(arrays) -> np.ndarray:
    """Pack the constant operands of a native op (in input order) into one ``u8`` blob (see the module docstring)."""
    arrays = [np.asarray(a) for a in arrays]
    if not 1 <= len(arrays) <= 64:
        raise ValueError(f"pack_operands takes 1..64 arrays, got {len(arrays)}")
    header = 16 + 64 * len(arrays)
    offsets, off = [], (header + 63) // 64 * 64
    for i, a in enumerate(arrays):
        if a.dtype not in _PACK_TYPES:
            raise ValueError(f"operand {i}: dtype {a.dtype} cannot be packed (u8, f16 or f32)")
        if not 1 <= a.ndim <= 4:
            raise ValueError(f"operand {i}: rank {a.ndim} cannot be packed (1..4)")
        offsets.append(off)
        off = (off + a.nbytes + 63) // 64 * 64
    blob = np.zeros(off, np.uint8)
    blob[:16] = np.frombuffer(np.array([PACK_MAGIC, PACK_VERSION, len(arrays), header], "<u4").tobytes(), np.uint8)
    for i, (a, o) in enumerate(zip(arrays, offsets)):
        dims = list(a.shape) + [0] * (4 - a.ndim)
        desc = np.array([_PACK_TYPES[a.dtype], a.ndim], "<u4").tobytes() + np.array(dims + [o, a.nbytes, 0], "<u8").tobytes()
        blob[16 + 64 * i:16 + 64 * (i + 1)] = np.frombuffer(desc, np.uint8)
        blob[o:o + a.nbytes] = np.frombuffer(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes(), np.uint8)
    return blob


def unpack_operands(blob) -> list:
    """Inverse of :func:`pack_operands`: the operands (copies) of a packed blob; raises ValueError on a malformed one."""
    b = np.ascontiguousarray(np.asarray(blob, dtype=np.uint8).ravel())
    if b.size < 16:
        raise ValueError("packed operands: shorter than the 16-byte header")
    magic, version, n, header = (int(v) for v in np.frombuffer(b[:16].tobytes(), "<u4"))
    if magic != PACK_MAGIC:
        raise ValueError("packed operands: bad magic (not written by pack_operands)")
    if version != PACK_VERSION:
        raise ValueError(f"packed operands: format version {version}, this build reads {PACK_VERSION}")
    if not 1 <= n <= 64 or header != 16 + 64 * n or header > b.size:
        raise ValueError(f"packed operands: corrupt header ({n} sections, header {header} of {b.size} bytes)")
    out = []
    for i in range(n):
        d = b[16 + 64 * i:16 + 64 * (i + 1)].tobytes()
        code, rank = (int(v) for v in np.frombuffer(d[:8], "<u4"))
        dims = [int(v) for v in np.frombuffer(d[8:40], "<u8")]
        off, nbytes = (int(v) for v in np.frombuffer(d[40:56], "<u8"))
        if code not in _PACK_DTYPES or not 1 <= rank <= 4:
            raise ValueError(f"packed operands: section {i} has type code {code} / rank {rank}")
        dt, shape = _PACK_DTYPES[code], tuple(dims[:rank])
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dt.itemsize or off % 64 or off < header or off + nbytes > b.size:
            raise ValueError(f"packed operands: section {i} {shape} at {off} ({nbytes} bytes) is out of bounds")
        out.append(np.frombuffer(b[off:off + nbytes].tobytes(), dt.newbyteorder("<")).astype(dt).reshape(shape))
    return out


def k3_blocks(k: int) -> int:
    """``Kb`` (32-value blocks, always even) of a row of ``k`` values."""
    return 2 * -(-k // SUPER)


def pack_k3(codes: np.ndarray) -> np.ndarray:
    """Codes ``[.., N, K]`` (ints 0..7) -> ``uint8[.., N, Kb, 12]`` in the k3 (version 2) layout."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > 7):
        raise ValueError("k3 codes must lie in [0, 7]")
    *lead, k = codes.shape
    kb = k3_blocks(k)
    ns = kb // 2
    padded = np.zeros((*lead, ns * SUPER), dtype=np.uint8)
    padded[..., :k] = codes
    sb = padded.reshape(*lead, ns, 4, 16).astype(np.uint8)  # [.., s, j, b] = value 16j + b
    low = np.zeros((*lead, ns, 16), dtype=np.uint8)
    for j in range(4):
        low |= (sb[..., j, :] & 3) << (2 * j)
    bits = ((padded.reshape(*lead, ns, SUPER) >> 2) & 1).astype(np.uint64)
    high = np.bitwise_or.reduce(bits << np.arange(SUPER, dtype=np.uint64), axis=-1)
    out = np.empty((*lead, ns, 24), dtype=np.uint8)
    out[..., :16] = low
    out[..., 16:] = high.astype("<u8")[..., None].view(np.uint8).reshape(*lead, ns, 8)
    return out.reshape(*lead, kb, BLOCK_BYTES)


def unpack_k3(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_k3`: ``uint8[.., N, Kb, 12]`` -> codes ``uint8[.., N, k]``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    *lead, kb, nb = packed.shape
    if nb != BLOCK_BYTES or kb % 2 or kb * BLOCK < k:
        raise ValueError(f"k3 weights of shape {packed.shape} cannot hold K={k} (Kb must be even and >= K/32)")
    sb = packed.reshape(*lead, kb // 2, 24)
    low = sb[..., :16]
    lo = np.stack([(low >> (2 * j)) & 3 for j in range(4)], axis=-2).reshape(*lead, kb // 2, SUPER)
    high = sb[..., 16:].copy().view("<u8")[..., 0]
    hi = ((high[..., None] >> np.arange(SUPER, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return (lo | (hi << 2)).astype(np.uint8).reshape(*lead, kb * BLOCK)[..., :k]


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


def moe3r_ref(x, router_weight, *weights, router_scale=None, router_zero_point=None, router_codebook=None,
              **attrs) -> np.ndarray:
    """MoE3R reference: :func:`moe3_ref` on ``router_logits = x @ W_r^T`` (f32), with ``W_r = router_weight`` (f32)
    or, given ``router_scale`` / ``router_zero_point`` ([E]), ``W_r[e] = router_scale[e] * (router_weight[e] -
    router_zero_point[e])`` (u8 router_weight), or, given ``router_codebook`` too, the k3 router
    ``dequantize(router_weight [E, Hb, 12], router_scale [E, G], router_zero_point, router_codebook, group_size)``."""
    x = np.asarray(x, dtype=np.float32)
    if router_codebook is not None:
        w = dequantize(router_weight, router_scale, router_zero_point, router_codebook, attrs["group_size"],
                       x.shape[1])
    elif router_scale is not None:
        w = np.asarray(router_scale, np.float32)[:, None] * (np.asarray(router_weight, np.float32) -
                                                             np.asarray(router_zero_point, np.float32)[:, None])
    else:
        w = np.asarray(router_weight, dtype=np.float32)
    logits = x.astype(np.float64) @ w.T.astype(np.float64)
    return moe3_ref(x, logits.astype(np.float32), *weights, **attrs)


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
