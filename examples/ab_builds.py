"""Decode-time A/B of several nncf_moe3 extension builds (and read settings) in ONE process, alternating rounds.

Two builds of the extension can live in one process: each is loaded into its own ``ov.Core`` (the libraries keep their
symbols hidden), so machine noise and drift hit every variant alike — on a shared VM separate processes minutes apart
drift by +-10 %. Each variant is ``LIB[:nommap][:isa=NAME][:VAR=VALUE...]`` (``:nommap`` reads the IR with
``ENABLE_MMAP=False``; ``:isa=NAME`` sets ``NNCF_MOE3_ISA``, ``:VAR=VALUE`` any other environment variable, while that
variant runs — the ops read ``NNCF_MOE3_ISA`` and ``NNCF_MOE3_ACT_QUANT`` on every call).

    # the current build vs the one of an older commit
    git worktree add /tmp/base <commit> && (cd /tmp/base && python -m openvino_ext.build)
    python examples/ab_builds.py out/bench/moe_moe3.xml /tmp/base/openvino_ext/cpu/build/*/libnncf_moe3_cpu.so \\
        openvino_ext/cpu/build/*/libnncf_moe3_cpu.so
    # mmapped IR vs heap copy with one build
    python examples/ab_builds.py out/bench/moe_moe3.xml LIB LIB:nommap
    # kernel ISAs of one build, 128-token prefill
    python examples/ab_builds.py out/bench/moe_moe3.xml LIB:isa=avx2_int8 LIB:isa=avx2 --m 128 --tokens 2

List a build twice to see the noise floor: on the 2-core Zen 4 VM identical builds differed by up to 2-3 %, and the
first position tended to be the slow one (session 4, software-prefetch distance 1.5 / 3 / 6 KB: equal within that;
no software prefetch: +4 %).

IRs with a ``[?, ?]`` token-id input (``examples/bench_cpu.py --keep``'s MoE stack) or a float ``[?, K]`` input (its
dense case) are supported. Prints the median ms per inference of each variant and its ratio to the first.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--m", type=int, default=1, help="tokens per inference (1: decode steps; N: N-token prefill)")
    args = ap.parse_args(argv)

    import openvino as ov

    cfg = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    reqs, first = {}, {}
    envs = {}  # variant -> {VAR: VALUE}

    def use_env(key):
        for var in {v for e in envs.values() for v in e}:
            os.environ.pop(var, None)
        os.environ.update(envs[key])

    for i, v in enumerate(args.variants):
        lib, *opts = v.split(":")
        unknown = [o for o in opts if o != "nommap" and "=" not in o]
        if unknown:
            ap.error(f"unknown variant option(s) {unknown} in {v!r}")
        key = f"[{i}] {v}"
        envs[key] = dict(o.split("=", 1) for o in opts if "=" in o)
        if "isa" in envs[key]:
            envs[key]["NNCF_MOE3_ISA"] = envs[key].pop("isa")
        use_env(key)
        core = ov.Core()
        core.add_extension(lib)
        core.set_property({"ENABLE_MMAP": "nommap" not in opts})
        model = core.read_model(args.ir)
        ids = model.inputs[0].get_element_type().is_integral()
        k = None if ids else model.inputs[0].get_partial_shape()[-1].get_length()
        req = core.compile_model(model, "CPU", cfg).create_infer_request()
        t = time.perf_counter()
        req.infer([np.ones((1, args.m), np.int64)] if ids else [np.ones((args.m, k), np.float32)])
        first[key] = time.perf_counter() - t
        reqs[key] = (req, ids, k)
    rng = np.random.default_rng(0)
    times = {key: [] for key in reqs}

    def inp(ids, k):
        return [rng.integers(0, 512, (1, args.m))] if ids else [rng.standard_normal((args.m, k)).astype(np.float32)]

    for _ in range(args.rounds):
        for key, (req, ids, k) in reqs.items():
            use_env(key)
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
