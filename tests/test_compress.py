"""nncf_moe3.compress_weights on ov.Model: every mode's IR runs on stock OpenVINO CPU and matches our torch
fake-quant reference; structure of the emitted subgraphs; NNCF pass-through; bad input."""

from __future__ import annotations

import copy

import nncf
import numpy as np
import openvino as ov
import pytest
import torch

import nncf_moe3
from nncf_moe3.decode import decoded_weights, load_into_torch
from nncf_moe3.ir_stats import bits_summary

from nncf_moe3.accuracy import CPU_EXACT_CONFIG as F32
ARCHS = ["qwen3_moe", "mixtral", "qwen2_moe"]


def _ov_logits(model, ids):
    compiled = ov.Core().compile_model(model, "CPU", F32)
    return compiled({"input_ids": ids})[0]


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


def _router_margin(model, ids) -> float:
    """Smallest gap between the k-th and (k+1)-th router logit over all tokens and MoE layers."""
    margins = []

    def hook(module, args, out):
        logits = out[0] if isinstance(out, tuple) else out
        top = torch.topk(logits.float(), module.top_k + 1, dim=-1).values
        margins.append(float((top[..., -2] - top[..., -1]).min()))

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")
               and hasattr(m, "top_k")]
    _torch_logits(model, ids)
    for h in handles:
        h.remove()
    return min(margins) if margins else float("inf")


def decisive_ids(model, vocab, shape=(2, 9), min_margin=0.02):
    """Random ids whose expert choice is not a near-tie anywhere (f16 rounding can't flip the routing)."""
    for seed in range(200):
        ids = np.random.default_rng(seed).integers(0, vocab, shape)
        if _router_margin(model, ids) > min_margin:
            return ids
    raise RuntimeError("no decisive input found")


def _dataset(vocab, n=4, seq=24, seed=0):
    ids = np.random.default_rng(seed).integers(0, vocab, (n, seq))
    return nncf.Dataset([{"input_ids": ids[i : i + 1]} for i in range(n)])


