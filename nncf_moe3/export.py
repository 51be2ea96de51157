"""Export a transformers MoE causal LM to a stateless OpenVINO model with "tiled experts" MoE blocks.

transformers v5 stores the routed experts of Qwen3-MoE, Mixtral and Qwen2-MoE as fused 3-D parameters
(``experts.gate_up_proj [E, 2I, H]``, ``experts.down_proj [E, H, I]``) and dispatches the experts forward through
``transformers.integrations.moe.ExpertsInterface``. During export we register one more experts implementation,
``"ov_tiled"`` (:data:`OV_TILED_EXPERTS`), that computes every expert densely on every token in the form OpenVINO's
MoE fusions (``ConvertTiledMoeBlockTo3GatherMatmuls``, GPU ``FuseMOE3GemmCompressed``) match -- the same form
optimum-intel produces::

    x = Reshape(hidden, [-1, H]);  t = Reshape(Tile(x, [E, 1]), [E, -1, H])
    g = Swish(MatMul(t, W_gate[E, I, H], transpose_b=True));  u = MatMul(t, W_up[E, I, H], transpose_b=True)
    d = Reshape(MatMul(g * u, W_down[E, H, I], transpose_b=True), [E, -1, H])
    r = Reshape(Transpose(ScatterElementsUpdate(zeros[T, E], topk_idx, topk_w, axis=1)), [E, -1, 1])
    out = ReduceSum(d * r, axis=0)

Before tracing, every experts module gets separate contiguous ``gate`` / ``up`` weight buffers (copies of the two
halves of ``gate_up_proj``), so the converted graph holds three independent 3-D Constants ``[E, N, K]`` per MoE
layer that feed their MatMuls directly -- no Slice / VariadicSplit between a weight and its MatMul that would hide
it from weight-compression matchers. The router (softmax / top-k / renormalisation) and any shared expert are left
exactly as transformers computes them. All changes to the torch model are undone after the export.

By default the exported model is stateless (no KV cache): input ``input_ids`` (i64, ``[batch, seq]``, both
dynamic), optionally ``attention_mask`` (same shape), output ``logits`` (``[batch, seq, vocab]``).

``export_model(..., stateful=True)`` exports the KV-cache form that openvino-genai's ``LLMPipeline`` and
optimum-intel's ``OVModelForCausalLM`` run (:func:`make_stateful`): inputs ``input_ids [B, S]``,
``attention_mask [B, P + S]``, ``position_ids [B, S]`` (i64) and ``beam_idx [B]`` (i32), output ``logits``; the
per-layer key / value caches ``[B, kv_heads, P, head_dim]`` are held in ReadValue / Assign variables (initialised
to zeros ``[B, kv_heads, 0, head_dim]``, re-ordered by ``Gather(cache, beam_idx, 0)`` on every call). The MoE blocks
are the same tiled form, so weight compression and ``openvino_ext.transform`` apply unchanged.

Pitfalls found while building this (transformers 5.25, torch 2.13, openvino 2026.4.1):

* Tracing without an ``attention_mask`` fails: the mask code then looks for packed sequences with ``torch.diff``
  (``aten::diff`` has no OpenVINO conversion). The wrapper always passes a mask (all ones when the model has no
  ``attention_mask`` input); under tracing transformers then materialises a dynamic causal mask for SDPA.
* The ``Reshape`` after the down-projection MatMul is required by the OpenVINO matcher; without it the CPU plugin
  keeps three dense batched MatMuls per layer instead of ``GatherMatmul`` s.
* With a real (padding) ``attention_mask`` the SDPA form gives NaN on OpenVINO for fully masked query rows, which
  spreads to all positions of that sequence in the next layer; ``with_attention_mask=True`` traces eager attention.
* The CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16 on CPUs with AMX / avx512_bf16; compare against
  torch with ``{"INFERENCE_PRECISION_HINT": "f32"}``.
* Stateful tracing: transformers 5.25 takes the cache as ``cache=`` (``past_key_values=`` is a deprecated alias;
  the wrapper passes whichever ``forward`` declares).
  ``DynamicCache(ddp_cache_data)`` fills its layers by ``torch.cat`` onto an empty rank-1 tensor, which the
  OpenVINO PyTorch frontend cannot convert (Concat axis -2 on rank 1); the wrapper sets the layers' ``keys`` /
  ``values`` directly instead. The past length must be > 0 in the example input (``get_seq_length`` branches
  on ``numel() == 0``); the traced graph stays valid for an empty cache (P = 0).
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import openvino as ov
import torch

__all__ = [
    "OV_TILED_EXPERTS",
    "SUPPORTED_ARCHITECTURES",
    "TOKENIZER_FILES",
    "copy_tokenizer_files",
    "export_model",
    "find_expert_matmuls",
    "find_experts_modules",
    "load_hf_model",
    "make_stateful",
    "tiny_config",
    "tiled_experts_forward",
]

#: ``config.model_type`` values whose export is tested (fused 3-D experts with SwiGLU, softmax top-k router).
SUPPORTED_ARCHITECTURES = frozenset({"qwen3_moe", "mixtral", "qwen2_moe"})

#: Name under which :func:`tiled_experts_forward` is registered in transformers' ``ExpertsInterface``.
OV_TILED_EXPERTS = "ov_tiled"

#: Files copied from the checkpoint directory next to the IR when present (tokenizer + model config).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)

# Attribute names of the per-module export buffers (removed again after export).
_GATE_BUF = "_ov_gate_proj"
_UP_BUF = "_ov_up_proj"


# ----------------------------------------------------------------------------------------------------------------
# Experts forward in tiled form
# ----------------------------------------------------------------------------------------------------------------
def _split_gate_up(experts: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(gate [E, I, H], up [E, I, H])`` views of ``experts.gate_up_proj`` for its storage layout."""
    w = experts.gate_up_proj
    if getattr(experts, "is_concatenated", True):  # [gate_0..gate_{I-1}; up_0..up_{I-1}]
        inter = w.shape[1] // 2
        return w[:, :inter], w[:, inter:]
    return w[:, 0::2], w[:, 1::2]  # interleaved [gate_0, up_0, gate_1, up_1, ...]


