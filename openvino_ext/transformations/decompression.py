"""Parse the u3 weight-decompression subgraphs that NNCF (INT3_SYM) and nncf-moe3 (int3_sym / int3_asym / nf3) emit.

Recognised (``nncf_moe3/emit.py``, reference ``openvino.md`` §2), walking up from a MatMul's weight input::

    Constant(u3 [.., N, G, gs]) -> Convert(f16) -> [Subtract(Convert(Constant(i8 | u8 | u3 | u4 zp)))] -> Multiply(scale)
    Constant(u3) -> Convert(u8|i32) -> Gather(Constant(f16 codebook [8]), axis 0)                       -> Multiply(scale)
      -> [Reshape([.., N, K])] -> [Transpose(last two)] -> [Convert(f32)]

with ``scale`` a float Constant ``[.., N, G, 1]`` (``[.., N, 1]`` when there is no Reshape: per-channel). Everything
else raises :class:`Unsupported` with the reason (ICQ float zero points, double-quantized scales, group sizes that are
not a multiple of 32, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from openvino_ext import u3

INT_TYPES = ("u8", "i8", "u4", "i4", "u3", "u2", "i32", "i64")


class Unsupported(Exception):
    """A u3 decompression subgraph the transformation leaves untouched (message = reason)."""


def src(node, port: int = 0):
    return node.input(port).get_source_output().get_node()


def tname(node) -> str:
    return node.get_type_name()


def etype(node_or_output) -> str:
    return node_or_output.get_element_type().get_type_name()


def const_values(const, layout: str) -> np.ndarray:
    """Values of an integer/float Constant as numpy (u3 decoded with ``layout``)."""
    shape = tuple(const.get_output_shape(0))
    if etype(const) == "u3":
        count = int(np.prod(shape)) if shape else 1
        return u3.unpack(u3.constant_bytes(const), count, layout).reshape(shape)
    return np.asarray(const.get_data()).reshape(shape)


def _const_through_convert(node):
    """(Constant, Convert|None) when node is Constant or Convert(Constant), else (None, None)."""
    if tname(node) == "Constant":
        return node, None
    if tname(node) == "Convert" and tname(src(node)) == "Constant":
        return src(node), node
    return None, None


@dataclass
class U3Weight:
    """A parsed u3 decompression subgraph, in the MatMul3 / MoE3 operand form (see openvino_ext.reference)."""

    codes: np.ndarray  # uint8 [.., N, K]
    scale: np.ndarray  # f16 [.., N, G]
    zero_point: np.ndarray | int  # uint8 [.., N, G] or a scalar int
    codebook: np.ndarray  # f16 [8]
    group_size: int
    transposed: bool  # a Transpose swaps the last two dims (consumer MatMul has transpose_b=False)
    weight_const: object = None
    zp_const: object = None
    mode: str = ""
    nodes: list = field(default_factory=list)

    @property
    def lead(self) -> tuple:
        return tuple(self.codes.shape[:-2])

    @property
    def n(self) -> int:
        return int(self.codes.shape[-2])

    @property
    def k(self) -> int:
        return int(self.codes.shape[-1])

    def kernel_operands(self):
        """(W k3 u8 [.., N, Kb, 12], S f16 [.., N, G], Z u8 [.., N, G] | [1], C f16 [8])."""
        from openvino_ext.reference import pack_k3

        w = pack_k3(self.codes)
        if isinstance(self.zero_point, np.ndarray):
            z = np.ascontiguousarray(self.zero_point.astype(np.uint8))
        else:
            z = np.array([self.zero_point], dtype=np.uint8)
        return w, np.ascontiguousarray(self.scale), z, np.ascontiguousarray(self.codebook)


def _as_f16(values: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values)
    h = v.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), v.astype(np.float32)):
        raise Unsupported(f"{what} values are not representable in f16")
    return h


def parse(weight_output, layout: str) -> U3Weight:
    """Parse the decompression subgraph producing ``weight_output`` (a MatMul's input 1 source). Raises
    :class:`Unsupported` (with a reason) if it is not a supported u3 subgraph and ``LookupError`` if it holds no u3
    constant at all (not our business)."""
    node = weight_output.get_node()
    chain = []
    transposed = False
    reshape = None
    for _ in range(4):  # [Convert] [Transpose] [Reshape] in any order
        t = tname(node)
        if t == "Convert" and etype(node.output(0)) in ("f32", "f16", "bf16") and tname(src(node)) != "Constant":
            pass
        elif t == "Transpose" and not transposed:
            perm = src(node, 1)
            if tname(perm) != "Constant":
                raise Unsupported("Transpose with a non-constant permutation")
            p = [int(v) for v in np.asarray(perm.get_data()).ravel()]
            r = len(p)
            if r < 2 or p != list(range(r - 2)) + [r - 1, r - 2]:
                raise Unsupported(f"Transpose {p} does not swap the last two dims")
            transposed = True
        elif t == "Reshape" and reshape is None:
            reshape = node
        else:
            break
        chain.append(node)
        node = src(node)
    if tname(node) != "Multiply":
        _require_u3(node)
        raise Unsupported(f"expected the scale Multiply, found {tname(node)}")
    mul = node
    chain.append(mul)
    value, scale_node = None, None
    for p in (0, 1):
        cand = src(mul, p)
        c, _ = _const_through_convert(cand)
        if c is not None and etype(c) in ("f16", "f32", "bf16"):
            value, scale_node = src(mul, 1 - p), c
            break
    if scale_node is None:
        _require_u3(mul)
        if any(tname(src(mul, p)) == "Multiply" for p in (0, 1)):
            raise Unsupported("double-quantized scales (scale = sub-scale * super-scale)")
        raise Unsupported("scale is not a float Constant")

    zp_const, zp_float = None, False
    if tname(value) == "Subtract":
        chain.append(value)
        zc, _ = _const_through_convert(src(value, 1))
        if zc is None:
            _require_u3(value)
            raise Unsupported("zero point is not a Constant")
        zp_const, zp_float = zc, etype(zc) not in INT_TYPES
        value = src(value, 0)

    codebook = None
    if tname(value) == "Gather":
        cb = src(value, 0)
        ax = src(value, 2)
        idx = src(value, 1)
        if tname(idx) == "Convert":
            idx = src(idx)
        if tname(idx) != "Constant" or etype(idx) != "u3":
            raise LookupError("not a u3 codebook Gather")
        if tname(cb) != "Constant" or tuple(cb.get_output_shape(0)) != (8,) or tname(ax) != "Constant" or \
                int(np.asarray(ax.get_data()).ravel()[0]) != 0:
            raise Unsupported("codebook Gather is not Gather(Constant[8], codes, axis 0)")
        codebook = _as_f16(np.asarray(cb.get_data(), dtype=np.float32), "codebook")
        wconst = idx
        mode = "nf3"
    elif tname(value) == "Convert" and tname(src(value)) == "Constant":
        wconst = src(value)
        if etype(wconst) != "u3":
            raise LookupError(f"{etype(wconst)} weights")
        codebook = np.arange(8, dtype=np.float16)
        mode = "int3"
    else:
        _require_u3(value)
        raise Unsupported(f"unexpected node {tname(value)} above the scale Multiply")

    if zp_float:
        raise Unsupported("float zero point (ICQ offset) is not supported by the kernels")
    codes = const_values(wconst, layout).astype(np.uint8)
    scale = np.asarray(scale_node.get_data(), dtype=np.float32).reshape(tuple(scale_node.get_output_shape(0)))
    if codes.ndim < 2:
        raise Unsupported(f"weight of rank {codes.ndim}")
    if reshape is not None:
        if codes.ndim < 3:
            raise Unsupported("Reshape of an ungrouped weight")
        *lead, n, g, gs = codes.shape
        target = tuple(reshape.get_output_shape(0))
        if target != (*lead, n, g * gs):
            raise Unsupported(f"Reshape {codes.shape} -> {target} is not a group merge")
        if scale.shape != (*lead, n, g, 1):
            raise Unsupported(f"scale shape {scale.shape} does not match grouped weight {codes.shape}")
        codes = codes.reshape(*lead, n, g * gs)
        scale = scale.reshape(*lead, n, g)
    else:
        *lead, n, k = codes.shape
        if scale.shape != (*lead, n, 1):
            raise Unsupported(f"scale shape {scale.shape} does not match weight {codes.shape}")
        g, gs = 1, k
        scale = scale.reshape(*lead, n, 1)
    k = codes.shape[-1]
    if g > 1 and gs % 32:
        raise Unsupported(f"group size {gs} is not a multiple of 32")
    scale16 = _as_f16(scale, "scale")

    if zp_const is None:
        zp = 0
    else:
        z = const_values(zp_const, layout).astype(np.int64)
        if z.size == 1:
            zp = int(z.ravel()[0])
            if not 0 <= zp <= 255:
                raise Unsupported(f"scalar zero point {zp} outside [0, 255]")
        else:
            want = (*codes.shape[:-1], g, 1) if reshape is not None else (*codes.shape[:-1], 1)
            if z.shape != want and z.shape != want[:-1]:
                raise Unsupported(f"zero point shape {z.shape} is not per group {want}")
            if z.min() < 0 or z.max() > 255:
                raise Unsupported("zero point outside [0, 255]")
            zp = z.reshape(*codes.shape[:-1], g).astype(np.uint8)
        if mode == "int3":
            mode = "int3_sym" if not isinstance(zp, np.ndarray) else "int3_asym"
    return U3Weight(codes, scale16, zp, codebook, gs, transposed, wconst, zp_const, mode, chain)


def _require_u3(node, depth: int = 6):
    """Raise LookupError unless a u3 Constant is reachable upward from node within ``depth`` steps."""
    frontier = [(node, 0)]
    while frontier:
        nd, d = frontier.pop()
        if tname(nd) == "Constant" and etype(nd) == "u3":
            return
        if d < depth:
            frontier.extend((src(nd, p), d + 1) for p in range(nd.get_input_size()))
    raise LookupError("no u3 constant")
