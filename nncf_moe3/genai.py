"""openvino-genai generation from 3-bit MoE IRs through the native ``MoE3`` / ``MatMul3`` ops.

:func:`prepare` writes two genai model folders from one HF MoE checkpoint (stateful export, 3-bit compression):

* ``out_dir/`` -- the IR after ``openvino_ext.transform(model, "cpu")`` (``MoE3`` / ``MatMul3`` custom ops, opset
  ``nncf_moe3``); genai reads it with ``LLMPipeline(out_dir, "CPU", extensions=[openvino_ext.library_path()])``;
* ``out_dir/plain_decompression/`` -- the same compressed IR untransformed (stock plugin decompression; u3
  weights folded to f32 by the CPU plugin at compile time) or, with ``baseline="widen"``, u3 widened to u4;

both with ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` (openvino-tokenizers) and the checkpoint's
tokenizer / config files. :func:`load_pipeline` and :func:`greedy` run them.

    from nncf_moe3 import genai
    dirs = genai.prepare("nncf_moe3/reference/checkpoint", "out/genai", mode="int3_asym")
    pipe = genai.load_pipeline(dirs["native"], native=True)
    print(genai.greedy(pipe, "import os\\n", max_new_tokens=32)["text"])

Exact comparisons: :data:`EXACT_CONFIG` (f32 inference, no dynamic activation quantization, f32 KV cache --
the CPU plugin stores the KV cache as u8 by default) and env ``NNCF_MOE3_ACT_QUANT=0`` (the MoE3 kernels' int8
activations on VNNI CPUs off; read once per process when the kernels are first used).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov

__all__ = [
    "BASELINE_SUBDIR",
    "EXACT_CONFIG",
    "attention_backend_properties",
    "convert_tokenizer",
    "greedy",
    "load_pipeline",
    "native_op_counts",
    "prepare",
]

#: CPU properties for bit-comparable pipelines: f32 compute, no dynamic activation quantization, f32 KV cache.
EXACT_CONFIG = {
    "INFERENCE_PRECISION_HINT": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
    "KV_CACHE_PRECISION": "f32",
}

#: Sub-folder of :func:`prepare`'s output holding the untransformed (stock-decompression) baseline IR.
BASELINE_SUBDIR = "plain_decompression"

_NATIVE_OPS = ("MoE3", "MoE3R", "MatMul3")


def convert_tokenizer(source_dir: str | Path, out_dirs) -> str | None:
    """Write ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` of the HF tokenizer in ``source_dir``.

    Returns None on success, else the reason (genai can then still generate from token ids).
    """
    try:
        from openvino_tokenizers import convert_tokenizer as _convert
        from transformers import AutoTokenizer

        tok, detok = _convert(AutoTokenizer.from_pretrained(str(source_dir)), with_detokenizer=True)
    except Exception as exc:  # noqa: BLE001 -- any conversion failure just disables text in/out
        return f"{type(exc).__name__}: {exc}"
    for d in out_dirs:
        ov.save_model(tok, Path(d) / "openvino_tokenizer.xml")
        ov.save_model(detok, Path(d) / "openvino_detokenizer.xml")
    return None


def native_op_counts(model) -> Counter:
    """``Counter`` of ``MoE3`` / ``MoE3R`` / ``MatMul3`` nodes in an ``ov.Model`` or an IR path (read with the extension)."""
    if not isinstance(model, ov.Model):
        import openvino_ext

        core = ov.Core()
        openvino_ext.register(core, "CPU")
        model = core.read_model(str(model))
    return Counter(n.get_type_name() for n in model.get_ops() if n.get_type_name() in _NATIVE_OPS)


def prepare(
    model_or_path,
    out_dir: str | Path,
    *,
    mode: str = "int3_asym",
    group_size: int = 64,
    baseline: str = "plain",
    tokenizer: bool = True,
    activations: str | None = None,
    **compress_kwargs,
) -> dict:
    """Export ``model_or_path`` stateful, compress it to 3 bits and write the native and baseline genai folders.

    Args:
        model_or_path: HF MoE checkpoint directory or in-memory transformers model (see
            :func:`nncf_moe3.export.export_model`).
        out_dir: the native folder (MoE3 / MatMul3 IR); the baseline goes to ``out_dir/plain_decompression``.
        mode, group_size, compress_kwargs: passed to :func:`nncf_moe3.compress_weights` (data-free unless a
            ``dataset`` is given; a dataset for a stateful model must feed all four inputs).
        baseline: ``"plain"`` (compressed IR as is: stock decompression) or ``"widen"`` (u3 -> u4,
            ``openvino_ext.transform(model, "widen")``).
        tokenizer: convert the checkpoint's tokenizer with openvino-tokenizers.
        activations: the native ops' activation type (``openvino_ext.transform``): ``"f32"`` for pipelines run
            with :data:`EXACT_CONFIG` (f32 inference), ``"bf16"``, or None = bf16 where the CPU plugin runs bf16 by
            default (the plugin's default configuration).

    Returns:
        ``{"native": Path, "baseline": Path, "native_ops": Counter, "tokenizer_error": str | None,
        "seconds": {...}}``; ``native_ops`` counts MoE3 / MoE3R / MatMul3 nodes (empty means nothing was rewritten).
    """
    import nncf_moe3
    import openvino_ext
    from nncf_moe3.export import copy_tokenizer_files, export_model, load_hf_model

    if baseline not in ("plain", "widen"):
        raise ValueError(f"baseline must be 'plain' or 'widen', got {baseline!r}")
    out_dir = Path(out_dir)
    base_dir = out_dir / BASELINE_SUBDIR
    base_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}

    source_dir = None
    if isinstance(model_or_path, (str, Path)):
        source_dir = Path(model_or_path)
        model_or_path = load_hf_model(source_dir)
    elif Path(getattr(model_or_path, "name_or_path", "") or "/nonexistent").is_dir():
        source_dir = Path(model_or_path.name_or_path)

    t0 = time.perf_counter()
    ov_model = export_model(model_or_path, stateful=True)
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ov_model = nncf_moe3.compress_weights(ov_model, mode=mode, group_size=group_size, **compress_kwargs)
    seconds["compress"] = time.perf_counter() - t0

    plain_xml = base_dir / "openvino_model.xml"
    ov.save_model(ov_model, plain_xml, compress_to_fp16=False)
    del ov_model

    t0 = time.perf_counter()
    core = ov.Core()
    openvino_ext.register(core, "CPU")
    native = openvino_ext.transform(core.read_model(str(plain_xml)), "cpu", activations=activations)
    ops = native_op_counts(native)
    ov.save_model(native, out_dir / "openvino_model.xml", compress_to_fp16=False)
    del native
    if baseline == "widen":
        # read_model mmaps the .bin: write elsewhere and rename (overwriting the mapped file in place -> SIGBUS)
        widened = openvino_ext.transform(core.read_model(str(plain_xml)), "widen")
        tmp_xml = base_dir / "openvino_model.widen.xml"
        ov.save_model(widened, tmp_xml, compress_to_fp16=False)
        del widened
        os.replace(tmp_xml.with_suffix(".bin"), plain_xml.with_suffix(".bin"))
        os.replace(tmp_xml, plain_xml)
    seconds["transform"] = time.perf_counter() - t0

    tok_error = "no tokenizer requested"
    for d in (out_dir, base_dir):
        if source_dir is not None:
            copy_tokenizer_files(source_dir, d)
        elif hasattr(model_or_path, "config"):
            model_or_path.config.to_json_file(str(d / "config.json"))
    if tokenizer:
        tok_error = convert_tokenizer(source_dir, (out_dir, base_dir)) if source_dir else "no checkpoint directory"
    return {"native": out_dir, "baseline": base_dir, "native_ops": ops, "tokenizer_error": tok_error,
            "seconds": seconds}


def attention_backend_properties(backend: str | None) -> dict:
    """LLMPipeline properties selecting the attention backend: ``None`` (genai's default: PagedAttention on
    x86-64, silently falling back to the stateful SDPA pipeline if PA initialisation fails), ``"PA"`` (continuous
    batching forced through an explicit ``scheduler_config``: errors instead of falling back) or ``"SDPA"``."""
    if backend is None:
        return {}
    if backend == "SDPA":
        return {"ATTENTION_BACKEND": "SDPA"}
    if backend == "PA":
        import openvino_genai

        sc = openvino_genai.SchedulerConfig()
        sc.cache_size = 1  # GB of KV-cache blocks
        return {"scheduler_config": sc}
    raise ValueError(f"attention backend must be None, 'PA' or 'SDPA', got {backend!r}")


def load_pipeline(model_dir: str | Path, *, native: bool, exact: bool = True, device: str = "CPU", **properties):
    """``openvino_genai.LLMPipeline`` on ``model_dir``; ``native`` adds the nncf_moe3 extension (``extensions``).

    ``exact`` applies :data:`EXACT_CONFIG`; ``properties`` (e.g. :func:`attention_backend_properties`) are added.
    """
    import openvino_genai

    import openvino_ext

    props = dict(EXACT_CONFIG) if exact else {}
    props.update(properties)
    if native:
        props["extensions"] = [str(openvino_ext.library_path())]
    return openvino_genai.LLMPipeline(str(model_dir), device, **props)


def greedy(pipe, prompt, max_new_tokens: int = 32, *, ignore_eos: bool = False) -> dict:
    """Greedy generation; ``prompt`` is text (needs the OpenVINO tokenizer) or a list of token ids.

    Returns ``{"tokens": [int], "text": str | None, "tokens_per_s": float, "ttft_ms": float, "tpot_ms": float,
    "seconds": float}``: ``tokens`` are the new tokens only, ``tokens_per_s`` is genai's decode throughput
    (``PerfMetrics.get_throughput``), ``seconds`` the wall time of the ``generate`` call.
    """
    import openvino_genai

    config = openvino_genai.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    config.ignore_eos = ignore_eos
    if isinstance(prompt, str):
        inputs = pipe.get_tokenizer().encode(prompt)
    else:
        ids = np.asarray(prompt, dtype=np.int64).reshape(1, -1)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
    t0 = time.perf_counter()
    res = pipe.generate(inputs, config)
    seconds = time.perf_counter() - t0
    tokens = [int(t) for t in res.tokens[0]]
    text = None
    try:
        text = pipe.get_tokenizer().decode(tokens)
    except Exception:  # noqa: BLE001 -- no detokenizer: tokens only
        pass
    pm = res.perf_metrics
    return {
        "tokens": tokens,
        "text": text,
        "tokens_per_s": float(pm.get_throughput().mean),
        "ttft_ms": float(pm.get_ttft().mean),
        "tpot_ms": float(pm.get_tpot().mean),
        "seconds": seconds,
    }
