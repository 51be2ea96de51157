"""``nncf_moe3.compress_weights``: a drop-in for ``nncf.compress_weights`` with 3-bit MoE modes.

Upstream modes (any ``nncf.CompressWeightsMode``) are passed to NNCF unchanged. The nncf-moe3 modes
(:class:`Mode`: ``int3_sym``, ``int3_asym``, ``nf3``) run our quantizers on an ``ov.Model`` (2-D weights and
3-D ``[E, N, K]`` expert weights) and emit u3 decompression subgraphs in NNCF's shape.

Default recipe per mode (what ``compress_weights(model, mode=m, group_size=g, dataset=d)`` does):

* data-free (``dataset=None``): per-group scale (and zero point) search minimising the weight MSE;
* with a dataset: GPTQ with error feedback, per-expert Hessians from the tokens routed to each expert,
  activation-weighted scale search at each group start; experts that received fewer than
  ``min_expert_tokens`` calibration tokens use the Hessian pooled over the layer's experts;
* in MoE models the dense, always-active weights (attention, shared experts) use ``dense_mode`` (INT4_ASYM
  g128 by default: a few percent of the weights, read for every token, about half of the 3-bit error);
* embeddings and ``lm_head`` (the last MatMul) and the MoE router use the backup mode (INT8_ASYM per
  channel) unless ``all_layers=True`` — the router is < 0.1 % of the weights and steers every token.
"""

from __future__ import annotations

import json
import logging
import re
import time
from enum import Enum

import numpy as np
import torch

logger = logging.getLogger("nncf_moe3")


class Mode(str, Enum):
    """nncf-moe3 3-bit modes (strings accepted too)."""

    INT3_SYM = "int3_sym"
    INT3_ASYM = "int3_asym"
    NF3 = "nf3"


REPORT_KEY = ["nncf_moe3", "report"]
DEFAULT_GROUP_SIZE = 128
DEFAULT_MIN_EXPERT_TOKENS = 64


def _resolve_mode(mode):
    """(our Mode | None, nncf mode | None)."""
    import nncf

    if isinstance(mode, Mode):
        return mode, None
    if isinstance(mode, nncf.CompressWeightsMode):
        return None, mode
    if isinstance(mode, str):
        low = mode.lower()
        if low in {m.value for m in Mode}:
            return Mode(low), None
        try:
            return None, nncf.CompressWeightsMode(low)
        except ValueError:
            pass
    valid = [m.value for m in Mode] + [m.value for m in nncf.CompressWeightsMode]
    raise ValueError(f"Unknown compression mode {mode!r}; expected one of {valid}")


def _ignored(name: str, op_name: str, ignored_scope) -> bool:
    if ignored_scope is None:
        return False
    names = set(getattr(ignored_scope, "names", []) or [])
    if name in names or op_name in names:
        return True
    for pat in getattr(ignored_scope, "patterns", []) or []:
        if re.search(pat, name) or re.search(pat, op_name):
            return True
    return False


def get_report(model) -> dict:
    """The compression report nncf-moe3 stored in ``model``'s rt_info (empty dict if none)."""
    if model.has_rt_info(REPORT_KEY):
        return json.loads(model.get_rt_info(REPORT_KEY).astype(str))
    return {}


