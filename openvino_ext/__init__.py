"""OpenVINO side of nncf-moe3: u3 packing (:mod:`openvino_ext.u3`), the MatMul3/MoE3 op contract
(:mod:`openvino_ext.reference`), the CPU extension (``openvino_ext/cpu``, built by :mod:`openvino_ext.build`) and the
companion graph transformation (:mod:`openvino_ext.transformations`).

    import openvino as ov, openvino_ext
    core = ov.Core(); openvino_ext.register(core)            # adds the built CPU extension
    model = openvino_ext.transform(core.read_model(xml))      # u3 subgraphs -> MatMul3 / MoE3
    compiled = core.compile_model(model, "CPU")
"""

from __future__ import annotations

__all__ = ["library_path", "register", "transform", "isa", "read_bandwidth"]


def library_path(build: bool = True):
    """Path of the CPU extension library; builds it on first use (cached) when ``build`` is True."""
    from openvino_ext import build as _build

    if build:
        return _build.build()
    lib = _build.build_dir() / _build.LIB_NAME
    if not lib.is_file():
        raise FileNotFoundError(f"{lib} not built yet; run `python -m openvino_ext.build`")
    return lib


def register(core, device: str | None = None):
    """Add the nncf_moe3 extension library to ``core`` (and, when available, the GPU custom-kernel config)."""
    from openvino_ext.transformations import register as _register

    return _register(core, device)


def transform(model, target: str = "cpu", *, fuse: bool = True, activations: str | None = None,
              pack: bool | None = None):
    """Rewrite u3 decompression subgraphs: ``"cpu"`` -> MatMul3 / MoE3R (router inside) / MoE3 ops (``fuse``: MatMul3
    ops sharing their input, e.g. q/k/v, merged into one), ``"gpu"`` -> MatMul3 / MoE3 (the GPU custom layer's ops),
    ``"widen"`` -> u4 (stock plugins). ``activations`` ("f32" | "bf16", target "cpu"): the ops' activation type,
    default bf16 where the CPU plugin runs bf16 by default. ``pack`` (target "cpu", default True): each op's constant
    operands in one u8 constant (fewer inputs per extension node for the CPU plugin to handle on every inference;
    see :func:`openvino_ext.transformations.transform`)."""
    from openvino_ext.transformations import transform as _transform

    return _transform(model, target, fuse=fuse, activations=activations, pack=pack)


def _clib():
    import ctypes

    lib = ctypes.CDLL(str(library_path()))
    lib.nncf_moe3_isa.restype = ctypes.c_char_p
    lib.nncf_moe3_read_bandwidth.restype = ctypes.c_double
    lib.nncf_moe3_read_bandwidth.argtypes = [ctypes.c_int64, ctypes.c_int]
    return lib


def isa() -> str:
    """Kernel ISA the extension uses now: "avx512_vnni" / "avx2_vnni" / "avx2_int8" (int8-activation kernels: AVX-512
    VNNI, AVX2 + AVX-VNNI, plain AVX2), "avx512" / "avx2" (exact f32 kernels; also under NNCF_MOE3_ACT_QUANT=0),
    "scalar", or the opt-in "amx" / "amx_emulate"; env NNCF_MOE3_ISA lowers it."""
    return _clib().nncf_moe3_isa().decode()


def read_bandwidth(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Read bandwidth (GB/s, best of ``reps``) measured by the extension's kernels and threads."""
    return float(_clib().nncf_moe3_read_bandwidth(int(nbytes), int(reps)))
