"""The compression pipeline behind :func:`nncf_moe3.compress_weights` for nncf-moe3 modes on ``ov.Model``.

find targets -> assign precision per weight (role, ignored scope, ratio, mixed precision) -> calibration
statistics (per-expert Hessians) -> quantize each weight (GPTQ or RTN with searched scales) -> emit u3
decompression subgraphs -> report (stored in rt_info).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from nncf_moe3 import emit
from nncf_moe3.graph import WeightTarget, find_weight_targets
from nncf_moe3.quantization import QuantizedWeight, bits_per_weight, double_quantize_scales, gptq, quantize_rtn

logger = logging.getLogger("nncf_moe3")


@dataclass
class Recipe:
    mode: str
    group_size: int = 128
    ratio: float = 1.0
    all_layers: bool = False
    backup: str = "int8_asym"
    gptq: bool = False
    act_order: bool = True
    sequential: bool = False
    dense_mode: str = "int4_asym"  # dense (always-active) weights of MoE models: int4_asym | int8_asym | same
    activation_weighted: bool = False
    scale_search: bool = True
    icq: str | None = None
    double_quant: tuple | None = None
    min_expert_tokens: int = 64
    avg_bits: float | None = None
    awq: bool = False  # activation-aware scaling folded into the graph before quantization (nncf_moe3.awq)
    subset_size: int = 128
    progress: bool = True


@dataclass
class Assignment:
    """Precision of one weight: a 3-bit format with its group size, or 'int8_asym', or 'none' (kept float)."""

    fmt: str
    group_size: int = -1
    double_quant: tuple | None = None
    icq: str | None = None

    @property
    def bits(self) -> float:
        if self.fmt == "int8_asym":
            return 8.0  # plus a per-row scale and zero point (ir_stats reports the exact figure)
        if self.fmt == "none":
            return 16.0
        return bits_per_weight(self.fmt, self.group_size, bool(self.icq), self.double_quant)


def _is_lm_head(t: WeightTarget, model) -> bool:
    if t.kind != "matmul" or t.is_expert:
        return False
    results = {id(r.input(0).get_source_output().get_node()) for r in model.get_results()}
    node = t.op
    for _ in range(3):  # MatMul -> [Convert/Add] -> Result
        if id(node) in results:
            return True
        cons = [i.get_node() for i in node.output(0).get_target_inputs()]
        if len(cons) != 1:
            return False
        node = cons[0]
    return id(node) in results


def _is_router(t: WeightTarget, targets: list[WeightTarget]) -> bool:
    """A 2-D weight with N = number of experts whose output feeds a Softmax/Sigmoid/TopK (router logits)."""
    if t.is_expert or t.kind != "matmul":
        return False
    n = t.nk_shape[0]
    if not any(x.is_expert and x.shape[0] == n for x in targets):
        return False
    frontier = [t.op]
    for _ in range(3):
        nxt = []
        for node in frontier:
            for inp in node.output(0).get_target_inputs():
                c = inp.get_node()
                if c.get_type_name() in ("Softmax", "Sigmoid", "TopK"):
                    return True
                nxt.append(c)
        frontier = nxt
    return False


DENSE_GROUP_CHOICES = (128, 64, 32)


def _dense_assignment(t: WeightTarget, recipe: Recipe, primary: "Assignment", backup: "Assignment") -> "Assignment":
    if recipe.dense_mode == "same":
        return primary
    if recipe.dense_mode == "int8_asym":
        return Assignment("int8_asym")
    if recipe.dense_mode != "int4_asym":
        raise ValueError(f"dense_mode must be 'int4_asym', 'int8_asym' or 'same', got {recipe.dense_mode!r}")
    k = t.nk_shape[-1]
    for g in DENSE_GROUP_CHOICES:
        if k % g == 0:
            return Assignment("int4_asym", g)
    return backup


def assign_precisions(model, targets, recipe: Recipe, ignored_scope, is_ignored) -> dict[str, Assignment]:
    """Precision per weight by role. Routed experts (3-D weights) get the 3-bit mode. In a MoE model the dense,
    always-active weights (attention, shared experts, dense MLPs) get ``recipe.dense_mode`` — they are a few
    percent of the weights but are read for every token and cause about half the 3-bit error; embeddings,
    lm_head and the router get the backup mode. ``all_layers=True`` puts everything in the 3-bit mode."""
    primary = Assignment(recipe.mode, recipe.group_size, recipe.double_quant, recipe.icq)
    backup = Assignment(recipe.backup if recipe.backup != "none" else "none")
    is_moe = any(t.is_expert for t in targets)
    out = {}
    for t in targets:
        if is_ignored(t.name, t.op.get_friendly_name(), ignored_scope):
            continue
        if t.kind == "embedding" or _is_lm_head(t, model):
            t.role = "lm_head" if t.kind != "embedding" else "embedding"
            out[t.name] = primary if recipe.all_layers else backup
        elif _is_router(t, targets):
            t.role = "router"
            out[t.name] = primary if recipe.all_layers else backup
        elif t.is_expert or recipe.all_layers or not is_moe:
            out[t.name] = primary
        else:
            out[t.name] = _dense_assignment(t, recipe, primary, backup)
    return out


def validate_group_sizes(targets, assign) -> None:
    """Every 3-bit weight's group size must divide its K (clear error naming the weight otherwise)."""
    for t in targets:
        a = assign.get(t.name)
        if a is not None and a.fmt in ("int3_sym", "int3_asym", "nf3", "int4_asym") and a.group_size != -1:
            k = t.nk_shape[-1]
            if k % a.group_size:
                raise ValueError(
                    f"group_size={a.group_size} does not divide the reduction dimension K={k} of weight "
                    f"{t.name!r} {t.shape}; choose a group size that divides K or pass it in ignored_scope")


