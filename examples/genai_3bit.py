"""openvino-genai generation from a 3-bit MoE model through the native MoE3 / MatMul3 ops (CPU).

Exports the HF MoE checkpoint in stateful (KV-cache) form, compresses it data-free with nncf-moe3, rewrites the
u3 MoE blocks into ``MoE3`` (and u3 2-D MatMuls into ``MatMul3``) with ``openvino_ext.transform(model, "cpu")``,
saves the IR + OpenVINO tokenizer to ``--out``, builds / loads the C++ extension and generates greedily with

    openvino_genai.LLMPipeline(out, "CPU", extensions=[openvino_ext.library_path()])

then runs the same compressed IR without the transformation (stock plugin decompression, ``--out``/
plain_decompression) and reports whether the greedy tokens are identical, plus tokens/s of both.

    python examples/genai_3bit.py                                  # reference model, int3_asym g64
    python examples/genai_3bit.py --model path/to/Qwen3-30B-A3B --mode nf3 --prompt "Hello" --max-new-tokens 64

Both pipelines run with f32 inference, no dynamic activation quantization and an f32 KV cache
(``nncf_moe3.genai.EXACT_CONFIG``); the MoE3 kernels' int8 activation path is off unless ``--act-quant``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from nncf_moe3 import reference

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(reference.checkpoint_dir()), help="HF MoE checkpoint dir (default: reference)")
    ap.add_argument("--out", default="out/genai_3bit", help="output dir (MoE3 IR; baseline in OUT/plain_decompression)")
    ap.add_argument("--mode", default="int3_asym", choices=["int3_asym", "int3_sym", "nf3"])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--prompt", default="import os\nimport sys\n\n\ndef main(")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--baseline", default="plain", choices=["plain", "widen"],
                    help="plain: stock u3 decompression; widen: u3 -> u4 (openvino_ext.transform 'widen')")
    ap.add_argument("--attention-backend", default=None, choices=["PA", "SDPA"],
                    help="PA: PagedAttention forced (no silent fallback); SDPA: stateful pipeline "
                         "(default: genai's choice, PagedAttention on x86-64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed generate() calls per pipeline (median reported)")
    ap.add_argument("--act-quant", action="store_true", help="allow the MoE3 kernels' int8 activations (VNNI)")
    ap.add_argument("--skip-export", action="store_true", help="reuse the IRs already in --out")
    ap.add_argument("--default-config", action="store_true",
                    help="speed check: both pipelines at the CPU plugin's defaults (bf16 where supported, dynamic "
                         "activation quantization, u8 KV cache) and the MoE3 int8 activations on; greedy tokens are "
                         "then not expected to match and the exit status ignores them")
    args = ap.parse_args(argv)

    if not (args.act_quant or args.default_config):
        os.environ["NNCF_MOE3_ACT_QUANT"] = "0"  # read once, when the extension's kernels are first used
    import torch

    torch.set_num_threads(1)
    from nncf_moe3 import genai

    out = Path(args.out)
    if not args.skip_export:
        print(f"exporting {args.model} (stateful) -> {args.mode} g{args.group_size} -> {out}", flush=True)
        # exact (f32) pipelines: f32 activation edges; the plugin's defaults: bf16 edges where it runs bf16
        info = genai.prepare(args.model, out, mode=args.mode, group_size=args.group_size, baseline=args.baseline,
                             activations=None if args.default_config else "f32", progress=False)
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in info["seconds"].items())
        print(f"  native ops: {dict(info['native_ops'])}; {secs}")
        if not info["native_ops"]:
            print("  warning: no u3 block was rewritten; the 'native' pipeline runs stock decompression")
        if info["tokenizer_error"]:
            print(f"  tokenizer conversion failed ({info['tokenizer_error']}); generating from token ids")
    has_tokenizer = (out / "openvino_tokenizer.xml").is_file()
    prompt, hf_tok = args.prompt, None
    if not has_tokenizer:  # no OpenVINO tokenizer: token ids in and out, HF tokenizer on the Python side
        from transformers import AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(args.model)
        prompt = hf_tok(args.prompt)["input_ids"]

    props = genai.attention_backend_properties(args.attention_backend)
    results = {}
    for name, path, native in (("MoE3 (native)", out, True), (f"{args.baseline} decompression", out / genai.BASELINE_SUBDIR, False)):
        pipe = genai.load_pipeline(path, native=native, exact=not args.default_config, **props)
        genai.greedy(pipe, prompt, max_new_tokens=4)  # warm-up (first-inference allocations)
        runs = [genai.greedy(pipe, prompt, max_new_tokens=args.max_new_tokens) for _ in range(max(1, args.repeats))]
        r = runs[0]
        if any(x["tokens"] != r["tokens"] for x in runs):
            print(f"warning: {name}: greedy tokens differ between repeated calls")
        tps = float(np.median([x["tokens_per_s"] for x in runs]))
        ttft = float(np.median([x["ttft_ms"] for x in runs]))
        wall = float(np.median([x["seconds"] for x in runs]))
        results[name] = r
        print(f"\n=== {name}: {path}")
        text = r["text"] if r["text"] is not None else hf_tok.decode(r["tokens"]) if hf_tok else str(r["tokens"])
        print(f"{args.prompt}{text}")
        print(f"--- {len(r['tokens'])} new tokens; median of {len(runs)}: {tps:.1f} tokens/s (decode), "
              f"TTFT {ttft:.1f} ms, generate() {wall * 1e3:.0f} ms "
              f"({len(r['tokens']) / wall:.1f} tokens/s end to end)")
        del pipe

    (a, ra), (b, rb) = results.items()
    same = ra["tokens"] == rb["tokens"]
    print(f"\ngreedy tokens identical ({a} vs {b}): {same}"
          + (" (not expected with --default-config: different precisions)" if args.default_config else ""))
    if args.default_config:
        return 0
    if not same:
        first = next((i for i, (x, y) in enumerate(zip(ra["tokens"], rb["tokens"])) if x != y),
                     min(len(ra["tokens"]), len(rb["tokens"])))
        print(f"  first difference at new token {first}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
