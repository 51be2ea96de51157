"""3-bit LoRA-QAT of a transformers MoE model, exported to an OpenVINO IR with u3 weights.

Defaults: the embedded reference model and its training corpus (the Python standard library's training split),
int3_asym g64 experts starting from the data-aware PTQ (GPTQ) solution, LoftQ init rank 8, LSQ scales, KL distillation from
the fp model + 0.2 x CE, 400 steps (a 15-minute cap) with early stopping on the KL of 32 validation windows (held-out
text disjoint from the evaluation windows) — 5.3 minutes in total on 2 idle cores. Any HF MoE checkpoint directory (Qwen3-MoE, Mixtral, Qwen2-MoE) and any text file/folder can be given::

    python examples/qat_lora_3bit.py --out out/qat                     # reference model, ~5 min on 2 idle cores
    python examples/qat_lora_3bit.py --model /path/to/Qwen3-30B-A3B --data corpus/ --steps 2000 --out out/qat30b

Prints held-out ppl / KL of the fp model, the PTQ starting point (same quantizer, no training), the trained torch
fake-quant model and the exported IR on OpenVINO CPU, and writes ``<out>/openvino_model.xml`` plus ``qat.json``.
Multi-GPU / multi-node: ``accelerate launch examples/qat_lora_3bit.py --accelerate ...`` (HF accelerate does the
process group and gradient all-reduce; see README "QAT").
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF MoE checkpoint dir (default: the reference model)")
    ap.add_argument("--data", default=None, help="training text: a file or a folder of text files "
                    "(default: the reference model's training split of the Python stdlib)")
    ap.add_argument("--out", required=True, help="output dir for the IR and qat.json")
    ap.add_argument("--mode", default="int3_asym", choices=["int3_sym", "int3_asym", "nf3"])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--init", default="loftq", choices=["zeros", "loftq", "pissa"])
    ap.add_argument("--no-lsq", action="store_true", help="keep the initial (searched) scales fixed")
    ap.add_argument("--train-norms", action="store_true", help="also train the float RMSNorm weights")
    ap.add_argument("--start", default="ptq", choices=["ptq", "rtn"],
                    help="ptq (default): start from nncf_moe3.compress_weights' data-aware default (GPTQ) computed "
                         "on --calib-windows training windows; rtn: from round-to-nearest with searched scales")
    ap.add_argument("--calib-windows", type=int, default=128)
    ap.add_argument("--steps", type=int, default=400,
                    help="training steps = the cosine schedule's length (default 400; 0: as many as --minutes allow)")
    ap.add_argument("--minutes", type=float, default=15.0,
                    help="training time cap (default 15); the best validation checkpoint so far is kept if it hits")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4, help="adapter learning rate")
    ap.add_argument("--scale-lr", type=float, default=2e-5, help="LSQ step-size learning rate")
    ap.add_argument("--ce-weight", type=float, default=0.2, help="weight of the next-token CE next to the KL")
    ap.add_argument("--eval-windows", type=int, default=128, help="held-out windows for ppl/KL (reference: 128)")
    ap.add_argument("--val-windows", type=int, default=32,
                    help="validation windows for early stopping on KL (0: keep the last step); reference model: "
                         "held-out windows disjoint from the evaluation windows, else the end of the training text")
    ap.add_argument("--eval-every", type=int, default=100, help="validation interval in steps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accelerate", action="store_true", help="train through HF accelerate's Accelerator")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from torch.nn.utils import parametrize
    from transformers import AutoTokenizer

    from nncf_moe3 import qat, reference
    from nncf_moe3.accuracy import evaluate_ov, evaluate_torch, reference_logprobs
    from nncf_moe3.export import load_hf_model
    from nncf_moe3.reference import data

    t_start = time.time()
    model_dir = Path(args.model) if args.model else reference.checkpoint_dir()
    model = load_hf_model(model_dir)
    model.config._experts_implementation = "eager"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    eos = tok.eos_token_id
    if args.data:
        texts = data.read_text_path(args.data)
        stream = data.tokenize_texts(tok, texts, eos)
        n_eval = max(1, min(args.eval_windows, len(stream) // (10 * args.seq_len)))
        cut = len(stream) - n_eval * args.seq_len  # the tail is held out
        eval_tokens = data.make_windows(stream[cut:], args.seq_len, n_eval).astype(np.int64)
        stream = stream[:cut]
    else:
        stream = data.tokenize_texts(tok, data.read_split("train"), eos)
        eval_tokens = reference.eval_tokens(model_dir)[: args.eval_windows] if not args.model else None
        if eval_tokens is None:
            eval_tokens = data.make_windows(data.tokenize_texts(tok, data.read_split("heldout"), eos), args.seq_len,
                                            args.eval_windows, seed=1234).astype(np.int64)
    val_tokens = None
    if args.val_windows and not (args.model or args.data):
        # reference model: validation windows from its held-out split, disjoint from the frozen evaluation windows
        # (the training split is the fp model's own training data: its KL there says little about held-out text)
        held = data.tokenize_texts(tok, data.read_split("heldout"), eos)
        val_tokens = data.disjoint_windows(held, args.seq_len, args.val_windows, taken_seed=1234,
                                           taken_count=len(eval_tokens)).astype(np.int64)
    elif args.val_windows:
        cut = len(stream) - args.val_windows * args.seq_len  # validation: the tail of the training text
        val_tokens = data.make_windows(stream[cut:], args.seq_len, args.val_windows).astype(np.int64)
        stream = stream[:cut]
    print(f"train tokens {len(stream):,}; validation {0 if val_tokens is None else len(val_tokens)} windows; "
          f"eval {eval_tokens.shape[0]}x{eval_tokens.shape[1]}", flush=True)

    teacher = copy.deepcopy(model)
    ref = reference_logprobs(teacher, eval_tokens)
    fp = evaluate_torch(teacher, eval_tokens, ref)
    ptq_ir = None
    if args.start == "ptq":
        import nncf_moe3
        from nncf_moe3.baselines import calibration_dataset
        from nncf_moe3.export import export_model

        calib = reference.calib_tokens(model_dir) if not (args.model or args.data) else \
            data.make_windows(stream, args.seq_len, args.calib_windows, seed=4321).astype(np.int64)
        t0 = time.time()
        ptq_ir = export_model(teacher)
        nncf_moe3.compress_weights(ptq_ir, mode=args.mode, group_size=args.group_size,
                                   dataset=calibration_dataset(ptq_ir, calib, args.calib_windows),
                                   subset_size=args.calib_windows)
        print(f"PTQ start (GPTQ, {args.calib_windows} windows) in {time.time() - t0:.0f} s", flush=True)
    qat.prepare(model, args.mode, args.group_size, rank=args.rank, init=args.init, lsq=not args.no_lsq,
                init_from=ptq_ir, train_norms=args.train_norms)
    with parametrize.cached():
        start = evaluate_torch(model, eval_tokens, ref)
    print(f"fp ppl {fp.ppl:.4f}; start ({args.start}, no training) ppl {start.ppl:.4f} KL {start.kl:.4f}", flush=True)

    accelerator = None
    if args.accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    res = qat.train(model, teacher, stream, steps=args.steps or None, max_minutes=args.minutes,
                    batch_size=args.batch, seq_len=args.seq_len, lr=args.lr, scale_lr=args.scale_lr,
                    ce_weight=args.ce_weight, seed=args.seed, accelerator=accelerator, val_tokens=val_tokens,
                    eval_every=args.eval_every)
    with parametrize.cached():
        trained = evaluate_torch(model, eval_tokens, ref)
    kept = "" if res.best_step is None else f" (kept step {res.best_step}: lowest validation KL)"
    print(f"QAT {res.steps} steps in {res.seconds / 60:.1f} min{kept}: torch fake-quant ppl {trained.ppl:.4f} "
          f"KL {trained.kl:.4f}", flush=True)
    for st, vp, vk in res.val_history:
        print(f"  validation step {st:5d}: ppl {vp:.4f} KL {vk:.5f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": str(model_dir), "mode": args.mode, "group_size": args.group_size, "rank": args.rank,
        "init": args.init, "start": args.start, "lsq": not args.no_lsq, "train_norms": args.train_norms, "lr": args.lr, "scale_lr": args.scale_lr, "batch": args.batch,
        "seq_len": args.seq_len, "steps": res.steps, "ce_weight": args.ce_weight, "best_step": res.best_step,
        "val_history": res.val_history, "train_minutes": round(res.seconds / 60, 2),
        "threads": torch.get_num_threads(), "eval_windows": int(eval_tokens.shape[0]),
        "fp": {"ppl": fp.ppl}, "start": {"ppl": start.ppl, "kl": start.kl},
        "qat_torch": {"ppl": trained.ppl, "kl": trained.kl},
        "loss_first": res.loss_first, "loss_last": res.loss_last,
    }
    if not args.no_export and args.init != "pissa":
        ov_model = qat.export_openvino(model, out, tokenizer_source=model_dir)
        ir = evaluate_ov(out / "openvino_model.xml", eval_tokens, ref)
        summary["qat_ir"] = {"ppl": ir.ppl, "kl": ir.kl}
        summary["ir_vs_torch_ppl_rel"] = abs(ir.ppl - trained.ppl) / trained.ppl
        print(f"exported IR {out / 'openvino_model.xml'}: OpenVINO CPU ppl {ir.ppl:.4f} KL {ir.kl:.4f} "
              f"(torch fake-quant {trained.ppl:.4f}; rel. diff {summary['ir_vs_torch_ppl_rel']:.2e})", flush=True)
        del ov_model
    elif args.init == "pissa":
        extra = [qat.pissa_extra_bits(fq) for fq in qat.quantizers(model).values() if fq.fmt == args.mode]
        summary["pissa_extra_bits_per_expert_weight"] = float(np.mean(extra))
        print(f"PiSSA: not exported (adapter stays full precision: +{np.mean(extra):.2f} bits per expert weight "
              "as an f16 LoRA branch)")
    summary["total_minutes"] = round((time.time() - t_start) / 60, 2)
    (out / "qat.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
