"""Tests for ``export_model(..., stateful=True)``: KV cache in OpenVINO state, greedy decoding equal to torch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import openvino as ov
import pytest
import torch

from nncf_moe3.export import export_model, tiny_config

ARCHS = ["qwen3_moe", "mixtral", "qwen2_moe"]
# f32 compute and an f32 KV cache: the CPU plugin stores the stateful KV cache as u8 by default (~5e-3 logits error).
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
V = 128  # tiny_config vocab


def _build(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


class _Session:
    """Minimal stateful decoding loop over a compiled stateful model (what genai / optimum-intel do)."""

    def __init__(self, compiled: ov.CompiledModel):
        self.req = compiled.create_infer_request()
        self.past = 0

    def reset(self):
        self.req.reset_state()
        self.past = 0

    def step(self, ids: np.ndarray, beam_idx: np.ndarray | None = None) -> np.ndarray:
        b, s = ids.shape
        out = self.req.infer({
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((b, self.past + s), np.int64),
            "position_ids": np.broadcast_to(np.arange(self.past, self.past + s, dtype=np.int64), (b, s)).copy(),
            "beam_idx": np.arange(b, dtype=np.int32) if beam_idx is None else beam_idx.astype(np.int32),
        })
        self.past += s
        return out["logits"].copy()

    def greedy(self, prompt: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
        """(new tokens, last-position logits of every step [n, vocab]) for a batch-1 prompt."""
        self.reset()
        logits, tokens, cur = [], [], prompt[None]
        for _ in range(n):
            last = self.step(cur)[0, -1]
            logits.append(last)
            tokens.append(int(last.argmax()))
            cur = np.array([[tokens[-1]]])
        return tokens, np.stack(logits)


def _torch_greedy(model, prompt: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
    with torch.no_grad():
        seq = model.generate(torch.from_numpy(prompt[None]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
        logits = model(input_ids=seq[:, :-1], use_cache=False).logits[0, len(prompt) - 1:].numpy()
    return seq[0, len(prompt):].tolist(), logits


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and np.all(np.isfinite(a))
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=ARCHS)
def stateful(request):
    arch = request.param
    model = _build(arch)
    ov_model = export_model(model, stateful=True, seq_len_hint=8)
    return arch, model, ov_model, ov.Core().compile_model(ov_model, "CPU", EXACT)


def test_stateful_interface(stateful):
    arch, model, ov_model, _ = stateful
    inputs = {i.get_any_name(): i for i in ov_model.inputs}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
    assert [inputs[n].get_element_type() for n in inputs] == [ov.Type.i64] * 3 + [ov.Type.i32]
    assert [o.get_any_name() for o in ov_model.outputs] == ["logits"]
    assert ov_model.output("logits").get_partial_shape()[2] == ov.Dimension(V)
    ops = Counter(n.get_type_name() for n in ov_model.get_ops())
    layers = model.config.num_hidden_layers
    assert ops["ReadValue"] == ops["Assign"] == 2 * layers
    assert ops["ScaledDotProductAttention"] == layers  # SDPA form: genai's CPU pipeline turns it into PagedAttention
    assert ops["Tile"] == layers  # tiled experts kept
    assert ov_model.get_rt_info(["nncf_moe3", "kv_cache"]).astype(str) == "stateful"
    for var in ov_model.get_variables():
        shape = var.info.data_shape
        assert shape[0].is_dynamic and shape[2].is_dynamic and shape[1].is_static and shape[3].is_static


def test_stateful_greedy_matches_torch(stateful):
    arch, model, _, compiled = stateful
    sess = _Session(compiled)
    rng = np.random.default_rng(3)
    for plen in (1, 7):
        prompt = rng.integers(1, V, size=plen, dtype=np.int64)
        tokens, logits = sess.greedy(prompt, 12)
        ref_tokens, ref_logits = _torch_greedy(model, prompt, 12)
        assert tokens == ref_tokens, arch
        assert _rel_err(logits, ref_logits) < 1e-4


def test_stateful_batch_and_beam_reorder(stateful):
    """Batch 2 prefill + decode, and beam_idx re-ordering of the cache (Gather on the state)."""
    arch, model, _, compiled = stateful
    rng = np.random.default_rng(4)
    ids = rng.integers(1, V, size=(2, 6), dtype=np.int64)
    nxt = rng.integers(1, V, size=(2, 1), dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(np.concatenate([ids, nxt], 1)), use_cache=False).logits.numpy()
        swapped = np.concatenate([ids[::-1], nxt], 1)  # rows' history swapped, new tokens kept in place
        ref_swapped = model(input_ids=torch.from_numpy(swapped), use_cache=False).logits.numpy()

    sess = _Session(compiled)
    sess.reset()
    pre = sess.step(ids)
    assert _rel_err(pre, ref[:, :6]) < 1e-4
    assert _rel_err(sess.step(nxt), ref[:, 6:]) < 1e-4

    sess.reset()
    sess.step(ids)
    out = sess.step(nxt, beam_idx=np.array([1, 0]))
    assert _rel_err(out, ref_swapped[:, 6:]) < 1e-4


def test_stateful_compress_and_transform_to_moe3():
    """The stateful export keeps the tiled MoE form: 3-bit compression and transform(cpu) give one MoE3 per layer."""
    import nncf_moe3
    import openvino_ext
    from openvino_ext import transformations

    model = _build("qwen3_moe", seed=1)
    ov_model = export_model(model, stateful=True, seq_len_hint=4)
    ov_model = nncf_moe3.compress_weights(ov_model, mode="int3_asym", group_size=32, progress=False)
    openvino_ext.transform(ov_model, "cpu")
    assert transformations.last_stats["MoE3R"] == model.config.num_hidden_layers
    assert Counter(n.get_type_name() for n in ov_model.get_ops())["MoE3R"] == model.config.num_hidden_layers
    assert len(ov_model.get_sinks()) == 2 * model.config.num_hidden_layers


def test_stateful_reference_model_greedy_matches_torch():
    from nncf_moe3 import reference
    from nncf_moe3.export import load_hf_model

    model = load_hf_model(reference.checkpoint_dir())
    ov_model = export_model(model, stateful=True)
    compiled = ov.Core().compile_model(ov_model, "CPU", EXACT)
    prompt = reference.eval_tokens()[0, :20].astype(np.int64)
    tokens, logits = _Session(compiled).greedy(prompt, 16)
    ref_tokens, ref_logits = _torch_greedy(model, prompt, 16)
    assert tokens == ref_tokens
    assert _rel_err(logits, ref_logits) < 1e-4


def test_stateful_rejects_sliding_window():
    model = _build("mixtral", seed=0)
    model.config.sliding_window = 4
    try:
        with pytest.raises(ValueError, match="full-attention"):
            export_model(model, stateful=True, seq_len_hint=4)
    finally:
        model.config.sliding_window = None
