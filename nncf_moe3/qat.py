"""3-bit LoRA quantization-aware training (QAT) for transformers MoE models, exported to OpenVINO IR with u3 weights.

The flow follows NNCF's ``compression_format=FQ_LORA`` QAT (fake-quantize ``W + s·B·A``, train the adapters with a
distillation loss, strip/export), extended to what NNCF's torch QAT does not cover:

* 3-D expert tensors (transformers v5 keeps experts fused as ``gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``):
  one adapter pair per expert (``A [E, r, K]``, ``B [E, N, r]``), group-wise fake quantization along ``K``;
* the 3-bit formats of :mod:`nncf_moe3.quantization` (``int3_sym`` — the ``-4..3`` grid that contains zero,
  ``int3_asym``, ``nf3``), plus ``int4_asym`` g128 for the dense weights of MoE models and frozen INT8 router /
  embedding / lm_head — the same per-role precisions :func:`nncf_moe3.compress_weights` assigns, read from the
  exported graph so QAT and export always agree;
* adapter initialisation: ``"zeros"`` (``B = 0``, NNCF-like), ``"loftq"`` (LoftQ alternation
  ``Q = quant(W − BA)``, ``B, A = SVD_r(W − Q)``, ``loftq_iters`` times), ``"pissa"`` (principal singular part as the
  adapter, residual quantized — the adapter stays in full precision, so a PiSSA model cannot be exported to a u3 IR);
* step sizes learned with LSQ (gradient scale ``1/sqrt(N·Qp)``, ``N`` = weights per step, ``Qp`` = largest level),
  scales rounded to f16 in the forward pass (straight-through) so the exported IR computes exactly what was trained;
* export (:func:`export_openvino`): ``B·A`` is merged into ``W``, the merged weight is encoded with the learned scales
  and emitted through the PTQ emitter (:func:`nncf_moe3.engine.run_compression` with precomputed parameters).

Usage (the shape of NNCF's QAT flow)::

    qmodel = nncf_moe3.compress_weights(torch_model, mode="int3_asym", group_size=64,
                                        compression_format=nncf.CompressionFormat.FQ_LORA)   # or nncf_moe3.qat.prepare
    nncf_moe3.qat.train(qmodel, teacher, token_stream, max_minutes=15)                     # or your own loop
    ov_model = nncf_moe3.qat.export_openvino(qmodel, "out/qat_ir")

LoftQ's "``Q``" needs a word. Export merges ``B·A`` into the quantized weight (the ``FQ(W + s·B·A)`` form), so the
deployed model is ``quant(W_base + B·A)``. With LoftQ init the frozen base is the LoftQ residual ``W − B₀A₀`` and the
adapter starts at ``B₀A₀``: training starts from the same quantized model as zero init, but with both adapter
factors non-zero and spanning the principal directions of the quantization error ``W − Q``, instead of a random ``A``
and ``B = 0``. Multi-GPU / multi-node: :func:`train` uses HF ``accelerate`` when ``accelerator=`` is given (see
README "QAT"); no launcher of our own.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nncf_moe3.quantization import (
    QuantizedWeight,
    _ASYM_QMAX,
    check_weight,
    encode,
    f16_round,
    format_spec,
    group,
    quantize_rtn,
)

logger = logging.getLogger("nncf_moe3")

INITS = ("zeros", "loftq", "pissa")
QAT_FORMATS = ("int3_sym", "int3_asym", "nf3")
STATE_ATTR = "_nncf_moe3_qat"


# ---------------------------------------------------------------------------------------------------------------
# Fake quantization with LSQ step learning
# ---------------------------------------------------------------------------------------------------------------
def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass (exactly), gradient multiplied by ``g`` (LSQ)."""
    return x.detach() + (x * g - (x * g).detach())


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def qmax_of(fmt: str) -> float:
    """LSQ's ``Qp``: the largest positive level of the format's grid (in units of the step)."""
    if fmt == "int3_sym":
        return 3.0
    if fmt in _ASYM_QMAX:
        return float(_ASYM_QMAX[fmt])
    return float(format_spec(fmt).lmax)  # nf3: levels in [-1, 1]


