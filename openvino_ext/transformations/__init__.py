"""Companion graph transformation of the nncf_moe3 ops (a Python graph walk over an ``ov.Model``).

``transform(model, "cpu")``
    * tiled MoE blocks whose routed experts are u3 (gate / up / down ``[E, N, K]``) -> one ``MoE3R`` op per block
      (routing ``MatMul -> Softmax -> TopK -> [Divide by ReduceSum] -> ScatterElementsUpdate -> Transpose ->
      Reshape -> Multiply -> ReduceSum``, reference ``openvino.md`` §3.2), with the router MatMul inside the op
      when its weight is a constant subgraph that reads the experts' input (an INT8_ASYM per-row router stays 8-bit,
      a u3 router with the experts' group size stays 3-bit in the k3 layout, anything else is folded to f32
      [E, H]); otherwise ``MoE3``, which takes the logits computed by the graph (reason logged);
    * every other u3 decompression subgraph feeding a MatMul with a 2-D weight -> ``MatMul3``;
    * ``fuse=True`` (default): MatMul3 ops reading the same activations with the same K / group size / zero-point
      kind / codebook (q/k/v projections, a shared expert's gate/up) -> one MatMul3 over the concatenated rows +
      ``VariadicSplit`` (one weight stream, one activation quantization and one thread-pool dispatch instead of
      several; per-row results are identical).
    * ``activations="bf16"`` (default where the CPU plugin runs bf16 by default): the native ops read and write bf16
      (Convert nodes the plugin drops in bf16 mode), so that it inserts no layout reorders around them; the kernels
      compute in f32.
    * ``pack=True`` (default): each native op's constant operands go into ONE u8 constant
      (:func:`openvino_ext.reference.pack_operands`): ``MatMul3(X, P)``, ``MoE3R(X, P)``, ``MoE3(X, logits, P)``.
      The CPU plugin's work per extension node grows with its input count (a Constant and a tensor view per input
      on every inference): the MoE-stack decode runs 3–8 % faster with 2 inputs per op than with 5 / 12.
``transform(model, "gpu")``
    the same without the router fusion: ``MoE3`` + ``MatMul3`` only, the ops the GPU custom layer implements.
``transform(model, "widen")``
    u3 constants -> u4 (lossless), the scalar i8 zero point of INT3_SYM -> u4 and per-group u3 zero points -> u4,
    the rest of the subgraph unchanged: stock plugins then keep the weights compressed (INT4 kernels).

Subgraphs not handled are left untouched and logged (logger ``"openvino_ext"``). The model is modified in place
and returned. u3 constants are decoded with the layout recorded in the model's rt_info (``nncf_moe3/u3_layout``)
or, without one, the installed OpenVINO's (:data:`openvino_ext.u3.LAYOUT`).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from openvino_ext import u3
from openvino_ext.reference import K3_VERSION
from openvino_ext.transformations.decompression import (U3Weight, Unsupported, const_values, etype, parse, src,
                                                        tname)

logger = logging.getLogger("openvino_ext")

__all__ = ["transform", "register", "TARGETS", "Unsupported", "U3Weight", "last_stats"]

TARGETS = ("cpu", "gpu", "widen")
U3_LAYOUT_KEY = ["nncf_moe3", "u3_layout"]

#: Counters of the last :func:`transform` call (e.g. {"MoE3": 2, "MatMul3": 9, "skipped": 1}).
last_stats: Counter = Counter()


def model_layout(model) -> str:
    if model.has_rt_info(U3_LAYOUT_KEY):
        layout = model.get_rt_info(U3_LAYOUT_KEY).astype(str)
        if layout in u3.LAYOUTS:
            return layout
    return u3.LAYOUT


def _factory():
    from openvino.utils.node_factory import NodeFactory

    import openvino_ext

    f = NodeFactory()
    f.add_extension(str(openvino_ext.library_path(build=True)))
    return f


def _consts(arrays):
    from openvino import opset13 as ops

    return [ops.constant(a).output(0) for a in arrays]


# ----------------------------------------------------------------------------------------------------------------
# MoE blocks
# ----------------------------------------------------------------------------------------------------------------
def _skip(node, types=("Reshape", "Unsqueeze", "Squeeze", "Convert")):
    while tname(node) in types:
        node = src(node)
    return node


def _const_int(node):
    if tname(node) != "Constant":
        return None
    return [int(v) for v in np.asarray(node.get_data()).ravel()]


def _match_router(r_node):
    """(logits Output, top_k, normalize) from the routing tensor r[E, T, 1] node, or raise Unsupported."""
    node = _skip(r_node)
    if tname(node) != "Transpose":
        raise Unsupported(f"routing tensor: expected Transpose, found {tname(node)}")
    seu = _skip(src(node))
    if tname(seu) != "ScatterElementsUpdate":
        raise Unsupported(f"routing tensor: expected ScatterElementsUpdate, found {tname(seu)}")
    axis = _const_int(src(seu, 3))
    if axis not in ([1], [-1]):
        raise Unsupported(f"ScatterElementsUpdate axis {axis}")
    idx = src(seu, 1)
    idx_out = seu.input(1).get_source_output()
    while tname(idx) == "Convert":
        idx_out = idx.input(0).get_source_output()
        idx = src(idx)
    if tname(idx) != "TopK" or idx_out.get_index() != 1:
        raise Unsupported("scatter indices are not TopK indices")
    topk = idx
    upd = _skip(src(seu, 2), ("Slice", "Convert", "Reshape"))
    normalize = False
    if tname(upd) == "Divide":
        num = src(upd, 0)
        den = _skip(src(upd, 1), ("Convert",))
        if num is not topk and num.get_friendly_name() != topk.get_friendly_name():
            raise Unsupported("routing weights: Divide numerator is not the TopK values")
        if tname(den) != "ReduceSum" or src(den).get_friendly_name() != topk.get_friendly_name():
            raise Unsupported("routing weights: Divide by something else than ReduceSum(top-k values)")
        normalize = True
    elif upd.get_friendly_name() != topk.get_friendly_name():
        raise Unsupported(f"routing weights: unexpected {tname(upd)}")
    k = _const_int(src(topk, 1))
    attrs = topk.get_attributes()
    if k is None or len(k) != 1 or attrs.get("mode") != "max":
        raise Unsupported("TopK with non-constant k or mode != max")
    sm = _skip(src(topk), ("Convert",))
    if tname(sm) != "Softmax":
        raise Unsupported(f"router: expected Softmax before TopK, found {tname(sm)}")
    rank = sm.get_output_partial_shape(0).rank.get_length()
    if sm.get_attributes().get("axis") not in (-1, rank - 1) or rank != 2:
        raise Unsupported("router Softmax is not over the last axis of [T, E] logits")
    logits = sm.input(0).get_source_output()
    if etype(logits) != "f32":
        raise Unsupported(f"router logits are {etype(logits)}, MoE3 takes f32")
    return logits, k[0], normalize


def _match_moe(reduce_sum, layout):
    """Parsed MoE block rooted at ReduceSum, or None (not a MoE root). Raises Unsupported."""
    if reduce_sum.get_attributes().get("keep_dims", False) or _const_int(src(reduce_sum, 1)) != [0]:
        return None
    mul = src(reduce_sum)
    if tname(mul) != "Multiply":
        return None
    for p in (0, 1):
        down = _skip(src(mul, p), ("Reshape",))
        if tname(down) == "MatMul" and len(down.get_input_partial_shape(1)) == 3:
            break
    else:
        return None
    r_node = src(mul, 1 - p)
    attrs = down.get_attributes()
    if attrs.get("transpose_a"):
        raise Unsupported("expert MatMul with transpose_a")
    try:
        wd = parse(down.input(1).get_source_output(), layout)
    except LookupError:
        return None
    act = src(down)
    if tname(act) != "Multiply":
        raise Unsupported("down projection input is not Multiply(Swish(gate), up)")
    a, b = src(act, 0), src(act, 1)
    if tname(a) != "Swish":
        a, b = b, a
    if tname(a) != "Swish" or a.get_input_size() != 1 or tname(b) != "MatMul":
        raise Unsupported("expert activation is not Swish(gate) * up (SwiGLU)")
    gate, up = src(a), b
    if tname(gate) != "MatMul":
        raise Unsupported("Swish input is not a MatMul")
    tiled = gate.input(0).get_source_output()
    if up.input(0).get_source_output() != tiled:
        raise Unsupported("gate and up projections read different inputs")
    tile = _skip(tiled.get_node(), ("Reshape",))
    if tname(tile) != "Tile":
        raise Unsupported("expert input is not Reshape(Tile(x))")
    x = tile.input(0).get_source_output()
    if x.get_partial_shape().rank.get_length() != 2 or etype(x) != "f32":
        raise Unsupported("tiled expert input is not an f32 [T, H] tensor")
    wg = parse(gate.input(1).get_source_output(), layout)
    wu = parse(up.input(1).get_source_output(), layout)
    for m, w in (("gate", gate), ("up", up), ("down", down)):
        at = w.get_attributes()
        if at.get("transpose_a"):
            raise Unsupported(f"{m} MatMul with transpose_a")
    for name, w, mm in (("gate", wg, gate), ("up", wu, up), ("down", wd, down)):
        if len(w.lead) != 1:
            raise Unsupported(f"{name} expert weight is not [E, N, K]")
        if w.transposed == bool(mm.get_attributes().get("transpose_b")):
            raise Unsupported(f"{name} weight orientation does not match the MatMul's transpose_b")
    e, inter, h = wg.codes.shape
    if wu.codes.shape != (e, inter, h) or wd.codes.shape != (e, h, inter):
        raise Unsupported(f"expert shapes gate {wg.codes.shape} up {wu.codes.shape} down {wd.codes.shape}")
    if not (np.array_equal(wg.codebook, wu.codebook) and np.array_equal(wg.codebook, wd.codebook)):
        raise Unsupported("gate / up / down use different codebooks")
    gs = wg.group_size
    if wu.group_size != gs or wd.group_size != (gs if gs <= inter else inter):
        raise Unsupported(f"group sizes gate {gs} up {wu.group_size} down {wd.group_size} differ")
    logits, k, normalize = _match_router(r_node)
    if logits.get_partial_shape()[1].is_static and logits.get_partial_shape()[1].get_length() != e:
        raise Unsupported("router logits width != expert count")
    return dict(x=x, logits=logits, wg=wg, wu=wu, wd=wd, top_k=k, normalize=normalize, group_size=gs,
                root=reduce_sum, name=down.get_friendly_name(), e=e, h=h)


_FOLD_MAX_DEPTH = 8


def _fold_f32(output, layout: str, depth: int = 0) -> np.ndarray:
    """Value of a constant subgraph (Constant / Convert / Subtract / Multiply / Add / Reshape / Squeeze / Unsqueeze /
    Transpose) as f32, or raise Unsupported. Arithmetic in f32, as the CPU plugin runs weight decompression."""
    node = output.get_node()
    t = tname(node)
    if depth > _FOLD_MAX_DEPTH:
        raise Unsupported("router weight subgraph too deep")
    if t == "Constant":
        et = etype(node)
        if et not in ("f32", "f16", "f64", "i8", "u8", "u3", "i32"):
            raise Unsupported(f"router weight constant of type {et}")
        return const_values(node, layout).astype(np.float32)
    if t == "Convert":
        return _fold_f32(node.input(0).get_source_output(), layout, depth + 1)
    if t in ("Subtract", "Multiply", "Add"):
        a = _fold_f32(node.input(0).get_source_output(), layout, depth + 1)
        b = _fold_f32(node.input(1).get_source_output(), layout, depth + 1)
        return {"Subtract": np.subtract, "Multiply": np.multiply, "Add": np.add}[t](a, b).astype(np.float32)
    if t in ("Reshape", "Squeeze", "Unsqueeze"):
        ps = output.get_partial_shape()
        if not ps.is_static:
            raise Unsupported("router weight Reshape with a dynamic shape")
        return _fold_f32(node.input(0).get_source_output(), layout, depth + 1).reshape(tuple(ps.to_shape()))
    if t == "Transpose":
        perm = _const_int(src(node, 1))
        if perm is None:
            raise Unsupported("router weight Transpose with a non-constant permutation")
        return np.transpose(_fold_f32(node.input(0).get_source_output(), layout, depth + 1), perm)
    raise Unsupported(f"router weight computed by {t}")


def _router_int8(output, e: int, h: int):
    """``(q u8 [E, H], s f32 [E], z f32 [E])`` when the router weight is NNCF's INT8_ASYM per-row decompression
    ``[Convert] [Reshape] Multiply(Subtract(Convert(u8 q), Convert(u8 z)), scale)`` in the [E, H] orientation, else
    None (the weight is then folded to f32)."""
    node = output.get_node()
    while tname(node) in ("Convert", "Reshape"):
        if tname(node) == "Reshape" and tuple(node.get_output_partial_shape(0).to_shape()) != (e, h):
            return None
        node = src(node)
    if tname(node) != "Multiply":
        return None
    a, b = src(node, 0), src(node, 1)
    if tname(a) == "Constant":
        a, b = b, a
    if tname(a) != "Subtract" or tname(b) != "Constant":
        return None
    qc, zc = _skip(src(a, 0), ("Convert",)), _skip(src(a, 1), ("Convert",))
    if tname(qc) != "Constant" or tname(zc) != "Constant" or etype(qc) != "u8" or etype(zc) != "u8":
        return None
    q = np.asarray(qc.get_data())
    z = np.asarray(zc.get_data()).astype(np.float32)
    s = np.asarray(b.get_data()).astype(np.float32)
    if q.shape != (e, h) or z.size not in (1, e) or s.size not in (1, e):
        return None
    if z.size == e and z.shape[0] != e or s.size == e and s.shape[0] != e:
        return None
    z, s = np.broadcast_to(z.reshape(-1), (e,)), np.broadcast_to(s.reshape(-1), (e,))
    if not np.all(np.isfinite(s)):
        return None
    return (np.ascontiguousarray(q), np.ascontiguousarray(s, dtype=np.float32), np.ascontiguousarray(z, dtype=np.float32))


def _router_k3(output, e: int, h: int, group_size: int, transpose_b: bool, layout: str):
    """``(W k3, S, Z, C)`` when the router weight is a u3 decompression subgraph (upstream INT3_SYM compresses the
    router like every other MatMul) of the experts' group size in the MatMul's orientation, else None (the weight is
    then folded to f32)."""
    try:
        w = parse(output, layout)
    except (LookupError, Unsupported):
        return None
    if w.lead or (w.n, w.k) != (e, h) or w.transposed == transpose_b:
        return None
    if w.group_size != (group_size if group_size <= h else h):
        return None
    return w.kernel_operands()


def _router_weight(logits, x, e: int, h: int, layout: str, group_size: int):
    """The router weight when ``logits = MatMul(x, const W)`` feeds only the router Softmax (so that MoE3R can compute
    the logits itself): ``(q u8 [E, H], s f32 [E], z f32 [E])`` for an INT8_ASYM per-row router (kept in 8 bits),
    ``(W, S, Z, C)`` k3 operands for a u3 router with the experts' group size (kept in 3 bits), else W_r f32 [E, H].
    Raises Unsupported otherwise (MoE3 then takes the logits)."""
    mm = logits.get_node()
    if tname(mm) != "MatMul":
        raise Unsupported(f"router logits come from {tname(mm)}, not a MatMul (e.g. a router bias)")
    if mm.input(0).get_source_output() != x:
        raise Unsupported("the router MatMul reads another tensor than the experts")
    if len(logits.get_target_inputs()) != 1:
        raise Unsupported("the router logits have other consumers than the routing Softmax")
    attrs = mm.get_attributes()
    if attrs.get("transpose_a"):
        raise Unsupported("router MatMul with transpose_a")
    if attrs.get("transpose_b"):
        int8 = _router_int8(mm.input(1).get_source_output(), e, h)
        if int8 is not None:
            return int8
    k3 = _router_k3(mm.input(1).get_source_output(), e, h, group_size, bool(attrs.get("transpose_b")), layout)
    if k3 is not None:
        return k3
    w = _fold_f32(mm.input(1).get_source_output(), layout)
    if w.ndim != 2:
        raise Unsupported(f"router weight of rank {w.ndim}")
    if not attrs.get("transpose_b"):
        w = w.T
    if w.shape != (e, h):
        raise Unsupported(f"router weight {w.shape} is not [E={e}, H={h}]")
    if not np.all(np.isfinite(w)):
        raise Unsupported("router weight has NaN / Inf values")
    return np.ascontiguousarray(w, dtype=np.float32)


def _rewrite_moe(model, factory, layout, stats, fuse_router: bool = True):
    for node in list(model.get_ordered_ops()):
        if tname(node) != "ReduceSum":
            continue
        try:
            m = _match_moe(node, layout)
        except Unsupported as e:
            logger.info("MoE block at %s left untouched: %s", node.get_friendly_name(), e)
            stats["skipped"] += 1
            continue
        if m is None:
            continue
        router = None
        if fuse_router:
            try:
                router = _router_weight(m["logits"], m["x"], m["e"], m["h"], layout, int(m["group_size"]))
            except Unsupported as why:
                logger.info("MoE block at %s: router stays outside (MoE3 takes its logits): %s",
                            node.get_friendly_name(), why)
        # router forms: None (MoE3 takes the logits), f32 [E, H], (q, s, z) INT8 -> inputs 1, 12, 13, (W, S, Z, C)
        # 3-bit k3 -> inputs 1, 12, 13, 14
        packed = isinstance(router, tuple)
        ops_in = [m["x"], m["logits"] if router is None else _consts((router[0] if packed else router,))[0]]
        for w in (m["wg"], m["wu"], m["wd"]):
            wk, s, z, _ = w.kernel_operands()
            ops_in += _consts((wk, s, z))
        ops_in += _consts((m["wg"].codebook,))
        if packed:
            ops_in += _consts(router[1:])
        op_type = "MoE3R" if router is not None else "MoE3"
        moe = factory.create(op_type, ops_in, {"top_k": int(m["top_k"]), "normalize_topk": bool(m["normalize"]),
                                               "group_size": int(m["group_size"]), "k3_version": K3_VERSION})
        moe.set_friendly_name(node.get_friendly_name())
        for inp in list(node.output(0).get_target_inputs()):
            inp.replace_source_output(moe.output(0))
        stats[op_type] += 1


def _rewrite_matmuls(model, factory, layout, stats):
    for node in list(model.get_ordered_ops()):
        if tname(node) != "MatMul":
            continue
        try:
            w = parse(node.input(1).get_source_output(), layout)
        except LookupError:
            continue
        except Unsupported as e:
            logger.info("MatMul %s left untouched: %s", node.get_friendly_name(), e)
            stats["skipped"] += 1
            continue
        attrs = node.get_attributes()
        reason = None
        if w.lead:
            reason = f"weight {w.codes.shape} is not 2-D (experts outside a recognised MoE block)"
        elif attrs.get("transpose_a"):
            reason = "transpose_a"
        elif w.transposed == bool(attrs.get("transpose_b")):
            reason = "weight orientation does not match transpose_b"
        elif etype(node.input(0).get_source_output()) != "f32":
            reason = "activations are not f32"
        if reason:
            logger.info("MatMul %s left untouched: %s", node.get_friendly_name(), reason)
            stats["skipped"] += 1
            continue
        wk, s, z, c = w.kernel_operands()
        mm = factory.create("MatMul3", [node.input(0).get_source_output()] + _consts((wk, s, z, c)),
                            {"group_size": int(w.group_size), "k3_version": K3_VERSION})
        mm.set_friendly_name(node.get_friendly_name())
        for inp in list(node.output(0).get_target_inputs()):
            inp.replace_source_output(mm.output(0))
        stats["MatMul3"] += 1


def _const_data(output):
    node = output.get_node()
    if tname(node) != "Constant":
        return None
    return np.asarray(node.get_data())


def _fuse_matmul3(model, factory, stats):
    """Merge MatMul3 ops that share their activation input (see module docstring)."""
    from openvino import opset13 as ops

    groups: dict = {}
    for node in model.get_ordered_ops():
        if tname(node) != "MatMul3":
            continue
        src_out = node.input(0).get_source_output()
        groups.setdefault((src_out.get_node().get_name(), src_out.get_index()), []).append(node)
    for members in groups.values():
        if len(members) < 2:
            continue
        parts = []
        for node in members:
            w, s_, z, c = (_const_data(node.input(i).get_source_output()) for i in range(1, 5))
            if any(a is None for a in (w, s_, z, c)):
                continue
            parts.append((node, w, s_, z, c, node.get_attributes()))
        # fusable sets: same K blocks, group size, scale dtype, codebook and zero-point kind (scalar: same value)
        buckets: dict = {}
        for part in parts:
            node, w, s_, z, c, attrs = part
            zkind = ("scalar", int(z.ravel()[0])) if z.size == 1 else ("group", z.shape[-1])
            key = (w.shape[1], int(attrs["group_size"]), int(attrs.get("k3_version", 0)), str(s_.dtype), s_.shape[-1],
                   zkind, c.astype(np.float32).tobytes())
            buckets.setdefault(key, []).append(part)
        for bucket in buckets.values():
            if len(bucket) < 2:
                continue
            nodes = [b[0] for b in bucket]
            w = np.concatenate([b[1] for b in bucket], axis=0)
            sc = np.concatenate([b[2] for b in bucket], axis=0)
            z = bucket[0][3] if bucket[0][3].size == 1 else np.concatenate([b[3] for b in bucket], axis=0)
            attrs = bucket[0][5]
            fused = factory.create("MatMul3", [nodes[0].input(0).get_source_output()] + _consts((w, sc, z, bucket[0][4])),
                                   {"group_size": int(attrs["group_size"]), "k3_version": int(attrs["k3_version"])})
            fused.set_friendly_name(" + ".join(n.get_friendly_name() for n in nodes))
            lengths = np.array([b[1].shape[0] for b in bucket], dtype=np.int64)
            split = ops.variadic_split(fused.output(0), ops.constant(np.int64(-1)), ops.constant(lengths))
            for i, node in enumerate(nodes):
                for inp in list(node.output(0).get_target_inputs()):
                    inp.replace_source_output(split.output(i))
            stats["MatMul3 fused groups"] += 1
            stats["MatMul3 fused away"] += len(nodes) - 1


_NATIVE = ("MatMul3", "MoE3", "MoE3R")


def default_activations() -> str:
    """``"bf16"`` when the CPU plugin of this machine runs models in bf16 by default (its INFERENCE_PRECISION_HINT,
    AVX512-BF16 / AMX CPUs), else ``"f32"``."""
    import openvino as ov

    try:
        hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    except Exception:  # noqa: BLE001 - no CPU plugin: keep f32
        return "f32"
    return "bf16" if hint == ov.Type.bf16 else "f32"


def _bf16_edges(model, stats):
    """Put the native ops' activations in bf16: Convert(bf16) before X, Convert(f32) after the output. With the CPU
    plugin's bf16 inference precision both Converts become bf16 -> bf16 and are dropped, so the plugin inserts no
    f32 <-> bf16 layout reorders around the op (it runs custom ops with their declared types); the kernels still
    compute in f32 and round the result to nearest even, as the plugin's reorder did."""
    import openvino as ov
    from openvino import opset13 as ops

    converted = {}
    for node in list(model.get_ordered_ops()):
        if tname(node) not in _NATIVE or etype(node.input(0).get_source_output()) != "f32":
            continue
        x = node.input(0).get_source_output()
        key = (x.get_node().get_name(), x.get_index())
        if key not in converted:
            converted[key] = ops.convert(x, ov.Type.bf16)
        node.input(0).replace_source_output(converted[key].output(0))
        node.validate_and_infer_types()
        consumers = list(node.output(0).get_target_inputs())
        back = ops.convert(node.output(0), ov.Type.f32)
        for inp in consumers:
            inp.replace_source_output(back.output(0))
        stats["bf16 edges"] += 1


