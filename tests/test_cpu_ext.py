"""MatMul3 / MoE3 from the built CPU extension vs the numpy reference (openvino_ext.reference)."""

from __future__ import annotations

import os

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

from openvino_ext import reference as R  # noqa: E402

F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


@pytest.fixture(autouse=True)
def exact_by_default(monkeypatch):
    """Exact f32 kernels unless a test selects the int8-activation path."""
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "0")


@pytest.fixture(scope="module")
def ext():
    import openvino_ext
    from openvino_ext.build import BuildError

    try:
        lib = str(openvino_ext.library_path(build=True))
    except BuildError as e:  # CI builds it; only a missing toolchain may skip
        pytest.skip(f"nncf_moe3 CPU extension cannot be built: {e}")
    from openvino.utils.node_factory import NodeFactory

    factory = NodeFactory()
    factory.add_extension(lib)
    core = ov.Core()
    core.add_extension(lib)
    return factory, core


# "avx512_vnni" = AVX-512 with the int8-activation decode GEMV (default on VNNI CPUs; approximate like OpenVINO's
# dynamic quantization), the others are exact f32 kernels (NNCF_MOE3_ACT_QUANT=0).
@pytest.fixture(params=["avx512_vnni", "avx512", "avx2", "scalar"])
def isa(request, monkeypatch):
    import openvino_ext

    monkeypatch.setenv("NNCF_MOE3_ISA", request.param.split("_")[0])
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1" if request.param == "avx512_vnni" else "0")
    got = openvino_ext.isa()
    if got != request.param:
        pytest.skip(f"CPU lacks {request.param} (kernels run {got})")
    return request.param


def _tol(isa, exact):
    return 3e-2 if isa == "avx512_vnni" else exact


def _consts(arrays):
    return [ops.constant(a).output(0) for a in arrays]


def _matmul3_model(ext, k, w, s, z, c, gs, lead_rank=1):
    factory, core = ext
    p = ops.parameter([-1] * lead_rank + [k], np.float32)
    node = factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c)), {"group_size": gs})
    return core.compile_model(ov.Model([node.output(0)], [p]), "CPU", F32)


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


MATMUL_CASES = [  # (tokens, N, K, group_size, mode)
    (1, 72, 256, 32, "int3_sym"),
    (1, 37, 384, 128, "int3_asym"),
    (1, 50, 512, 64, "nf3"),
    (2, 19, 96, 32, "int3_asym"),
    (3, 64, 128, 128, "nf3"),
    (4, 33, 256, 64, "int3_sym"),
    (5, 40, 100, 100, "int3_sym"),  # per-channel group, K not a multiple of 32
    (17, 45, 256, 64, "int3_asym"),
    (64, 70, 384, 128, "nf3"),
    (300, 24, 128, 32, "int3_sym"),
]


@pytest.mark.parametrize("m,n,k,gs,mode", MATMUL_CASES)
def test_matmul3_matches_reference(ext, isa, m, n, k, gs, mode):
    rng = np.random.default_rng(hash((m, n, k, gs, mode)) % 2**32)
    w, s, z, c = R.random_case(rng, n, k, gs, mode)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = _matmul3_model(ext, k, w, s, z, c, gs)(x)[0]
    assert y.shape == (m, n)
    assert _rel(y, R.matmul3_ref(x, w, s, z, c, gs)) < _tol(isa, 2e-5)


@pytest.mark.parametrize("mode", ["int3_sym", "int3_asym", "nf3"])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_int8_activation_gemv(ext, monkeypatch, mode, m):
    """The VNNI decode GEMV (group size multiple of 64) stays close to the exact f32 kernel."""
    import openvino_ext

    monkeypatch.delenv("NNCF_MOE3_ISA", raising=False)
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    if openvino_ext.isa() != "avx512_vnni":
        pytest.skip("CPU lacks AVX512-VNNI/VBMI")
    rng = np.random.default_rng(7)
    w, s, z, c = R.random_case(rng, 96, 512, 128, mode)
    x = rng.standard_normal((m, 512)).astype(np.float32)
    cm = _matmul3_model(ext, 512, w, s, z, c, 128)
    y = cm(x)[0]
    ref = R.matmul3_ref(x, w, s, z, c, 128)
    err = np.abs(y - ref) / np.abs(ref).max()
    assert err.max() < 2e-2 and err.mean() < 4e-3
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "0")
    assert _rel(cm(x)[0], ref) < 2e-5


def test_matmul3_leading_dims(ext):
    rng = np.random.default_rng(1)
    w, s, z, c = R.random_case(rng, 48, 128, 64, "int3_asym")
    x = rng.standard_normal((2, 3, 128)).astype(np.float32)
    y = _matmul3_model(ext, 128, w, s, z, c, 64, lead_rank=2)(x)[0]
    ref = R.matmul3_ref(x.reshape(-1, 128), w, s, z, c, 64).reshape(2, 3, 48)
    assert _rel(y, ref) < 2e-5


