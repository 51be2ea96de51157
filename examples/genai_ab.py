"""Decode throughput of several native genai folders in ONE process, alternating generate() calls (machine noise and
drift hit all alike). Each folder is loaded with the nncf_moe3 extension and the CPU plugin's default configuration.

    python examples/genai_ab.py /tmp/genai_big /tmp/genai_big5 [--rounds 5] [--max-new-tokens 48]

Prints the median decode tokens/s (genai PerfMetrics) per folder.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompt", default="import os\nimport sys\n\n\ndef main(")
    args = ap.parse_args(argv)

    from nncf_moe3 import genai

    pipes = [genai.load_pipeline(d, native=True, exact=False) for d in args.dirs]
    res = {d: [] for d in args.dirs}
    for _ in range(args.rounds):
        for d, p in zip(args.dirs, pipes):
            res[d].append(genai.greedy(p, args.prompt, max_new_tokens=args.max_new_tokens, ignore_eos=True)["tokens_per_s"])
    for d in args.dirs:
        print(f"{d}: decode tokens/s median {np.median(res[d]):.1f}  all {[round(x, 1) for x in res[d]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
