"""Activation-aware weight scaling (AWQ) for the nncf-moe3 3-bit modes on an ``ov.Model``.

For a weight ``W[.., N, K]`` whose input ``x[K]`` comes from a producer we can rescale exactly, AWQ multiplies the
weight's input channels by ``s[K]`` and the producer's output channels by ``1/s`` — the float model computes the
same function — so that the quantizer spends its levels on the channels with large activations. Per scale group,
``s = m^alpha`` with ``m`` the RMS activation per input channel (``sqrt`` of the Hessian diagonal over the
calibration tokens), normalised by ``sqrt(max(s) min(s))``; ``alpha`` is searched on :data:`ALPHA_GRID` and the one
with the smallest output error of the quantized weights, ``sum_b tr(dW_b H_b dW_b^T)`` with
``dW = W - Q(W s) / s`` and the calibration Hessians ``H`` (per expert, routing-weighted, from the tokens routed to
the expert), is kept (``alpha = 0``, i.e. no change, when nothing beats it).

Two patterns are folded (everything else is left alone, with the reason in the report / log):

* **norm**: an RMSNorm output ``x * rsqrt(mean(x^2) + eps) [* w]`` whose every consumer is (through shape-only ops
  that keep the channel axis last: Reshape, Tile, Convert, ...) input 0 of a MatMul with a float weight constant
  — q/k/v, the router, all routed experts' gate/up, shared experts and their gates. One ``s`` per norm; the norm
  weight constant becomes ``w / s`` (a Multiply by ``1/s`` is inserted when the export folded an all-ones weight
  away) and every consumer weight's input channels are multiplied by ``s``. A norm with a consumer of another
  kind (or a weight shared with another op, or in the ignored scope) is skipped.
* **down**: a down projection whose input is ``act(gate) * up`` with ``up`` a MatMul whose only consumer is that
  Multiply — routed experts (3-D ``[E, H, I]``, **one ``s`` and one alpha per expert**, from that expert's routed
  tokens) and dense/shared MLPs (2-D). ``up``'s output rows are divided by ``s`` (the SwiGLU product channel ``j``
  scales by ``1/s_j``) and the down weight's input channels multiplied by ``s``. Experts with fewer than
  ``min_expert_tokens`` routed calibration tokens keep ``s = 1``.

After a fold the calibration Hessians of the scaled weights are transformed to the new input space
(``H -> diag(1/s) H diag(1/s)``), so GPTQ / the activation-weighted search that run next see the statistics of the
model they quantize. The inner quantizer of the search is plain RTN in each weight's assigned format (absmax /
min-max scales; INT8_ASYM per row for backup-precision consumers such as the router).

Not done: the v_proj -> o_proj fold (o_proj is reported as not scaled). Cost: the error needs ``N K^2`` flops per
matrix (per expert) and alpha, fine for the reference model, slow for 2048-wide experts. Measured on the reference
model (``nncf-moe3 results``, the ``... awq=True`` rows): on top of GPTQ the gain is within +-4 % KL and not
consistent in sign, so ``compress_weights`` keeps AWQ off unless ``awq=True``; it pays off with quantizers that use
no activation statistics themselves (plain or MSE-searched RTN; ``tests/test_awq.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from nncf_moe3 import emit
from nncf_moe3.graph import WeightTarget
from nncf_moe3.quantization import ALL_FORMATS, quantize_rtn

logger = logging.getLogger("nncf_moe3")

#: alpha values tried for ``s = m^alpha`` (0 = no scaling).
ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))
#: Activation magnitudes are clamped to at least this fraction of the channel maximum (keeps ``s`` bounded).
MIN_REL_MAGNITUDE = 1e-4
#: Largest magnitude allowed in a folded weight (keeps weights finite and representable in f16).
MAX_ABS_WEIGHT = 6.0e4
#: Scaling the channels through these ops keeps them aligned (the channel axis stays last and is not mixed).
_CHANNEL_PRESERVING = ("Reshape", "Tile", "Convert", "Unsqueeze", "Squeeze", "Broadcast")
_LOW_BIT = set(ALL_FORMATS)


@dataclass
class ScaleGroup:
    kind: str  # "norm" | "down"
    name: str
    consumers: list  # WeightTarget whose input channels are multiplied by s
    up: WeightTarget | None = None  # "down": the up projection whose output rows are divided by s
    norm_out: object | None = None  # "norm": the node whose output is the normalised activation
    weight_mul: object | None = None  # "norm": the Multiply applying the norm weight (None: folded away)
    weight_port: int = -1  # input port of weight_mul holding the weight (constant or Convert(constant))
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Graph matching
# ---------------------------------------------------------------------------------------------------------------
def _src(node, port=0):
    return node.input(port).get_source_output().get_node()


def _uid(node) -> int:
    return node.get_instance_id()


def _same_output(a, b) -> bool:
    return _uid(a.get_node()) == _uid(b.get_node()) and a.get_index() == b.get_index()


def _strip_convert(output):
    while output.get_node().get_type_name() == "Convert":
        output = output.get_node().input(0).get_source_output()
    return output


def _const_value(node):
    """Float value of ``node`` if it is a float Constant or Convert(float Constant), else None."""
    if node.get_type_name() == "Convert":
        node = _src(node)
    if node.get_type_name() != "Constant" or node.get_element_type().get_type_name() not in ("f32", "f16", "bf16"):
        return None
    return np.asarray(node.get_data(), dtype=np.float32)


def _consumers(output, skip_shapeof=True):
    out = []
    for inp in output.get_target_inputs():
        n = inp.get_node()
        if skip_shapeof and n.get_type_name() == "ShapeOf":
            continue
        out.append(inp)
    return out


def _rms_core_input(node):
    """``x`` (an ov.Output) if ``node`` is ``Multiply(x, f(ReduceMean(x^2)))`` — an RMSNorm before its weight."""
    if node.get_type_name() != "Multiply":
        return None
    for p in (0, 1):
        x = node.input(p).get_source_output()
        stack = [(_src(node, 1 - p), 0)]
        while stack:
            n, d = stack.pop()
            t = n.get_type_name()
            if t == "ReduceMean":
                sq = _src(n, 0)
                if sq.get_type_name() == "Power":
                    e = _const_value(_src(sq, 1))
                    ok = e is not None and e.size == 1 and float(e.ravel()[0]) == 2.0
                    ins = [sq.input(0).get_source_output()]
                elif sq.get_type_name() == "Multiply":
                    ins = [sq.input(0).get_source_output(), sq.input(1).get_source_output()]
                    ok = _same_output(_strip_convert(ins[0]), _strip_convert(ins[1]))
                else:
                    ok = False
                if ok and _same_output(_strip_convert(ins[0]), _strip_convert(x)):
                    return x
                continue
            if d < 6 and t in ("Divide", "Sqrt", "Add", "Convert", "Power", "Maximum", "Multiply"):
                stack.extend((_src(n, i), d + 1) for i in range(n.get_input_size()))
    return None


def _weight_multiply(core, h: int):
    """(Multiply, port) applying a per-channel norm weight ``[.., H]`` right after the RMSNorm core, or (None, -1)."""
    cons = _consumers(core.output(0))
    if len(cons) != 1 or cons[0].get_node().get_type_name() != "Multiply":
        return None, -1
    mul = cons[0].get_node()
    wport = 1 - cons[0].get_index()
    val = _const_value(_src(mul, wport))
    if val is None or val.size != h or (val.ndim and val.shape[-1] != h):
        return None, -1
    return mul, wport


def _last_dim(output):
    ps = output.get_partial_shape()
    if ps.rank.is_dynamic or ps.rank.get_length() == 0 or ps[ps.rank.get_length() - 1].is_dynamic:
        return None
    return ps[ps.rank.get_length() - 1].get_length()


def _walk_consumers(output, h: int, by_op: dict[int, WeightTarget]):
    """``(targets, problems)``: the weight targets fed by ``output`` through channel-preserving ops, and a
    description of every consumer that is not one (empty when the consumer set is fully identified)."""
    found, problems, stack, seen = [], [], [output], set()
    while stack:
        out = stack.pop()
        for inp in _consumers(out):
            n = inp.get_node()
            t = n.get_type_name()
            if _uid(n) in seen:
                continue
            seen.add(_uid(n))
            if t == "MatMul":
                tgt = by_op.get(_uid(n))
                if inp.get_index() != 0 or tgt is None or tgt.port != 1:
                    problems.append(f"feeds MatMul {n.get_friendly_name()!r} that is not a weight MatMul on input 0")
                elif n.get_attributes().get("transpose_a", False) or tgt.nk_shape[-1] != h:
                    problems.append(f"feeds MatMul {n.get_friendly_name()!r} with an unexpected layout")
                else:
                    found.append(tgt)
            elif t in _CHANNEL_PRESERVING:
                if inp.get_index() != 0 or _last_dim(n.output(0)) != h or _last_dim(out) != h:
                    problems.append(f"feeds {t} {n.get_friendly_name()!r} that moves the channel axis")
                    continue
                if t in ("Tile", "Broadcast"):
                    rep = _src(n, 1) if t == "Tile" else None
                    if (rep is None or rep.get_type_name() != "Constant"
                            or int(np.asarray(rep.get_data()).ravel()[-1]) != 1):
                        problems.append(f"feeds {t} {n.get_friendly_name()!r} that may repeat channels")
                        continue
                stack.append(n.output(0))
            else:
                problems.append(f"feeds {t} {n.get_friendly_name()!r} (not a weight MatMul)")
    return found, problems


def _sole_weight_user(t: WeightTarget) -> bool:
    """The weight constant (and its Convert) feeds only ``t``'s MatMul (no tied weights)."""
    node = t.const
    if t.convert is not None:
        if len(t.const.output(0).get_target_inputs()) != 1:
            return False
        node = t.convert
    return len(node.output(0).get_target_inputs()) == 1