def tiled_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Experts forward in OpenVINO's "tiled experts" form (every expert on every token, then a routed sum).

    Same signature and result as the transformers experts implementations (``hidden_states [T, H]``,
    ``top_k_index [T, k]``, ``top_k_weights [T, k]`` -> ``[T, H]``); registered as :data:`OV_TILED_EXPERTS`.
    It costs ``E / k`` times the FLOPs of a sparse forward, so it is meant for tracing, not for torch inference.
    Uses the separate gate / up buffers installed by the exporter when present, else slices ``gate_up_proj``.
    """
    num_experts = self.num_experts
    hidden_dim = hidden_states.shape[-1]
    if hasattr(self, _GATE_BUF):
        gate_w, up_w = getattr(self, _GATE_BUF), getattr(self, _UP_BUF)
    else:
        gate_w, up_w = _split_gate_up(self)

    x = hidden_states.reshape(-1, hidden_dim)  # [T, H]
    tiled = x.repeat(num_experts, 1).view(num_experts, -1, hidden_dim)  # Tile + Reshape -> [E, T, H]
    gate = torch.matmul(tiled, gate_w.transpose(1, 2))  # MatMul(transpose_b=True), W [E, I, H] -> [E, T, I]
    up = torch.matmul(tiled, up_w.transpose(1, 2))  # [E, T, I]
    down = torch.matmul(self.act_fn(gate) * up, self.down_proj.transpose(1, 2))  # W [E, H, I] -> [E, T, H]
    down = down.view(num_experts, -1, hidden_dim)  # the Reshape the OpenVINO matcher expects

    routing = torch.zeros(x.shape[0], num_experts, dtype=top_k_weights.dtype, device=x.device)
    routing = routing.scatter(1, top_k_index, top_k_weights)  # ScatterElementsUpdate -> [T, E]
    routing = routing.transpose(0, 1).reshape(num_experts, -1, 1)  # Transpose + Reshape -> [E, T, 1]
    if routing.dtype != down.dtype:  # no Convert between the router Reshape and the Multiply unless needed
        routing = routing.to(down.dtype)
    out = (down * routing).sum(dim=0)  # Multiply + ReduceSum(axis 0) -> [T, H]
    if out.dtype != hidden_states.dtype:
        out = out.to(hidden_states.dtype)
    return out


def _register_tiled_experts() -> None:
    """Register :func:`tiled_experts_forward` in transformers' experts interface (idempotent)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    if ALL_EXPERTS_FUNCTIONS.get(OV_TILED_EXPERTS) is not tiled_experts_forward:
        ExpertsInterface.register(OV_TILED_EXPERTS, tiled_experts_forward)