def fake_quantize(fmt: str, w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, group_size: int,
                  grad_scale: float | None = None) -> torch.Tensor:
    """Group-wise quantize-dequantize ``w [..., N, K]`` with straight-through rounding.

    ``scale`` / ``zero_point`` are ``[..., N, G, 1]``. The scale is rounded to f16 in the forward pass (as stored in
    the IR) with a straight-through gradient; ``grad_scale`` multiplies the scale's gradient (LSQ). The gradient
    w.r.t. ``w`` is 1 inside the clipping range and 0 outside; w.r.t. the scale it is LSQ's
    ``round(x) − x`` inside and the clipping level outside.
    """
    wg = group(w, group_size)
    s = scale if grad_scale is None else _grad_scale(scale, grad_scale)
    s = f16_round(s.detach()) + (s - s.detach())  # value exactly the f16 scale, gradient to the f32 parameter
    x = wg / s
    if fmt == "int3_sym":
        q = _round_ste(torch.clamp(x, -4.0, 3.0))
        deq = q * s
    elif fmt in _ASYM_QMAX:
        z = zero_point
        q = _round_ste(torch.clamp(x + z, 0.0, float(_ASYM_QMAX[fmt])))
        deq = (q - z) * s
    elif fmt == "nf3":
        lv = torch.from_numpy(format_spec(fmt).levels).to(w.device, w.dtype)
        xc = torch.clamp(x, float(lv[0]), float(lv[-1]))
        mids = (lv[1:] + lv[:-1]) / 2
        idx = torch.bucketize(xc.detach(), mids)
        q = xc + (lv[idx] - xc).detach()
        deq = q * s
    else:
        raise ValueError(f"fake_quantize: unsupported format {fmt!r}")
    return deq.reshape(w.shape)


class FQLoRA(nn.Module):
    """Parametrization ``W -> FQ(W + s·B·A)`` (``"pissa"``: ``FQ(W) + s·B·A``) of a 2-D ``[N, K]`` or 3-D
    ``[E, N, K]`` weight; ``W`` is the frozen original tensor handed in by ``torch.nn.utils.parametrize``."""

    def __init__(self, fmt: str, group_size: int, weight: torch.Tensor, rank: int, init: str, lsq: bool = True,
                 lora_scale: float = 1.0, loftq_iters: int = 2, seed: int = 0, start: QuantizedWeight | None = None):
        super().__init__()
        self.fmt, self.group_size, self.rank, self.init = fmt, int(group_size), int(rank), init
        self.lora_scale, self.lsq = float(lora_scale), bool(lsq)
        self.adapter_outside = init == "pissa"
        w = weight.detach().float()
        w3 = w if w.dim() == 3 else w[None]
        e, n, k = w3.shape
        r = min(self.rank, n, k)
        gen = torch.Generator().manual_seed(seed)
        if start is not None:  # start from a PTQ solution Q (e.g. GPTQ): merged weight at init = Q
            q0 = start.dequantize().float()
            if q0.shape != w3.shape:
                raise ValueError(f"PTQ start has shape {tuple(q0.shape)}, weight {tuple(w3.shape)}")
            if init == "pissa":
                raise ValueError("init='pissa' cannot start from a PTQ model")
            if init == "loftq":  # one LoftQ step with the PTQ quantizer: B·A = SVD_r(W - Q)
                b, a = svd_factors(w3 - q0, r)
            else:
                b = torch.zeros(e, n, r)
                a = torch.randn(e, r, k, generator=gen) / math.sqrt(k)
            base = q0 - b @ a
            b, a = b / math.sqrt(self.lora_scale), a / math.sqrt(self.lora_scale)
        elif init == "zeros" or r == 0:
            b = torch.zeros(e, n, r)
            a = torch.randn(e, r, k, generator=gen) / math.sqrt(k)
            base = w3
        elif init == "loftq":
            b, a = loftq(fmt, w3, r, group_size, loftq_iters)
            base = w3 - b @ a
            b, a = b / math.sqrt(self.lora_scale), a / math.sqrt(self.lora_scale)
        elif init == "pissa":
            b, a = svd_factors(w3, r)
            base = w3 - b @ a
            b, a = b / math.sqrt(self.lora_scale), a / math.sqrt(self.lora_scale)
        else:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        merged0 = base if self.adapter_outside else w3
        qw = start if start is not None else quantize_rtn(fmt, merged0, group_size, search=True)
        self.A = nn.Parameter(a.reshape(*w.shape[:-2], r, k).contiguous())
        self.B = nn.Parameter(b.reshape(*w.shape[:-2], n, r).contiguous())
        sc = qw.scale.reshape(*w.shape[:-1], -1, 1)
        # int3_sym's search may pick a negative scale (largest magnitude on level -4): the sign is kept fixed and
        # LSQ learns the magnitude.
        self.register_buffer("scale_sign", torch.where(sc < 0, -1.0, 1.0))
        sc = sc.abs()
        if lsq:
            self.scale = nn.Parameter(sc.clone())
        else:
            self.register_buffer("scale", sc.clone())
        zp = None if qw.zero_point is None else qw.zero_point.reshape(*w.shape[:-1], -1, 1).clone()
        self.register_buffer("zero_point", zp)
        self.register_buffer("_base_init", base.reshape(w.shape).clone(), persistent=False)
        self.grad_scale = 1.0 / math.sqrt(self.group_size * qmax_of(fmt)) if lsq else None

    def delta(self) -> torch.Tensor:
        return self.lora_scale * (self.B @ self.A)

    def signed_scale(self) -> torch.Tensor:
        s = self.scale if self.grad_scale is None else _grad_scale(self.scale, self.grad_scale)
        return s * self.scale_sign

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.signed_scale()
        if self.adapter_outside:
            return fake_quantize(self.fmt, w, s, self.zero_point, self.group_size) + self.delta()
        return fake_quantize(self.fmt, w + self.delta(), s, self.zero_point, self.group_size)

    @torch.no_grad()
    def quantized(self, w: torch.Tensor) -> QuantizedWeight:
        """Codes / f16 scales / zero points of the merged weight ``W + s·B·A`` (what export writes)."""
        if self.adapter_outside:
            raise NotImplementedError(
                "PiSSA keeps its adapter B·A in full precision beside the quantized residual; it cannot be merged "
                f"into a 3-bit grid. Cost if kept as an f16 LoRA branch: {pissa_extra_bits(self):.3f} extra bits per "
                "weight for this tensor. Use init='loftq' or 'zeros' for a u3 IR.")
        merged = (w + self.delta()).float()
        wg = group(merged, self.group_size)
        s = f16_round(self.scale.detach().float()) * self.scale_sign
        codes = encode(self.fmt, wg, s, self.zero_point)
        lead = () if merged.dim() == 3 else (1,)
        zp = None if self.zero_point is None else self.zero_point.reshape(*lead, *self.zero_point.shape)
        return QuantizedWeight(self.fmt, codes.reshape(*lead, *codes.shape), s.reshape(*lead, *s.shape), zp,
                               self.group_size)


