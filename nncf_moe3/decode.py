"""Numpy reference decoder of compressed weights in an ``ov.Model`` (independent of OpenVINO's kernels).

:func:`decoded_weights` evaluates, in numpy, the constant subgraph feeding every MatMul / embedding Gather
weight (u3/u4/u8/i8/f16 Constants — u3 unpacked with :mod:`openvino_ext.u3` — Convert, Subtract, Multiply,
Gather (codebooks), Reshape, Transpose). Used by the tests as the fake-quant reference, and to put the
dequantized weights back into a torch model (:func:`load_into_torch`).
"""

from __future__ import annotations

import numpy as np

from openvino_ext import u3

_NP = {"f32": np.float32, "f16": np.float16, "bf16": np.float32, "u8": np.uint8, "i8": np.int8, "i32": np.int32,
       "i64": np.int64, "u4": np.uint8, "i4": np.int8, "u3": np.uint8, "u2": np.uint8, "u1": np.uint8}


def _const_value(node) -> np.ndarray:
    et = node.get_element_type().get_type_name()
    shape = list(node.get_shape())
    if et == "u3":
        raw = u3.constant_bytes(node)
        n = int(np.prod(shape)) if shape else 1
        return u3.unpack(raw, n).reshape(shape)
    if et in ("u4", "i4"):  # element 0 in the low nibble
        raw = u3.constant_bytes(node)
        n = int(np.prod(shape)) if shape else 1
        v = np.stack([raw & 0x0F, raw >> 4], 1).ravel()[:n]
        if et == "i4":
            v = v.astype(np.int8)
            v[v > 7] -= 16
        return v.reshape(shape)
    return np.asarray(node.get_data()).astype(_NP.get(et, np.float32)).reshape(shape)


def evaluate_constant_subgraph(output) -> np.ndarray:
    """Value of an ``ov.Output`` computed only from Constants (float math in float32, like f16->f32 decompression)."""
    node = output.get_node()
    t = node.get_type_name()
    ins = [node.input(i).get_source_output() for i in range(node.get_input_size())]
    if t == "Constant":
        return _const_value(node)
    if t == "Convert":
        x = evaluate_constant_subgraph(ins[0])
        dst = node.get_output_element_type(0).get_type_name()
        if dst == "f16":
            return x.astype(np.float16)
        return x.astype(_NP.get(dst, np.float32))
    vals = [evaluate_constant_subgraph(i) for i in ins]
    if t == "Subtract":
        return (vals[0].astype(np.float32) - vals[1].astype(np.float32)).astype(np.result_type(vals[0], vals[1]))
    if t == "Multiply":
        return (vals[0].astype(np.float32) * vals[1].astype(np.float32)).astype(np.result_type(vals[0], vals[1]))
    if t == "Add":
        return (vals[0].astype(np.float32) + vals[1].astype(np.float32)).astype(np.result_type(vals[0], vals[1]))
    if t == "Reshape":
        return vals[0].reshape([int(v) for v in vals[1]])
    if t == "Transpose":
        return vals[0].transpose([int(v) for v in vals[1]])
    if t == "Gather":
        axis = int(np.asarray(vals[2]).ravel()[0])
        return np.take(vals[0], vals[1].astype(np.int64), axis=axis)
    raise NotImplementedError(f"cannot evaluate {t} ({node.get_friendly_name()}) in a weight subgraph")


def decoded_weights(model) -> dict[str, np.ndarray]:
    """``{weight name: float32 array}`` for every MatMul input-1 / embedding Gather input-0 constant subgraph.

    The name is that of the largest Constant in the subgraph (the codes, named after the original weight)."""
    out = {}
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        port = 1 if t == "MatMul" else 0 if t == "Gather" else None
        if port is None:
            continue
        src = op.input(port).get_source_output()
        try:
            val = evaluate_constant_subgraph(src)
        except NotImplementedError:
            continue
        consts, stack = [], [src.get_node()]
        while stack:
            n = stack.pop()
            if n.get_type_name() == "Constant":
                consts.append(n)
            else:
                stack.extend(n.input(i).get_source_output().get_node() for i in range(n.get_input_size()))
        main = max(consts, key=lambda c: int(np.prod(list(c.get_shape()) or [1])))
        if t == "Gather" and len(main.get_shape()) < 2:
            continue
        out[main.get_friendly_name()] = val.astype(np.float32)
    return out


def load_into_torch(torch_model, weights: dict[str, np.ndarray]) -> int:
    """Copy decoded IR weights into a transformers model exported by :mod:`nncf_moe3.export`.

    OpenVINO constant names are the traced module paths (``self.model.<param path>``; expert gate/up halves are
    ``..experts._ov_gate_proj`` / ``_ov_up_proj``). Returns the number of tensors loaded."""
    import torch

    params = dict(torch_model.named_parameters())
    loaded = 0
    with torch.no_grad():
        for name, w in weights.items():
            key = name[len("self.model."):] if name.startswith("self.model.") else name
            if key.endswith("._ov_gate_proj") or key.endswith("._ov_up_proj"):
                base = key.rsplit(".", 1)[0] + ".gate_up_proj"
                if base not in params:
                    continue
                p = params[base]
                half = p.shape[1] // 2
                sl = slice(0, half) if key.endswith("_gate_proj") else slice(half, 2 * half)
                p[:, sl] = torch.from_numpy(w).to(p.dtype)
                loaded += 1
            elif key in params:
                p = params[key]
                val = torch.from_numpy(w).to(p.dtype)
                if val.shape != p.shape and val.T.shape == p.shape:
                    val = val.T
                p.copy_(val)
                loaded += 1
    return loaded