def _moe_case(rng, e, h, inter, gs, mode):
    g = R.random_case(rng, inter, h, gs, mode, lead=(e,))
    u = R.random_case(rng, inter, h, gs, mode, lead=(e,))
    d = R.random_case(rng, h, inter, gs, mode, lead=(e,))
    c = g[3]
    return [g[0], g[1], g[2], u[0], u[1], u[2], d[0], d[1], d[2], c]


def _moe3_model(ext, h, e, weights, top_k, norm, gs):
    factory, core = ext
    x = ops.parameter([-1, h], np.float32)
    logits = ops.parameter([-1, e], np.float32)
    node = factory.create("MoE3", [x.output(0), logits.output(0)] + _consts(weights),
                          {"top_k": top_k, "normalize_topk": norm, "group_size": gs})
    return core.compile_model(ov.Model([node.output(0)], [x, logits]), "CPU", F32)


MOE_CASES = [  # (tokens, experts, hidden, inter, group_size, top_k, normalize, mode)
    (1, 8, 128, 64, 32, 2, True, "int3_sym"),
    (1, 16, 256, 96, 32, 8, True, "int3_asym"),
    (2, 4, 128, 128, 64, 1, False, "nf3"),
    (3, 8, 256, 64, 64, 2, False, "int3_asym"),
    (9, 6, 128, 96, 32, 3, True, "nf3"),
    (40, 8, 256, 128, 128, 2, True, "int3_sym"),
    (33, 5, 96, 64, 32, 2, False, "int3_asym"),
]


@pytest.mark.parametrize("t,e,h,inter,gs,k,norm,mode", MOE_CASES)
def test_moe3_matches_reference(ext, isa, t, e, h, inter, gs, k, norm, mode):
    rng = np.random.default_rng(hash((t, e, h, inter, gs, k, norm, mode)) % 2**32)
    weights = _moe_case(rng, e, h, inter, gs, mode)
    x = rng.standard_normal((t, h)).astype(np.float32)
    logits = (rng.standard_normal((t, e)) * 2).astype(np.float32)
    y = _moe3_model(ext, h, e, weights, k, norm, gs)([x, logits])[0]
    ref = R.moe3_ref(x, logits, *weights, top_k=k, normalize_topk=norm, group_size=gs)
    assert y.shape == (t, h)
    assert _rel(y, ref) < _tol(isa, 5e-5)


def test_ops_roundtrip_through_ir(ext, tmp_path):
    """visit_attributes: an IR with MatMul3 / MoE3 serializes and reads back (with the extension) unchanged."""
    factory, core = ext
    rng = np.random.default_rng(3)
    e, h, inter, gs = 4, 64, 64, 32
    weights = _moe_case(rng, e, h, inter, gs, "int3_asym")
    x = ops.parameter([-1, h], np.float32)
    logits = ops.parameter([-1, e], np.float32)
    moe = factory.create("MoE3", [x.output(0), logits.output(0)] + _consts(weights),
                         {"top_k": 2, "normalize_topk": False, "group_size": gs})
    w, s, z, c = R.random_case(rng, 16, h, gs, "nf3")
    mm = factory.create("MatMul3", [moe.output(0)] + _consts((w, s, z, c)), {"group_size": gs})
    model = ov.Model([mm.output(0)], [x, logits])
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    xml = (tmp_path / "m.xml").read_text()
    assert 'type="MoE3" version="nncf_moe3"' in xml and 'type="MatMul3" version="nncf_moe3"' in xml
    assert 'normalize_topk="false"' in xml and 'top_k="2"' in xml
    back = core.read_model(tmp_path / "m.xml")
    xv = rng.standard_normal((5, h)).astype(np.float32)
    lv = rng.standard_normal((5, e)).astype(np.float32)
    a = core.compile_model(model, "CPU", F32)([xv, lv])[0]
    b = core.compile_model(back, "CPU", F32)([xv, lv])[0]
    np.testing.assert_array_equal(a, b)
    ref = R.matmul3_ref(R.moe3_ref(xv, lv, *weights, top_k=2, normalize_topk=False, group_size=gs), w, s, z, c, gs)
    assert _rel(a, ref) < 5e-5


def test_default_precision_compiles(ext):
    """The CPU plugin converts f16 constants of unknown ops to f32; the ops accept both (default bf16 hint too)."""
    factory, core = ext
    rng = np.random.default_rng(4)
    w, s, z, c = R.random_case(rng, 32, 128, 32, "int3_sym")
    p = ops.parameter([-1, 128], np.float32)
    node = factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c)), {"group_size": 32})
    cm = core.compile_model(ov.Model([node.output(0)], [p]), "CPU")
    x = rng.standard_normal((2, 128)).astype(np.float32)
    assert _rel(cm(x)[0], R.matmul3_ref(x, w, s, z, c, 32)) < 1e-2


def test_bad_operands_rejected(ext):
    factory, _ = ext
    rng = np.random.default_rng(5)
    w, s, z, c = R.random_case(rng, 8, 64, 32, "int3_sym")
    p = ops.parameter([-1, 64], np.float32)
    with pytest.raises(Exception, match="12 bytes"):
        factory.create("MatMul3", [p.output(0)] + _consts((w[..., :8], s, z, c)), {"group_size": 32})
    with pytest.raises(Exception, match="codebook"):
        factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c[:4])), {"group_size": 32})
