"""Speed / memory measurement of an OpenVINO IR on CPU, in a fresh subprocess (clean resident-memory baseline).

``python -m nncf_moe3.measure <model.xml> [--threads 2] [--repeats 50]`` prints one JSON line:
``{"decode_ms": ..., "prefill_ms": ..., "rss_mb": ..., "rss_added_mb": ...}``.

decode_ms is the median time of a batch-1, 1-token forward of the stateless model (the weight-streaming
part of a decode step; no KV cache), prefill_ms the median of a batch-1, 128-token forward. rss_added_mb is
the process's resident-memory growth from before ``read_model`` to after compile + first inference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def measure_in_process(xml: str, threads: int = 2, repeats: int = 50, extensions=()) -> dict:
    import openvino as ov

    rss0 = rss_mb()
    core = ov.Core()
    for ext in extensions:
        core.add_extension(ext)
    compiled = core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}

    def feed(n):
        ids = np.full((1, n), 17, dtype=np.int64)
        d = {"input_ids": ids}
        if "attention_mask" in names:
            d["attention_mask"] = np.ones_like(ids)
        if "position_ids" in names:
            d["position_ids"] = np.arange(n, dtype=np.int64)[None]
        return d

    one, many = feed(1), feed(128)
    request.infer(one)
    rss1 = rss_mb()
    decode = _median_ms(lambda: request.infer(one), repeats)
    prefill = _median_ms(lambda: request.infer(many), max(3, repeats // 10))
    return {"decode_ms": decode, "prefill_ms": prefill, "rss_mb": rss1, "rss_added_mb": rss1 - rss0}


def measure_ir(xml, threads: int = 2, repeats: int = 50, timeout: float = 600) -> dict:
    """Run :func:`measure_in_process` in a fresh Python process and return its JSON result."""
    cmd = [sys.executable, "-m", "nncf_moe3.measure", str(xml), "--threads", str(threads), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement of {xml} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("xml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args(argv)
    print(json.dumps(measure_in_process(a.xml, a.threads, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