def pissa_extra_bits(fq: FQLoRA) -> float:
    """Bits per weight an unmerged f16 adapter adds: ``16·r·(N + K) / (N·K)``."""
    n, k = fq.B.shape[-2], fq.A.shape[-1]
    return 16.0 * fq.A.shape[-2] * (n + k) / (n * k)


def svd_factors(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD of ``x [..., N, K]`` as ``(B [..., N, r], A [..., r, K])``, the singular values
    split evenly (``B = U√S``, ``A = √S Vᵀ``)."""
    u, sv, vh = torch.linalg.svd(x, full_matrices=False)
    root = sv[..., :rank].sqrt()
    return u[..., :rank] * root[..., None, :], root[..., :, None] * vh[..., :rank, :]


@torch.no_grad()
def loftq(fmt: str, w: torch.Tensor, rank: int, group_size: int, iters: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """LoftQ: alternate ``Q = quant(W − B·A)`` and ``B·A = SVD_r(W − Q)``; returns ``(B [E, N, r], A [E, r, K])``
    with the singular values split evenly between the factors."""
    b = torch.zeros(*w.shape[:-1], rank)
    a = torch.zeros(*w.shape[:-2], rank, w.shape[-1])
    for _ in range(max(1, iters)):
        q = quantize_rtn(fmt, w - b @ a, group_size, search=True).dequantize()
        b, a = svd_factors(w - q, rank)
    return b, a


# ---------------------------------------------------------------------------------------------------------------
# Starting from a PTQ model
# ---------------------------------------------------------------------------------------------------------------
def read_quantized(ov_model, name: str, fmt: str, group_size: int) -> QuantizedWeight:
    """Codes / scales / zero points of weight ``name`` in an IR compressed by :func:`nncf_moe3.compress_weights`
    (the emitter's node names ``{name}``, ``{name}/scale``, ``{name}/zero_point``), with a leading expert dim."""
    from nncf_moe3.decode import _const_value

    nodes = {op.get_friendly_name(): op for op in ov_model.get_ops() if op.get_type_name() == "Constant"}
    if name not in nodes or f"{name}/scale" not in nodes:
        raise ValueError(f"init_from: weight {name!r} is not an nncf-moe3 compressed weight in the given IR")
    codes = _const_value(nodes[name])
    scale = _const_value(nodes[f"{name}/scale"]).astype(np.float32)
    if codes.ndim != scale.ndim or codes.shape[-1] != group_size or scale.shape[-1] != 1:
        raise ValueError(f"init_from: {name!r} is not {fmt} with group size {group_size} and plain f16 scales "
                         f"(codes {codes.shape}, scales {scale.shape}); double-quantized scales are not supported")
    zp = None
    if fmt in _ASYM_QMAX:
        zp = torch.from_numpy(_const_value(nodes[f"{name}/zero_point"]).astype(np.float32))
    elif fmt == "nf3" and f"{name}/zero_point" in nodes:
        raise ValueError(f"init_from: {name!r} uses an ICQ offset, which QAT does not support")
    lead = (1,) if codes.ndim == 3 else ()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).reshape(*lead, *a.shape)  # noqa: E731
    return QuantizedWeight(fmt, t(codes.astype(np.uint8)), t(scale), None if zp is None else zp.reshape(*lead, *zp.shape),
                           group_size)


def _join_halves(module, parts: dict, n_rows: int) -> QuantizedWeight:
    """Gate/up QuantizedWeights back into the fused ``gate_up_proj`` row order."""
    g, u = parts["gate"], parts["up"]
    out = []
    for a, b in ((g.codes, u.codes), (g.scale, u.scale), (g.zero_point, u.zero_point)):
        if a is None:
            out.append(None)
            continue
        full = torch.empty(a.shape[0], n_rows, *a.shape[2:], dtype=a.dtype)
        full[:, _half_index(module, n_rows, "gate")] = a
        full[:, _half_index(module, n_rows, "up")] = b
        out.append(full)
    return QuantizedWeight(g.fmt, out[0], out[1], out[2], g.group_size)


# ---------------------------------------------------------------------------------------------------------------
# Preparing a model
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class QATConfig:
    mode: str = "int3_asym"
    group_size: int = 64
    rank: int = 8
    init: str = "loftq"
    lsq: bool = True
    lora_scale: float = 1.0
    loftq_iters: int = 2
    dense_mode: str = "int4_asym"
    dense_rank: int | None = None  # rank of the dense-weight adapters (default: ``rank``)
    seed: int = 0
    ptq_start: bool = False  # started from a PTQ IR (init_from)
    train_norms: bool = False  # also train the (float, unquantized) RMSNorm weights


@dataclass
class _QATState:
    config: QATConfig
    #: torch parameter path -> (OpenVINO weight names, row selector per name)
    targets: dict = field(default_factory=dict)
    #: torch parameter path -> original float tensor of frozen INT8 weights (restored for export)
    frozen_originals: dict = field(default_factory=dict)
    assignments: dict = field(default_factory=dict)


def _ov_name_to_param(name: str) -> tuple[str, str | None]:
    """OpenVINO weight name -> (torch parameter path, expert half ``"gate"``/``"up"`` or None)."""
    key = name[len("self.model."):] if name.startswith("self.model.") else name
    for suffix, half in (("._ov_gate_proj", "gate"), ("._ov_up_proj", "up")):
        if key.endswith(suffix):
            return key[: -len(suffix)] + ".gate_up_proj", half
    return key, None


def _half_index(module: nn.Module, rows: int, half: str) -> slice:
    """Rows of ``gate_up_proj`` holding the gate or up half for the module's storage layout."""
    if getattr(module, "is_concatenated", True):
        return slice(0, rows // 2) if half == "gate" else slice(rows // 2, rows)
    return slice(0, rows, 2) if half == "gate" else slice(1, rows, 2)


def _owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    mod_path, _, attr = path.rpartition(".")
    return model.get_submodule(mod_path) if mod_path else model, attr


def plan(model: nn.Module, config: QATConfig) -> dict:
    """Per-parameter precision, decided by the PTQ engine's role rules on the exported graph:
    ``{param path: (Assignment, [(ov name, half)])}``."""
    from nncf_moe3.api import _ignored
    from nncf_moe3.engine import Recipe, assign_precisions, validate_group_sizes
    from nncf_moe3.export import export_model
    from nncf_moe3.graph import find_weight_targets

    ov_model = export_model(model)
    targets = find_weight_targets(ov_model)
    recipe = Recipe(mode=config.mode, group_size=config.group_size, dense_mode=config.dense_mode, progress=False)
    assign = assign_precisions(ov_model, targets, recipe, None, _ignored)
    validate_group_sizes(targets, assign)
    params = dict(model.named_parameters())
    out: dict = {}
    for t in targets:
        a = assign.get(t.name)
        if a is None or a.fmt == "none":
            continue
        path, half = _ov_name_to_param(t.name)
        if path not in params:
            raise ValueError(f"QAT: cannot map OpenVINO weight {t.name!r} to a torch parameter")
        prev = out.get(path)
        if prev is not None and (prev[0].fmt, prev[0].group_size) != (a.fmt, a.group_size):
            raise ValueError(f"QAT: the halves of {path!r} got different precisions")
        out.setdefault(path, (a, []))[1].append((t.name, half))
    return out


def prepare(model: nn.Module, mode: str = "int3_asym", group_size: int = 64, *, rank: int = 8, init: str = "loftq",
            lsq: bool = True, lora_scale: float = 1.0, loftq_iters: int = 2, dense_mode: str = "int4_asym",
            dense_rank: int | None = None, seed: int = 0, init_from=None, train_norms: bool = False,
            progress: bool = True) -> nn.Module:
    """Insert FQ(W + s·B·A) parametrizations into ``model`` (in place) and freeze everything but adapters and scales.

    Precisions follow :func:`nncf_moe3.compress_weights`' MoE role defaults: routed-expert tensors get ``mode`` /
    ``group_size``; dense always-active weights (attention, shared experts) get ``dense_mode`` (int4_asym g128 by
    default, or ``"same"``); router, embedding and lm_head are INT8_ASYM per row and stay frozen (their weights are
    replaced by the INT8 dequantized values, restored at export). Returns ``model``.

    ``init_from``: an IR (``ov.Model`` or path) of the same model compressed by :func:`nncf_moe3.compress_weights`
    with the same mode / group size (e.g. the data-aware GPTQ default). QAT then starts from that PTQ solution —
    its codes and scales — as NNCF's QAT recipe starts from an AWQ+SE-compressed model; the frozen base is the PTQ
    weight (minus the LoftQ adapter ``SVD_r(W − Q)`` for ``init="loftq"``).
    """
    from tqdm import tqdm

    from nncf_moe3.emit import dequantize_int8_asym, quantize_int8_asym

    mode = str(getattr(mode, "value", mode)).lower()
    if mode not in QAT_FORMATS:
        raise ValueError(f"QAT mode must be one of {QAT_FORMATS}, got {mode!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if hasattr(model, STATE_ATTR):
        raise ValueError("model is already prepared for QAT")
    config = QATConfig(mode, int(group_size), int(rank), init, bool(lsq), float(lora_scale), int(loftq_iters),
                       dense_mode, dense_rank, seed, init_from is not None, bool(train_norms))
    for name, p in model.named_parameters():
        check_weight(p.detach(), name)
    decided = plan(model, config)
    if init_from is not None:
        import openvino as ov

        from nncf_moe3.emit import check_layout

        ptq_model = ov.Core().read_model(str(init_from)) if isinstance(init_from, (str, Path)) else init_from
        check_layout(ptq_model)
        starts = {}
        for path, (a, names) in decided.items():
            if a.fmt == "int8_asym":
                continue
            parts = {half: read_quantized(ptq_model, name, a.fmt, a.group_size) for name, half in names}
            if None in parts:
                starts[path] = parts[None]
            else:
                module, attr = _owner(model, path)
                starts[path] = _join_halves(module, parts, getattr(module, attr).shape[1])
    state = _QATState(config)
    for p in model.parameters():
        p.requires_grad_(False)
    items = sorted(decided.items())
    for i, (path, (a, names)) in enumerate(tqdm(items, desc="QAT prepare", disable=not progress, mininterval=2)):
        module, attr = _owner(model, path)
        w = getattr(module, attr)
        state.assignments[path] = asdict(a)
        if a.fmt == "int8_asym":
            state.frozen_originals[path] = w.detach().clone()
            q, zp, s = quantize_int8_asym(w.detach().float())
            with torch.no_grad():
                w.copy_(torch.from_numpy(dequantize_int8_asym(q, zp, s)).to(w.dtype))
            continue
        if a.double_quant is not None or a.icq:
            raise ValueError(f"QAT does not support double-quantized scales / ICQ ({path})")
        r = config.rank if a.fmt == config.mode and w.dim() == 3 else (dense_rank or config.rank)
        start = starts[path] if init_from is not None else None
        fq = FQLoRA(a.fmt, a.group_size, w, r, init, lsq=lsq, lora_scale=lora_scale, loftq_iters=loftq_iters,
                    seed=seed + i, start=start)
        with torch.no_grad():
            w.copy_(fq._base_init.to(w.dtype))
        del fq._base_init
        parametrize.register_parametrization(module, attr, fq, unsafe=True)
        module.parametrizations[attr].original.requires_grad_(False)
        state.targets[path] = names
    if train_norms:
        for _, p in norm_parameters(model):
            p.requires_grad_(True)
    setattr(model, STATE_ATTR, state)
    return model


def norm_parameters(model) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of the RMSNorm / LayerNorm modules (kept in float in the IR, so trainable for free)."""
    out = []
    for name, mod in model.named_modules():
        cls = type(mod).__name__.lower()
        w = getattr(mod, "weight", None)
        if ("rmsnorm" in cls or "layernorm" in cls) and isinstance(w, nn.Parameter):
            out.append((f"{name}.weight", w))
    return out


def _state(model) -> _QATState:
    st = getattr(model, STATE_ATTR, None)
    if st is None:
        raise ValueError("model was not prepared with nncf_moe3.qat.prepare / compress_weights(compression_format=FQ_LORA)")
    return st


def quantizers(model) -> dict[str, FQLoRA]:
    """``{param path: FQLoRA}`` of a prepared model."""
    _state(model)
    out = {}
    for path in _state(model).targets:
        module, attr = _owner(model, path)
        out[path] = module.parametrizations[attr][0]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token KL(teacher ‖ student) over the vocabulary."""
    t = temperature
    ls = torch.log_softmax(student_logits.float() / t, -1)
    lt = torch.log_softmax(teacher_logits.float() / t, -1)
    return (lt.exp() * (lt - ls)).sum(-1).mean() * (t * t)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int
    loss_first: float
    loss_last: float
    history: list
    val_history: list = field(default_factory=list)  # [(step, ppl, kl)] on the validation windows
    best_step: int | None = None  # the step whose parameters were kept (validation KL); None = last step


def train(model, teacher, tokens: np.ndarray, *, steps: int | None = None, max_minutes: float | None = 15.0,
          batch_size: int = 8, seq_len: int = 256, lr: float = 5e-4, scale_lr: float | None = 2e-5,
          ce_weight: float = 0.2, grad_clip: float = 0.3, warmup: int = 20, seed: int = 0, progress: bool = True,
          accelerator=None, log_every: int = 50, val_tokens: np.ndarray | None = None,
          eval_every: int = 100) -> TrainResult:
    """Distil ``teacher`` (the fp model) into the prepared ``model``: KL on logits + ``ce_weight`` × CE on the
    next tokens. Defaults (lr 5e-4, scale_lr 2e-5, ce_weight 0.2; the example runs 400 steps with early stopping) are
    the recipe that improved both held-out KL and perplexity on the reference model; larger learning rates (2e-3) or
    long CE-weighted runs lowered perplexity while KL to the fp model got worse, pure KL (ce_weight 0) lowered KL but
    not perplexity — see SUMMARY.md "QAT".

    ``tokens`` is a 1-D training token stream (random windows of ``seq_len``) or ``[n, seq_len]`` windows.
    Trains the adapters, the LSQ scales and (``prepare(train_norms=True)``) the norm weights. Stops after ``steps`` steps or ``max_minutes`` (whichever comes first; at least one must be set). AdamW on the
    adapters (``lr``) and LSQ scales (``scale_lr``, default ``lr``), cosine decay after ``warmup`` steps, gradient
    norm clipped to ``grad_clip`` (IR-QLoRA's 0.3). With an HF ``accelerate.Accelerator`` the model, optimizer and
    backward go through it (multi-process data parallel is then ``accelerate launch``'s job).

    Early stopping: with ``val_tokens`` (``[n, L]`` validation windows that are not the evaluation windows — the
    example uses held-out text disjoint from them, ``reference.data.disjoint_windows``) the student's KL to the
    teacher on them is measured before training and every ``eval_every`` steps, and
    the trainable parameters of the best point are restored at the end (``best_step``; 0 = the start was best), so a
    long budget cannot drift away from the teacher — the CE term would otherwise keep re-training the model on its
    own data. Validation time counts against ``max_minutes``.
    """
    from tqdm import tqdm

    if steps is None and max_minutes is None:
        raise ValueError("give steps and/or max_minutes")
    tokens = np.asarray(tokens)
    rng = np.random.default_rng(seed)
    fqs = quantizers(model)
    adapters = [p for fq in fqs.values() for p in (fq.A, fq.B)]
    if _state(model).config.train_norms:
        adapters += [p for _, p in norm_parameters(model)]
    scales = [fq.scale for fq in fqs.values() if isinstance(fq.scale, nn.Parameter)]
    groups = [{"params": adapters, "lr": lr}]
    if scales:
        groups.append({"params": scales, "lr": scale_lr or lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.99))
    base_lrs = [g["lr"] for g in opt.param_groups]
    if accelerator is not None:
        model, opt = accelerator.prepare(model, opt)
    teacher.eval()
    model.train()
    total = steps if steps is not None else 10**9
    est_total = steps or 1000
    t0 = time.time()
    history, first = [], None
    trainable = adapters + scales
    val_history, best = [], None
    if val_tokens is not None:
        from nncf_moe3.accuracy import evaluate_torch, reference_logprobs

        val_tokens = np.asarray(val_tokens)
        val_ref = reference_logprobs(teacher, val_tokens)

        def validate(at: int):
            nonlocal best
            with parametrize.cached():
                r = evaluate_torch(model, val_tokens, val_ref)
            model.train()
            val_history.append((at, r.ppl, r.kl))
            if best is None or r.kl < best[1]:
                best = (at, r.kl, [p.detach().clone() for p in trainable])
            logger.info("QAT validation at step %d: ppl %.4f KL %.5f", at, r.ppl, r.kl)

        validate(0)
    bar = tqdm(total=steps, desc="QAT", disable=not progress, mininterval=5)
    step = 0
    while step < total:
        if max_minutes is not None and (time.time() - t0) / 60 >= max_minutes:
            break
        if tokens.ndim == 1:
            starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
            batch = np.stack([tokens[s: s + seq_len] for s in starts])
        else:
            batch = tokens[rng.integers(0, len(tokens), size=batch_size)]
        ids = torch.from_numpy(batch.astype(np.int64))
        if steps is None and max_minutes is not None and step == 10:  # estimate the schedule length from speed
            per = (time.time() - t0) / 10
            est_total = max(20, int(max_minutes * 60 / per))
        frac = min(1.0, step / max(1, est_total))
        mult = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * frac))
        for g, b in zip(opt.param_groups, base_lrs):
            g["lr"] = b * max(mult, 0.02)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, use_cache=False).logits
        with parametrize.cached():
            out = model(input_ids=ids, use_cache=False)
            loss = kl_loss(out.logits, t_logits)
            if ce_weight:
                loss = loss + ce_weight * torch.nn.functional.cross_entropy(
                    out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(adapters + scales, grad_clip)
        opt.step()
        with torch.no_grad():  # keep steps positive and representable
            for s in scales:
                s.clamp_(min=1e-6)
        lv = float(loss.detach())
        first = lv if first is None else first
        history.append(lv)
        step += 1
        bar.update(1)
        if progress and step % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(history[-log_every:]):.4f}")
        if val_tokens is not None and step % eval_every == 0:
            validate(step)
    bar.close()
    best_step = None
    if val_tokens is not None:
        if val_history[-1][0] != step:
            validate(step)
        best_step = best[0]
        with torch.no_grad():
            for p, v in zip(trainable, best[2]):
                p.copy_(v)
        logger.info("QAT: kept the parameters of step %d (validation KL %.5f)", best_step, best[1])
    model.eval()
    return TrainResult(step, round(time.time() - t0, 1), step * batch_size * seq_len, first or float("nan"),
                       float(np.mean(history[-20:])) if history else float("nan"), history, val_history, best_step)


