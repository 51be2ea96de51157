"""Emit OpenVINO decompression subgraphs for quantized weights (the shape NNCF emits, with u3 constants).

``{name}`` is the weight Constant's friendly name; nodes are named like NNCF's (``{name}/scale``,
``{name}/zero_point``, ``{name}/fq_weights_{port}``)::

    int3_sym   Constant(u3 [.., N, G, gs]) -> Convert(f16) -> Subtract(Convert(Constant(i8 4)))  -> Multiply(scale f16 [.., N, G, 1])
    int3_asym  Constant(u3)                -> Convert(f16) -> Subtract(Convert(Constant(u3 zp [.., N, G, 1]))) -> Multiply(scale)
    nf3        Constant(u3) -> Convert(u8) -> Gather(codebook f16 [8], axis 0) [-> Subtract(zp f16)] -> Multiply(scale)
    int8_asym  Constant(u8 [N, K]) -> Convert(f16) -> Subtract(Convert(Constant(u8 zp [N, 1]))) -> Multiply(scale f16 [N, 1])
    -> Reshape([.., N, K]) -> [Transpose if the MatMul has transpose_b=False] -> [Convert(f32) if the IR is f32]

With double-quantized scales the weight is ``[.., N, Gs, sg, gs]`` and the scale is itself
``Convert(Constant(u8 sub [.., N, Gs, sg, 1])) * Constant(f16 super [.., N, Gs, 1, 1])``.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import torch
from openvino import opset13 as ops

from openvino_ext import u3
from nncf_moe3.graph import WeightTarget
from nncf_moe3.quantization import NF3_CODEBOOK, QuantizedWeight

U3_LAYOUT_KEY = ["nncf_moe3", "u3_layout"]


def _f16(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).astype(np.float16))


def _finish(target: WeightTarget, x, name: str):
    x = ops.reshape(x, ops.constant(np.asarray(target.nk_shape, dtype=np.int64)), special_zero=False)
    x.set_friendly_name(f"{name}/reshape")
    if target.kind == "matmul" and not target.transpose_b:
        perm = list(range(len(target.shape)))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        x = ops.transpose(x, ops.constant(np.asarray(perm, dtype=np.int64)))
    consumer_type = target.op.input(target.port).get_element_type()
    if x.get_element_type() != consumer_type:
        x = ops.convert(x, consumer_type)
    return x


def emit_3bit(target: WeightTarget, qw: QuantizedWeight, double_quant: tuple | None = None):
    """Decompression subgraph output for a 3-bit weight (see module docstring); also emits the 4-bit
    ``int4_asym`` format (u4 codes and zero points, NNCF's INT4_ASYM shape) used for dense weights of MoE models."""
    name = target.name
    codes = qw.codes.numpy()
    scale = qw.scale.numpy()
    if double_quant is not None:
        sub, sup = double_quant  # sub [.., N, G, 1] ints, sup [.., N, Gs, 1, 1]
        gs_count = sup.shape[-3]
        lead = codes.shape[:-2]
        codes = codes.reshape(*lead, gs_count, -1, codes.shape[-1])
        sub = np.asarray(sub.numpy() if isinstance(sub, torch.Tensor) else sub, dtype=np.uint8).reshape(*lead, gs_count, -1, 1)
        scale_node = ops.multiply(ops.convert(ops.constant(sub, dtype=ov.Type.u8, name=f"{name}/sub_scale"), ov.Type.f16),
                                  ops.constant(_f16(sup.numpy() if isinstance(sup, torch.Tensor) else sup), name=f"{name}/scale"))
    else:
        scale_node = ops.constant(_f16(scale), name=f"{name}/scale")
    four = qw.fmt == "int4_asym"
    w = ops.constant(codes.astype(np.uint8), dtype=ov.Type.u4, name=name) if four else u3.constant(codes)
    w.set_friendly_name(name)
    zp = qw.zero_point.numpy() if qw.zero_point is not None else None
    if double_quant is not None and zp is not None:
        zp = zp.reshape(*codes.shape[:-1], 1)
    if qw.fmt == "nf3":
        idx = ops.convert(w, ov.Type.u8)
        cb = ops.constant(_f16(NF3_CODEBOOK), name=f"{name}/codebook")
        x = ops.gather(cb, idx, ops.constant(np.int64(0)))
        if zp is not None:
            x = ops.subtract(x, ops.constant(_f16(zp), name=f"{name}/zero_point"))
    else:
        x = ops.convert(w, ov.Type.f16)
        if qw.fmt == "int3_sym":
            z = ops.convert(ops.constant(np.int8(4), dtype=ov.Type.i8, name=f"{name}/zero_point"), ov.Type.f16)
        else:
            zc = (ops.constant(np.asarray(zp, dtype=np.uint8), dtype=ov.Type.u4) if four
                  else u3.constant(np.asarray(zp, dtype=np.uint8)))
            zc.set_friendly_name(f"{name}/zero_point")
            z = ops.convert(zc, ov.Type.f16)
        x = ops.subtract(x, z)
        x.set_friendly_name(f"{name}/zero_point/subtract")
    x = ops.multiply(x, scale_node)
    x.set_friendly_name(f"{name}/fq_weights_{target.port}")
    return _finish(target, x, name)


def quantize_int8_asym(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row asymmetric 8-bit RTN (NNCF's INT8_ASYM backup). Returns (codes u8, zp u8 [.., N, 1], scale f32)."""
    w = w.float()
    lo = w.amin(-1, keepdim=True).clamp_max(0)
    hi = w.amax(-1, keepdim=True).clamp_min(0)
    s = ((hi - lo) / 255).clamp_min(1e-8)
    s = s.to(torch.float16).to(torch.float32)
    zp = torch.round(-lo / s).clamp(0, 255)
    q = torch.round(w / s + zp).clamp(0, 255)
    return q.to(torch.uint8).numpy(), zp.to(torch.uint8).numpy(), s.numpy()


def dequantize_int8_asym(q, zp, s) -> np.ndarray:
    return (q.astype(np.float32) - zp.astype(np.float32)) * s.astype(np.float16).astype(np.float32)


def emit_int8_asym(target: WeightTarget, w: torch.Tensor):
    name = target.name
    q, zp, s = quantize_int8_asym(w)
    c = ops.constant(q, dtype=ov.Type.u8, name=name)
    x = ops.subtract(ops.convert(c, ov.Type.f16),
                     ops.convert(ops.constant(zp, dtype=ov.Type.u8, name=f"{name}/zero_point"), ov.Type.f16))
    x.set_friendly_name(f"{name}/zero_point/subtract")
    x = ops.multiply(x, ops.constant(_f16(s), name=f"{name}/scale"))
    x.set_friendly_name(f"{name}/fq_weights_{target.port}")
    return _finish(target, x, name), dequantize_int8_asym(q, zp, s)


def replace_weight(target: WeightTarget, new_output) -> None:
    """Point the consumer's weight input at ``new_output``."""
    target.op.input(target.port).replace_source_output(new_output.output(0) if hasattr(new_output, "output") else new_output)


def read_weight(target: WeightTarget) -> torch.Tensor:
    """The float weight in [.., N, K] orientation (float32)."""
    data = np.asarray(target.const.get_data(), dtype=np.float32)
    w = torch.from_numpy(data.copy())
    if target.kind == "matmul" and not target.transpose_b:
        w = w.transpose(-1, -2).contiguous()
    return w


def stamp_layout(model) -> None:
    """Record the u3 layout of the packed constants in the model's rt_info."""
    model.set_rt_info(u3.LAYOUT, U3_LAYOUT_KEY)


def check_layout(model) -> None:
    """Raise if ``model`` was written with another u3 layout than the installed OpenVINO's."""
    if model.has_rt_info(U3_LAYOUT_KEY):
        layout = model.get_rt_info(U3_LAYOUT_KEY).astype(str)
        if layout != u3.LAYOUT:
            raise RuntimeError(
                f"This IR stores u3 weights in the {layout!r} layout but the installed OpenVINO {ov.__version__} "
                f"uses {u3.LAYOUT!r}: its 3-bit weights would decode to wrong values. Re-pack it with "
                "`nncf-moe3 repack` (openvino_ext.u3.convert_layout) or use a matching OpenVINO."
            )