# ----------------------------------------------------------------------------------------------------------------
# Model inspection / preparation
# ----------------------------------------------------------------------------------------------------------------
def _model_type(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def find_experts_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, module)`` of every experts module with fused 3-D ``gate_up_proj`` and ``down_proj`` tensors.

    Only modules whose class was wrapped by transformers' ``@use_experts_implementation`` (they carry the
    ``has_gate`` / ``is_concatenated`` flags and dispatch through ``ExpertsInterface``) are returned.
    """
    found = []
    for name, module in model.named_modules():
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if (
            isinstance(gate_up, torch.Tensor)
            and isinstance(down, torch.Tensor)
            and gate_up.dim() == 3
            and down.dim() == 3
            and hasattr(module, "has_gate")
            and hasattr(module, "num_experts")
        ):
            found.append((name, module))
    return found


def _check_experts_layout(name: str, experts: torch.nn.Module, model_type: str) -> None:
    """Reject experts layouts :func:`tiled_experts_forward` does not implement (bias, transposed, non-SwiGLU)."""
    from transformers.integrations.moe import _default_apply_gate

    problems = []
    if not experts.has_gate:
        problems.append("no gate projection")
    if getattr(experts, "has_bias", False):
        problems.append("expert biases")
    if getattr(experts, "is_transposed", False):
        problems.append("transposed expert weights")
    if getattr(experts, "has_post_expert_norm", False):
        problems.append("post-expert norm")
    if getattr(type(experts), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        problems.append("custom gating function")
    e, two_i, h = experts.gate_up_proj.shape
    if two_i % 2 or experts.down_proj.shape != (e, h, two_i // 2):
        problems.append(f"unexpected shapes gate_up_proj {tuple(experts.gate_up_proj.shape)}, "
                        f"down_proj {tuple(experts.down_proj.shape)}")
    if problems:
        raise ValueError(
            f"Cannot export experts module {name!r} of model_type {model_type!r} in tiled form: "
            f"{', '.join(problems)} not supported. Supported architectures: {sorted(SUPPORTED_ARCHITECTURES)}."
        )


def _configs_of(model: torch.nn.Module, experts: list[torch.nn.Module]) -> list:
    """Distinct config objects (by identity) of the model, its sub-models and the experts modules."""
    configs, seen = [], set()
    candidates = [getattr(m, "config", None) for m in model.modules()]
    candidates += [getattr(e, "config", None) for e in experts]
    for cfg in candidates:
        if cfg is not None and hasattr(cfg, "_experts_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            configs.append(cfg)
    return configs


@contextlib.contextmanager
def _tiled_export_mode(model: torch.nn.Module, attn_implementation: str = "sdpa") -> Iterator[int]:
    """Temporarily put ``model`` into export mode; yields the number of MoE (experts) modules.

    Installs separate gate / up buffers on every experts module, switches the experts implementation to
    :data:`OV_TILED_EXPERTS` and the attention implementation to ``attn_implementation``, sets eval mode and
    ``use_cache=False``. Everything is restored on exit, also on error.
    """
    model_type = _model_type(model)
    experts = find_experts_modules(model)
    if not experts:
        raise ValueError(
            f"Unsupported architecture: model_type {model_type!r} has no fused 3-D MoE experts "
            f"(experts.gate_up_proj [E, 2I, H] / experts.down_proj [E, H, I]) to export in tiled form. "
            f"Supported model types: {sorted(SUPPORTED_ARCHITECTURES)}."
        )
    for name, module in experts:
        _check_experts_layout(name, module, model_type)
    if model_type not in SUPPORTED_ARCHITECTURES:
        warnings.warn(
            f"model_type {model_type!r} is not in SUPPORTED_ARCHITECTURES {sorted(SUPPORTED_ARCHITECTURES)}; "
            "exporting its fused experts in tiled form anyway (untested).",
            stacklevel=3,
        )
    _register_tiled_experts()

    was_training = model.training
    configs = _configs_of(model, [m for _, m in experts])
    missing = object()
    saved_impl = [(cfg, cfg.__dict__.get("_experts_implementation_internal", missing)) for cfg in configs]
    saved_use_cache = [(cfg, cfg.__dict__["use_cache"]) for cfg in configs if "use_cache" in cfg.__dict__]
    attn_impl = getattr(model.config, "_attn_implementation", None)
    switch_attn = attn_impl not in (None, attn_implementation) and hasattr(model, "set_attn_implementation")
    try:
        model.eval()
        for _, module in experts:
            gate, up = _split_gate_up(module)
            module.register_buffer(_GATE_BUF, gate.detach().contiguous().clone(), persistent=False)
            module.register_buffer(_UP_BUF, up.detach().contiguous().clone(), persistent=False)
        if hasattr(model, "set_experts_implementation"):
            model.set_experts_implementation(OV_TILED_EXPERTS)
        for cfg in configs:  # experts modules may hold a config the public setter does not reach
            if cfg._experts_implementation != OV_TILED_EXPERTS:
                cfg._experts_implementation_internal = OV_TILED_EXPERTS
        for cfg, _ in saved_use_cache:
            cfg.use_cache = False
        if switch_attn:
            model.set_attn_implementation(attn_implementation)
        yield len(experts)
    finally:
        if switch_attn:
            model.set_attn_implementation(attn_impl)
        for cfg, value in saved_use_cache:
            cfg.use_cache = value
        for cfg, value in saved_impl:
            if value is missing:
                cfg.__dict__.pop("_experts_implementation_internal", None)
            else:
                cfg._experts_implementation_internal = value
        for _, module in experts:
            for buf in (_GATE_BUF, _UP_BUF):
                if buf in module._buffers:
                    del module._buffers[buf]
        model.train(was_training)


class _LogitsWrapper(torch.nn.Module):
    """Stateless tracing wrapper: ``(input_ids[, attention_mask]) -> logits``, no KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            # An explicit mask keeps transformers off its packed-sequence detection (aten::diff, not convertible)
            # and makes it build a dynamic causal mask from the traced shapes.
            attention_mask = torch.ones_like(input_ids)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        return out.logits