def compress_weights(
    model,
    *,
    mode=Mode.INT3_SYM,
    ratio: float | None = None,
    group_size: int | None = None,
    ignored_scope=None,
    all_layers: bool | None = None,
    dataset=None,
    sensitivity_metric=None,
    subset_size: int = 128,
    awq: bool | None = None,
    scale_estimation: bool | None = None,
    gptq: bool | None = None,
    lora_correction: bool | None = None,
    backup_mode=None,
    compression_format=None,
    advanced_parameters=None,
    # nncf-moe3 options
    scale_search: bool | None = None,
    icq: str | None = None,
    double_quant: tuple[int, int] | None = None,
    min_expert_tokens: int | None = None,
    act_order: bool | None = None,
    sequential: bool | None = None,
    dense_mode: str | None = None,
    avg_bits: float | None = None,
    lora_rank: int | None = None,
    lora_init: str | None = None,
    lsq: bool | None = None,
    progress: bool = True,
):
    """Compress the weights of ``model``; same keywords as ``nncf.compress_weights`` plus:

    :param scale_search: search per-group scales / zero points (default True; False = absmax/min-max RTN).
    :param icq: NF3 only: IR-QLoRA ICQ offset per group, ``"mse"`` or ``"entropy"`` (adds an f16 per group).
    :param double_quant: ``(sub_bits, super_groups)``: store group scales as ``sub_bits`` integers under one f16
        super-scale per ``super_groups`` groups (int3_asym, nf3).
    :param min_expert_tokens: experts with fewer routed calibration tokens use the layer's pooled Hessian.
    :param act_order: GPTQ visits input channels in descending activation energy with static groups (default True).
    :param sequential: with a dataset, quantize layer by layer, collecting each layer's statistics with the
        earlier layers already quantized (one calibration pass per layer; default False).
    :param dense_mode: MoE models only — precision of the dense, always-active weights (attention, shared
        experts, dense MLPs): "int4_asym" (default; u4, group 128), "int8_asym", or "same" (the 3-bit mode).
    :param avg_bits: MoE mixed precision budget (bits per expert weight incl. scales); see
        :mod:`nncf_moe3.mixed_precision`.
    :param awq: nncf-moe3 modes: activation-aware scales (:mod:`nncf_moe3.awq`) searched on the dataset and folded
        into RMSNorm weights / expert up projections before GPTQ or RTN; needs ``dataset``; default off.
    :param lora_rank: ``compression_format=FQ_LORA`` (QAT) only: adapter rank (default 8).
    :param lora_init: QAT only: ``"loftq"`` (default), ``"zeros"`` or ``"pissa"`` (see :mod:`nncf_moe3.qat`).
    :param lsq: QAT only: learn the step sizes with LSQ (default True).
    :param progress: show progress bars.

    With ``compression_format=nncf.CompressionFormat.FQ_LORA`` and a transformers (torch) MoE model, nncf-moe3 modes
    prepare the model for LoRA-QAT in place and return it (train it, then :func:`nncf_moe3.qat.export_openvino`).
    """
    ours, upstream = _resolve_mode(mode)
    if upstream is not None:
        extras = dict(scale_search=scale_search, icq=icq, double_quant=double_quant, act_order=act_order, sequential=sequential, dense_mode=dense_mode,
                      min_expert_tokens=min_expert_tokens, avg_bits=avg_bits, lora_rank=lora_rank, lora_init=lora_init,
                      lsq=lsq)
        given = [k for k, v in extras.items() if v is not None]
        if given:
            raise ValueError(f"Options {given} apply to nncf-moe3 modes {[m.value for m in Mode]} only, not {upstream}")
        import nncf

        kwargs = dict(mode=upstream, ratio=ratio, group_size=group_size, ignored_scope=ignored_scope,
                      all_layers=all_layers, dataset=dataset, sensitivity_metric=sensitivity_metric,
                      subset_size=subset_size, awq=awq, scale_estimation=scale_estimation, gptq=gptq,
                      lora_correction=lora_correction, backup_mode=backup_mode,
                      advanced_parameters=advanced_parameters)
        if compression_format is not None:
            kwargs["compression_format"] = compression_format
        return nncf.compress_weights(model, **kwargs)

    import openvino as ov

    fmt_value = str(getattr(compression_format, "value", compression_format)).lower()
    if fmt_value in ("fake_quantize_with_lora", "fq_lora"):
        return _prepare_qat(model, ours, group_size, dense_mode, lora_rank, lora_init, lsq, progress,
                            dict(dataset=dataset, awq=awq, scale_estimation=scale_estimation, gptq=gptq,
                                 lora_correction=lora_correction, ratio=ratio, avg_bits=avg_bits,
                                 double_quant=double_quant, icq=icq))
    if not isinstance(model, ov.Model):
        raise TypeError(
            f"nncf-moe3 mode {ours.value!r} compresses an openvino.Model (got {type(model).__name__}); export the "
            "model first (nncf_moe3.export.export_model) or use `nncf-moe3 compress <hf-dir> <out-dir>`."
        )
    if awq and dataset is None:
        raise ValueError("awq=True needs a calibration dataset")
    if lora_correction:
        raise ValueError("lora_correction is not supported with nncf-moe3 modes")
    if compression_format is not None and fmt_value not in ("dq", "dequantize"):
        raise ValueError("nncf-moe3 modes emit decompression subgraphs (CompressionFormat.DQ) only")
    if icq is not None and ours != Mode.NF3:
        raise ValueError("icq applies to mode 'nf3' only")
    if ratio is not None and not (0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if gptq and dataset is None:
        raise ValueError("gptq=True needs a calibration dataset")
    if scale_estimation and dataset is None:
        raise ValueError("scale_estimation=True needs a calibration dataset")

    from nncf_moe3 import mixed_precision
    from nncf_moe3.engine import Recipe, run_compression

    recipe = Recipe(
        mode=ours.value,
        group_size=DEFAULT_GROUP_SIZE if group_size is None else int(group_size),
        ratio=1.0 if ratio is None else float(ratio),
        all_layers=bool(all_layers),
        backup=_backup_name(backup_mode),
        gptq=(dataset is not None) if gptq is None else bool(gptq),
        act_order=True if act_order is None else bool(act_order),
        sequential=False if sequential is None else bool(sequential),
        dense_mode="int4_asym" if dense_mode is None else str(dense_mode),
        activation_weighted=(dataset is not None) if scale_estimation is None else bool(scale_estimation),
        scale_search=True if scale_search is None else bool(scale_search),
        icq=icq,
        double_quant=tuple(double_quant) if double_quant is not None else None,
        min_expert_tokens=DEFAULT_MIN_EXPERT_TOKENS if min_expert_tokens is None else int(min_expert_tokens),
        avg_bits=avg_bits,
        awq=_awq_default(dataset) if awq is None else bool(awq),
        subset_size=subset_size,
        progress=progress,
    )
    t0 = time.time()
    report = run_compression(model, recipe, dataset=dataset, ignored_scope=ignored_scope,
                             is_ignored=_ignored, mixed_precision=mixed_precision)
    report["seconds"] = round(time.time() - t0, 2)
    model.set_rt_info(json.dumps(report), REPORT_KEY)
    return model


def _awq_default(dataset) -> bool:
    """``awq=None`` means off, with or without a dataset: on the reference model AWQ on top of the default GPTQ
    recipe changed KL by -4 % .. +1 % (better for 3 of 6 mode x group-size rows, worse for 2) and ppl by
    -0.02 .. +0.02 (the ``... awq=True`` rows of ``nncf-moe3 results``), i.e. no consistent gain."""
    return False


def _prepare_qat(model, mode, group_size, dense_mode, lora_rank, lora_init, lsq, progress, unsupported: dict):
    import torch

    from nncf_moe3 import qat

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"compression_format=FQ_LORA (QAT) needs a torch model, got {type(model).__name__}")
    given = [k for k, v in unsupported.items() if v not in (None, False)]
    if given:
        raise ValueError(f"Options {given} are not supported with compression_format=FQ_LORA (QAT); "
                         "QAT trains the adapters and LSQ scales instead")
    return qat.prepare(model, mode.value, 64 if group_size is None else int(group_size),
                       rank=8 if lora_rank is None else int(lora_rank), init=lora_init or "loftq",
                       lsq=True if lsq is None else bool(lsq),
                       dense_mode="int4_asym" if dense_mode is None else str(dense_mode), progress=progress)


def _backup_name(backup_mode) -> str:
    if backup_mode is None:
        return "int8_asym"
    v = str(getattr(backup_mode, "value", backup_mode)).lower()
    if v not in ("int8_asym", "none"):
        raise ValueError(f"backup_mode {backup_mode!r} not supported with nncf-moe3 modes (use INT8_ASYM or NONE)")
    return v