# ---------------------------------------------------------------------------------------------------------------
# Strip / export
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def quantized_weights(model) -> dict:
    """``{OpenVINO weight name: QuantizedWeight}`` of the merged (``W + s·B·A``) weights, split per gate/up half."""
    st = _state(model)
    out = {}
    for path, names in st.targets.items():
        module, attr = _owner(model, path)
        fq = module.parametrizations[attr][0]
        qw = fq.quantized(module.parametrizations[attr].original)
        for name, half in names:
            if half is None:
                out[name] = qw
                continue
            sel = _half_index(module, qw.codes.shape[1], half)
            out[name] = QuantizedWeight(qw.fmt, qw.codes[:, sel], qw.scale[:, sel],
                                        None if qw.zero_point is None else qw.zero_point[:, sel], qw.group_size)
    return out


@contextmanager
def _plain(model, merged: bool):
    """Temporarily remove the parametrizations (deepcopy of a parametrized model shares its generated classes, so
    removing them from a copy would break the original). ``merged``: the tensors hold the fake-quantized values and
    the frozen INT8 weights their dequantized values; otherwise the original float weights (export input)."""
    st = _state(model)
    saved = []
    try:
        with torch.no_grad():
            for path in st.targets:
                module, attr = _owner(model, path)
                fq = module.parametrizations[attr][0]
                original = module.parametrizations[attr].original
                value = fq(original).detach() if merged else None
                base = original.detach().clone()
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
                saved.append((module, attr, fq, base))
                if value is not None:
                    getattr(module, attr).copy_(value)
            swapped = []
            if not merged:
                for path, orig in st.frozen_originals.items():
                    module, attr = _owner(model, path)
                    p = getattr(module, attr)
                    swapped.append((p, p.detach().clone()))
                    p.copy_(orig)
            delattr(model, STATE_ATTR)
        yield model
    finally:
        with torch.no_grad():
            if not merged:
                for p, val in swapped:
                    p.copy_(val)
            for module, attr, fq, base in saved:
                getattr(module, attr).copy_(base)
                parametrize.register_parametrization(module, attr, fq, unsafe=True)
                module.parametrizations[attr].original.requires_grad_(False)
        setattr(model, STATE_ATTR, st)