class _KVCacheWrapper(torch.nn.Module):
    """Tracing wrapper with an explicit KV cache (the stateful export, before :func:`make_stateful`).

    ``(input_ids, attention_mask, position_ids, past)`` with ``past = ((k_0, v_0), ..., (k_{L-1}, v_{L-1}))``
    ``[B, kv_heads, P, head_dim]`` -> ``(logits, k'_0, v'_0, ..., k'_{L-1}, v'_{L-1})`` (caches with P + S positions).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        cache = _filled_cache(self.model, past)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{_cache_kwarg(self.model): cache},
            return_dict=True,
        )
        flat = []
        for layer in cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the cache argument of ``model.forward``: ``cache`` (transformers >= 5.25) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _filled_cache(model: torch.nn.Module, past):
    """A transformers ``DynamicCache`` for ``model`` holding ``past`` (``[(k, v)]`` per layer) without ``torch.cat``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if len(cache.layers) != len(past):
        raise ValueError(f"cache has {len(cache.layers)} layers, got {len(past)} (key, value) pairs")
    for i, (layer, (k, v)) in enumerate(zip(cache.layers, past)):
        if type(layer) is not DynamicLayer:  # sliding-window / chunked / shared-KV layers: other cache semantics
            raise ValueError(
                f"stateful export supports full-attention layers only; layer {i} has cache {type(layer).__name__} "
                "(sliding-window or chunked attention)"
            )
        if k is not None:
            layer.keys, layer.values, layer.device, layer.is_initialized = k, v, k.device, True
    return cache