# ----------------------------------------------------------------------------------------------------------------
# widen: u3 -> u4
# ----------------------------------------------------------------------------------------------------------------
def _u4_constant(values: np.ndarray, like):
    import openvino as ov
    from openvino import opset13 as ops

    c = ops.constant(np.ascontiguousarray(values.astype(np.uint8)), dtype=ov.Type.u4)
    c.set_friendly_name(like.get_friendly_name())
    return c


def _widen(model, layout, stats):
    done = set()
    for node in list(model.get_ordered_ops()):
        if tname(node) != "Constant" or etype(node) != "u3" or node.get_friendly_name() in done:
            continue
        values = u3.unpack(u3.constant_bytes(node), int(np.prod(node.get_output_shape(0)) or 1), layout)
        new = _u4_constant(values.reshape(tuple(node.get_output_shape(0))), node)
        consumers = list(node.output(0).get_target_inputs())
        for inp in consumers:
            inp.replace_source_output(new.output(0))
        done.add(node.get_friendly_name())
        stats["u3->u4"] += 1
        # NNCF INT3_SYM: Convert(u3 w) - Convert(i8 scalar zp) -> scalar u4 zero point (OpenVINO's u4 patterns)
        for inp in consumers:
            conv = inp.get_node()
            if tname(conv) != "Convert":
                continue
            for sub_in in conv.output(0).get_target_inputs():
                sub = sub_in.get_node()
                if tname(sub) != "Subtract" or sub_in.get_index() != 0:
                    continue
                zc = src(sub, 1)
                zconst = src(zc) if tname(zc) == "Convert" else zc
                if tname(zconst) != "Constant" or etype(zconst) not in ("i8", "u8"):
                    continue
                z = np.asarray(zconst.get_data()).astype(np.int64)
                if z.size != 1 or not 0 <= int(z.ravel()[0]) <= 15:
                    continue
                import openvino as ov
                from openvino import opset13 as ops

                zn = ops.convert(_u4_constant(z.reshape(tuple(zconst.get_output_shape(0))), zconst), ov.Type.f16)
                sub.input(1).replace_source_output(zn.output(0))
                stats["zp->u4"] += 1
    if model.has_rt_info(U3_LAYOUT_KEY):
        model.set_rt_info("widened-u4", U3_LAYOUT_KEY)


