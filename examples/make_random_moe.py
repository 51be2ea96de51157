"""Write a random-init Qwen3-MoE checkpoint with the real Qwen3-30B-A3B layer shapes (hidden 2048, expert intermediate
768, 32 query / 4 KV heads of 128, top-8) and the reference model's tokenizer, for speed checks of whole pipelines
(e.g. ``examples/genai_3bit.py --model DIR --default-config``) on a model that does not fit in the L3 cache.

    python examples/make_random_moe.py --out out/random_qwen3moe_8x16 --layers 8 --experts 16

The weights are random (the text it generates is meaningless); bf16 safetensors, ~1.3 GB at 8 layers x 16 experts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from nncf_moe3 import reference
    from nncf_moe3.export import tiny_config

    ref = reference.checkpoint_dir()
    vocab = json.loads((ref / "config.json").read_text())["vocab_size"]  # the reference tokenizer's ids
    cfg = tiny_config("qwen3_moe", hidden_size=2048, num_hidden_layers=args.layers, num_attention_heads=32,
                      num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, intermediate_size=768,
                      num_experts=args.experts, num_experts_per_tok=args.top_k, vocab_size=vocab,
                      initializer_range=0.02)
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = 0
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).eval()
    out = Path(args.out)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (ref / name).is_file():
            shutil.copy(ref / name, out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e9:.2f} B parameters, vocab {vocab}, {args.layers} layers x {args.experts} experts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