def _cache_shapes(model: torch.nn.Module) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``[(key shape, value shape)]`` per layer of the KV cache after one token of batch 1 (read off a torch run)."""
    from transformers import DynamicCache

    _filled_cache(model, [(None, None)] * len(DynamicCache(config=model.config).layers))  # layer-type check
    cache = DynamicCache(config=model.config)
    ids = torch.zeros(1, 1, dtype=torch.int64)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{_cache_kwarg(model): cache})
    shapes = []
    for i, layer in enumerate(cache.layers):
        if layer.keys is None or layer.keys.dim() != 4:
            raise ValueError(f"unexpected KV cache of layer {i}: {type(layer).__name__}")
        shapes.append((tuple(layer.keys.shape), tuple(layer.values.shape)))
    return shapes


def make_stateful(ov_model: ov.Model, num_layers: int) -> ov.Model:
    """Turn a traced explicit-cache model into the stateful form genai / optimum-intel run (in place).

    Expects inputs ``input_ids, attention_mask, position_ids, past_key_values.{i}.key / .value`` and outputs
    ``logits, present.{i}.key / .value`` (``i < num_layers``, caches ``[B, kv_heads, P, head_dim]``). Adds the
    ``beam_idx`` (i32 ``[B]``) input and a ``Gather(cache, beam_idx, axis 0)`` behind every cache input (the
    beam-search re-order), then OpenVINO's MakeStateful pass pairs each ``past_key_values.*`` input with its
    ``present.*`` output as a ReadValue / Assign variable, and every ReadValue gets a zeros
    ``[B, kv_heads, 0, head_dim]`` initialiser (B read off ``input_ids``) so the first call starts empty.
    """
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    kv_in = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    kv_out = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    names = {n for port in list(ov_model.inputs) + list(ov_model.outputs) for n in port.get_names()}
    if "beam_idx" in names:
        raise ValueError("model already has a beam_idx input")
    missing = [n for n in kv_in + kv_out if n not in names]
    if missing:
        raise ValueError(f"make_stateful: missing cache inputs / outputs {missing[:4]}")

    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter(ov.PartialShape([batch]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    axis0 = ops.constant(np.int64(0))
    for name in kv_in:
        port = ov_model.input(name)
        consumers = list(port.get_target_inputs())
        gather = ops.gather(port, beam_idx, axis0)
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    ov_model.validate_nodes_and_infer_types()

    apply_make_stateful_transformation(ov_model, dict(zip(kv_in, kv_out)))

    ids_shape = ops.shape_of(ov_model.input("input_ids"), output_type="i64")
    batch_dim = ops.gather(ids_shape, ops.constant(np.array([0], dtype=np.int64)), axis0)
    for op in ov_model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        pshape = op.get_output_partial_shape(0)
        if pshape.rank.get_length() != 4 or pshape[1].is_dynamic or pshape[3].is_dynamic:
            raise RuntimeError(f"ReadValue {op.get_friendly_name()}: expected [?, heads, ?, head_dim], got {pshape}")
        dims = np.array([pshape[1].get_length(), 0, pshape[3].get_length()], dtype=np.int64)
        shape = ops.concat([batch_dim, ops.constant(dims)], axis=0)
        zeros = ops.broadcast(ops.constant(np.array(0, dtype=np.float32), ov.Type.f32), shape)
        if op.get_output_element_type(0) != ov.Type.f32:
            zeros = ops.convert(zeros, op.get_output_element_type(0))
        op.set_arguments([zeros])
    ov_model.validate_nodes_and_infer_types()
    return ov_model


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------
def load_hf_model(path: str | Path):
    """Load a transformers causal LM checkpoint directory in float32 eval mode (``AutoModelForCausalLM``)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def export_model(
    model_or_path,
    output_dir: str | Path | None = None,
    *,
    seq_len_hint: int = 16,
    compress_to_fp16: bool = True,
    with_attention_mask: bool = False,
    stateful: bool = False,
) -> ov.Model:
    """Convert a transformers MoE causal LM to an OpenVINO model with tiled-experts MoE blocks.

    Stateless by default (one forward over the whole sequence, no KV cache); ``stateful=True`` gives the KV-cache
    model openvino-genai's ``LLMPipeline`` runs.

    Args:
        model_or_path: a checkpoint directory (loaded with :func:`load_hf_model`, float32) or an in-memory
            ``PreTrainedModel`` (left unchanged: export-time modifications are undone afterwards).
        output_dir: if given, ``openvino_model.xml`` / ``.bin`` are written there, together with the tokenizer
            files and ``config.json`` of the checkpoint (:data:`TOKENIZER_FILES`, those present; for an in-memory
            model without a source directory its config is saved).
        seq_len_hint: sequence length of the example input used for tracing (shapes stay dynamic).
        compress_to_fp16: store float weights as f16 in the saved IR (``ov.save_model``); the returned in-memory
            model always keeps the model's own precision (float32 for a loaded checkpoint).
        with_attention_mask: also expose an ``attention_mask`` input (``[batch, seq]`` i64, 1 = token, 0 = pad);
            without it every token attends causally to all earlier ones (an all-ones mask). With it, attention is
            traced in transformers' "eager" form (additive float mask) instead of SDPA: OpenVINO's SDPA returns
            NaN for fully masked (padding) query rows, which then poisons the whole sequence in the next layer.
            Position ids are ``0..seq-1`` as in a plain ``model(input_ids, attention_mask)`` call. Ignored when
            ``stateful`` (the stateful model always has an ``attention_mask`` input).
        stateful: export the generation form with a KV cache held in OpenVINO state variables (the layout
            optimum-intel exports and openvino-genai expects): inputs ``input_ids [B, S]``, ``attention_mask
            [B, P + S]``, ``position_ids [B, S]`` (i64; positions P..P+S-1 of the new tokens) and ``beam_idx [B]``
            (i32; ``arange(B)`` when not re-ordering beams), output ``logits [B, S, vocab]`` of the new tokens;
            P is the number of tokens already in the cache (0 after ``InferRequest.reset_state()``). Traced from
            ``model(..., cache=DynamicCache, use_cache=True)`` with SDPA attention (genai's CPU pipeline rewrites
            SDPA into PagedAttention). Only full-attention models (no sliding-window / chunked layers). A
            left-padded batch (mask 0 on the pads, positions counted from the first real token) gave finite logits
            equal to torch's on a tiny model. See :func:`make_stateful`.

    Returns:
        The ``ov.Model``: stateless -- inputs ``input_ids`` (and ``attention_mask``), output ``logits [batch, seq,
        vocab]``; stateful -- see ``stateful``.

    Raises:
        ValueError: if the model has no fused 3-D experts that can be exported in tiled form (the message names
            the model_type and :data:`SUPPORTED_ARCHITECTURES`).
    """
    source_dir = None
    if isinstance(model_or_path, (str, Path)):
        source_dir = Path(model_or_path)
        model = load_hf_model(source_dir)
    else:
        model = model_or_path
        name_or_path = getattr(model, "name_or_path", "") or ""
        if name_or_path and Path(name_or_path).is_dir():
            source_dir = Path(name_or_path)
    if seq_len_hint < 2:
        raise ValueError(f"seq_len_hint must be >= 2, got {seq_len_hint}")

    vocab_size = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (2, seq_len_hint), generator=gen, dtype=torch.int64)
    if stateful:
        ov_model = _convert_stateful(model, input_ids)
    else:
        example = {"input_ids": input_ids}
        if with_attention_mask:
            example["attention_mask"] = torch.ones_like(input_ids)

        attn = "eager" if with_attention_mask else "sdpa"
        with _tiled_export_mode(model, attn), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            ov_model = ov.convert_model(_LogitsWrapper(model), example_input=example)

        for inp in ov_model.inputs:  # convert_model keeps traced ranks; make sure batch and seq are dynamic
            if inp.get_partial_shape().rank.get_length() != 2:
                raise RuntimeError(f"unexpected input {inp}")
        ov_model.reshape({inp.get_any_name(): ov.PartialShape([-1, -1]) for inp in ov_model.inputs})
        ov_model.outputs[0].get_tensor().set_names({"logits"})
    ov_model.set_rt_info(_model_type(model), ["nncf_moe3", "model_type"])
    ov_model.set_rt_info("tiled_experts", ["nncf_moe3", "moe_form"])
    ov_model.set_rt_info("stateful" if stateful else "stateless", ["nncf_moe3", "kv_cache"])

    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, output_dir / "openvino_model.xml", compress_to_fp16=compress_to_fp16)
        copied = copy_tokenizer_files(source_dir, output_dir) if source_dir is not None else set()
        if "config.json" not in copied and hasattr(model, "config") and not (output_dir / "config.json").exists():
            model.config.to_json_file(str(output_dir / "config.json"))
    return ov_model


