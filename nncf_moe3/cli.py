"""``nncf-moe3`` command line.

  nncf-moe3 demo                        compress the embedded reference model to 3 bits, evaluate, print a table
  nncf-moe3 compress SRC OUT_DIR ...    HF MoE checkpoint dir or IR .xml -> 3-bit IR (stock OpenVINO reads it)
  nncf-moe3 eval MODEL                  held-out ppl (+ KL to --reference) of an IR or HF checkpoint
  nncf-moe3 baselines                   reference model: fp16 + upstream NNCF INT4/INT3 table
  nncf-moe3 results                     reference model: 3-bit PTQ results table + plot (SUMMARY.md)
  nncf-moe3 train-reference --out DIR   retrain the reference model (deterministic)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np


def _load_tokens_for(model_dir: Path | None, data: str | None, seq_len: int, count: int, split_seed: int):
    """Token windows: from --data text (tokenized with the model's tokenizer) or the reference model's frozen sets."""
    from nncf_moe3 import reference
    from nncf_moe3.reference import data as rdata

    if data is None or data == "reference":
        return None
    from transformers import AutoTokenizer

    if model_dir is None or not (Path(model_dir) / "tokenizer_config.json").exists():
        raise ValueError(f"--dataset/--data {data!r} needs the model's tokenizer next to it ({model_dir})")
    tok = AutoTokenizer.from_pretrained(model_dir)
    stream = rdata.tokenize_texts(tok, rdata.read_text_path(data), tok.eos_token_id)
    return rdata.make_windows(stream, seq_len, count, seed=split_seed)


def _read_source(src: str, work: Path):
    """(ov.Model, hf_dir or None) from an HF checkpoint directory or an IR .xml."""
    import openvino as ov

    from nncf_moe3.export import export_model

    p = Path(src)
    if p.suffix == ".xml":
        if not p.exists():
            raise FileNotFoundError(f"IR not found: {p}")
        return ov.Core().read_model(str(p)), p.parent
    if p.is_dir() and (p / "config.json").exists():
        print(f"exporting {p} to OpenVINO ...", flush=True)
        model = export_model(p)
        return model, p
    raise FileNotFoundError(f"{src} is neither an IR .xml nor a HF checkpoint directory (config.json)")


def cmd_compress(a) -> int:
    import openvino as ov

    import nncf_moe3
    from nncf_moe3 import reference
    from nncf_moe3.baselines import calibration_dataset
    from nncf_moe3.export import copy_tokenizer_files
    from nncf_moe3.ir_stats import bits_summary

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, src_dir = _read_source(a.src, out)
    dataset = None
    if a.dataset:
        if a.dataset == "reference":
            tokens = reference.calib_tokens()
        else:
            tokens = _load_tokens_for(src_dir, a.dataset, a.seq_len, a.subset_size, split_seed=4321)
        dataset = calibration_dataset(model, tokens, a.subset_size)
    t0 = time.time()
    kwargs = dict(mode=a.mode, group_size=a.group_size, dataset=dataset, subset_size=a.subset_size,
                  progress=True)
    if a.avg_bits is not None:
        kwargs["avg_bits"] = a.avg_bits
    if a.all_layers:
        kwargs["all_layers"] = True
    model = nncf_moe3.compress_weights(model, **kwargs)
    xml = out / "openvino_model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    if src_dir is not None:
        copy_tokenizer_files(src_dir, out)
    bits = bits_summary(model)
    print(f"wrote {xml} in {time.time() - t0:.1f} s — bits/weight: experts {bits['experts']:.3f}, all {bits['all']:.3f}")
    return 0


def cmd_eval(a) -> int:
    from nncf_moe3 import reference
    from nncf_moe3.accuracy import evaluate_ov, evaluate_torch, reference_logprobs

    tokens = reference.eval_tokens()[: a.windows]
    ref = None
    if a.reference:
        ref = reference_logprobs(reference.load_model(a.reference if a.reference != "reference" else None), tokens)
    p = Path(a.model)
    if p.suffix == ".xml":
        res = evaluate_ov(p, tokens, ref)
    else:
        res = evaluate_torch(reference.load_model(p), tokens, ref)
    print(f"ppl {res.ppl:.4f}" + (f"  KL {res.kl:.5f}" if res.kl is not None else "") + f"  tokens {res.tokens}")
    return 0


def cmd_demo(a) -> int:
    from nncf_moe3.demo import run_demo

    return run_demo(Path(a.out), group_size=a.group_size, quick=a.quick)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="nncf-moe3", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="compress the reference model to 3 bits, evaluate, print a table")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--group-size", type=int, default=128)
    d.add_argument("--quick", action="store_true", help="data-free recipes only")
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("compress", help="compress an HF MoE checkpoint dir or an IR to 3 bits")
    c.add_argument("src", help="HF checkpoint directory or OpenVINO IR .xml")
    c.add_argument("out_dir")
    c.add_argument("--mode", default="int3_asym", help="int3_sym | int3_asym | nf3 | any nncf.CompressWeightsMode")
    c.add_argument("--group-size", type=int, default=128)
    c.add_argument("--dataset", default=None,
                   help="calibration text: a file or folder of text files, or 'reference' (reference model's set)")
    c.add_argument("--subset-size", type=int, default=64, help="calibration windows")
    c.add_argument("--seq-len", type=int, default=256)
    c.add_argument("--avg-bits", type=float, default=None, help="MoE mixed precision budget (bits per expert weight)")
    c.add_argument("--all-layers", action="store_true", help="also 3-bit embeddings, lm_head and router")
    c.set_defaults(fn=cmd_compress)

    e = sub.add_parser("eval", help="held-out perplexity of an IR .xml or HF checkpoint on the reference eval set")
    e.add_argument("model")
    e.add_argument("--reference", default=None, help="HF checkpoint for KL ('reference' = embedded model)")
    e.add_argument("--windows", type=int, default=128)
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("baselines", help="fp16 + upstream NNCF baselines of the reference model", add_help=False)
    b.set_defaults(fn=None)
    r = sub.add_parser("results", help="PTQ results table + plot of the reference model", add_help=False)
    r.set_defaults(fn=None)
    t = sub.add_parser("train-reference", help="retrain the reference model", add_help=False)
    t.set_defaults(fn=None)
    bn = sub.add_parser("bench", help="CPU runtime benchmark: native 3-bit ops vs stock INT4 / INT3 / widened "
                        "(Qwen3-30B-A3B-shaped MoE stack + dense 4096x4096)", add_help=False)
    bn.set_defaults(fn=None)

    args, rest = p.parse_known_args(argv)
    if args.cmd == "baselines":
        from nncf_moe3.baselines import main as baselines_main

        return baselines_main(rest)
    if args.cmd == "results":
        from nncf_moe3.results import main as results_main

        return results_main(rest)
    if args.cmd == "bench":
        from nncf_moe3.bench import main as bench_main

        return bench_main(rest)
    if args.cmd == "train-reference":
        from nncf_moe3.reference.train import main as train_main

        return train_main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        print(f"nncf-moe3 {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