# ----------------------------------------------------------------------------------------------------------------
def _pack(model, factory, stats):
    """Packed form of the native ops (see module docstring): constant operands -> one u8 constant."""
    from openvino import opset13 as ops

    from openvino_ext.reference import pack_operands

    for node in list(model.get_ordered_ops()):
        t = tname(node)
        if t not in _NATIVE:
            continue
        lead = 2 if t == "MoE3" else 1
        n_in = node.get_input_size()
        if n_in == lead + 1:  # packed already
            continue
        arrays = [_const_data(node.input(i).get_source_output()) for i in range(lead, n_in)]
        if any(a is None for a in arrays):
            logger.info("%s %s stays unpacked: an operand is not a Constant", t, node.get_friendly_name())
            stats["unpacked"] += 1
            continue
        try:
            blob = ops.constant(pack_operands(arrays))
        except ValueError as why:  # an operand type the blob format does not hold: the op stays as it is
            logger.info("%s %s stays unpacked: %s", t, node.get_friendly_name(), why)
            stats["unpacked"] += 1
            continue
        blob.set_friendly_name(node.get_friendly_name() + "/packed_operands")
        packed = factory.create(t, [node.input(i).get_source_output() for i in range(lead)] + [blob.output(0)],
                                node.get_attributes())
        packed.set_friendly_name(node.get_friendly_name())
        for inp in list(node.output(0).get_target_inputs()):
            inp.replace_source_output(packed.output(0))
        stats["packed"] += 1