def _convert_stateful(model: torch.nn.Module, input_ids: torch.Tensor) -> ov.Model:
    """Trace ``model`` with an explicit KV cache (:class:`_KVCacheWrapper`) and make the result stateful."""
    batch, seq = input_ids.shape
    past_len = 3  # > 0: an empty cache would be traced as a special case
    with _tiled_export_mode(model, "sdpa"), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        shapes = _cache_shapes(model)
        gen = torch.Generator().manual_seed(1)
        past = tuple(
            (
                torch.randn((batch, ks[1], past_len, ks[3]), generator=gen),
                torch.randn((batch, vs[1], past_len, vs[3]), generator=gen),
            )
            for ks, vs in shapes
        )
        example = {
            "input_ids": input_ids,
            "attention_mask": torch.ones(batch, past_len + seq, dtype=torch.int64),
            "position_ids": torch.arange(past_len, past_len + seq, dtype=torch.int64).expand(batch, seq),
            "past": past,
        }
        ov_model = ov.convert_model(_KVCacheWrapper(model), example_input=example)

    num_layers = len(shapes)
    if len(ov_model.inputs) != 3 + 2 * num_layers or len(ov_model.outputs) != 1 + 2 * num_layers:
        raise RuntimeError(
            f"stateful trace: expected {3 + 2 * num_layers} inputs / {1 + 2 * num_layers} outputs, "
            f"got {len(ov_model.inputs)} / {len(ov_model.outputs)}"
        )
    new_shapes = {}
    for j, inp in enumerate(ov_model.inputs):
        if j < 3:
            name = ("input_ids", "attention_mask", "position_ids")[j]
            new_shapes[inp] = ov.PartialShape([-1, -1])
        else:
            layer, kv = divmod(j - 3, 2)
            name = f"past_key_values.{layer}.{('key', 'value')[kv]}"
            ref = shapes[layer][kv]
            new_shapes[inp] = ov.PartialShape([-1, ref[1], -1, ref[3]])
        inp.get_tensor().set_names({name})
    for j, out in enumerate(ov_model.outputs):
        if j == 0:
            out.get_tensor().set_names({"logits"})
        else:
            layer, kv = divmod(j - 1, 2)
            out.get_tensor().set_names({f"present.{layer}.{('key', 'value')[kv]}"})
    ov_model.reshape(new_shapes)
    return make_stateful(ov_model, num_layers)


