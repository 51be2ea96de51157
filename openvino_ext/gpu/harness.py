"""Run the k3 OpenCL kernels (``*.cl`` in this folder, unchanged) through pyopencl on any OpenCL device.

The same sources are what the OpenVINO GPU custom-layer config (``custom_layers.xml``) points at; here the host
passes the op attributes and shapes as ``-D`` build options, exactly as the plugin turns attributes into
``#define``s.

Device choice (first match wins): the ``device`` argument (a ``pyopencl.Device`` or a selector string), the
environment variable ``NNCF_MOE3_OCL_DEVICE``, else the first GPU, else the first device of any kind (PoCL's CPU
device when there is no GPU). A selector string is ``"gpu"``, ``"cpu"``, or ``"<platform or device name
substring>[:<index>]``.

Fast paths (``fast=`` argument, or env ``NNCF_MOE3_OCL_FAST``, comma-separated): ``fp16``, ``intel_subgroups``,
``khr_subgroups``, ``emulate_subgroups`` (testing aid), ``cb_identity``; ``"auto"`` enables the ones the device's
extensions allow (plus ``cb_identity`` when the codebook is ``[0..7]``); ``"none"`` / ``""`` is the portable core
path. Each name only adds ``-DK3_USE_...``: the kernels still check the extension macro themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent
FAST_PATHS = {
    "fp16": "K3_USE_FP16",
    "intel_subgroups": "K3_USE_INTEL_SUBGROUPS",
    "khr_subgroups": "K3_USE_KHR_SUBGROUPS",
    "emulate_subgroups": "K3_EMULATE_SUBGROUPS",
    "cb_identity": "K3_CB_IDENTITY",
}
_EXTENSION_OF = {"fp16": "cl_khr_fp16", "intel_subgroups": "cl_intel_subgroups", "khr_subgroups": "cl_khr_subgroups"}
GEMV_MAX_ROWS = 8  # MatMul3 rows / MoE3 tokens up to which the GEMV (decode) kernels are used
K3_VERSION = 2  # k3 weight layout version the kernels read (passed as -DK3_VERSION; the kernels #error on others)


def k3_blocks(k: int) -> int:
    """``Kb`` of a k3 (version 2) weight row of ``k`` values: 32-value blocks, padded to whole 64-value super-blocks."""
    return 2 * -(-int(k) // 64)


def _cl():
    try:
        import pyopencl as cl
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError("pyopencl is not installed (pip install pyopencl)") from exc
    return cl


def available() -> str | None:
    """None when an OpenCL device is usable, else the reason why not."""
    try:
        cl = _cl()
        devs = [d for p in cl.get_platforms() for d in p.get_devices()]
    except Exception as exc:  # noqa: BLE001 - no ICD loader / no platform raises various errors
        return f"no OpenCL platform ({type(exc).__name__}: {exc})"
    return None if devs else "no OpenCL device"


def source(kind: str) -> str:
    """Concatenated kernel source for ``"matmul3"`` or ``"moe3"`` (k3_common.cl first, as in the XML)."""
    return "\n".join((KERNEL_DIR / f).read_text() for f in ("k3_common.cl", f"{kind}.cl"))


def pick_device(device=None):
    cl = _cl()
    if device is not None and not isinstance(device, str):
        return device
    sel = device or os.environ.get("NNCF_MOE3_OCL_DEVICE", "")
    devs = [d for p in cl.get_platforms() for d in p.get_devices()]
    if not devs:
        raise RuntimeError("no OpenCL device")
    if not sel:
        gpus = [d for d in devs if d.type & cl.device_type.GPU]
        return (gpus or devs)[0]
    if sel.lower() in ("gpu", "cpu"):
        want = cl.device_type.GPU if sel.lower() == "gpu" else cl.device_type.CPU
        hit = [d for d in devs if d.type & want]
        if not hit:
            raise RuntimeError(f"no OpenCL {sel} device among {[d.name for d in devs]}")
        return hit[0]
    name, _, index = sel.partition(":")
    hit = [d for d in devs if name.lower() in (d.name + " " + d.platform.name).lower()]
    if not hit:
        raise RuntimeError(f"no OpenCL device matches {sel!r}; have {[d.name for d in devs]}")
    return hit[int(index or 0)]


@dataclass
class Runtime:
    """Context + profiling queue on one device, with a program cache."""

    device: object
    ctx: object = None
    queue: object = None
    _programs: dict = field(default_factory=dict)
    _kernels: dict = field(default_factory=dict)

    def __post_init__(self):
        cl = _cl()
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)

    def has_extension(self, name: str) -> bool:
        return name in self.device.extensions.split()

    def program(self, kind: str, defines: dict, fast: tuple = ()):
        defines = {"K3_VERSION": K3_VERSION, **defines}
        opts = [f"-D{k}={int(v)}" for k, v in sorted(defines.items())]
        opts += [f"-D{FAST_PATHS[f]}" for f in sorted(fast)]
        key = (kind, tuple(opts))
        if key not in self._programs:
            cl = _cl()
            self._programs[key] = cl.Program(self.ctx, source(kind)).build(options=opts + ["-cl-std=CL1.2"])
        return self._programs[key]

    def kernel(self, prg, name: str):
        """Cached ``cl.Kernel`` (pyopencl's ``prg.name`` creates a new kernel object on every access)."""
        cl = _cl()
        key = (id(prg), name)
        if key not in self._kernels:
            self._kernels[key] = cl.Kernel(prg, name)
        return self._kernels[key]

    def launch(self, prg, name: str, gws, lws, *args):
        cl = _cl()
        kern = self.kernel(prg, name)
        kern.set_args(*args)
        return cl.enqueue_nd_range_kernel(self.queue, kern, gws, lws)

    def buf(self, arr, write=False):
        cl = _cl()
        arr = np.ascontiguousarray(arr)
        mf = cl.mem_flags
        flags = (mf.READ_WRITE if write else mf.READ_ONLY) | mf.COPY_HOST_PTR
        return cl.Buffer(self.ctx, flags, hostbuf=arr if arr.nbytes else np.zeros(1, np.uint8))

    def empty(self, nbytes: int):
        cl = _cl()
        return cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(int(nbytes), 4))

    def read(self, buf, shape, dtype=np.float32):
        cl = _cl()
        out = np.empty(shape, dtype)
        cl.enqueue_copy(self.queue, out, buf)
        return out


