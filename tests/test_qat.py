"""LoRA-QAT (nncf_moe3.qat): fake quantizer vs the PTQ quantizer, LSQ gradients, LoftQ, preparing the three MoE
architectures, training lowers the distillation loss, export to a u3 IR that matches the torch fake-quant model."""

from __future__ import annotations

import copy

import nncf
import numpy as np
import openvino as ov
import pytest
import torch
from torch.nn.utils import parametrize

import nncf_moe3
from nncf_moe3 import qat
from nncf_moe3.accuracy import CPU_EXACT_CONFIG as F32
from nncf_moe3.decode import decoded_weights
from nncf_moe3.quantization import dequantize, encode, group, quantize_rtn

from test_compress import ARCHS, decisive_ids

MODES = ["int3_sym", "int3_asym", "nf3"]


def _fresh(tiny_models, arch):
    return copy.deepcopy(tiny_models[arch][0])


def _logits(model, ids):
    with torch.no_grad(), parametrize.cached():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


# ------------------------------------------------------------------------------------------------ quantizer
@pytest.mark.parametrize("fmt", MODES + ["int4_asym"])
@pytest.mark.parametrize("gs", [16, 64])
def test_fake_quantize_equals_ptq_quantizer(fmt, gs):
    w = torch.randn(3, 8, 128, generator=torch.Generator().manual_seed(1))
    qw = quantize_rtn(fmt, w, gs, search=True)
    scale = qw.scale.abs() if fmt == "int3_sym" else qw.scale
    sign = torch.where(qw.scale < 0, -1.0, 1.0)
    out = qat.fake_quantize(fmt, w, scale * sign, qw.zero_point, gs)
    ref = dequantize(fmt, encode(fmt, group(w, gs), qw.scale, qw.zero_point), qw.scale, qw.zero_point).reshape(w.shape)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", MODES)
