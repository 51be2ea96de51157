"""QAT ablation on the reference model at equal steps: init (zeros / LoftQ / PiSSA), start (PTQ / RTN), LSQ vs fixed
scales. Prints a markdown table (held-out ppl, KL, wall time) — the SUMMARY.md "QAT" ablation.

    python -m nncf_moe3.qat_results --steps 200 --out out/qat_ablation

Every row trains the same number of steps on the same batches (seeded) from the same fp model, distilling from it,
with the example's recipe (int3_asym g64, rank 8, lr 5e-4, LSQ scale lr 2e-5, KL + 0.2 CE, batch 8 × 256; override with
--lr / --scale-lr / --ce-weight; SUMMARY.md's table used --lr 2e-3 --scale-lr 1e-4 --ce-weight 0.1). Rows with the PTQ
start begin from ``compress_weights(..., dataset=calibration)``'s GPTQ solution; "RTN" rows from round-to-nearest with
searched scales. PiSSA keeps its adapter in full precision and is evaluated in torch only (its extra bits are listed).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROWS = [
    # label, start, init, lsq
    ("PTQ start + LoftQ + LSQ (example default)", "ptq", "loftq", True),
    ("PTQ start + zeros + LSQ", "ptq", "zeros", True),
    ("PTQ start + LoftQ, fixed scales", "ptq", "loftq", False),
    ("RTN start + LoftQ + LSQ", "rtn", "loftq", True),
    ("RTN start + zeros + LSQ", "rtn", "zeros", True),
    ("RTN start + PiSSA + LSQ (adapter kept fp)", "rtn", "pissa", True),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--scale-lr", type=float, default=2e-5)
    ap.add_argument("--ce-weight", type=float, default=0.2)
    ap.add_argument("--mode", default="int3_asym")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (1-based) to run; default all")
    ap.add_argument("--out", default="out/qat_ablation")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.nn.utils import parametrize
    from transformers import AutoTokenizer

    import nncf_moe3
    from nncf_moe3 import qat, reference
    from nncf_moe3.accuracy import evaluate_ov, evaluate_torch, reference_logprobs
    from nncf_moe3.baselines import calibration_dataset
    from nncf_moe3.export import export_model
    from nncf_moe3.reference import data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "rows.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    fp_model = reference.load_model()
    fp_model.config._experts_implementation = "eager"
    tok = AutoTokenizer.from_pretrained(str(reference.checkpoint_dir()))
    stream = data.tokenize_texts(tok, data.read_split("train"), tok.eos_token_id)
    ev = reference.eval_tokens()[: args.eval_windows]
    ref = reference_logprobs(fp_model, ev)
    fp = evaluate_torch(fp_model, ev, ref)
    ptq_ir = export_model(fp_model)
    calib = reference.calib_tokens()
    nncf_moe3.compress_weights(ptq_ir, mode=args.mode, group_size=args.group_size,
                               dataset=calibration_dataset(ptq_ir, calib, 128), progress=False)
    ptq = evaluate_ov(ptq_ir, ev, ref)
    rows = [("fp (torch, fp32)", fp.ppl, 0.0, "—", "—"),
            (f"best PTQ: {args.mode} g{args.group_size} GPTQ default with data (IR)", ptq.ppl, ptq.kl, "—", "—")]
    pick = set(range(len(ROWS))) if not args.rows else {int(x) - 1 for x in args.rows.split(",")}
    for i, (label, start, init, lsq) in enumerate(ROWS):
        if i not in pick:
            continue
        key = (f"{label}|{args.mode}|{args.group_size}|{args.steps}|{args.eval_windows}|"
               f"{args.lr}|{args.scale_lr}|{args.ce_weight}")
        if key not in cache:
            m = copy.deepcopy(fp_model)
            qat.prepare(m, args.mode, args.group_size, init=init, lsq=lsq,
                        init_from=ptq_ir if start == "ptq" else None, progress=False)
            res = qat.train(m, fp_model, stream, steps=args.steps, max_minutes=None, seed=0, progress=False,
                            lr=args.lr, scale_lr=args.scale_lr, ce_weight=args.ce_weight)
            with parametrize.cached():
                r = evaluate_torch(m, ev, ref)
            extra = "—"
            if init == "pissa":
                bits = [qat.pissa_extra_bits(f) for f in qat.quantizers(m).values() if f.fmt == args.mode]
                extra = f"+{np.mean(bits):.2f} bpw (fp16 adapter)"
            cache[key] = {"ppl": r.ppl, "kl": r.kl, "minutes": round(res.seconds / 60, 1), "extra": extra}
            cache_path.write_text(json.dumps(cache, indent=2))
            print(label, cache[key], flush=True)
        c = cache[key]
        rows.append((f"QAT {args.steps} steps: {label}", c["ppl"], c["kl"], c["minutes"], c["extra"]))

    gap_ptq = ptq.ppl - fp.ppl
    lines = [f"QAT ablation — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
             f"{args.mode} g{args.group_size}; {ev.shape[0]}x{ev.shape[1]} held-out tokens; equal steps ({args.steps}, "
             f"batch 8x256, lr {args.lr}, scale lr {args.scale_lr}, CE weight {args.ce_weight})", "",
             "| configuration | held-out ppl | KL to fp | gap to fp / PTQ gap | train min | note |", "|---|---|---|---|---|---|"]
    for label, ppl, kl, minutes, extra in rows:
        ratio = "—" if label.startswith("fp") else f"{(ppl - fp.ppl) / gap_ptq:.2f}"
        lines.append(f"| {label} | {ppl:.4f} | {kl:.4f} | {ratio} | {minutes} | {extra} |")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