CASES = [
    ("int3_sym", 32, False), ("int3_asym", 32, False), ("nf3", 32, False),
    ("int3_sym", 16, True), ("int3_asym", 32, True), ("nf3", 16, True),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode,group_size,calibrated", CASES, ids=[f"{m}-g{g}-{'cal' if c else 'free'}" for m, g, c in CASES])
def test_ir_matches_torch_fake_quant(tiny_models, arch, mode, group_size, calibrated):
    torch_model, fp_ir = tiny_models[arch]
    model = fp_ir.clone()
    ds = _dataset(torch_model.config.vocab_size) if calibrated else None
    nncf_moe3.compress_weights(model, mode=mode, group_size=group_size, dataset=ds, progress=False)

    types = {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert "u3" in types
    bits = bits_summary(model)
    expected = nncf_moe3.quantization.bits_per_weight(mode, group_size)
    assert bits["experts"] == pytest.approx(expected, abs=0.02)

    # numpy decode of the IR's weights -> torch model -> logits must equal OpenVINO's.
    fq = copy.deepcopy(torch_model)
    weights = decoded_weights(model)
    n_loaded = load_into_torch(fq, weights)
    assert n_loaded >= 3 * 2 + 4 * 2  # experts + attention of 2 layers at least
    ids = decisive_ids(fq, torch_model.config.vocab_size)
    ref = _torch_logits(fq, ids)
    got = _ov_logits(model, ids)
    # f16 decompression arithmetic in the plugin differs from numpy's by rounding only
    err = np.abs(got - ref).max()
    assert err < 5e-3 * np.abs(ref).max()
    # ... which is far below the change quantization made (the weights really were replaced)
    assert err < 0.2 * np.abs(_torch_logits(torch_model, ids) - ref).max()

    report = nncf_moe3.get_report(model)
    roles = {w["role"]: w["format"] for w in report["weights"]}
    assert roles["expert_gate_up"] == mode and roles["expert_down"] == mode
    assert roles["router"] == "int8_asym" and roles["lm_head"] == "int8_asym"
    if calibrated:
        algos = {w.get("algorithm") for w in report["weights"] if w["format"] == mode}
        assert algos == {"gptq"}
        assert report["expert_matrices"] == 3 * 2 * 8  # matrices x experts


@pytest.mark.parametrize("mode", ["int3_sym", "int3_asym", "nf3"])
def test_emitted_subgraph_shape(tiny_models, mode):
    _, fp_ir = tiny_models["qwen3_moe"]
    model = fp_ir.clone()
    nncf_moe3.compress_weights(model, mode=mode, group_size=16, progress=False)
    experts = [op for op in model.get_ops() if op.get_type_name() == "Constant"
               and op.get_element_type().get_type_name() == "u3" and len(op.get_shape()) == 4
               and not op.get_friendly_name().endswith("/zero_point")]
    assert len(experts) == 6  # 3 per MoE layer, [E, N, G, gs]
    for c in experts:
        assert list(c.get_shape())[-1] == 16
        consumer = next(iter(c.output(0).get_target_inputs())).get_node()
        assert consumer.get_type_name() == "Convert"
        names = {op.get_friendly_name() for op in model.get_ops()}
        assert f"{c.get_friendly_name()}/scale" in names
        if mode != "nf3":
            assert f"{c.get_friendly_name()}/zero_point" in names
        else:
            assert f"{c.get_friendly_name()}/codebook" in names
    assert model.get_rt_info(["nncf_moe3", "u3_layout"]).astype(str) in ("split", "tight")


def test_string_and_enum_modes_equal(tiny_models):
    _, fp_ir = tiny_models["mixtral"]
    a, b = fp_ir.clone(), fp_ir.clone()
    nncf_moe3.compress_weights(a, mode="NF3", group_size=32, progress=False)
    nncf_moe3.compress_weights(b, mode=nncf_moe3.Mode.NF3, group_size=32, progress=False)
    wa, wb = decoded_weights(a), decoded_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_upstream_mode_passes_through(tiny_models):
    _, fp_ir = tiny_models["qwen3_moe"]
    ours = nncf_moe3.compress_weights(fp_ir.clone(), mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=32)
    theirs = nncf.compress_weights(fp_ir.clone(), mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=32)
    wa, wb = decoded_weights(ours), decoded_weights(theirs)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    with pytest.raises(ValueError, match="nncf-moe3 modes"):
        nncf_moe3.compress_weights(fp_ir.clone(), mode="int4_sym", icq="mse")


def test_all_layers_and_ignored_scope(tiny_models):
    _, fp_ir = tiny_models["qwen3_moe"]
    m = fp_ir.clone()
    target = next(op.get_friendly_name() for op in fp_ir.get_ops() if "q_proj.weight" in op.get_friendly_name())
    nncf_moe3.compress_weights(m, mode="int3_asym", group_size=32, all_layers=True,
                               ignored_scope=nncf.IgnoredScope(names=[target]), progress=False)
    rep = nncf_moe3.get_report(m)
    formats = {w["role"]: w["format"] for w in rep["weights"]}
    assert formats["lm_head"] == "int3_asym" and formats["router"] == "int3_asym"
    assert target not in {w["name"] for w in rep["weights"]}
    still_float = [op for op in m.get_ops() if op.get_friendly_name() == target]
    assert still_float and still_float[0].get_element_type().get_type_name() == "f32"


def test_ratio_moves_weights_to_backup(tiny_models):
    _, fp_ir = tiny_models["qwen3_moe"]
    m = fp_ir.clone()
    nncf_moe3.compress_weights(m, mode="int3_sym", group_size=32, ratio=0.5, progress=False)
    rep = nncf_moe3.get_report(m)
    n3 = sum(np.prod(w["shape"]) for w in rep["weights"] if w["format"] == "int3_sym")
    n8 = sum(np.prod(w["shape"]) for w in rep["weights"] if w["format"] == "int8_asym" and w["role"] not in ("embedding", "lm_head", "router"))
    assert n8 > 0 and n3 / (n3 + n8) <= 0.5 + 1e-9


def test_bad_inputs(tiny_models):
    _, fp_ir = tiny_models["qwen3_moe"]
    with pytest.raises(ValueError, match="does not divide"):
        nncf_moe3.compress_weights(fp_ir.clone(), mode="nf3", group_size=48, progress=False)
    with pytest.raises(ValueError, match="Unknown compression mode"):
        nncf_moe3.compress_weights(fp_ir.clone(), mode="int5", progress=False)
    with pytest.raises(ValueError, match="needs a calibration dataset"):
        nncf_moe3.compress_weights(fp_ir.clone(), mode="nf3", gptq=True, progress=False)
    with pytest.raises(TypeError, match="openvino.Model"):
        nncf_moe3.compress_weights(torch.nn.Linear(4, 4), mode="nf3")
    # NaN weights: clear error, model left untouched
    m = fp_ir.clone()
    const = next(op for op in m.get_ops() if op.get_friendly_name().endswith("down_proj"))
    data = np.array(const.get_data(), dtype=np.float32)
    data[0, 0, 0] = np.nan
    new = ov.opset13.constant(data)
    new.set_friendly_name(const.get_friendly_name())
    for inp in list(const.output(0).get_target_inputs()):
        inp.replace_source_output(new.output(0))
    with pytest.raises(ValueError, match="NaN/Inf"):
        nncf_moe3.compress_weights(m, mode="int3_asym", group_size=32, progress=False)


def test_layout_mismatch_is_refused(tiny_models):
    _, fp_ir = tiny_models["qwen3_moe"]
    m = fp_ir.clone()
    from openvino_ext import u3

    other = "tight" if u3.LAYOUT == "split" else "split"
    m.set_rt_info(other, ["nncf_moe3", "u3_layout"])
    with pytest.raises(RuntimeError, match="layout"):
        nncf_moe3.compress_weights(m, mode="nf3", group_size=32, progress=False)


@pytest.mark.parametrize("calibrated", [False, True])
def test_mixed_precision_budget(tiny_models, calibrated):
    torch_model, fp_ir = tiny_models["qwen2_moe"]
    m = fp_ir.clone()
    ds = _dataset(torch_model.config.vocab_size) if calibrated else None
    nncf_moe3.compress_weights(m, mode="nf3", group_size=32, avg_bits=3.45, dataset=ds, progress=False)
    rep = nncf_moe3.get_report(m)
    experts = [w for w in rep["weights"] if w["role"].startswith("expert")]
    n = np.array([np.prod(w["shape"]) for w in experts])
    bits = np.array([w["bits"] for w in experts])
    assert (n * bits).sum() / n.sum() <= 3.45 + 1e-9
    assert len({w["group_size"] for w in experts}) >= 2  # the budget is spent unevenly, by sensitivity
    roles = {w["role"]: w["format"] for w in rep["weights"]}
    assert roles["attention"] == "int4_asym" and roles["shared_expert"] == "int4_asym"
    assert bits_summary(m)["experts"] <= 3.45 + 0.02
    with pytest.raises(ValueError, match="below the cheapest"):
        nncf_moe3.compress_weights(fp_ir.clone(), mode="nf3", avg_bits=3.0, progress=False)


@pytest.mark.parametrize("mode", ["nf3", "int3_asym"])
def test_double_quantized_scales_ir(tiny_models, mode):
    """Integer sub-scales under an f16 super-scale: IR runs on stock OpenVINO and matches the numpy decode."""
    torch_model, fp_ir = tiny_models["qwen3_moe"]
    m = fp_ir.clone()
    nncf_moe3.compress_weights(m, mode=mode, group_size=16, double_quant=(6, 8), progress=False)
    subs = [op for op in m.get_ops() if op.get_friendly_name().endswith("/sub_scale")]
    assert subs and all(op.get_element_type().get_type_name() == "u8" for op in subs)
    assert all(int(np.asarray(op.get_data()).max()) <= 63 for op in subs)
    fq = copy.deepcopy(torch_model)
    load_into_torch(fq, decoded_weights(m))
    ids = decisive_ids(fq, torch_model.config.vocab_size)
    ref = _torch_logits(fq, ids)
    assert np.abs(_ov_logits(m, ids) - ref).max() < 5e-3 * np.abs(ref).max()