def find_scale_groups(model, targets: list[WeightTarget], assign: dict) -> tuple[list[ScaleGroup], list[dict]]:
    """Norm and down-projection scale groups of ``model`` (see module docstring) and the skipped candidates
    ``[{"name", "reason"}]``."""
    by_op = {_uid(t.op): t for t in targets if t.kind == "matmul"}
    groups, skipped = [], []

    def usable(tgts):
        for c in tgts:
            if c.name not in assign:
                return f"consumer {c.name!r} is not compressed (ignored scope)"
            if not _sole_weight_user(c):
                return f"weight {c.name!r} is shared with another op"
        return None

    for op in model.get_ordered_ops():
        x = _rms_core_input(op)
        if x is None:
            continue
        h = _last_dim(op.output(0))
        name = op.get_friendly_name()
        if h is None:
            skipped.append({"name": name, "reason": "norm output has a dynamic channel dimension"})
            continue
        mul, wport = _weight_multiply(op, h)
        out_node = mul if mul is not None else op
        cons, problems = _walk_consumers(out_node.output(0), h, by_op)
        if not cons:  # feeds no weight (e.g. Qwen3's per-head q_norm / k_norm): not a candidate
            continue
        if problems:
            skipped.append({"name": name, "reason": f"norm output {problems[0]}; consumer set not fully identified"})
            continue
        if not any(assign.get(c.name) is not None and assign[c.name].fmt in _LOW_BIT for c in cons):
            skipped.append({"name": name, "reason": "no 3/4-bit consumer"})
            continue
        why = usable(cons)
        if why:
            skipped.append({"name": name, "reason": why})
            continue
        groups.append(ScaleGroup("norm", name, cons, norm_out=op, weight_mul=mul, weight_port=wport))

    for t in targets:
        if t.kind != "matmul" or t.name not in assign or assign[t.name].fmt not in _LOW_BIT:
            continue
        prod = _src(t.op, 0)
        if prod.get_type_name() != "Multiply" or len(_consumers(prod.output(0))) != 1:
            continue
        up = None
        for p in (1, 0):
            cand = by_op.get(_uid(_src(prod, p)))
            if cand is not None and cand.port == 1:
                up = cand
                break
        if up is None:
            skipped.append({"name": t.name, "reason": "input is a product but neither factor is a weight MatMul"})
            continue
        i = t.nk_shape[-1]
        if (len(_consumers(up.op.output(0))) != 1 or up.nk_shape[-2] != i or len(up.shape) != len(t.shape)
                or (t.is_expert and up.shape[0] != t.shape[0]) or _last_dim(prod.output(0)) != i
                or _last_dim(up.op.output(0)) != i):
            skipped.append({"name": t.name, "reason": f"up projection {up.name!r} does not match the down input"})
            continue
        why = usable([t, up])
        if why:
            skipped.append({"name": t.name, "reason": why})
            continue
        groups.append(ScaleGroup("down", t.name, [t], up=up))

    covered = {c.name for g in groups for c in g.consumers} | {s["name"] for s in skipped}
    for t in targets:
        if t.kind == "matmul" and t.name not in covered and t.name in assign and assign[t.name].fmt in _LOW_BIT:
            skipped.append({"name": t.name, "reason": "input is not an RMSNorm output (with a fully identified "
                            "consumer set) nor an act(gate) * up product; weight not scaled"})
    return groups, skipped


