"""Benchmark the k3 OpenCL MoE3 kernels on an OpenCL device (OpenCL directly via pyopencl, not OpenVINO).

A Qwen3-30B-A3B-shaped routed-expert stack: hidden 2048, expert intermediate 768, top-8, 8 layers x 16 experts
(per-layer weights, so nothing stays cached across layers), decode (1 token) and prefill (128 tokens). Prints time,
achieved weight bandwidth (bytes of the k3 planes + scales + zero points of the experts actually touched, per
pass), and the ratio to the device's copy bandwidth measured in the same run with a float4 copy kernel
((read + write bytes) / time).

    python examples/bench_gpu.py                 # full shape; choose the device with --device or NNCF_MOE3_OCL_DEVICE
    python examples/bench_gpu.py --quick         # tiny shapes, runs in seconds on PoCL (CI smoke check)

Numbers from PoCL (CPU) say nothing about a GPU; this script has not been run on a GPU yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openvino_ext.gpu import harness as H  # noqa: E402
from openvino_ext.reference import moe3_ref, random_case, route  # noqa: E402

COPY_SRC = """
__kernel void copy4(__global const float4* a, __global float4* b) { b[get_global_id(0)] = a[get_global_id(0)]; }
"""


def copy_bandwidth(rt, nbytes: int, reps: int) -> float:
    import pyopencl as cl

    n4 = nbytes // 16
    a, b = rt.empty(n4 * 16), rt.empty(n4 * 16)
    prg = cl.Program(rt.ctx, COPY_SRC).build()
    knl = cl.Kernel(prg, "copy4")
    knl.set_args(a, b)
    cl.enqueue_nd_range_kernel(rt.queue, knl, (n4,), None).wait()
    best = float("inf")
    for _ in range(reps):
        ev = cl.enqueue_nd_range_kernel(rt.queue, knl, (n4,), None)
        ev.wait()
        best = min(best, (ev.profile.end - ev.profile.start) * 1e-9)
    return 2 * n4 * 16 / best


def make_layer(rng, e, h, i, gs, mode):
    ops = []
    for n, k in ((i, h), (i, h), (h, i)):
        w, s, z, c = random_case(rng, n, k, gs, mode, (e,))
        ops += [w, s, z]
    return ops, c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (hidden 256, inter 128, 4 experts, 2 layers)")
    ap.add_argument("--device", default=None, help="gpu | cpu | <name substring>[:index] (default: first GPU)")
    ap.add_argument("--mode", default="int3_asym", choices=["int3_sym", "int3_asym", "nf3"])
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--fast", default="auto", help="fast paths: auto | none | comma list (see harness)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--prefill-tokens", type=int, default=None)
    a = ap.parse_args(argv)

    if a.quick:
        h, inter, e, k, layers, tp, reps, copy_mb = 256, 128, 4, 2, 2, 16, a.reps or 2, 8
    else:
        h, inter, e, k, layers, tp, reps, copy_mb = 2048, 768, 16, 8, 8, 128, a.reps or 10, 256
    tp = a.prefill_tokens or tp
    gs = min(a.group_size, inter)
    rt = H.runtime(a.device)
    dev = rt.device
    print(f"device: {dev.name.strip()} ({dev.platform.name.strip()}), OpenCL {dev.version.strip()}")
    bw_copy = copy_bandwidth(rt, copy_mb << 20, max(3, reps))
    print(f"copy bandwidth (float4 copy, {copy_mb} MiB, (read+write)/time): {bw_copy / 1e9:.2f} GB/s")
    print(f"stack: {layers} layers x {e} experts, hidden {h}, inter {inter}, top-{k}, {a.mode} g{gs}")

    rng = np.random.default_rng(0)
    plans, wsets = [], []
    for _ in range(layers):
        ops, c = make_layer(rng, e, h, inter, gs, a.mode)
        plans.append(H.MoE3Plan(*ops, c, top_k=k, normalize_topk=True, group_size=gs, device=dev, fast=a.fast))
        wsets.append((ops, c))
    print(f"fast paths: {', '.join(plans[0].fast) or 'none (portable core)'}")
    per_expert = plans[0].bytes_per_expert()

    for label, t in (("decode", 1), (f"prefill{tp}", tp)):
        x = rng.standard_normal((t, h)).astype(np.float32)
        logits = [rng.standard_normal((t, e)).astype(np.float32) for _ in range(layers)]
        touched = sum(len(np.unique(route(lg, k, True)[0])) for lg in logits)
        nbytes = touched * per_expert
        xb = rt.buf(x)
        lbs = [rt.buf(lg) for lg in logits]
        yb = rt.empty(t * h * 4)
        # correctness spot check of layer 0 against the numpy reference
        y0 = plans[0].run(x, logits[0])
        ref = moe3_ref(x, logits[0], *wsets[0][0], wsets[0][1], top_k=k, normalize_topk=True, group_size=gs)
        err = float(np.abs(y0 - ref).max() / np.abs(ref).max())
        for p, lb in zip(plans, lbs):  # warm-up (build + first launch)
            p.enqueue(xb, lb, yb, t)
        rt.queue.finish()
        best_wall, best_dev = float("inf"), float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            evs = []
            for p, lb in zip(plans, lbs):  # layers chained through the same activations (timing only)
                evs += p.enqueue(xb, lb, yb, t)
            rt.queue.finish()
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_dev = min(best_dev, (evs[-1].profile.end - evs[0].profile.start) * 1e-9)
        gbs = nbytes / best_dev
        print(f"{label:>10}: path {plans[0].kernel_path(t):7s} device {best_dev * 1e3:9.3f} ms  wall "
              f"{best_wall * 1e3:9.3f} ms  weights {nbytes / 1e6:8.2f} MB  {gbs / 1e9:7.2f} GB/s  "
              f"roofline {gbs / bw_copy:6.1%} of copy  (max rel err vs numpy {err:.1e})")
    if not dev.type & 4:  # cl.device_type.GPU
        print("note: not a GPU device -- numbers above do not describe GPU performance (unmeasured on a GPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
