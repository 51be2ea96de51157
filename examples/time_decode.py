"""Time batch-1 decode steps of one stateless MoE-stack IR (as written by ``examples/bench_cpu.py --keep DIR``).

    python examples/time_decode.py out/bench/moe_moe3.xml [--seconds 5] [--static] [--hint f32] [--tokens 128]

``--tokens N`` times N-token inferences (prefill) instead of single tokens; ``--static`` reshapes the input to
[1, N] first (shows the CPU plugin's per-inference cost of dynamic shapes around
extension ops); ``--hint`` sets INFERENCE_PRECISION_HINT. Prints median / mean / p10 / p90 / max ms per token and the
first inference's time (it includes the ops' one-time copy of mmapped weights into 2 MB pages;
``NNCF_MOE3_HUGEPAGES=0`` skips that copy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ir")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--static", action="store_true")
    ap.add_argument("--hint", default=None, help="INFERENCE_PRECISION_HINT (e.g. f32); default: the plugin's")
    ap.add_argument("--tokens", type=int, default=1, help="tokens per inference (1: decode steps; N: prefill)")
    args = ap.parse_args(argv)

    import openvino as ov

    import openvino_ext

    core = ov.Core()
    openvino_ext.register(core)
    model = core.read_model(args.ir)
    if args.static:
        model.reshape([1, args.tokens])
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1}
    if args.hint:
        cfg["INFERENCE_PRECISION_HINT"] = args.hint
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    shape = (1, args.tokens)
    req.infer([rng.integers(0, 512, shape)])  # first inference: the ops' one-time 2 MB-page weight copies
    first = time.perf_counter() - t
    for _ in range(2):
        req.infer([rng.integers(0, 512, shape)])
    times = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        x = rng.integers(0, 512, shape)
        t = time.perf_counter()
        req.infer([x])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    what = "tokens" if args.tokens == 1 else f"{args.tokens}-token inferences"
    print(f"{args.ir}: {len(ms)} {what}, median {np.median(ms):.2f} mean {ms.mean():.2f} p10 "
          f"{np.percentile(ms, 10):.2f} p90 {np.percentile(ms, 90):.2f} max {ms.max():.2f} ms/{'token' if args.tokens == 1 else 'inference'}; first inference "
          f"{first * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
