"""``nncf-moe3 demo``: compress the embedded reference MoE model to 3 bits, evaluate on OpenVINO CPU, print a table.

Rows: the fp16 IR; upstream NNCF INT4_ASYM g128 (the 4-bit anchor) and INT3_SYM (plain RTN, the "before");
then each nncf-moe3 3-bit mode with its default recipe, data-free and (unless ``--quick``) with calibration
data from the training split. Columns: bits per expert weight (scales and zero points included), held-out
perplexity, mean per-token KL to the fp model, and the share of upstream INT3_SYM's perplexity gap closed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def compress_and_score(fp_xml: Path, label: str, tokens, ref, compress_fn) -> dict:
    """Read the fp IR, apply ``compress_fn(model) -> model``, score it; returns a table row."""
    import openvino as ov

    from nncf_moe3.accuracy import evaluate_ov
    from nncf_moe3.ir_stats import bits_summary

    model = ov.Core().read_model(str(fp_xml))
    t0 = time.time()
    model = compress_fn(model)
    seconds = time.time() - t0
    res = evaluate_ov(model, tokens, ref)
    bits = bits_summary(model)
    return {"name": label, "ppl": res.ppl, "kl": res.kl, "bpw_experts": bits["experts"], "bpw_all": bits["all"],
            "seconds": seconds}


def gap_closed(row_ppl: float, fp_ppl: float, before_ppl: float) -> float:
    """Share of the ppl gap ``before - fp`` removed: 1 = fp quality, 0 = no better than ``before``."""
    return (before_ppl - row_ppl) / (before_ppl - fp_ppl)


def run_demo(out: Path, group_size: int = 128, quick: bool = False, subset: int = 64) -> int:
    import nncf
    import openvino as ov

    import nncf_moe3
    from nncf_moe3 import reference
    from nncf_moe3.accuracy import evaluate_ov, reference_logprobs
    from nncf_moe3.baselines import calibration_dataset, export_reference_ir, format_table, machine_name

    out.mkdir(parents=True, exist_ok=True)
    card = reference.card()
    tokens = reference.eval_tokens()
    calib = reference.calib_tokens()
    print(f"reference model: {card['architecture']}, {card['parameters'] / 1e6:.1f} M parameters, "
          f"{card['config']['num_experts']} experts top-{card['config']['num_experts_per_tok']}; "
          f"{tokens.shape[0]}×{tokens.shape[1]} held-out tokens", flush=True)
    fp_xml = export_reference_ir(out)
    ref = reference_logprobs(reference.load_model(), tokens)
    fp = evaluate_ov(fp_xml, tokens, ref)
    rows = [{"name": "fp16 IR", "ppl": fp.ppl, "kl": fp.kl, "bpw_experts": 16.0, "bpw_all": 16.0}]

    def upstream(mode, g, **kw):
        return lambda m: nncf.compress_weights(m, mode=mode, group_size=g, **kw)

    def ours(mode, dataset=False):
        def fn(m):
            ds = calibration_dataset(m, calib, subset) if dataset else None
            return nncf_moe3.compress_weights(m, mode=mode, group_size=group_size, dataset=ds, progress=False)

        return fn

    plan = [
        ("upstream INT4_ASYM g128", upstream(nncf.CompressWeightsMode.INT4_ASYM, 128)),
        (f"upstream INT3_SYM g{group_size} (before)", upstream(nncf.CompressWeightsMode.INT3_SYM, group_size)),
    ]
    for mode in nncf_moe3.Mode:
        plan.append((f"nncf-moe3 {mode.value} g{group_size} data-free", ours(mode)))
        if not quick:
            plan.append((f"nncf-moe3 {mode.value} g{group_size} calibrated", ours(mode, True)))
    for label, fn in plan:
        row = compress_and_score(fp_xml, label, tokens, ref, fn)
        rows.append(row)
        print(f"  {label}: ppl {row['ppl']:.3f}  KL {row['kl']:.4f}  ({row['seconds']:.0f} s)", flush=True)
    before = next(r for r in rows if "(before)" in r["name"])
    for r in rows:
        r["closed"] = 100 * gap_closed(r["ppl"], fp.ppl, before["ppl"]) if r is not rows[0] else None
    cols = [("name", "recipe", "s"), ("bpw_experts", "bits/weight (experts)", ".3f"),
            ("bpw_all", "bits/weight (all)", ".3f"), ("ppl", "held-out ppl", ".3f"),
            ("kl", "KL to fp", ".4f"), ("closed", "% of INT3_SYM gap closed", ".0f")]
    print(f"\nnncf-moe3 demo — {machine_name()}, OpenVINO {ov.__version__}, nncf {nncf.__version__}\n")
    table = format_table(rows, cols)
    print(table)
    (out / "demo.md").write_text(table + "\n")
    return 0
