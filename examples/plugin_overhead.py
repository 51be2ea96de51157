"""What the CPU plugin costs around extension ops (dynamic vs static shapes), measured on small synthetic graphs.

    python examples/plugin_overhead.py [--hybrid out/bench]

1. chain: 16 x [MatMul3 (K = N = 256) + 6 element-wise nodes] vs the same with a native MatMul, each with a dynamic
   ([?, ?, K]) and a static ([1, 1, K]) input: us per block;
2. toy MoE3: 16 chained MoE3 ops (16 experts, H 256, I 128, top-2), dynamic vs static: us per op;
3. ``--hybrid DIR`` (a folder written by ``examples/bench_cpu.py --keep``): the MoE stack with MoE3 + MatMul3
   (``moe_moe3.xml``) vs MoE3 experts with the attention projections widened to u4 for stock FullyConnected nodes
   (built from ``moe_int3_stock.xml``), each dynamic and reshaped to a static [1, 1] input, in one process with
   alternating rounds: ms per decode step.
Extension ops have no shape-inference entry in the CPU plugin, so with dynamic shapes it runs its fallback (clone the
op with its inputs as constants, full data dependency) on every inference and re-infers the nodes after them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np


def _time(req, inputs, n):
    for _ in range(50):
        req.infer(inputs)
    t = time.perf_counter()
    for _ in range(n):
        req.infer(inputs)
    return (time.perf_counter() - t) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hybrid", default=None, help="bench_cpu.py --keep folder for the MoE-stack comparison")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import openvino as ov
    import openvino.opset13 as ops
    from openvino.utils.node_factory import NodeFactory

    import openvino_ext
    from openvino_ext.reference import K3_VERSION, k3_blocks

    lib = str(openvino_ext.library_path())
    fac = NodeFactory()
    fac.add_extension(lib)
    core = ov.Core()
    core.add_extension(lib)
    cfg = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    rng = np.random.default_rng(0)
    c8 = np.arange(8, dtype=np.float16)

    # 1. chain of matmul + element-wise blocks
    K = N = 256
    L, ELT = 16, 6

    def chain(kind, static):
        p = ops.parameter([1, 1, K] if static else [-1, -1, K], np.float32)
        x = p.output(0)
        for _ in range(L):
            if kind == "MatMul3":
                w = rng.integers(0, 255, (N, k3_blocks(K), 12), dtype=np.uint8)
                s = (rng.random((N, K // 64)) * 0.01).astype(np.float16)
                z = np.full((N, K // 64), 4, np.uint8)
                x = fac.create("MatMul3", [x] + [ops.constant(a).output(0) for a in (w, s, z, c8)],
                               {"group_size": 64, "k3_version": K3_VERSION}).output(0)
            else:
                x = ops.matmul(x, ops.constant(rng.standard_normal((N, K)).astype(np.float32) * 0.05), False,
                               True).output(0)
            for j in range(ELT):
                x = (ops.add(ops.multiply(x, ops.constant(np.float32(0.9))), ops.constant(np.float32(0.01)))
                     if j % 2 == 0 else ops.swish(x)).output(0)
        return ov.Model([x], [p])

    print(f"1. chain of {L} x [matmul K = N = {K} + {ELT} element-wise nodes], us per block:")
    x = np.ones((1, 1, K), np.float32)
    for kind in ("MatMul3", "native MatMul"):
        res = []
        for static in (False, True):
            req = core.compile_model(chain(kind, static), "CPU", cfg).create_infer_request()
            res.append(_time(req, [x], 2000) / L * 1e6)
        print(f"   {kind:14s} dynamic {res[0]:6.1f}   static {res[1]:6.1f}")

    # 2. toy MoE3 chain
    E, H, I, gs, LM = 16, 256, 128, 128, 16

    def wset(n, k):
        return [rng.integers(0, 255, (E, n, k3_blocks(k), 12), dtype=np.uint8),
                (rng.random((E, n, k // gs)) * 0.01).astype(np.float16), np.full((1,), 4, np.uint8)]

    def moe_chain(static):
        x = ops.parameter([1, H] if static else [-1, H], np.float32)
        lg = ops.parameter([1, E] if static else [-1, E], np.float32)
        y = x.output(0)
        for _ in range(LM):
            ws = wset(I, H) + wset(I, H) + wset(H, I) + [c8]
            y = fac.create("MoE3", [y, lg.output(0)] + [ops.constant(a).output(0) for a in ws],
                           {"top_k": 2, "normalize_topk": True, "group_size": gs, "k3_version": K3_VERSION}).output(0)
        return ov.Model([y], [x, lg])

    xs = rng.standard_normal((1, H)).astype(np.float32)
    ls = rng.standard_normal((1, E)).astype(np.float32)
    res = []
    for static in (False, True):
        req = core.compile_model(moe_chain(static), "CPU", cfg).create_infer_request()
        res.append(_time(req, [xs, ls], 1000) / LM * 1e6)
    print(f"2. toy MoE3 ({E} experts, H {H}, I {I}, top-2), us per op: dynamic {res[0]:.1f}   static {res[1]:.1f}")

    # 3. MoE stack: MoE3 + MatMul3 vs MoE3 + stock (widened u4) attention
    if args.hybrid:
        from pathlib import Path

        from openvino_ext import transformations as T

        d = Path(args.hybrid)

        def hybrid():
            m = core.read_model(d / "moe_int3_stock.xml")
            layout, st = T.model_layout(m), Counter()
            T._rewrite_moe(m, T._factory(), layout, st)  # experts -> MoE3 only
            T._widen(m, layout, st)  # the remaining u3 (attention) -> u4 for stock FullyConnected
            m.validate_nodes_and_infer_types()
            return m

        builds = {"MoE3 + MatMul3": lambda: core.read_model(d / "moe_moe3.xml"), "MoE3 + stock u4 attention": hybrid}
        reqs = {}
        for name, build in builds.items():
            for static in (False, True):
                m = build()
                if static:
                    m.reshape([1, 1])
                reqs[(name, static)] = core.compile_model(m, "CPU", cfg).create_infer_request()
                reqs[(name, static)].infer([np.ones((1, 1), np.int64)])
        times = {k: [] for k in reqs}
        for _ in range(8):
            for k, r in reqs.items():
                for _ in range(3):
                    r.infer([rng.integers(0, 512, (1, 1))])
                for _ in range(25):
                    t = time.perf_counter()
                    r.infer([rng.integers(0, 512, (1, 1))])
                    times[k].append(time.perf_counter() - t)
        print("3. MoE stack decode, ms per step (one process, 8 alternating rounds):")
        for (name, static), v in times.items():
            print(f"   {name:27s} {'static ' if static else 'dynamic'} {np.median(v) * 1e3:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
