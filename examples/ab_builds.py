"""Decode-time A/B of several nncf_moe3 extension builds (and read settings) in ONE process, alternating rounds.

Two builds of the extension can live in one process: each is loaded into its own ``ov.Core`` (the libraries keep their
symbols hidden), so machine noise and drift hit every variant alike — on a shared VM separate processes minutes apart
drift by +-10 %. Each variant is ``LIB[:nommap]`` (``:nommap`` reads the IR with ``ENABLE_MMAP=False``).

    # the current build vs the one of an older commit
    git worktree add /tmp/base <commit> && (cd /tmp/base && python -m openvino_ext.build)
    python examples/ab_builds.py out/bench/moe_moe3.xml /tmp/base/openvino_ext/cpu/build/*/libnncf_moe3_cpu.so \\
        openvino_ext/cpu/build/*/libnncf_moe3_cpu.so
    # mmapped IR vs heap copy with one build
    python examples/ab_builds.py out/bench/moe_moe3.xml LIB LIB:nommap

List a build twice to see the noise floor: on the 2-core Zen 4 VM identical builds differed by up to 2-3 %, and the
first position tended to be the slow one (session 4, software-prefetch distance 1.5 / 3 / 6 KB: equal within that;
no software prefetch: +4 %).

IRs with a ``[?, ?]`` token-id input (``examples/bench_cpu.py --keep``'s MoE stack) or a float ``[?, K]`` input (its
dense case) are supported. Prints the median ms per inference of each variant and its ratio to the first.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ir")
    ap.add_argument("variants", nargs="+", help="LIB or LIB:nommap")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=30, help="timed inferences per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import openvino as ov

    cfg = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    reqs, first = {}, {}
    for i, v in enumerate(args.variants):
        lib, _, opt = v.partition(":")
        core = ov.Core()
        core.add_extension(lib)
        core.set_property({"ENABLE_MMAP": opt != "nommap"})
        model = core.read_model(args.ir)
        ids = model.inputs[0].get_element_type().is_integral()
        k = None if ids else model.inputs[0].get_partial_shape()[-1].get_length()
        req = core.compile_model(model, "CPU", cfg).create_infer_request()
        key = f"[{i}] {v}"
        t = time.perf_counter()
        req.infer([np.ones((1, 1), np.int64)] if ids else [np.ones((1, k), np.float32)])
        first[key] = time.perf_counter() - t
        reqs[key] = (req, ids, k)
    rng = np.random.default_rng(0)
    times = {key: [] for key in reqs}

    def inp(ids, k):
        return [rng.integers(0, 512, (1, 1))] if ids else [rng.standard_normal((1, k)).astype(np.float32)]

    for _ in range(args.rounds):
        for key, (req, ids, k) in reqs.items():
            for _ in range(3):
                req.infer(inp(ids, k))
            for _ in range(args.tokens):
                x = inp(ids, k)
                t = time.perf_counter()
                req.infer(x)
                times[key].append(time.perf_counter() - t)
    base = None
    for key, v in times.items():
        med = float(np.median(v))
        base = base or med
        print(f"{key}: median {med * 1e3:.3f} ms ({med / base:.3f}x the first), first inference "
              f"{first[key] * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
