"""Tests for :mod:`nncf_moe3.export`: tiny random MoE models -> OpenVINO, tiled-experts form, exact logits."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import openvino as ov
import pytest
import torch

from nncf_moe3.export import (
    OV_TILED_EXPERTS,
    SUPPORTED_ARCHITECTURES,
    export_model,
    find_expert_matmuls,
    find_experts_modules,
    tiled_experts_forward,
    tiny_config,
)

ARCHS = ["qwen3_moe", "mixtral", "qwen2_moe"]
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin defaults to bf16 on AMX / avx512_bf16 machines
NUM_MOE_LAYERS = 2  # tiny_config: 2 layers, all MoE
E, I, H, V = 8, 32, 64, 128  # experts, expert intermediate, hidden, vocab of tiny_config


def _build(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def _torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
        return model(input_ids=torch.from_numpy(ids), use_cache=False, **kwargs).logits.numpy()


def _assert_close(actual: np.ndarray, expected: np.ndarray, rel: float):
    """Max abs error relative to the largest reference logit."""
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    err = float(np.abs(actual - expected).max() / np.abs(expected).max())
    assert err < rel, f"max relative logits error {err:.2e} >= {rel:.0e}"


def _op_counts(model: ov.Model) -> Counter:
    return Counter(node.get_type_name() for node in model.get_ops())


def _runtime_op_counts(compiled: ov.CompiledModel) -> Counter:
    return Counter(node.get_rt_info()["layerType"].astype(str) for node in compiled.get_runtime_model().get_ops())


@pytest.fixture(scope="module", params=ARCHS)
def exported(request):
    """(arch, torch model, ov.Model, compiled f32 model) -- one export per architecture."""
    arch = request.param
    model = _build(arch)
    ov_model = export_model(model, seq_len_hint=8)
    compiled = ov.Core().compile_model(ov_model, "CPU", F32)
    return arch, model, ov_model, compiled


def test_logits_match_torch_dynamic_shapes(exported):
    arch, model, ov_model, compiled = exported
    assert [i.get_any_name() for i in ov_model.inputs] == ["input_ids"]
    assert ov_model.input("input_ids").get_element_type() == ov.Type.i64
    assert ov_model.input("input_ids").get_partial_shape().is_dynamic
    assert ov_model.output("logits").get_partial_shape()[2] == ov.Dimension(V)
    rng = np.random.default_rng(1)
    for shape in [(1, 5), (3, 23)]:  # neither equals the traced (2, 8)
        ids = rng.integers(0, V, size=shape, dtype=np.int64)
        logits = compiled({"input_ids": ids})["logits"]
        assert logits.shape == (*shape, V)
        _assert_close(logits, _torch_logits(model, ids), rel=1e-4)


def test_tiled_expert_pattern(exported):
    arch, _, ov_model, compiled = exported
    pairs = find_expert_matmuls(ov_model)
    assert len(pairs) == 3 * NUM_MOE_LAYERS
    shapes = Counter(tuple(const.get_output_shape(0)) for _, const in pairs)
    assert shapes == {(E, I, H): 2 * NUM_MOE_LAYERS, (E, H, I): NUM_MOE_LAYERS}  # gate + up, down: [E, N, K]
    for matmul, _ in pairs:
        assert matmul.get_attributes()["transpose_b"] is True
        assert matmul.get_attributes()["transpose_a"] is False
    # the fused gate_up_proj [E, 2I, H] must not survive as a constant
    consts = [n for n in ov_model.get_ops() if n.get_type_name() == "Constant"]
    assert not any(tuple(c.get_output_shape(0)) == (E, 2 * I, H) for c in consts)

    ops = _op_counts(ov_model)
    for op in ("Tile", "TopK", "Softmax", "ScatterElementsUpdate", "Swish"):
        assert ops[op] >= NUM_MOE_LAYERS, (op, ops[op])
    assert ops["ReduceSum"] >= NUM_MOE_LAYERS
    assert ops["Tile"] == NUM_MOE_LAYERS and ops["TopK"] == NUM_MOE_LAYERS
    assert ops["VariadicSplit"] == 0
    if arch == "qwen2_moe":  # shared expert stays a dense 2-D MLP with a sigmoid gate
        assert ops["Sigmoid"] == NUM_MOE_LAYERS

    # OpenVINO's own MoE fusion recognised every block: 3 GatherMatmul per MoE layer on the CPU plugin
    assert _runtime_op_counts(compiled)["GatherMatmul"] == 3 * NUM_MOE_LAYERS


def test_torch_model_restored_after_export(exported):
    _, model, _, _ = exported
    assert model.config._experts_implementation != OV_TILED_EXPERTS
    assert not [name for name, _ in model.named_buffers() if "_ov_" in name]
    assert model.config.use_cache is True


def test_tiled_forward_matches_transformers_experts():
    model = _build("qwen3_moe", seed=3)
    _, experts = find_experts_modules(model)[0]
    torch.manual_seed(3)
    hidden = torch.randn(11, H)
    weights, index = torch.softmax(torch.randn(11, E), -1).topk(2, dim=-1)
    with torch.no_grad():
        ref = experts(hidden, index, weights)  # default transformers implementation
        out = tiled_experts_forward(experts, hidden, index, weights)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_save_from_checkpoint_dir_and_read_back(tmp_path):
    model = _build("qwen3_moe", seed=5)
    ckpt, ir = tmp_path / "ckpt", tmp_path / "ir"
    model.save_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (ckpt / name).write_text(json.dumps({"name": name}))

    ov_model = export_model(str(ckpt), ir, seq_len_hint=8)  # loads with AutoModelForCausalLM, saves fp16
    for name in ("openvino_model.xml", "openvino_model.bin", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "config.json"):
        assert (ir / name).is_file(), name
    assert json.loads((ir / "tokenizer.json").read_text()) == {"name": "tokenizer.json"}
    # the in-memory model keeps f32 weights; only the saved IR is fp16
    assert {c.get_element_type() for _, c in find_expert_matmuls(ov_model)} == {ov.Type.f32}

    read = ov.Core().read_model(ir / "openvino_model.xml")
    pairs = find_expert_matmuls(read)
    assert len(pairs) == 3 * NUM_MOE_LAYERS
    assert {c.get_element_type() for _, c in pairs} == {ov.Type.f16}
    assert all(mm.input_value(1).get_node().get_type_name() == "Convert" for mm, _ in pairs)

    compiled = ov.Core().compile_model(read, "CPU", F32)
    assert _runtime_op_counts(compiled)["GatherMatmul"] == 3 * NUM_MOE_LAYERS
    ids = np.random.default_rng(2).integers(0, V, size=(2, 13), dtype=np.int64)
    _assert_close(compiled({"input_ids": ids})["logits"], _torch_logits(model, ids), rel=1e-2)


def test_attention_mask_input_with_padding():
    model = _build("mixtral", seed=7)
    ov_model = export_model(model, seq_len_hint=8, with_attention_mask=True)
    assert [i.get_any_name() for i in ov_model.inputs] == ["input_ids", "attention_mask"]
    assert len(find_expert_matmuls(ov_model)) == 3 * NUM_MOE_LAYERS
    compiled = ov.Core().compile_model(ov_model, "CPU", F32)

    ids = np.random.default_rng(4).integers(0, V, size=(2, 9), dtype=np.int64)
    mask = np.ones_like(ids)
    _assert_close(compiled({"input_ids": ids, "attention_mask": mask})["logits"], _torch_logits(model, ids), 1e-4)

    mask[0, :3] = 0  # left padding: padded rows are don't-care but must not poison the real tokens
    logits = compiled({"input_ids": ids, "attention_mask": mask})["logits"]
    ref = _torch_logits(model, ids, mask)
    assert np.all(np.isfinite(logits))
    _assert_close(logits[0, 3:], ref[0, 3:], rel=1e-4)
    _assert_close(logits[1], ref[1], rel=1e-4)


def test_unsupported_architecture_raises():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    with pytest.raises(ValueError, match="llama") as info:
        export_model(model)
    for arch in SUPPORTED_ARCHITECTURES:
        assert arch in str(info.value)


def test_tiny_config_unknown_arch():
    assert {tiny_config(a).model_type for a in ARCHS} == set(ARCHS) == SUPPORTED_ARCHITECTURES
    with pytest.raises(ValueError, match="unknown arch"):
        tiny_config("llama")
