"""OpenCL kernels for the native 3-bit ops (``MatMul3``, ``MoE3``) and an OpenVINO GPU custom-layer config.

* :func:`kernel_dir` -- folder holding ``k3_common.cl``, ``matmul3.cl``, ``moe3.cl`` (see kernel_design_3bit.md §5).
* :func:`config_path` -- ``custom_layers.xml`` for ``core.set_property("GPU", {"CONFIG_FILE": config_path()})``.
* :mod:`openvino_ext.gpu.harness` -- runs the same ``.cl`` files through pyopencl on any OpenCL device.

The kernels read the k3 weight layout version 2 (``uint8[.., N, 2*ceil(K/64), 12]``, 64-value super-blocks; see
``openvino_ext/reference.py`` and the top of ``k3_common.cl``); other ``k3_version`` values fail the kernel build.

Models for the GPU come from ``openvino_ext.transform(model, "gpu")`` (MoE3 taking the graph's router logits, MatMul3,
f32 activations). ``transform(model, "cpu")`` emits ``MoE3R`` (router inside the op) and bf16 activation edges, which
these kernels do not implement: the GPU plugin refuses such an IR (no silent misreading of the router weight).

Not yet run on an Intel GPU (or any GPU): validated on PoCL's CPU device only.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def kernel_dir() -> str:
    """Absolute path of the folder with the ``.cl`` kernel sources."""
    return str(_HERE)


def config_path() -> str:
    """Absolute path of the OpenVINO GPU custom-layer XML (``MatMul3``, ``MoE3``)."""
    return str(_HERE / "custom_layers.xml")