def transform(model, target: str = "cpu", *, fuse: bool = True, activations: str | None = None,
              pack: bool | None = None):
    """Rewrite ``model`` in place for ``target`` (``"cpu"``, ``"gpu"`` or ``"widen"``) and return it (see module
    docstring). ``fuse`` (targets "cpu" / "gpu"): merge MatMul3 ops that read the same activations into one.
    ``activations`` (target "cpu"): element type of the native ops' inputs / outputs, ``"f32"`` or ``"bf16"``;
    default :func:`default_activations` (bf16 where the CPU plugin runs bf16 by default: no layout reorders around
    the ops; an IR transformed so then rounds the ops' outputs to bf16 under any INFERENCE_PRECISION_HINT).
    ``pack`` (target "cpu", default True): each op's constant operands in one u8 constant (the CPU plugin's cost per
    extension node grows with its input count; the GPU custom layer reads the unpacked form only)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
    if activations not in (None, "f32", "bf16"):
        raise ValueError(f"activations must be 'f32' or 'bf16', got {activations!r}")
    if target != "cpu" and activations == "bf16":
        raise ValueError(f"activations='bf16' applies to target 'cpu' only, not {target!r}")
    if target != "cpu" and pack:
        raise ValueError(f"pack=True applies to target 'cpu' only, not {target!r} (the GPU custom layer reads the "
                         "unpacked operands)")
    layout = model_layout(model)
    stats: Counter = Counter()
    if target == "widen":
        _widen(model, layout, stats)
    else:
        factory = _factory()
        _rewrite_moe(model, factory, layout, stats, fuse_router=target == "cpu")
        _rewrite_matmuls(model, factory, layout, stats)
        if fuse:
            _fuse_matmul3(model, factory, stats)
        if target == "cpu" and pack is not False:
            _pack(model, factory, stats)
        if target == "cpu" and (activations or default_activations()) == "bf16":
            _bf16_edges(model, stats)
        if model.has_rt_info(U3_LAYOUT_KEY):
            model.set_rt_info(f"k3v{K3_VERSION}", U3_LAYOUT_KEY)
    model.validate_nodes_and_infer_types()
    last_stats.clear()
    last_stats.update(stats)
    logger.info("transform(%s): %s", target, dict(stats))
    return model


def register(core, device: str | None = None):
    """Add the nncf_moe3 CPU extension library to ``core``; returns the library path.

    GPU hook: when ``openvino_ext.gpu`` (custom OpenCL kernels, provided separately) is importable, its
    ``config_path()`` is set as the GPU plugin's ``CONFIG_FILE``.
    """
    import importlib.util

    import openvino_ext

    lib = openvino_ext.library_path(build=True)
    core.add_extension(str(lib))
    # ---- GPU hook (owned by the GPU engineer): openvino_ext/gpu/__init__.py provides config_path() ----
    if device in (None, "GPU") and importlib.util.find_spec("openvino_ext.gpu") is not None:
        from openvino_ext import gpu

        if hasattr(gpu, "config_path") and "GPU" in core.available_devices:
            core.set_property("GPU", {"CONFIG_FILE": str(gpu.config_path())})
    return lib