def _apply_ratio(targets, assign, recipe, stats):
    """Keep the fraction ``ratio`` of 3-bit-eligible weights (by element count) in 3 bits, moving the most
    sensitive (highest relative RTN error, activation-weighted when statistics exist) to the backup mode."""
    if recipe.ratio >= 1.0:
        return
    cand = [t for t in targets if assign.get(t.name) is not None and assign[t.name].fmt == recipe.mode]
    scores = []
    for t in cand:
        w = emit.read_weight(t)
        w3 = w if w.ndim == 3 else w[None]
        qw = quantize_rtn(recipe.mode, w3, recipe.group_size, search=False)
        err = (qw.dequantize() - w3) ** 2
        if t.name in stats:
            err = err * stats[t.name].diag.to(torch.float32)[:, None, :]
        scores.append(float(err.mean() / (w3**2).mean().clamp_min(1e-12)))
    total = sum(int(np.prod(t.shape)) for t in cand)
    budget = recipe.ratio * total
    kept = total
    for i in np.argsort(scores)[::-1]:
        if kept <= budget:
            break
        t = cand[i]
        assign[t.name] = Assignment(recipe.backup if recipe.backup != "none" else "none")
        kept -= int(np.prod(t.shape))


def _hessian_for(t: WeightTarget, stats, recipe: Recipe, report: dict):
    """Per-expert Hessians with the starving-expert fallback; returns (H [B,K,K] or None, tokens [B] or None)."""
    st = stats.get(t.name) if stats else None
    if st is None:
        return None, None
    H = st.hessian.clone()
    tokens = st.tokens.copy()
    if t.is_expert:
        low = tokens < recipe.min_expert_tokens
        report["expert_matrices"] += len(tokens)
        report["expert_fallbacks"] += int(low.sum())
        if low.any():
            pooled = st.hessian.sum(0) / max(1, int(tokens.sum()))
            for e in np.nonzero(low)[0]:
                H[e] = pooled * max(1, recipe.min_expert_tokens)
    return H, tokens


def _stages(todo: list[WeightTarget]) -> list[list[WeightTarget]]:
    """Targets grouped by transformer layer (``layers.<i>.`` in the name), in order; others form a last stage."""
    import re

    by_layer: dict[int, list] = {}
    rest = []
    for t in todo:
        m = re.search(r"layers\.(\d+)\.", t.name)
        (by_layer.setdefault(int(m.group(1)), []) if m else rest).append(t)
    out = [by_layer[k] for k in sorted(by_layer)]
    return out + ([rest] if rest else [])


def _check_precomputed(t: WeightTarget, a: Assignment, qw: QuantizedWeight) -> None:
    if qw.fmt != a.fmt or qw.group_size != a.group_size:
        raise ValueError(f"Precomputed parameters of {t.name!r} are {qw.fmt} g{qw.group_size}, but the recipe "
                         f"assigns {a.fmt} g{a.group_size} to this weight")
    shape = tuple(qw.codes.shape[:-2]) + (qw.codes.shape[-2] * qw.codes.shape[-1],)
    want = tuple(t.nk_shape) if len(t.nk_shape) == 3 else (1,) + tuple(t.nk_shape)
    if shape != want:
        raise ValueError(f"Precomputed codes of {t.name!r} have shape {shape}, the weight is {want}")


