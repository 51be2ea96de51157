"""MoE mixed precision: bits by tensor role under an average-bits budget over the routed-expert weights.

``compress_weights(..., avg_bits=3.25)``:

* non-expert roles keep their role assignment (dense weights: ``dense_mode``, router / embeddings / lm_head:
  the backup mode) — in real MoE models they are a few percent of the weights;
* every routed-expert tensor (gate, up, down of every layer) gets a group size from ``GROUP_CHOICES`` in the
  primary 3-bit mode so that the element-weighted mean bits per expert weight (scales and zero points
  included) is <= ``avg_bits``;
* the choice is driven by a measured sensitivity: for each tensor and group size, the output error energy
  ``sum_e sum_n (w - q)^T diag(H_e) (w - q)`` per token (``H_e`` = the expert's input Hessian from its routed
  calibration tokens; identity without data). A greedy knapsack starts from the cheapest choice and repeatedly
  upgrades the tensor with the largest error reduction per added bit until the budget is used.
"""

from __future__ import annotations

import logging

import torch

from nncf_moe3 import emit
from nncf_moe3.quantization import bits_per_weight, quantize_rtn

logger = logging.getLogger("nncf_moe3")

GROUP_CHOICES = (128, 64, 32, 16)


def _error(t, w3, fmt, g, stats, icq):
    d = None
    if stats and t.name in stats:
        st = stats[t.name]
        d = st.diag.to(torch.float32)  # [B, K] mean x^2 per routed token
    qw = quantize_rtn(fmt, w3, g, importance=d, icq=icq)
    err = (qw.dequantize() - w3) ** 2
    if d is not None:
        err = err * d[:, None, :]
    return float(err.sum())


def assign(targets, assignment, recipe, stats) -> None:
    """Fill ``assignment`` (name -> engine.Assignment) for the avg_bits budget (see module docstring)."""
    from nncf_moe3.engine import Assignment

    budget = float(recipe.avg_bits)
    experts = [t for t in targets if t.is_expert and assignment.get(t.name) is not None]
    if not experts:
        raise ValueError("avg_bits applies to routed-expert (3-D) weights, and the model has none")
    options = {}
    for t in experts:
        k = t.nk_shape[-1]
        gs = [g for g in GROUP_CHOICES if k % g == 0]
        if not gs:
            raise ValueError(f"No group size in {GROUP_CHOICES} divides K={k} of {t.name}")
        w = emit.read_weight(t)  # read once, scored for every group size
        w3 = w if w.ndim == 3 else w[None]
        opts = []
        for g in gs:
            opts.append((bits_per_weight(recipe.mode, g, bool(recipe.icq), recipe.double_quant), g,
                         _error(t, w3, recipe.mode, g, stats, recipe.icq)))
        opts.sort()  # by bits ascending
        options[t.name] = opts
    n = {t.name: int(torch.tensor(t.shape).prod()) for t in experts}
    total = sum(n.values())
    choice = {name: 0 for name in options}
    used = sum(options[name][0][0] * n[name] for name in options)
    if used > budget * total + 1e-6:
        raise ValueError(f"avg_bits={budget} is below the cheapest expert configuration "
                         f"({used / total:.4f} bits per expert weight for mode {recipe.mode})")
    while True:
        best, best_gain = None, 0.0
        for name, opts in options.items():
            i = choice[name]
            if i + 1 >= len(opts):
                continue
            dbits = (opts[i + 1][0] - opts[i][0]) * n[name]
            if used + dbits > budget * total + 1e-6:
                continue
            gain = (opts[i][2] - opts[i + 1][2]) / dbits
            if gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            break
        i = choice[best]
        used += (options[best][i + 1][0] - options[best][i][0]) * n[best]
        choice[best] = i + 1
    for t in experts:
        bits, g, _ = options[t.name][choice[t.name]]
        assignment[t.name] = Assignment(recipe.mode, g, recipe.double_quant, recipe.icq)
    logger.info("mixed precision: %.4f bits per expert weight (budget %.4f)", used / total, budget)
