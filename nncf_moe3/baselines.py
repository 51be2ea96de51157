"""Baselines ("before"): the reference model at fp16 and upstream ``nncf.compress_weights`` modes.

``nncf-moe3 baselines [--out out/baselines] [--quick]`` prints (and writes as Markdown/JSON) one row per
configuration: held-out ppl, KL to the fp model, bits per weight incl. scales (expert weights / all weights),
IR size, OV CPU batch-1 1-token latency, 128-token prefill latency and resident memory (fresh process each).

Upstream configurations: INT4_ASYM g128, INT4_SYM g128, INT3_SYM g64/g128 with plain RTN,
``awq=True, scale_estimation=True`` and ``gptq=True``. Data-aware runs calibrate on windows of the
training split (``calib_tokens.npy``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Run:
    name: str
    mode: str | None  # None = fp16 IR
    group_size: int | None = None
    options: dict = field(default_factory=dict)
    data_aware: bool = False


def upstream_runs(quick: bool = False) -> list[Run]:
    runs = [
        Run("fp16", None),
        Run("INT4_ASYM g128", "int4_asym", 128),
        Run("INT4_SYM g128", "int4_sym", 128),
    ]
    for g in (64, 128):
        runs.append(Run(f"INT3_SYM g{g} RTN", "int3_sym", g))
        if not quick:
            runs.append(Run(f"INT3_SYM g{g} AWQ+SE", "int3_sym", g, {"awq": True, "scale_estimation": True}, True))
            runs.append(Run(f"INT3_SYM g{g} GPTQ", "int3_sym", g, {"gptq": True}, True))
    return runs


def machine_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
            else:
                model = platform.machine()
    except OSError:
        model = platform.machine()
    return f"{model}, {os.cpu_count()} logical cores"


def calibration_dataset(model, tokens: np.ndarray, subset: int | None = None):
    """``nncf.Dataset`` of single-window feeds for an exported stateless LM (``input_ids`` [+ ``attention_mask``])."""
    import nncf

    names = {i.get_any_name() for i in model.inputs}
    items = []
    for row in tokens[:subset]:
        feed = {"input_ids": row[None].astype(np.int64)}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones_like(feed["input_ids"])
        items.append(feed)
    return nncf.Dataset(items)


def export_reference_ir(out_dir: Path, checkpoint=None) -> Path:
    """Export the reference checkpoint to ``out_dir/fp16/openvino_model.xml`` once (cached)."""
    from nncf_moe3 import reference
    from nncf_moe3.export import export_model

    xml = out_dir / "fp16" / "openvino_model.xml"
    if not xml.exists():
        export_model(checkpoint or reference.checkpoint_dir(), xml.parent)
    return xml


def compress_upstream(fp_xml: Path, run: Run, calib: np.ndarray, subset: int):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp_xml))
    kwargs = dict(run.options)
    if run.data_aware:
        kwargs["dataset"] = calibration_dataset(model, calib, subset)
        kwargs["subset_size"] = subset
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode(run.mode), group_size=run.group_size, **kwargs)


def dir_size_mb(xml: Path) -> float:
    return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; ``columns`` = (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BASELINE_COLUMNS = [
    ("name", "configuration", "s"),
    ("ppl", "held-out ppl", ".3f"),
    ("kl", "KL to fp (nats)", ".4f"),
    ("bpw_experts", "bits/weight experts", ".3f"),
    ("bpw_all", "bits/weight all", ".3f"),
    ("ir_mb", "IR MB", ".2f"),
    ("decode_ms", "1-token ms", ".2f"),
    ("prefill_ms", "128-token ms", ".1f"),
    ("rss_added_mb", "RSS added MB", ".0f"),
    ("seconds", "compress s", ".0f"),
]


def main(argv=None) -> int:
    import openvino as ov

    from nncf_moe3 import reference
    from nncf_moe3.accuracy import evaluate_ov, reference_logprobs
    from nncf_moe3.ir_stats import bits_summary
    from nncf_moe3.measure import measure_ir

    p = argparse.ArgumentParser(prog="nncf-moe3 baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/baselines", help="working/output directory")
    p.add_argument("--quick", action="store_true", help="RTN runs only (no AWQ/SE/GPTQ)")
    p.add_argument("--subset", type=int, default=64, help="calibration windows for data-aware runs")
    p.add_argument("--no-speed", action="store_true", help="skip latency / memory measurement")
    a = p.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = reference.eval_tokens()
    calib = reference.calib_tokens()
    fp_xml = export_reference_ir(out)
    print("reference log-probs (fp32 torch) ...", flush=True)
    ref = reference_logprobs(reference.load_model(), tokens)

    rows = []
    for run in upstream_runs(a.quick):
        t0 = time.time()
        if run.mode is None:
            xml = fp_xml
        else:
            model = compress_upstream(fp_xml, run, calib, a.subset)
            xml = out / run.name.replace(" ", "_").replace("+", "_") / "openvino_model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)
        seconds = time.time() - t0 if run.mode else None
        res = evaluate_ov(xml, tokens, ref)
        bits = bits_summary(ov.Core().read_model(str(xml)))
        row = {"name": run.name, "ppl": res.ppl, "kl": res.kl, "bpw_experts": bits["experts"],
               "bpw_all": bits["all"], "ir_mb": dir_size_mb(xml), "seconds": seconds}
        if not a.no_speed:
            row.update(measure_ir(xml))
        rows.append(row)
        print(format_table([row], BASELINE_COLUMNS).splitlines()[-1], flush=True)

    table = format_table(rows, BASELINE_COLUMNS)
    header = (f"Reference model baselines — machine: {machine_name()}; OpenVINO {ov.__version__}; "
              f"nncf {__import__('nncf').__version__}; {tokens.shape[0]}×{tokens.shape[1]} held-out tokens\n")
    print("\n" + header + "\n" + table)
    (out / "baselines.md").write_text(header + "\n" + table + "\n")
    (out / "baselines.json").write_text(json.dumps({"machine": machine_name(), "rows": rows}, indent=2))
    return 0