def _compress_one(t: WeightTarget, a: Assignment, stats, recipe: Recipe, report: dict,
                  precomputed: dict | None = None) -> None:
    """Quantize one weight with its assignment, emit its decompression subgraph, record it in the report.

    ``precomputed[t.name]`` (a :class:`QuantizedWeight` with a leading expert dim, 1 for 2-D weights), when given,
    is emitted as is instead of quantizing the weight (QAT export)."""
    entry = {"name": t.name, "shape": list(t.shape), "role": t.role, "format": a.fmt}
    report["weights"].append(entry)
    if a.fmt == "none":
        return
    w = emit.read_weight(t)
    if a.fmt == "int8_asym":
        new, _ = emit.emit_int8_asym(t, w)
        emit.replace_weight(t, new)
        return
    w3 = w if w.ndim == 3 else w[None]
    H, tokens = (None, None) if precomputed and t.name in precomputed else _hessian_for(t, stats, recipe, report)
    if precomputed and t.name in precomputed:
        qw = precomputed[t.name]
        _check_precomputed(t, a, qw)
        qw = QuantizedWeight(qw.fmt, qw.codes, qw.scale, qw.zero_point, qw.group_size)  # don't mutate the caller's
        entry["algorithm"] = "precomputed"
    elif recipe.gptq and H is not None:
        qw = gptq(a.fmt, w3, H, a.group_size, search=recipe.scale_search, icq=a.icq, act_order=recipe.act_order)
        entry["algorithm"] = "gptq"
    else:
        imp = None
        if recipe.activation_weighted and H is not None:
            d = torch.diagonal(H, dim1=-2, dim2=-1).to(torch.float32)
            imp = d / d.mean(-1, keepdim=True).clamp_min(1e-12)
            imp = torch.where(imp > 0, imp, torch.full_like(imp, 1e-3))
        qw = quantize_rtn(a.fmt, w3, a.group_size, importance=imp, search=recipe.scale_search, icq=a.icq)
        entry["algorithm"] = "rtn+search" if recipe.scale_search else "rtn"
    dq = None
    if a.double_quant is not None:
        qw, sub, sup = double_quantize_scales(qw, w3, a.double_quant[0], a.double_quant[1],
                                              reencode=entry["algorithm"] != "gptq")
        dq = (sub, sup)
    if w.ndim == 2:
        qw.codes, qw.scale = qw.codes[0], qw.scale[0]
        if qw.zero_point is not None:
            qw.zero_point = qw.zero_point[0]
        if dq is not None:
            dq = (dq[0][0], dq[1][0])
    emit.replace_weight(t, emit.emit_3bit(t, qw, dq))
    entry.update(group_size=a.group_size, bits=round(a.bits, 4))
    if tokens is not None and t.is_expert:
        entry["tokens_per_expert"] = [int(x) for x in tokens]


def run_compression(model, recipe: Recipe, dataset=None, ignored_scope=None, is_ignored=None, mixed_precision=None,
                    precomputed: dict | None = None):
    from tqdm import tqdm

    from nncf_moe3.calibration import collect_statistics

    emit.check_layout(model)
    targets = find_weight_targets(model)
    if not targets:
        raise ValueError("No compressible weights found (float Constants feeding MatMul / embedding Gather)")
    assign = assign_precisions(model, targets, recipe, ignored_scope, is_ignored or (lambda *a: False))
    if recipe.avg_bits is None:
        validate_group_sizes(targets, assign)
    need_stats = dataset is not None and (recipe.gptq or recipe.activation_weighted or recipe.avg_bits is not None
                                          or recipe.ratio < 1.0 or recipe.awq)
    stats = {}
    if need_stats:
        stat_targets = [t for t in targets if assign.get(t.name) is not None and t.kind == "matmul"]
        stats = collect_statistics(model, stat_targets, dataset, recipe.subset_size, recipe.progress)
    if recipe.avg_bits is not None:
        if mixed_precision is None:
            raise ValueError("avg_bits needs the mixed-precision module")
        mixed_precision.assign(targets, assign, recipe, stats)
    _apply_ratio(targets, assign, recipe, stats)
    validate_group_sizes(targets, assign)

    # Check every weight before touching the model: bad input leaves it unchanged.
    todo = [t for t in targets if t.name in assign]
    for t in todo:
        if assign[t.name].fmt != "none" and not torch.isfinite(emit.read_weight(t)).all():
            raise ValueError(f"Weight {t.name!r} contains NaN/Inf values; refusing to compress it "
                             "(the model is left unchanged)")

    report = {"recipe": {k: v for k, v in asdict(recipe).items() if k != "progress"}, "weights": [],
              "expert_matrices": 0, "expert_fallbacks": 0}
    if recipe.awq and stats:
        if precomputed:
            logger.warning("nncf-moe3: AWQ skipped: precomputed quantization parameters are for the unscaled weights")
        else:
            from nncf_moe3.awq import apply_awq

            report["awq"] = apply_awq(model, targets, assign, stats, recipe.min_expert_tokens)
    stages = _stages(todo) if (recipe.sequential and need_stats) else [todo]
    bar = tqdm(total=len(todo), desc=f"compress {recipe.mode}", disable=not recipe.progress, mininterval=2)
    for i, stage in enumerate(stages):
        if i > 0:  # sequential: statistics of this stage's inputs with earlier stages already quantized
            stat_targets = [t for t in stage if t.kind == "matmul" and assign[t.name].fmt not in ("int8_asym", "none")]
            if stat_targets:
                stats.update(collect_statistics(model, stat_targets, dataset, recipe.subset_size, progress=False))
        for t in stage:
            _compress_one(t, assign[t.name], stats, recipe, report, precomputed)
            bar.update(1)
    bar.close()
    emit.stamp_layout(model)
    model.validate_nodes_and_infer_types()
    logger.info("nncf-moe3: %d weights compressed; %d of %d expert matrices used pooled statistics",
                len(report["weights"]), report["expert_fallbacks"], report["expert_matrices"])
    return report
