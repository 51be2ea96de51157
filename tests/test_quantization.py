"""Quantizer math: N(0,1) distortion targets, search never worse than RTN, NNCF-equivalent RTN, GPTQ, double quant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nncf_moe3 import quantization as Q
from nncf_moe3.accuracy import LLOYD_MAX_3BIT_MSE, SHANNON_3BIT_MSE

ROWS = 256  # 256 x 4096 N(0,1) weights per measurement


@pytest.mark.parametrize("fmt,bound", [("nf3", 0.0300), ("int3_asym", 0.0315), ("int3_sym", 0.0320)])
def test_gaussian_mse_g64_targets(fmt, bound):
    mse = Q.gaussian_mse(fmt, 64, rows=ROWS)
    assert SHANNON_3BIT_MSE < mse <= bound


@pytest.mark.parametrize("fmt", Q.FORMATS)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_search_beats_rtn(fmt, group_size):
    rtn = Q.gaussian_mse(fmt, group_size, search=False, rows=64)
    searched = Q.gaussian_mse(fmt, group_size, search=True, rows=64)
    assert searched < rtn * 0.97


def test_best_mode_beats_q3k_at_its_bits():
    """NF3, groups of 16 with 6-bit sub-scales under an f16 scale per 16 groups = 3.4375 bpw (Q3_K's size)."""
    w = torch.from_numpy(np.random.default_rng(0).standard_normal((ROWS, 4096)).astype(np.float32))
    qw = Q.quantize_rtn("nf3", w, 16)
    dq, sub, sup = Q.double_quantize_scales(qw, w, sub_bits=6, super_groups=16)
    mse = float(((dq.dequantize() - w) ** 2).mean())
    assert Q.bits_per_weight("nf3", 16, double_quant=(6, 16)) <= 3.44
    assert mse < 0.0228  # llama.cpp Q3_K's own quantizer on N(0,1)
    assert sub.max() <= 63 and sub.min() >= 1


def test_int3_sym_rtn_equals_nncf():
    """Our plain RTN int3_sym (absmax, signed) reproduces NNCF 3.4's INT3_SYM codes and scales."""
    from nncf.quantization.algorithms.weight_compression.config import WeightCompressionConfig
    from nncf.quantization.algorithms.weight_compression.weight_lowering import do_integer_quantization
    from nncf.parameters import CompressWeightsMode
    from nncf.tensor import Tensor

    w = np.random.default_rng(3).standard_normal((32, 256)).astype(np.float32)
    cfg = WeightCompressionConfig(mode=CompressWeightsMode.INT3_SYM, group_size=64)
    cw = do_integer_quantization(Tensor(w.reshape(32, 4, 64)), cfg, reduction_axes=(2,))
    q_nncf, scale_nncf = cw.tensor, cw.scale
    qw = Q.quantize_rtn("int3_sym", torch.from_numpy(w), 64, search=False)
    np.testing.assert_allclose(qw.scale.numpy().ravel(), scale_nncf.data.astype(np.float16).astype(np.float32).ravel(),
                               rtol=1e-3)
    codes_nncf = q_nncf.data.astype(np.int16).reshape(qw.codes.shape) + 4
    assert np.mean(qw.codes.numpy() == codes_nncf) > 0.999


@pytest.mark.parametrize("fmt", Q.FORMATS)
def test_codes_in_range_and_dequant_consistent(fmt):
    w = torch.randn(3, 16, 128)
    qw = Q.quantize_rtn(fmt, w, 32)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 7
    assert qw.codes.shape == (3, 16, 4, 32) and qw.scale.shape == (3, 16, 4, 1)
    if fmt == "int3_asym":
        z = qw.zero_point
        assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 7
    # scales are exactly f16-representable (stored as f16 in the IR)
    assert torch.equal(qw.scale, qw.scale.half().float())
    deq = qw.dequantize()
    assert deq.shape == w.shape
    ref = Q.dequantize(fmt, qw.codes, qw.scale, qw.zero_point).reshape(w.shape)
    assert torch.equal(deq, ref)


@pytest.mark.parametrize("fmt", Q.FORMATS)
def test_gptq_lowers_output_error(fmt):
    """With correlated inputs GPTQ's output error ||X(W - Q)||^2 is below RTN's (same format and group size)."""
    g = torch.Generator().manual_seed(0)
    n, k, t = 48, 128, 2048
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(t, k, generator=g) @ mix
    w = torch.randn(2, n, k, generator=g)
    h = (x.T @ x).expand(2, k, k).to(torch.float64)
    rtn = Q.quantize_rtn(fmt, w, 32).dequantize()
    gq = Q.gptq(fmt, w, h, 32).dequantize()
    err = lambda wq: float(((x @ (w - wq).transpose(1, 2)) ** 2).mean())
    assert err(gq) < 0.8 * err(rtn)


def test_gptq_dead_channels_and_icq():
    w = torch.randn(1, 8, 64)
    h = torch.eye(64, dtype=torch.float64)[None].clone()
    h[0, :8, :8] = 0  # dead input channels
    qw = Q.gptq("nf3", w, h, 32, icq="mse")
    assert torch.isfinite(qw.dequantize()).all() and qw.zero_point is not None


@pytest.mark.parametrize("criterion", ["mse", "entropy"])
def test_icq(criterion):
    w = torch.from_numpy(np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32) + 0.3)
    plain = float(((Q.quantize_rtn("nf3", w, 64).dequantize() - w) ** 2).mean())
    qw = Q.quantize_rtn("nf3", w, 64, icq=criterion)
    err = float(((qw.dequantize() - w) ** 2).mean())
    if criterion == "mse":
        assert err < plain
    # entropy criterion: code histogram is at least as spread as without the offset
    hist = torch.bincount(qw.codes.ravel().long(), minlength=8).float()
    p = hist / hist.sum()
    assert float(-(p * torch.log(p.clamp_min(1e-12))).sum()) > 1.8


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not divide"):
        Q.quantize_rtn("nf3", torch.randn(4, 100), 64)
    w = torch.randn(4, 64)
    w[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        Q.quantize_rtn("int3_asym", w, 32)
    with pytest.raises(ValueError, match="Unknown 3-bit format"):
        Q.format_spec("int3")


def test_reference_constants():
    assert SHANNON_3BIT_MSE == pytest.approx(0.015625)
    assert Q.NF3_CODEBOOK.shape == (8,) and Q.NF3_CODEBOOK[0] == -1 and Q.NF3_CODEBOOK[-1] == 1
    # Lloyd-Max levels of N(0,1) (literature: +-0.2451, 0.7560, 1.3439, 2.1519)
    lm = Q._lloyd_max_gaussian()
    np.testing.assert_allclose(lm[4:], [0.2451, 0.7560, 1.3439, 2.1519], atol=2e-4)
    assert LLOYD_MAX_3BIT_MSE == 0.0345
