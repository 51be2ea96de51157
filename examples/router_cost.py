"""MoE3R (router MatMul inside the op) vs MoE3 fed by a stock f32 MatMul router, one Qwen3-30B-A3B-sized MoE block
(128 experts, hidden 2048, expert intermediate 768, top-8, random int3_sym g128 codes), batch-1 decode, 2 threads,
alternating calls in one process; the router as f32 and in nncf-moe3's default storage (INT8_ASYM per row: MoE3R
keeps it u8; for MoE3 a stock decompression MatMul) and as upstream INT3_SYM stores it (u3 g128: MoE3R keeps it in
3 bits, exact f32 dot products). Prints the median time per call and the op's "route" phase (softmax / top-k and,
for MoE3R, the router GEMM: 1 MB of f32 weights per layer, split over the threads in 16-expert chunks).

    python examples/router_cost.py [TOKENS]     (default 1: decode; e.g. 128 for a prefill-sized call)
"""
import ctypes, numpy as np, openvino as ov, openvino_ext, sys, time
from openvino import opset13 as ops
from openvino.utils.node_factory import NodeFactory
from openvino_ext import reference as R
core = ov.Core(); openvino_ext.register(core)
lib = ctypes.CDLL(str(openvino_ext.library_path())); lib.nncf_moe3_profile.restype = ctypes.c_int64
lib.nncf_moe3_profile.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_int]
f = NodeFactory(); f.add_extension(str(openvino_ext.library_path()))
rng = np.random.default_rng(0)
E, H, I, gs, k = 128, 2048, 768, 128, 8
T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
def case(n, kk):  # small random codes (speed only)
    return R.random_case(rng, n, kk, gs, "int3_sym", lead=(E,))
g, u, d = case(I, H), case(I, H), case(H, I)
ws = [g[0], g[1], g[2], u[0], u[1], u[2], d[0], d[1], d[2], g[3]]
x = ops.parameter([-1, H], np.float32)
wr = (rng.standard_normal((E, H)) / 45).astype(np.float32)
# the router as nncf-moe3 stores it by default: INT8_ASYM per row (u8 codes, u8 zero point, f16 scale)
lo, hi = wr.min(axis=1, keepdims=True), wr.max(axis=1, keepdims=True)
sc = ((hi - lo) / 255).astype(np.float16)
zp = np.clip(np.round(-lo / sc.astype(np.float32)), 0, 255).astype(np.uint8)
q8 = np.clip(np.round(wr / sc.astype(np.float32)) + zp, 0, 255).astype(np.uint8)
models = {}
n8 = f.create("MoE3R", [x.output(0)] + [ops.constant(a).output(0) for a in [q8] + ws + [sc.astype(np.float32).ravel(),
              zp.astype(np.float32).ravel()]], {"top_k": k, "normalize_topk": True, "group_size": gs, "k3_version": 2})
models["MoE3R, INT8 router (u8)"] = ov.Model([n8.output(0)], [x])
# the router as upstream INT3_SYM stores it (u3, scalar zero point 4, g128): MoE3R keeps it in 3 bits (k3, 15 inputs)
r3 = R.random_case(rng, E, H, gs, "int3_sym")
n3r = f.create("MoE3R", [x.output(0)] + [ops.constant(a).output(0) for a in [r3[0]] + ws + list(r3[1:])],
               {"top_k": k, "normalize_topk": True, "group_size": gs, "k3_version": 2})
models["MoE3R, 3-bit router (k3)"] = ov.Model([n3r.output(0)], [x])
n = f.create("MoE3R", [x.output(0)] + [ops.constant(a).output(0) for a in [wr] + ws], {"top_k": k, "normalize_topk": True, "group_size": gs, "k3_version": 2})
models["MoE3R, f32 router"] = ov.Model([n.output(0)], [x])
lg = ops.matmul(x, ops.constant(wr), False, True)
n2 = f.create("MoE3", [x.output(0), lg.output(0)] + [ops.constant(a).output(0) for a in ws], {"top_k": k, "normalize_topk": True, "group_size": gs, "k3_version": 2})
models["MoE3 + f32 MatMul router"] = ov.Model([n2.output(0)], [x])
w8 = ops.multiply(ops.subtract(ops.convert(ops.constant(q8), ov.Type.f16), ops.convert(ops.constant(zp), ov.Type.f16)),
                  ops.constant(sc))
lg8 = ops.matmul(x, ops.convert(w8, ov.Type.f32), False, True)
n3 = f.create("MoE3", [x.output(0), lg8.output(0)] + [ops.constant(a).output(0) for a in ws], {"top_k": k, "normalize_topk": True, "group_size": gs, "k3_version": 2})
models["MoE3 + INT8 MatMul router"] = ov.Model([n3.output(0)], [x])
cfg = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}
reqs = {kx: core.compile_model(m, "CPU", cfg).create_infer_request() for kx, m in models.items()}
lib.nncf_moe3_profile(None, 1, 1)
for r in reqs.values():
    for _ in range(5): r.infer([rng.standard_normal((T, H)).astype(np.float32)])
times = {kx: [] for kx in reqs}; route = {kx: [] for kx in reqs}
t6 = (ctypes.c_double * 6)()
for rnd in range(60 if T <= 8 else 12):
    for kx, r in reqs.items():
        xv = rng.standard_normal((T, H)).astype(np.float32)
        lib.nncf_moe3_profile(None, 1, 1)
        t = time.perf_counter(); r.infer([xv]); times[kx].append(time.perf_counter() - t)
        lib.nncf_moe3_profile(t6, 1, 0); route[kx].append(t6[0])
for kx in reqs:
    print(f"{kx:28s} per call median {np.median(times[kx])*1e3:.3f} ms, route (incl. router GEMM) {np.median(route[kx])*1e6:.1f} us")