def test_lsq_gradients(fmt):
    """d FQ / d w is 1 inside the clipping range and 0 outside; d FQ / d s is round(x) - x inside (LSQ), scaled by g."""
    gs = 8
    w = (torch.randn(1, 2, 16, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_(True)
    s = torch.full((1, 2, 2, 1), 0.5, requires_grad=True)
    z = torch.full((1, 2, 2, 1), 3.0) if fmt == "int3_asym" else None
    g = 0.25
    out = qat.fake_quantize(fmt, w, qat._grad_scale(s, g), z, gs)
    out.sum().backward()
    x = group(w.detach(), gs) / 0.5 + (z if z is not None else 0)
    lo, hi = {"int3_sym": (-4, 3), "int3_asym": (0, 7), "nf3": (-1, 1)}[fmt]
    inside = (x >= lo) & (x <= hi)
    assert torch.equal(group(w.grad, gs), inside.float())
    q = group(out.detach(), gs) / 0.5 + (z if z is not None else 0)  # the chosen level (in code units)
    # inside: round(x) - x ; outside: the clipping level (minus the zero point)
    expect = torch.where(inside, q - x, q - (z if z is not None else 0))
    torch.testing.assert_close(s.grad, g * expect.sum(-1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_loftq_reduces_low_rank_residual():
    torch.manual_seed(0)
    w = torch.randn(2, 64, 128) + 0.5 * torch.randn(2, 64, 2) @ torch.randn(2, 2, 128)
    b, a = qat.loftq("int3_asym", w, rank=4, group_size=32, iters=3)
    q0 = quantize_rtn("int3_asym", w, 32).dequantize()
    q = quantize_rtn("int3_asym", w - b @ a, 32).dequantize()
    assert float(((w - q - b @ a) ** 2).mean()) < 0.8 * float(((w - q0) ** 2).mean())


# ------------------------------------------------------------------------------------------------ prepare / train
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("init", ["zeros", "loftq"])
def test_prepare_starts_at_ptq_and_trains(tiny_models, arch, init):
    model = _fresh(tiny_models, arch)
    teacher = copy.deepcopy(model)
    vocab = model.config.vocab_size
    ids = decisive_ids(teacher, vocab, shape=(2, 12))
    qat.prepare(model, "int3_asym", 16, rank=4, init=init, progress=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B", ".scale")) for n in trainable), sorted(trainable)[:5]
    fqs = qat.quantizers(model)
    assert any(fq.B.dim() == 3 for fq in fqs.values())  # 3-D experts got per-expert adapters
    # At init the merged weight equals W for both inits: the fake-quant model is the RTN+search PTQ model.
    for path, fq in fqs.items():
        module, attr = qat._owner(model, path)
        orig = module.parametrizations[attr].original
        torch.testing.assert_close(orig + fq.delta(), qat._owner(teacher, path)[0].get_parameter(attr), atol=1e-5,
                                   rtol=1e-5)
    before = float(qat.kl_loss(torch.from_numpy(_logits(model, ids)), torch.from_numpy(_logits(teacher, ids))))
    res = qat.train(model, teacher, ids, steps=25, max_minutes=None, batch_size=2, lr=1e-3,  # windows = ids
                    scale_lr=1e-4, warmup=2, progress=False)
    after = float(qat.kl_loss(torch.from_numpy(_logits(model, ids)), torch.from_numpy(_logits(teacher, ids))))
    assert res.steps == 25 and after < before, (before, after)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", MODES)
def test_export_matches_torch_fake_quant(tiny_models, arch, mode):
    model = _fresh(tiny_models, arch)
    teacher = copy.deepcopy(model)
    vocab = model.config.vocab_size
    qat.prepare(model, mode, 16, rank=4, init="loftq", progress=False)
    qat.train(model, teacher, np.random.default_rng(1).integers(0, vocab, 2000), steps=5, max_minutes=None,
              batch_size=2, seq_len=32, lr=3e-3, scale_lr=1e-4, warmup=1, progress=False)
    ov_model = qat.export_openvino(model, progress=False)
    types = {op.get_element_type().get_type_name() for op in ov_model.get_ops() if op.get_type_name() == "Constant"}
    assert "u3" in types
    report = nncf_moe3.get_report(ov_model)
    algos = {w["algorithm"] for w in report["weights"] if w["format"] in MODES}
    assert algos == {"precomputed"} and report["qat"]["mode"] == mode
    stripped = qat.strip(model)
    ids = decisive_ids(stripped, vocab, shape=(2, 9))
    ref = _logits(stripped, ids)
    np.testing.assert_allclose(_logits(model, ids), ref, rtol=1e-5, atol=1e-5)  # strip == the QAT forward
    # The IR's weights are the trained fake-quant weights up to f16 rounding of the decompression product ...
    params = dict(stripped.named_parameters())
    for name, w in decoded_weights(ov_model).items():
        path, half = qat._ov_name_to_param(name)
        p = params[path].detach().numpy()
        if half is not None:
            p = p[:, :p.shape[1] // 2] if half == "gate" else p[:, p.shape[1] // 2:]
        np.testing.assert_allclose(w, p if p.shape == w.shape else p.T, rtol=1e-3, atol=1e-6, err_msg=name)
    # ... and OpenVINO's logits equal the torch fake-quant model's (same tolerance as the PTQ tests).
    got = ov.Core().compile_model(ov_model, "CPU", F32)({"input_ids": ids})[0]
    assert np.abs(got - ref).max() < 5e-3 * np.abs(ref).max()
    # the QAT model is still usable after export/strip (parametrizations restored)
    assert qat.quantizers(model) and _logits(model, ids).shape == ref.shape


def test_compress_weights_fq_lora_entry_point(tiny_models):
    model = _fresh(tiny_models, "qwen3_moe")
    out = nncf_moe3.compress_weights(model, mode="nf3", group_size=16, compression_format=nncf.CompressionFormat.FQ_LORA,
                                     lora_rank=2, lora_init="zeros", progress=False)
    assert out is model and all(fq.rank == 2 and fq.fmt in ("nf3", "int4_asym") for fq in qat.quantizers(model).values())
    with pytest.raises(ValueError, match="not supported with compression_format=FQ_LORA"):
        nncf_moe3.compress_weights(_fresh(tiny_models, "qwen3_moe"), mode="nf3", awq=True,
                                   compression_format=nncf.CompressionFormat.FQ_LORA)


def test_pissa_keeps_adapter_and_refuses_export(tiny_models):
    model = _fresh(tiny_models, "qwen3_moe")
    qat.prepare(model, "int3_sym", 16, rank=2, init="pissa", progress=False)
    fq = next(fq for fq in qat.quantizers(model).values() if fq.B.dim() == 3)
    assert fq.adapter_outside and float(fq.delta().detach().abs().sum()) > 0
    assert qat.pissa_extra_bits(fq) > 0
    with pytest.raises(NotImplementedError, match="full precision"):
        qat.export_openvino(model, progress=False)


def test_bad_input(tiny_models):
    model = _fresh(tiny_models, "mixtral")
    with pytest.raises(ValueError, match="init must be one of"):
        qat.prepare(copy.deepcopy(model), "int3_asym", 16, init="svd")
    with pytest.raises(ValueError, match="QAT mode"):
        qat.prepare(copy.deepcopy(model), "int4_sym", 16)
    with pytest.raises(ValueError, match="does not divide"):
        qat.prepare(copy.deepcopy(model), "int3_asym", 24, progress=False)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        next(p for n, p in bad.named_parameters() if "experts" in n)[0, 0, 0] = float("nan")
    snapshot = {n: p.clone() for n, p in bad.named_parameters()}
    with pytest.raises(ValueError, match="NaN/Inf"):
        qat.prepare(bad, "int3_asym", 16, progress=False)
    assert not hasattr(bad, qat.STATE_ATTR)
    assert all(torch.equal(p, snapshot[n]) or torch.isnan(p).any() for n, p in bad.named_parameters())
    with pytest.raises(ValueError, match="not prepared"):
        qat.export_openvino(model)
    qat.prepare(model, "int3_asym", 16, rank=2, init="zeros", progress=False)
    with pytest.raises(ValueError, match="already prepared"):
        qat.prepare(model, "int3_asym", 16)


@pytest.mark.parametrize("mode,arch", [("int3_asym", "qwen3_moe"), ("nf3", "qwen2_moe"), ("int3_sym", "mixtral")])
@pytest.mark.parametrize("init", ["zeros", "loftq"])
def test_start_from_ptq_ir(tiny_models, mode, arch, init):
    """init_from=<GPTQ-compressed IR>: the untrained QAT model and its export reproduce the PTQ IR."""
    from test_compress import _dataset

    model = _fresh(tiny_models, arch)
    ptq = tiny_models[arch][1].clone()
    nncf_moe3.compress_weights(ptq, mode=mode, group_size=16, dataset=_dataset(model.config.vocab_size), progress=False)
    qat.prepare(model, mode, 16, rank=4, init=init, init_from=ptq, progress=False)
    ids = decisive_ids(tiny_models[arch][0], model.config.vocab_size, shape=(2, 9))
    core = ov.Core()
    want = core.compile_model(ptq, "CPU", F32)({"input_ids": ids})[0]
    got = core.compile_model(qat.export_openvino(model, progress=False), "CPU", F32)({"input_ids": ids})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    torch_logits = _logits(model, ids)
    assert np.abs(torch_logits - want).max() < 5e-3 * np.abs(want).max()
    with pytest.raises(ValueError, match="not .* with group size 32|not an nncf-moe3"):
        qat.prepare(_fresh(tiny_models, arch), mode, 32, init_from=ptq, progress=False)


def test_train_through_accelerate(tiny_models):
    """The multi-process path: HF accelerate's Accelerator wraps model/optimizer/backward (one CPU process here)."""
    from accelerate import Accelerator

    model = _fresh(tiny_models, "qwen3_moe")
    teacher = copy.deepcopy(model)
    ids = decisive_ids(teacher, model.config.vocab_size, shape=(2, 12))
    qat.prepare(model, "int3_sym", 16, rank=2, init="loftq", progress=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    res = qat.train(model, teacher, ids, steps=3, max_minutes=None, batch_size=2, lr=1e-3, progress=False,
                    accelerator=Accelerator(cpu=True))
    assert res.steps == 3
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed


def test_validation_keeps_best_step(tiny_models):
    """Early stopping on held-out KL: the validation KL is measured at step 0 and every eval_every steps, the
    parameters of the lowest-KL point are restored at the end — the final model's validation KL is the recorded
    minimum (so a run that drifts away from the teacher, e.g. through the CE term, keeps its best point)."""
    from nncf_moe3.accuracy import evaluate_torch, reference_logprobs

    model = _fresh(tiny_models, "qwen3_moe")
    teacher = copy.deepcopy(model)
    vocab = model.config.vocab_size
    ids = decisive_ids(teacher, vocab, shape=(2, 12))
    val = np.random.default_rng(7).integers(0, vocab, (3, 12))
    qat.prepare(model, "int3_asym", 16, rank=4, init="loftq", progress=False)
    # a large lr and a pure-CE objective push the model away from the teacher after the first steps
    res = qat.train(model, teacher, ids, steps=12, max_minutes=None, batch_size=2, lr=5e-2, scale_lr=5e-3,
                    warmup=1, ce_weight=20.0, progress=False, val_tokens=val, eval_every=3)
    assert [h[0] for h in res.val_history] == [0, 3, 6, 9, 12]
    kls = [h[2] for h in res.val_history]
    best = int(np.argmin(kls))
    assert res.best_step == res.val_history[best][0]
    assert kls[-1] > kls[best] * 1.5  # the run did drift: restoring mattered
    with parametrize.cached():
        final = evaluate_torch(model, val, reference_logprobs(teacher, val))
    assert final.kl == pytest.approx(kls[best], rel=1e-4, abs=1e-7)
    assert final.kl <= min(kls) + 1e-7


def test_disjoint_validation_windows():
    """Validation windows never overlap the (random, seeded) evaluation windows of the same stream."""
    from nncf_moe3.reference import data

    stream = np.arange(20000)
    taken = data.make_windows(stream, 64, 40, seed=5)
    val = data.disjoint_windows(stream, 64, 50, taken_seed=5, taken_count=40)
    assert val.shape == (50, 64)
    used = set(taken.ravel().tolist())
    assert not used & set(val.ravel().tolist())
    assert (np.diff(val, axis=1) == 1).all()  # consecutive text
    with pytest.raises(ValueError, match="free"):
        data.disjoint_windows(stream[:3000], 64, 40, taken_seed=5, taken_count=40)