def copy_tokenizer_files(source_dir: str | Path, output_dir: str | Path) -> set[str]:
    """Copy the tokenizer / config files (:data:`TOKENIZER_FILES`) present in ``source_dir`` to ``output_dir``."""
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    copied = set()
    for fname in TOKENIZER_FILES:
        src = source_dir / fname
        if src.is_file() and src.resolve() != (output_dir / fname).resolve():
            shutil.copy2(src, output_dir / fname)
            copied.add(fname)
    return copied


def find_expert_matmuls(ov_model: ov.Model) -> list[tuple[ov.Node, ov.Node]]:
    """``(MatMul, Constant)`` pairs of the tiled expert projections in an OpenVINO model.

    A MatMul counts when it has ``transpose_b=True`` and its input 1 is a rank-3 Constant ``[E, N, K]``, reached
    directly or through Convert nodes only (e.g. the f16 -> f32 decompression Convert of a compressed IR). A
    weight hidden behind Slice / VariadicSplit / dequantisation ops is not found. Expect 3 per MoE layer.
    """
    pairs = []
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "MatMul" or not node.get_attributes().get("transpose_b", False):
            continue
        src = node.input_value(1).get_node()
        while src.get_type_name() == "Convert":
            src = src.input_value(0).get_node()
        if src.get_type_name() == "Constant" and len(src.get_output_shape(0)) == 3:
            pairs.append((node, src))
    return pairs


def tiny_config(arch: str, **overrides):
    """Tiny random-init transformers config for ``arch`` in :data:`SUPPORTED_ARCHITECTURES` (tests / examples).

    hidden 64, 2 layers (all MoE), 4 heads / 2 KV heads (head_dim 16), 8 experts, top-2, expert intermediate 32,
    vocab 128, fp32; Qwen2-MoE additionally has a shared expert (intermediate 64) with its sigmoid gate. The
    initializer range is raised to 0.2 so routing is decisive (random near-ties in the router softmax would make
    the expert choice, and thus the logits, sensitive to rounding). ``overrides`` are passed to the config.
    """
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    common = dict(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    if arch == "qwen3_moe":
        kwargs = dict(common, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
        cls = Qwen3MoeConfig
    elif arch == "mixtral":
        kwargs = dict(common, intermediate_size=32, num_local_experts=8, head_dim=16, sliding_window=None)
        cls = MixtralConfig
    elif arch == "qwen2_moe":
        kwargs = dict(common, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                      shared_expert_intermediate_size=64, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[], use_sliding_window=False)
        cls = Qwen2MoeConfig
    else:
        raise ValueError(f"tiny_config: unknown arch {arch!r}; expected one of {sorted(SUPPORTED_ARCHITECTURES)}")
    kwargs.update(overrides)
    return cls(**kwargs)