@torch.no_grad()
def strip(model) -> nn.Module:
    """A plain transformers model (a copy) whose weights are the fake-quantized values the QAT model computes
    (adapters merged, INT8 weights dequantized): the float twin of the exported IR, e.g. for torch evaluation."""
    with _plain(model, merged=True) as m:
        return copy.deepcopy(m)


@torch.no_grad()
def export_openvino(model, output_dir: str | Path | None = None, *, tokenizer_source: str | Path | None = None,
                    progress: bool = True):
    """Export a QAT model to an OpenVINO IR with u3 weights (adapters merged, learned scales) through the PTQ
    emitter. Returns the compressed ``ov.Model``; with ``output_dir`` also writes ``openvino_model.xml`` (+ tokenizer
    files from ``tokenizer_source`` or the model's checkpoint directory). The model itself is left unchanged."""
    import json

    import openvino as ov

    from nncf_moe3.api import REPORT_KEY, _ignored
    from nncf_moe3.engine import Recipe, run_compression
    from nncf_moe3.export import copy_tokenizer_files, export_model

    st = _state(model)
    precomputed = quantized_weights(model)
    cfg = st.config
    recipe = Recipe(mode=cfg.mode, group_size=cfg.group_size, dense_mode=cfg.dense_mode, progress=progress)
    # convert_model shares weight memory with the torch tensors: compress before the QAT values are put back.
    with _plain(model, merged=False) as fp:
        ov_model = export_model(fp)
        report = run_compression(ov_model, recipe, is_ignored=_ignored, precomputed=precomputed)
    missing = [w["name"] for w in report["weights"]
               if w["format"] not in ("int8_asym", "none") and w.get("algorithm") != "precomputed"]
    if missing:
        raise RuntimeError(f"QAT export: weights without trained parameters: {missing}")
    report["qat"] = asdict(cfg)
    ov_model.set_rt_info(json.dumps(report), REPORT_KEY)
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, output_dir / "openvino_model.xml", compress_to_fp16=False)
        src = tokenizer_source or getattr(model, "name_or_path", None)
        if src and Path(src).is_dir():
            copy_tokenizer_files(src, output_dir)
    return ov_model