_RUNTIMES: dict = {}


def runtime(device=None) -> Runtime:
    dev = pick_device(device)
    key = dev.int_ptr
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Runtime(dev)
    return _RUNTIMES[key]


def resolve_fast(rt: Runtime, fast, codebook=None) -> tuple:
    if fast is None:
        fast = os.environ.get("NNCF_MOE3_OCL_FAST", "none")
    if isinstance(fast, str):
        if fast == "auto":
            names = [f for f, ext in _EXTENSION_OF.items() if rt.has_extension(ext)]
            if "intel_subgroups" in names and "khr_subgroups" in names:
                names.remove("khr_subgroups")
            if codebook is not None and np.array_equal(np.asarray(codebook, np.float32), np.arange(8)):
                names.append("cb_identity")
            return tuple(sorted(names))
        fast = [f.strip() for f in fast.split(",") if f.strip() and f.strip() != "none"]
    bad = [f for f in fast if f not in FAST_PATHS]
    if bad:
        raise ValueError(f"unknown fast path(s) {bad}; known: {sorted(FAST_PATHS)}")
    return tuple(sorted(set(fast)))


def _gemv_local(k: int) -> int:
    """GEMV work-group size for rows of ``k`` values (one work-item per visited 32-value block)."""
    return 32 if -(-k // 32) <= 32 else 64


def _zpg(z) -> int:
    return int(np.asarray(z).size > 1)


def _k_of(s, gs: int) -> int:
    """K of a k3 weight from its scales ``[.., N, K/gs]`` (the k3 tensor pads K to a multiple of 64)."""
    return int(np.shape(s)[-1]) * int(gs)


def _check_weight(w, s, n, k, gs, lead=()):
    if gs <= 0 or k % gs or (gs % 32 and gs != k):
        raise ValueError(f"group_size={gs} must divide K={k} and be a multiple of 32 or K")
    if tuple(w.shape) != (*lead, n, k3_blocks(k), 12) or tuple(s.shape) != (*lead, n, k // gs):
        raise ValueError(f"k3 weight {w.shape} / scales {s.shape} do not match {(*lead, n, k)} with gs={gs} "
                         f"(k3 layout version {K3_VERSION}: [.., N, 2*ceil(K/64), 12])")


# ------------------------------------------------------------------------------------------------ MatMul3
class MatMul3Plan:
    """Weights uploaded once; ``run(x)`` -> Y. ``path``: "auto" | "gemv" | "gemm"."""

    def __init__(self, w, s, z, c, group_size: int, device=None, path="auto", fast=None):
        self.rt = runtime(device)
        self.n = w.shape[0]
        self.k = _k_of(s, group_size)
        _check_weight(w, s, self.n, self.k, group_size)
        self.gs, self.path = int(group_size), path
        self.fast = resolve_fast(self.rt, fast, c)
        self.zpg = _zpg(z)
        self.bufs = [self.rt.buf(np.asarray(w, np.uint8)), self.rt.buf(np.asarray(s, np.float16)),
                     self.rt.buf(np.asarray(z, np.uint8).reshape(-1)), self.rt.buf(np.asarray(c, np.float16))]
        self.weight_bytes = sum(np.asarray(a).nbytes for a in (w, s, z))

    def kernel_path(self, m: int) -> str:
        return self.path if self.path != "auto" else ("gemv" if m <= GEMV_MAX_ROWS else "gemm")

    def enqueue(self, xbuf, ybuf, m: int):
        path = self.kernel_path(m)
        defs = dict(K3_K=self.k, K3_N=self.n, K3_M=m, GROUP_SIZE=self.gs, K3_ZPG=self.zpg)
        prg = self.rt.program("matmul3", defs, self.fast)
        if path == "gemv":
            local = _gemv_local(self.k)
            jobs = m * -(-self.n // 4)
            return self.rt.launch(prg, "matmul3_gemv", (jobs * local,), (local,), xbuf, *self.bufs, ybuf)
        if path == "gemm":
            gx, gy = -(-self.n // 32), -(-m // 32)
            return self.rt.launch(prg, "matmul3_gemm", (gx * 8, gy * 8), (8, 8), xbuf, *self.bufs, ybuf)
        raise ValueError(f"unknown MatMul3 path {path!r}")

    def run(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32)
        lead, k = x.shape[:-1], x.shape[-1]
        if k != self.k:
            raise ValueError(f"x has K={k}, weights K={self.k}")
        m = int(np.prod(lead)) if lead else 1
        xbuf, ybuf = self.rt.buf(x.reshape(m, k)), self.rt.empty(m * self.n * 4)
        self.enqueue(xbuf, ybuf, m)
        return self.rt.read(ybuf, (*lead, self.n))


def matmul3(x, W, S, Z, C, group_size, device=None, *, path="auto", fast=None) -> np.ndarray:
    """MatMul3 on an OpenCL device: ``Y = X @ dequant(W)^T`` (see ``openvino_ext.reference.matmul3_ref``)."""
    return MatMul3Plan(W, S, Z, C, group_size, device, path, fast).run(x)


# ------------------------------------------------------------------------------------------------ MoE3
class MoE3Plan:
    """Expert weights uploaded once; ``run(x, logits)`` -> Y. ``path``: "auto" | "decode" | "prefill" | "fused"."""

    def __init__(self, wg, sg, zg, wu, su, zu, wd, sd, zd, c, *, top_k: int, normalize_topk: bool,
                 group_size: int, device=None, path="auto", fast=None, fused_rpt: int = 8):
        self.rt = runtime(device)
        self.e, self.i = wg.shape[:2]
        self.h = _k_of(sg, group_size)
        _check_weight(wg, sg, self.i, self.h, group_size, (self.e,))
        _check_weight(wu, su, self.i, self.h, group_size, (self.e,))
        _check_weight(wd, sd, self.h, self.i, group_size, (self.e,))
        if not 1 <= top_k <= self.e:
            raise ValueError(f"top_k={top_k} must be in [1, E={self.e}]")
        self.top_k, self.norm, self.gs, self.path = int(top_k), bool(normalize_topk), int(group_size), path
        self.fused_rpt = int(fused_rpt)
        self.fast = resolve_fast(self.rt, fast, c)
        self.zpg = tuple(_zpg(z) for z in (zg, zu, zd))
        up = self.rt.buf
        self.wbufs = {
            "g": (up(np.asarray(wg, np.uint8)), up(np.asarray(sg, np.float16)), up(np.asarray(zg, np.uint8).reshape(-1))),
            "u": (up(np.asarray(wu, np.uint8)), up(np.asarray(su, np.float16)), up(np.asarray(zu, np.uint8).reshape(-1))),
            "d": (up(np.asarray(wd, np.uint8)), up(np.asarray(sd, np.float16)), up(np.asarray(zd, np.uint8).reshape(-1))),
        }
        self.cbuf = up(np.asarray(c, np.float16))
        self._scratch = {}

    def kernel_path(self, t: int) -> str:
        return self.path if self.path != "auto" else ("decode" if t <= GEMV_MAX_ROWS else "prefill")

    def bytes_per_expert(self) -> int:
        """Weight bytes (k3 planes + scales + zero points) of one expert's three matrices."""
        def one(bufs):
            return sum(b.size for b in bufs) // self.e if bufs[2].size > 4 else (bufs[0].size + bufs[1].size) // self.e
        return sum(one(self.wbufs[m]) for m in "gud")

    def _buf(self, name, nbytes):
        b = self._scratch.get(name)
        if b is None or b.size < nbytes:
            b = self._scratch[name] = self.rt.empty(nbytes)
        return b

    def enqueue(self, xbuf, lbuf, ybuf, t: int):
        """Enqueue the kernels of the chosen path; returns the list of events."""
        rt, k, e, h, i = self.rt, self.top_k, self.e, self.h, self.i
        path = self.kernel_path(t)
        defs = dict(MOE_T=t, MOE_E=e, MOE_H=h, MOE_I=i, TOP_K=k, NORMALIZE_TOPK=int(self.norm),
                    GROUP_SIZE=self.gs, ZG_PG=self.zpg[0], ZU_PG=self.zpg[1], ZD_PG=self.zpg[2],
                    FUSED_RPT=self.fused_rpt)
        prg = rt.program("moe3", defs, self.fast)
        (wg, sg, zg), (wu, su, zu), (wd, sd, zd), c = self.wbufs["g"], self.wbufs["u"], self.wbufs["d"], self.cbuf
        if path == "fused":
            local = 64
            jobs = t * -(-h // (self.fused_rpt * local))
            return [rt.launch(prg, "moe3_fused", (jobs * local,), (local,), xbuf, lbuf, wg, sg, zg, wu, su, zu, wd, sd, zd, c, ybuf)]
        idx, wts = self._buf("idx", t * k * 4), self._buf("wts", t * k * 4)
        act = self._buf("act", t * k * i * 4)
        evs = [rt.launch(prg, "moe3_route", (-(-t // 32) * 32,), None, lbuf, idx, wts)]
        if path == "decode":
            lg = _gemv_local(h)
            evs.append(rt.launch(prg, "moe3_gate_up_gemv", (t * k * -(-i // 4) * lg,), (lg,), xbuf, idx, wg, sg, zg, wu, su, zu, c, act))
            ld = _gemv_local(i)
            evs.append(rt.launch(prg, "moe3_down_gemv", (t * -(-h // 4) * ld,), (ld,), act, idx, wts, wd, sd, zd, c, ybuf))
            return evs
        if path == "prefill":
            counts, lists = self._buf("counts", e * 4), self._buf("lists", e * t * 4)
            tmp = self._buf("tmp", t * k * h * 4)
            tt = -(-t // 32)
            evs.append(rt.launch(prg, "moe3_group", (-(-e // 32) * 32,), None, idx, counts, lists))
            evs.append(rt.launch(prg, "moe3_gate_up_gemm", (-(-i // 32) * 8, tt * 8, e), (8, 8, 1), xbuf, counts, lists,
                                             wg, sg, zg, wu, su, zu, c, act))
            evs.append(rt.launch(prg, "moe3_down_gemm", (-(-h // 32) * 8, tt * 8, e), (8, 8, 1), act, counts, lists, wts,
                                          wd, sd, zd, c, tmp))
            evs.append(rt.launch(prg, "moe3_reduce", (-(-(t * h) // 64) * 64,), None, tmp, ybuf))
            return evs
        raise ValueError(f"unknown MoE3 path {path!r}")

    def run(self, x, logits) -> np.ndarray:
        x = np.asarray(x, np.float32)
        logits = np.asarray(logits, np.float32)
        t = x.shape[0]
        if x.shape != (t, self.h) or logits.shape != (t, self.e):
            raise ValueError(f"x {x.shape} / logits {logits.shape} do not match H={self.h}, E={self.e}")
        xbuf, lbuf, ybuf = self.rt.buf(x), self.rt.buf(logits), self.rt.empty(t * self.h * 4)
        self.enqueue(xbuf, lbuf, ybuf, t)
        return self.rt.read(ybuf, (t, self.h))


def moe3(x, logits, wg, sg, zg, wu, su, zu, wd, sd, zd, C, *, top_k: int, normalize_topk: bool, group_size: int,
         device=None, path="auto", fast=None) -> np.ndarray:
    """MoE3 on an OpenCL device (see ``openvino_ext.reference.moe3_ref``)."""
    plan = MoE3Plan(wg, sg, zg, wu, su, zu, wd, sd, zd, C, top_k=top_k, normalize_topk=normalize_topk,
                    group_size=group_size, device=device, path=path, fast=fast)
    return plan.run(x, logits)


def build(kind: str, defines: dict | None = None, fast=(), device=None):
    """Compile one kernel family (for compile-only checks); returns the pyopencl Program."""
    rt = runtime(device)
    base = {"matmul3": dict(K3_K=256, K3_N=64, K3_M=1, GROUP_SIZE=128, K3_ZPG=1),
            "moe3": dict(MOE_T=1, MOE_E=4, MOE_H=256, MOE_I=128, TOP_K=2, NORMALIZE_TOPK=1, GROUP_SIZE=128,
                         ZG_PG=1, ZU_PG=1, ZD_PG=1)}[kind]
    base.update(defines or {})
    return rt.program(kind, base, tuple(fast))
