"""Accuracy harness: held-out perplexity, mean per-token KL to the fp model, and weight distortion.

The same token windows (``[n, seq_len]`` int ids) are scored by a transformers model (torch, CPU) or by an
OpenVINO IR (CPU plugin). Every window is scored on its next-token positions ``1..seq_len-1``.

KL is ``mean over positions of KL(p_fp || p_model)`` in nats, against reference log-probabilities computed
once with :func:`reference_logprobs` (fp32, ``[n, seq_len-1, vocab]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: CPU plugin settings for accuracy measurement: f32 math, no dynamic activation quantization.
CPU_EXACT_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}

#: Shannon rate-distortion bound for an i.i.d. N(0,1) source at 3 bits: 2^-6.
SHANNON_3BIT_MSE = 2.0**-6
#: Scalar Lloyd-Max quantizer with 8 levels on N(0,1) (no group scales).
LLOYD_MAX_3BIT_MSE = 0.0345


@dataclass
class EvalResult:
    """Perplexity (exp of mean NLL), mean KL to the reference in nats (None without a reference), tokens scored."""

    ppl: float
    nll: float
    kl: float | None
    tokens: int

    def as_row(self) -> dict:
        return {"ppl": self.ppl, "kl": self.kl, "tokens": self.tokens}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    m = logits.max(-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n_windows, seq_len >= 2] integer ids, got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    return tokens.astype(np.int64)


def evaluate_logits_fn(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    tokens: np.ndarray,
    reference: np.ndarray | None = None,
    batch_size: int = 8,
) -> EvalResult:
    """Score ``tokens`` with ``logits_fn(ids[b, L]) -> logits[b, L, V]``; KL against ``reference`` log-probs."""
    tokens = _check_tokens(tokens)
    if reference is not None and reference.shape[:2] != (tokens.shape[0], tokens.shape[1] - 1):
        raise ValueError(f"reference log-probs {reference.shape} do not match tokens {tokens.shape}")
    nll_sum, kl_sum, count = 0.0, 0.0, 0
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start : start + batch_size]
        logits = np.asarray(logits_fn(ids))
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError("model produced non-finite logits")
        logp = _log_softmax(logits[:, :-1])
        targets = ids[:, 1:]
        nll_sum -= float(np.take_along_axis(logp, targets[..., None], -1).sum())
        if reference is not None:
            ref = reference[start : start + batch_size].astype(np.float32)
            kl_sum += float((np.exp(ref) * (ref - logp)).sum())
        count += targets.size
    nll = nll_sum / count
    return EvalResult(ppl=math.exp(nll), nll=nll, kl=(kl_sum / count) if reference is not None else None, tokens=count)


def _torch_logits_fn(model):
    import torch

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids), use_cache=False)
        return out.logits.float().numpy()

    return fn


def ov_logits_fn(model, device: str = "CPU", core=None, config: dict | None = None):
    """Compile an OpenVINO model (``ov.Model`` or IR path) and return ``ids -> logits``.

    Feeds ``input_ids`` plus, when the model has them, an all-ones ``attention_mask`` and ``position_ids``.
    """
    import openvino as ov

    core = core or ov.Core()
    if isinstance(model, (str, Path)):
        model = core.read_model(str(model))
    # f32 execution without dynamic int8 quantization of activations isolates the weight-quantization error
    # (by default the CPU plugin may run bf16 on AMX machines and quantizes activations for u8/u4 weights).
    cfg = dict(CPU_EXACT_CONFIG) if device == "CPU" else {}
    cfg.update(config or {})
    compiled = core.compile_model(model, device, cfg)
    names = {inp.get_any_name() for inp in compiled.inputs}
    if "input_ids" not in names:
        raise ValueError(f"OpenVINO model has no 'input_ids' input (inputs: {sorted(names)})")
    unsupported = names - {"input_ids", "attention_mask", "position_ids"}
    if unsupported:
        raise ValueError(f"Stateless logits model expected; unsupported inputs {sorted(unsupported)}")
    request = compiled.create_infer_request()

    def fn(ids: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones_like(ids)
        if "position_ids" in names:
            feed["position_ids"] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()
        request.infer(feed)
        return request.get_output_tensor(0).data.copy()

    return fn


def reference_logprobs(model, tokens: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """fp32 log-probabilities ``[n, L-1, V]`` of a torch model (or any ``ids -> logits`` callable)."""
    tokens = _check_tokens(tokens)
    fn = model if callable(model) and not hasattr(model, "forward") else _torch_logits_fn(model)
    out = []
    for start in range(0, len(tokens), batch_size):
        out.append(_log_softmax(np.asarray(fn(tokens[start : start + batch_size]))[:, :-1]))
    return np.concatenate(out)


def evaluate_torch(model, tokens: np.ndarray, reference: np.ndarray | None = None, batch_size: int = 8) -> EvalResult:
    """Perplexity / KL of a transformers causal LM (eval mode, no cache) on ``tokens``."""
    model.eval()
    return evaluate_logits_fn(_torch_logits_fn(model), tokens, reference, batch_size)


def evaluate_ov(
    model, tokens: np.ndarray, reference: np.ndarray | None = None, device: str = "CPU", batch_size: int = 8,
    core=None,
) -> EvalResult:
    """Perplexity / KL of an OpenVINO IR (path or ``ov.Model``) on ``tokens``, run on ``device``."""
    return evaluate_logits_fn(ov_logits_fn(model, device, core), tokens, reference, batch_size)


def gaussian_weight_mse(
    quant_dequant: Callable[[np.ndarray], np.ndarray], rows: int = 1024, cols: int = 4096, seed: int = 0
) -> float:
    """Weight distortion: mean squared error of ``quant_dequant`` on an i.i.d. N(0,1) matrix ``[rows, cols]``.

    Compare against :data:`SHANNON_3BIT_MSE` (0.0156) and :data:`LLOYD_MAX_3BIT_MSE` (0.0345).
    """
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    wq = np.asarray(quant_dequant(w), dtype=np.float32)
    if wq.shape != w.shape:
        raise ValueError(f"quant_dequant changed the shape {w.shape} -> {wq.shape}")
    return float(np.mean((wq - w) ** 2))