# ---------------------------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------------------------


def _fake_quant(w: torch.Tensor, a) -> torch.Tensor:
    """Quantize-dequantize ``w[B, N, K]`` in assignment ``a``'s format with plain RTN (absmax / min-max scales)."""
    if a.fmt in _LOW_BIT:
        return quantize_rtn(a.fmt, w, a.group_size, search=False).dequantize()
    if a.fmt == "int8_asym":
        q, zp, s = emit.quantize_int8_asym(w)
        return torch.from_numpy(emit.dequantize_int8_asym(q, zp, s))
    return w


def scales_for(mag: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = m^alpha`` per channel (last axis), normalised to ``sqrt(max(s) min(s)) = 1``."""
    m = mag.clamp_min(0).to(torch.float64)
    m = torch.maximum(m, m.amax(-1, keepdim=True) * MIN_REL_MAGNITUDE).clamp_min(1e-30)
    s = m**alpha
    s = s / torch.sqrt(s.amax(-1, keepdim=True) * s.amin(-1, keepdim=True))
    return s.to(torch.float32)


def output_error(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``tr(dW_b H_b dW_b^T)`` per leading index b; ``w, wq [B, N, K]``, ``H [B, K, K]``."""
    d = (w - wq).to(torch.float64)
    return ((d @ H.to(torch.float64)) * d).sum((-1, -2))


def search_alpha(items, mag: torch.Tensor, grid=ALPHA_GRID, per_expert: bool = False):
    """Best alpha for ``items = [(w [B, N, K], H [B, K, K], assignment)]`` sharing the input scale ``s(mag)``.

    ``mag`` is ``[K]`` (one scale for all items) or ``[B, K]`` with ``per_expert`` (independent scale and alpha per
    b). Returns ``(alpha [B] or scalar, s, error at alpha, error at alpha=0)``."""
    grid = tuple(grid)
    full = grid if 0.0 in grid else (0.0,) + grid
    errs = []
    for alpha in full:
        s = scales_for(mag, alpha)
        sb = s[..., None, :] if s.ndim == 2 else s
        tot = 0
        for w, H, a in items:
            wq = _fake_quant(w * sb, a) / sb
            e = output_error(w, wq, H)
            tot = tot + (e if per_expert else e.sum())
        errs.append(tot)
    errs = torch.stack([torch.as_tensor(e) for e in errs])  # [A] or [A, B]
    err0 = errs[full.index(0.0)]
    errs = errs[[full.index(a) for a in grid]]
    best = errs.argmin(0)
    g = torch.tensor(grid, dtype=torch.float32)
    if per_expert:
        alpha = g[best]
        s = torch.stack([scales_for(mag[b], float(alpha[b])) for b in range(mag.shape[0])])
        return alpha, s, errs[best, torch.arange(errs.shape[1])], err0
    alpha = float(g[best])
    return alpha, scales_for(mag, alpha), errs[best], err0


# ---------------------------------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------------------------------
def _set_weight(t: WeightTarget, w_nk: torch.Tensor) -> None:
    """Replace ``t``'s weight constant by ``w_nk`` ([.., N, K] orientation), keeping its name."""
    import openvino as ov
    from openvino import opset13 as ops

    w = w_nk if (t.kind != "matmul" or t.transpose_b) else w_nk.transpose(-1, -2)
    et = t.op.input(t.port).get_element_type()
    dtype = np.float16 if et == ov.Type.f16 else np.float32
    c = ops.constant(np.ascontiguousarray(w.numpy().astype(dtype)))
    c.set_friendly_name(t.name)
    t.op.input(t.port).replace_source_output(c.output(0))
    t.const, t.convert = c, None


def _fold_norm(g: ScaleGroup, s: torch.Tensor) -> None:
    from openvino import opset13 as ops

    inv = (1.0 / s.to(torch.float64)).numpy()
    if g.weight_mul is not None:
        old = _const_value(_src(g.weight_mul, g.weight_port))
        new = (old.astype(np.float64) * inv.reshape([1] * (old.ndim - 1) + [-1]) if old.ndim else old * inv)
        et = g.weight_mul.input(g.weight_port).get_element_type()
        c = ops.constant(new.astype(np.float16 if et.get_type_name() == "f16" else np.float32))
        c.set_friendly_name(f"{g.name}/awq_weight")
        g.weight_mul.input(g.weight_port).replace_source_output(c.output(0))
    else:
        out = g.norm_out.output(0)
        et = out.get_element_type()
        c = ops.constant(inv.astype(np.float16 if et.get_type_name() == "f16" else np.float32))
        c.set_friendly_name(f"{g.name}/awq_scale")
        targets = list(out.get_target_inputs())
        mul = ops.multiply(out, c)
        mul.set_friendly_name(f"{g.name}/awq_multiply")
        for inp in targets:
            inp.replace_source_output(mul.output(0))
    for t in g.consumers:
        w = emit.read_weight(t)
        _set_weight(t, w * s.reshape([1] * (w.ndim - 1) + [-1]))


def _fold_down(g: ScaleGroup, s: torch.Tensor) -> None:
    """``s [K]`` (2-D) or ``[E, K]`` (experts)."""
    down = g.consumers[0]
    wd = emit.read_weight(down)
    wu = emit.read_weight(g.up)
    if wd.ndim == 3:
        _set_weight(down, wd * s[:, None, :])
        _set_weight(g.up, wu / s[:, :, None])
    else:
        _set_weight(down, wd * s[None, :])
        _set_weight(g.up, wu / s[:, None])


def _fold_if_finite(g: "ScaleGroup", s: torch.Tensor, entry: dict, fold) -> bool:
    """``fold(g, s)`` unless a scaled weight would stop being finite / f16-representable; records the outcome in
    the report ``entry`` (and logs a refusal). Returns whether it folded."""
    if not _finite_after(g, s):
        entry["folded"] = False
        entry["reason"] = "scaled weights would not stay finite / f16-representable"
        logger.warning("AWQ: not scaling %s: %s", g.name, entry["reason"])
        return False
    fold(g, s)
    entry["folded"] = True
    return True


def _finite_after(g: ScaleGroup, s: torch.Tensor) -> bool:
    """Every weight the fold writes stays finite and below :data:`MAX_ABS_WEIGHT`."""
    if not torch.isfinite(s).all() or (s <= 0).any():
        return False
    checks = []
    if g.kind == "norm":
        for t in g.consumers:
            w = emit.read_weight(t)
            checks.append(w * s.reshape([1] * (w.ndim - 1) + [-1]))
        if g.weight_mul is not None:
            old = torch.from_numpy(_const_value(_src(g.weight_mul, g.weight_port)).copy())
            checks.append(old.reshape(-1) / s)
        else:
            checks.append(1.0 / s)
    else:
        wd, wu = emit.read_weight(g.consumers[0]), emit.read_weight(g.up)
        sd = s[:, None, :] if wd.ndim == 3 else s[None, :]
        su = s[:, :, None] if wd.ndim == 3 else s[:, None]
        checks += [wd * sd, wu / su]
    return all(bool(torch.isfinite(c).all()) and float(c.abs().max()) < MAX_ABS_WEIGHT for c in checks)


def _scale_hessian(st, s: torch.Tensor) -> None:
    """Statistics of an input whose channels were divided by ``s`` ([K] or [B, K])."""
    inv = (1.0 / s.to(torch.float64))
    inv = inv[None] if inv.ndim == 1 else inv
    st.hessian = st.hessian * inv[:, :, None] * inv[:, None, :]


def _w3(t):
    w = emit.read_weight(t)
    return w if w.ndim == 3 else w[None]


def _hessian(st, n: int):
    H = st.hessian.to(torch.float32)
    return H if H.shape[0] == n else H.expand(n, -1, -1)


def apply_awq(model, targets: list[WeightTarget], assign: dict, stats: dict, min_expert_tokens: int = 64,
              grid=None, force: bool = False) -> dict:
    """Search and fold AWQ scales into ``model`` in place (see module docstring); updates ``stats`` (Hessians) for
    the new input spaces. Returns the report ``{"groups": [...], "skipped": [...]}``.

    ``force=True`` folds the best alpha of ``grid`` even where it does not beat ``alpha = 0`` (tests)."""
    grid = ALPHA_GRID if grid is None else tuple(grid)
    groups, skipped = find_scale_groups(model, targets, assign)
    for sk in skipped:
        logger.info("AWQ: not scaling %s: %s", sk["name"], sk["reason"])
    rep = {"groups": [], "skipped": skipped}
    for g in groups:
        if any(c.name not in stats for c in g.consumers):
            rep["skipped"].append({"name": g.name, "reason": "no calibration statistics"})
            logger.info("AWQ: not scaling %s: no calibration statistics", g.name)
            continue
        entry = {"name": g.name, "kind": g.kind, "consumers": [c.name for c in g.consumers]}
        if g.kind == "norm":
            items = [(_w3(c), _hessian(stats[c.name], _w3(c).shape[0]), assign[c.name]) for c in g.consumers]
            dense = [stats[c.name] for c in g.consumers if not c.is_expert]
            src = dense or [stats[c.name] for c in g.consumers]
            st = src[0]
            tokens = float(max(1, int(st.tokens.sum())))
            mag = torch.sqrt(torch.diagonal(st.hessian, dim1=-2, dim2=-1).sum(0) / tokens).to(torch.float32)
            alpha, s, err, err0 = search_alpha(items, mag, grid)
            entry.update(alpha=alpha, error=float(err), error_no_awq=float(err0))
            if alpha == 0.0 or not (err < err0 or force):
                entry["folded"] = False
            elif _fold_if_finite(g, s, entry, _fold_norm):
                for c in g.consumers:
                    _scale_hessian(stats[c.name], s)
        else:
            down = g.consumers[0]
            st = stats[down.name]
            w = _w3(down)
            H = _hessian(st, w.shape[0])
            tok = np.maximum(st.tokens, 1).astype(np.float64)
            mag = torch.sqrt(torch.diagonal(st.hessian, dim1=-2, dim2=-1) / torch.from_numpy(tok)[:, None])
            mag = mag.to(torch.float32)
            alpha, s, err, err0 = search_alpha([(w, H, assign[down.name])], mag, grid, per_expert=True)
            if down.is_expert:
                low = torch.from_numpy(st.tokens < min_expert_tokens)
                alpha = torch.where(low, torch.zeros_like(alpha), alpha)
                s = torch.where(low[:, None], torch.ones_like(s), s)
                err = torch.where(low, err0, err)
            keep = (alpha > 0) & ((err < err0) | force)
            s = torch.where(keep[:, None], s, torch.ones_like(s))
            entry.update(alpha=[float(a) if k else 0.0 for a, k in zip(alpha, keep)],
                         error=float(torch.where(keep, err, err0).sum()), error_no_awq=float(err0.sum()))
            s_fold = s if down.is_expert else s[0]
            if not bool(keep.any()):
                entry["folded"] = False
            elif _fold_if_finite(g, s_fold, entry, _fold_down):
                _scale_hessian(st, s_fold)
        rep["groups"].append(entry)
        logger.info("AWQ %s %s: alpha %s, output error %.4g -> %.4g%s", g.kind, g.name, entry["alpha"],
                    entry["error_no_awq"], entry["error"], "" if entry["folded"] else " (not folded)")
    return rep


def scale_only(model, dataset, mode: str = "int3_sym", group_size: int = 128, subset_size: int = 128,
               min_expert_tokens: int = 64, grid=ALPHA_GRID, force: bool = False, **recipe_kw) -> dict:
    """Apply only the AWQ scaling of ``compress_weights(model, mode=..., awq=True, dataset=...)`` to ``model`` (no
    quantization): the float model computes the same function with rescaled weights. Returns the AWQ report."""
    from nncf_moe3.calibration import collect_statistics
    from nncf_moe3.engine import Recipe, assign_precisions
    from nncf_moe3.graph import find_weight_targets

    recipe = Recipe(mode=mode, group_size=group_size, subset_size=subset_size, min_expert_tokens=min_expert_tokens,
                    awq=True, progress=False, **recipe_kw)
    targets = find_weight_targets(model)
    assign = assign_precisions(model, targets, recipe, None, lambda *a: False)
    stat_targets = [t for t in targets if assign.get(t.name) is not None and t.kind == "matmul"]
    stats = collect_statistics(model, stat_targets, dataset, subset_size, progress=False)
    rep = apply_awq(model, targets, assign, stats, min_expert_tokens, grid, force)
    model.validate_nodes_and_infer_types()
    return rep
