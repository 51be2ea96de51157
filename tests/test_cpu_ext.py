"""MatMul3 / MoE3 from the built CPU extension vs the numpy reference (openvino_ext.reference)."""

from __future__ import annotations

import os

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

from openvino_ext import reference as R  # noqa: E402
from openvino_ext.reference import K3_VERSION  # noqa: E402

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


# "avx512_vnni" = AVX-512 with the int8-activation kernels (decode GEMV, prefill GEMM; default on VNNI CPUs;
# approximate like OpenVINO's dynamic quantization), "amx" = the same with the AMX-INT8 prefill GEMM (opt-in,
# skipped without AMX), "amx_emulate" = that AMX GEMM with emulated tile instructions (checks its tiling on any
# VNNI CPU), "avx2_vnni" = the int8 kernels in 256-bit AVX2 + AVX-VNNI form (CPUs without AVX-512 VNNI that have
# AVX-VNNI: Intel Alder Lake+, AMD Zen 5; skipped elsewhere), "avx2_int8" = the same with a plain-AVX2 vpmaddubsw
# dot product (AVX2 CPUs without AVX-VNNI; forced here on any AVX2 CPU); the others are exact f32 kernels
# (NNCF_MOE3_ACT_QUANT=0). The ISA env is read on every op call.
QUANT_ISAS = ("avx512_vnni", "amx", "amx_emulate", "avx2_vnni", "avx2_int8")


def _forced_isa(name):
    """NNCF_MOE3_ISA value that selects the kernels called ``name``."""
    return name if name.startswith("amx") or name == "avx2_int8" else name.split("_")[0]


@pytest.fixture(params=["amx", "amx_emulate", "avx512_vnni", "avx512", "avx2_vnni", "avx2_int8", "avx2", "scalar"])
def isa(request, monkeypatch):
    import openvino_ext

    forced = _forced_isa(request.param)
    monkeypatch.setenv("NNCF_MOE3_ISA", forced)
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1" if request.param in QUANT_ISAS else "0")
    got = openvino_ext.isa()
    if got != request.param:
        pytest.skip(f"CPU lacks {request.param} (kernels run {got})")
    return request.param


def _tol(isa, exact):
    return 3e-2 if isa in QUANT_ISAS else exact


def _seed(*args):
    """Stable per-case seed (hash() of str is randomized per process)."""
    import zlib

    return zlib.crc32(repr(args).encode())


def _consts(arrays):
    return [ops.constant(a).output(0) for a in arrays]


def _matmul3_model(ext, k, w, s, z, c, gs, lead_rank=1):
    factory, core = ext
    p = ops.parameter([-1] * lead_rank + [k], np.float32)
    node = factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c)), {"group_size": gs, "k3_version": K3_VERSION})
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
    (1, 21, 288, 96, "int3_asym"),  # 3 blocks per group: groups start at odd blocks (upper half of a super-block)
    (9, 21, 288, 96, "nf3"),
    (6, 13, 160, 32, "int3_sym"),  # K / 32 odd: the last block is padding of the 64-value super-block
    (1, 9, 2304, 32, "int3_asym"),  # 72 groups per row (> 64): per-row factor passes, a partial 16-group chunk
    (3, 6, 4128, 32, "nf3"),  # 129 groups per row, the last row's tail chunk at the end of the scale tensor
]


@pytest.mark.parametrize("m,n,k,gs,mode", MATMUL_CASES)
def test_matmul3_matches_reference(ext, isa, m, n, k, gs, mode):
    rng = np.random.default_rng(_seed(m, n, k, gs, mode))
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
                          {"top_k": top_k, "normalize_topk": norm, "group_size": gs,
                           "k3_version": K3_VERSION})
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
    rng = np.random.default_rng(_seed(t, e, h, inter, gs, k, norm, mode))
    weights = _moe_case(rng, e, h, inter, gs, mode)
    x = rng.standard_normal((t, h)).astype(np.float32)
    logits = (rng.standard_normal((t, e)) * 2).astype(np.float32)
    y = _moe3_model(ext, h, e, weights, k, norm, gs)([x, logits])[0]
    ref = R.moe3_ref(x, logits, *weights, top_k=k, normalize_topk=norm, group_size=gs)
    assert y.shape == (t, h)
    assert _rel(y, ref) < _tol(isa, 5e-5)


def test_f16_scales_stay_f16(ext):
    """The ops mark their f16 scale Constants keep_const_precision: the compiled CPU graph keeps them f16 (the plugin
    used to widen them to f32, +4 % decode bytes); removing the marking turns the scale Constants f32 and fails."""
    rng = np.random.default_rng(5)
    w, s, z, c = R.random_case(rng, 32, 128, 64, "int3_asym")
    cm = _matmul3_model(ext, 128, w, s, z, c, 64)
    consts = [(tuple(op.get_output_shape(0)), op.get_rt_info()["outputPrecisions"].astype(str))
              for op in cm.get_runtime_model().get_ops() if op.get_rt_info()["layerType"].astype(str) == "Const"]
    assert (tuple(s.shape), "f16") in consts, consts
    x = rng.standard_normal((1, 128)).astype(np.float32)
    assert _rel(cm(x)[0], R.matmul3_ref(x, w, s, z, c, 64)) < 2e-5


@pytest.mark.parametrize("act_quant", ["1", "0"])
def test_moe3_decode_buffers_reused_across_calls(ext, monkeypatch, act_quant):
    """Decode calls reuse per-thread buffers: alternating decode / prefill / decode calls with different token counts
    and routings on one compiled op all match the reference."""
    import openvino_ext

    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", act_quant)
    if act_quant == "1" and openvino_ext.isa() not in ("avx512_vnni", "amx"):
        pytest.skip("no int8-activation kernels on this CPU")
    rng = np.random.default_rng(11)
    e, h, inter, gs = 8, 128, 64, 64
    weights = _moe_case(rng, e, h, inter, gs, "int3_asym")
    cm = _moe3_model(ext, h, e, weights, 3, True, gs)
    for t in (1, 2, 9, 1, 4, 1):
        x = rng.standard_normal((t, h)).astype(np.float32)
        logits = (rng.standard_normal((t, e)) * 2).astype(np.float32)
        ref = R.moe3_ref(x, logits, *weights, top_k=3, normalize_topk=True, group_size=gs)
        assert _rel(cm([x, logits])[0], ref) < (3e-2 if act_quant == "1" else 5e-5), t


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("source", ["in_memory", "mmapped_ir"])
def test_large_weights_through_huge_pages(ext, tmp_path, source, packed):
    """Weights >= 2 MB are read through 2 MB pages (weight_pages.cpp): in-memory (heap) constants are collapsed in
    place, an mmapped IR's are copied and the source pages dropped from the mapping. Results must match the
    reference, and the IR's constant must still read back unchanged afterwards. Packed operands are placed whole (the
    blob: weights and scales), so that no section is read from the dropped source."""
    factory, core = ext
    rng = np.random.default_rng(21)
    n, k, gs = 4096, 4096, 128
    w, s, z, c = R.random_case(rng, n, k, gs, "int3_sym")
    assert w.nbytes >= 4 << 20  # a 2 MB-aligned interior exists wherever the constant starts
    p = ops.parameter([-1, k], np.float32)
    blob = R.pack_operands((w, s, z, c))
    node = factory.create("MatMul3", [p.output(0)] + _consts((blob,) if packed else (w, s, z, c)),
                          {"group_size": gs, "k3_version": K3_VERSION})
    model = ov.Model([node.output(0)], [p])
    if source == "mmapped_ir":
        ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
        model = core.read_model(tmp_path / "m.xml")
    cm = core.compile_model(model, "CPU", F32)
    x = rng.standard_normal((2, k)).astype(np.float32)
    ref = R.matmul3_ref(x, w, s, z, c, gs)
    import ctypes
    import sys

    import openvino_ext

    stats = ctypes.CDLL(str(openvino_ext.library_path())).nncf_moe3_weight_pages  # the library the Core loaded
    before, after = (ctypes.c_int64 * 4)(), (ctypes.c_int64 * 4)()
    stats(before)
    for _ in range(2):  # first call sets the pages up, second reads the prepared copy / collapsed range
        assert _rel(cm(x)[0], ref) < 2e-5
    stats(after)
    copied = after[0] - before[0]
    if source == "mmapped_ir" and sys.platform.startswith("linux"):
        # the weight tensor (or the whole packed blob), once (the unpacked scales are < 2 MB)
        assert copied == 1 and after[1] - before[1] == (blob.nbytes if packed else w.nbytes)
    elif source == "in_memory":
        assert copied == 0  # heap memory is collapsed in place (when the kernel supports it), never copied
    want = blob if packed else w
    wconst = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.u8
              and tuple(op.get_output_shape(0)) == want.shape]
    assert len(wconst) == 1 and np.array_equal(wconst[0].get_data(), want)


def test_ops_roundtrip_through_ir(ext, tmp_path):
    """visit_attributes: an IR with MatMul3 / MoE3 / MoE3R serializes and reads back (with the extension) unchanged."""
    factory, core = ext
    rng = np.random.default_rng(3)
    e, h, inter, gs = 4, 64, 64, 32
    weights = _moe_case(rng, e, h, inter, gs, "int3_asym")
    x = ops.parameter([-1, h], np.float32)
    logits = ops.parameter([-1, e], np.float32)
    moe = factory.create("MoE3", [x.output(0), logits.output(0)] + _consts(weights),
                         {"top_k": 2, "normalize_topk": False, "group_size": gs,
                          "k3_version": K3_VERSION})
    wr = rng.standard_normal((e, h)).astype(np.float32) * 0.2
    moe_r = factory.create("MoE3R", [moe.output(0)] + _consts([wr] + weights),
                           {"top_k": 3, "normalize_topk": True, "group_size": gs, "k3_version": K3_VERSION})
    w, s, z, c = R.random_case(rng, 16, h, gs, "nf3")
    mm = factory.create("MatMul3", [moe_r.output(0)] + _consts((w, s, z, c)), {"group_size": gs, "k3_version": K3_VERSION})
    model = ov.Model([mm.output(0)], [x, logits])
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    xml = (tmp_path / "m.xml").read_text()
    assert 'type="MoE3" version="nncf_moe3"' in xml and 'type="MatMul3" version="nncf_moe3"' in xml
    assert 'type="MoE3R" version="nncf_moe3"' in xml
    assert 'normalize_topk="false"' in xml and 'top_k="2"' in xml and 'top_k="3"' in xml
    back = core.read_model(tmp_path / "m.xml")
    xv = rng.standard_normal((5, h)).astype(np.float32)
    lv = rng.standard_normal((5, e)).astype(np.float32)
    a = core.compile_model(model, "CPU", F32)([xv, lv])[0]
    b = core.compile_model(back, "CPU", F32)([xv, lv])[0]
    np.testing.assert_array_equal(a, b)
    y1 = R.moe3_ref(xv, lv, *weights, top_k=2, normalize_topk=False, group_size=gs)
    y2 = R.moe3r_ref(y1, wr, *weights, top_k=3, normalize_topk=True, group_size=gs)
    ref = R.matmul3_ref(y2, w, s, z, c, gs)
    assert _rel(a, ref) < 5e-5


def test_default_precision_compiles(ext):
    """The CPU plugin converts f16 constants of unknown ops to f32; the ops accept both (default bf16 hint too)."""
    factory, core = ext
    rng = np.random.default_rng(4)
    w, s, z, c = R.random_case(rng, 32, 128, 32, "int3_sym")
    p = ops.parameter([-1, 128], np.float32)
    node = factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c)), {"group_size": 32, "k3_version": K3_VERSION})
    cm = core.compile_model(ov.Model([node.output(0)], [p]), "CPU")
    x = rng.standard_normal((2, 128)).astype(np.float32)
    assert _rel(cm(x)[0], R.matmul3_ref(x, w, s, z, c, 32)) < 1e-2


def test_bad_operands_rejected(ext):
    factory, _ = ext
    rng = np.random.default_rng(5)
    w, s, z, c = R.random_case(rng, 8, 64, 32, "int3_sym")
    p = ops.parameter([-1, 64], np.float32)
    with pytest.raises(Exception, match="12 bytes"):
        factory.create("MatMul3", [p.output(0)] + _consts((w[..., :8], s, z, c)), {"group_size": 32, "k3_version": K3_VERSION})
    with pytest.raises(Exception, match="codebook"):
        factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c[:4])), {"group_size": 32, "k3_version": K3_VERSION})
    p16 = ops.parameter([-1, 64], np.float16)  # activations: f32 or bf16 only
    with pytest.raises(Exception, match="X must be f32 or bf16"):
        factory.create("MatMul3", [p16.output(0)] + _consts((w, s, z, c)), {"group_size": 32, "k3_version": K3_VERSION})


@pytest.mark.parametrize("attrs", [{"group_size": 32}, {"group_size": 32, "k3_version": 1}])
def test_other_k3_version_refused(ext, attrs, tmp_path):
    """Ops carrying another k3 layout version (or none: an IR transformed by an older build) are refused at graph
    construction and at read_model, instead of reading the weight bytes with the wrong layout."""
    factory, core = ext
    rng = np.random.default_rng(6)
    w, s, z, c = R.random_case(rng, 8, 64, 32, "int3_sym")
    p = ops.parameter([-1, 64], np.float32)
    with pytest.raises(Exception, match="layout version"):
        factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c)), attrs)
    node = factory.create("MatMul3", [p.output(0)] + _consts((w, s, z, c)), {"group_size": 32, "k3_version": K3_VERSION})
    ov.save_model(ov.Model([node.output(0)], [p]), tmp_path / "m.xml")
    xml = (tmp_path / "m.xml").read_text()
    assert f'k3_version="{K3_VERSION}"' in xml
    old = xml.replace(f' k3_version="{K3_VERSION}"', "" if "k3_version" not in attrs else ' k3_version="1"')
    (tmp_path / "old.xml").write_text(old)
    (tmp_path / "old.bin").write_bytes((tmp_path / "m.bin").read_bytes())
    with pytest.raises(Exception, match="layout version"):
        core.read_model(tmp_path / "old.xml")


# ---- randomized comparisons of the int8-activation GEMV / GEMM paths and the exact kernels (every ISA)
def _rand_cases(seed, n):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gs = int(rng.choice([32, 64, 128]))
        out.append(dict(m=[1, 7, 33, 128][i % 4], gs=gs, mode=["int3_sym", "int3_asym", "nf3"][i % 3],
                        n=int(rng.integers(1, 150)), k=gs * int(rng.integers(1, 9)), seed=int(rng.integers(1 << 30))))
    return out


def _check(y, ref, isa):
    """Exact kernels: rel 2e-5; int8 activations (like OpenVINO's dynamic quantization): max 3e-2, mean 6e-3 of
    max|ref| (measured over 30 seeds per MoE case: max <= 0.028, mean <= 0.005 for single tokens)."""
    err = np.abs(y - ref) / max(np.abs(ref).max(), 1e-12)
    if isa in QUANT_ISAS:
        assert err.max() < 3e-2 and err.mean() < 6e-3, (err.max(), err.mean())
    else:
        assert err.max() < 2e-5, err.max()


@pytest.mark.parametrize("case", _rand_cases(11, 12), ids=lambda c: f"m{c['m']}-n{c['n']}-k{c['k']}-g{c['gs']}-{c['mode']}")
def test_matmul3_random(ext, isa, case):
    rng = np.random.default_rng(case["seed"])
    w, s, z, c = R.random_case(rng, case["n"], case["k"], case["gs"], case["mode"])
    x = rng.standard_normal((case["m"], case["k"])).astype(np.float32)
    y = _matmul3_model(ext, case["k"], w, s, z, c, case["gs"])(x)[0]
    _check(y, R.matmul3_ref(x, w, s, z, c, case["gs"]), isa)


MOE_RANDOM = [  # (tokens, experts, hidden, inter, group_size, top_k, normalize, mode)
    (1, 16, 256, 192, 64, 8, True, "int3_sym"),
    (7, 16, 256, 128, 128, 8, True, "int3_asym"),
    (33, 4, 192, 96, 32, 1, False, "nf3"),
    (128, 16, 256, 192, 64, 8, True, "nf3"),
    (128, 8, 128, 320, 32, 2, False, "int3_asym"),
    (33, 5, 384, 128, 128, 3, True, "int3_sym"),
    (7, 3, 128, 64, 64, 3, False, "nf3"),  # every expert selected by every token
    (1, 16, 256, 256, 128, 8, True, "nf3"),  # one token (decode), group 128
    (1, 12, 384, 128, 128, 4, False, "int3_asym"),
    (1, 5, 98, 98, 98, 2, True, "int3_sym"),  # per-channel groups, H not a multiple of 32
    (1, 20, 128, 64, 32, 17, True, "int3_sym"),  # more than 16 experts selected
]


@pytest.mark.parametrize("t,e,h,inter,gs,k,norm,mode", MOE_RANDOM)
def test_moe3_random(ext, isa, t, e, h, inter, gs, k, norm, mode):
    """Prefill-sized token counts: experts get 0..T tokens, some through the GEMV (<= 4) and some the GEMM."""
    rng = np.random.default_rng(_seed(t, e, h, inter, gs, k, mode))
    weights = _moe_case(rng, e, h, inter, gs, mode)
    x = rng.standard_normal((t, h)).astype(np.float32)
    logits = (rng.standard_normal((t, e)) * 2).astype(np.float32)
    y = _moe3_model(ext, h, e, weights, k, norm, gs)([x, logits])[0]
    ref = R.moe3_ref(x, logits, *weights, top_k=k, normalize_topk=norm, group_size=gs)
    _check(y, ref, isa)


@pytest.mark.parametrize("t", [1, 3, 20])
def test_moe3_routing_ties(ext, isa, t):
    """Equal router logits: the top-k takes the lower expert index first (the reference's stable order), also when
    the tie straddles the top-k boundary."""
    rng = np.random.default_rng(_seed(t, "ties"))
    e, h, inter, gs, k = 12, 64, 64, 32, 3
    weights = _moe_case(rng, e, h, inter, gs, "int3_sym")
    x = rng.standard_normal((t, h)).astype(np.float32)
    logits = np.zeros((t, e), np.float32)
    for i in range(t):  # 4 equal top logits at random positions (only 3 are taken), the rest equal and lower
        logits[i, rng.choice(e, 4, replace=False)] = 1.5
    y = _moe3_model(ext, h, e, weights, k, True, gs)([x, logits])[0]
    ref = R.moe3_ref(x, logits, *weights, top_k=k, normalize_topk=True, group_size=gs)
    _check(y, ref, isa)
    # the other order would give a different result: the tie decides which experts run
    idx, _ = R.route(logits, k, True)
    assert all(list(row) == sorted(row) for row in idx)


def _moe3r_model(ext, h, router_weight, weights, top_k, norm, gs):
    factory, core = ext
    x = ops.parameter([-1, h], np.float32)
    node = factory.create("MoE3R", [x.output(0)] + _consts([router_weight] + list(weights)),
                          {"top_k": top_k, "normalize_topk": norm, "group_size": gs, "k3_version": K3_VERSION})
    return core.compile_model(ov.Model([node.output(0)], [x]), "CPU", F32)


MOE3R_CASES = [  # (tokens, experts, hidden, inter, group_size, top_k, normalize, mode)
    (1, 16, 256, 192, 64, 8, True, "int3_sym"),  # decode: router GEMM on the calling thread
    (3, 5, 100, 100, 100, 2, False, "int3_asym"),  # H % 16 != 0 (per-channel groups): zero-padded router GEMM
    (20, 5, 100, 100, 100, 2, True, "nf3"),  # ... and in prefill (token chunks over the padded copy)
    (33, 8, 128, 64, 32, 2, True, "nf3"),  # prefill: router GEMM over token chunks in parallel
    (128, 16, 256, 128, 128, 8, True, "int3_asym"),
    (2, 64, 1024, 128, 128, 8, True, "int3_sym"),  # decode with a large router (E x H >= 64K): expert chunks
]


@pytest.mark.parametrize("t,e,h,inter,gs,k,norm,mode", MOE3R_CASES)
def test_moe3r_matches_reference(ext, isa, t, e, h, inter, gs, k, norm, mode):
    """MoE3R (router MatMul inside the op) vs the numpy reference, and vs MoE3 fed the same logits."""
    rng = np.random.default_rng(_seed(t, e, h, inter, gs, k, mode, "r"))
    weights = _moe_case(rng, e, h, inter, gs, mode)
    x = rng.standard_normal((t, h)).astype(np.float32)
    wr = (rng.standard_normal((e, h)) * 2 / np.sqrt(h)).astype(np.float32)
    y = _moe3r_model(ext, h, wr, weights, k, norm, gs)(x)[0]
    _check(y, R.moe3r_ref(x, wr, *weights, top_k=k, normalize_topk=norm, group_size=gs), isa)
    # same routing as MoE3 on logits computed outside (ties aside: random logits have none)
    logits = (x.astype(np.float64) @ wr.T.astype(np.float64)).astype(np.float32)
    y3 = _moe3_model(ext, h, e, weights, k, norm, gs)([x, logits])[0]
    assert _rel(y, y3) < 1e-4


def _bf16(a):
    """Round f32 to bf16 (nearest even) and back to f32."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.view(np.float32)


def _bf16_io(ext, make, inputs):
    """Compile the op with a bf16 X (a Convert in front; the output read through a Convert to f32) and run it."""
    factory, core = ext
    x = ops.parameter([-1, inputs[0].shape[1]], np.float32)
    xb = ops.convert(x, ov.Type.bf16)
    node = make(factory, xb.output(0))
    assert node.get_output_element_type(0) == ov.Type.bf16
    m = ov.Model([ops.convert(node.output(0), ov.Type.f32).output(0)], [x])
    return core.compile_model(m, "CPU", F32)(inputs[0])[0]


def _check_bf16(y, ref, isa):
    """y really holds bf16 values and matches the reference rounded to bf16 (exact kernels: within bf16 rounding)."""
    assert np.array_equal(y, _bf16(y))
    if isa in QUANT_ISAS:
        _check(y, _bf16(ref), isa)
    else:
        np.testing.assert_allclose(y, _bf16(ref), rtol=0, atol=8e-3 * np.abs(ref).max())


@pytest.mark.parametrize("t", [1, 3, 40])
def test_bf16_activations(ext, isa, t):
    """X / Y in bf16 (transform(activations="bf16")): the ops compute in f32 on the widened input and round the
    result to nearest even -- MatMul3 and MoE3R vs the reference on the bf16-rounded input, rounded."""
    rng = np.random.default_rng(_seed(t, "bf16"))
    h, n, e, inter, gs = 256, 96, 8, 128, 64
    x = _bf16(rng.standard_normal((t, h)).astype(np.float32))
    w, s, z, c = R.random_case(rng, n, h, gs, "int3_asym")
    y = _bf16_io(ext, lambda f, xb: f.create("MatMul3", [xb] + _consts((w, s, z, c)),
                                            {"group_size": gs, "k3_version": K3_VERSION}), [x])
    _check_bf16(y, R.matmul3_ref(x, w, s, z, c, gs), isa)
    weights = _moe_case(rng, e, h, inter, gs, "nf3")
    wr = (rng.standard_normal((e, h)) / np.sqrt(h)).astype(np.float32)
    y = _bf16_io(ext, lambda f, xb: f.create("MoE3R", [xb] + _consts([wr] + weights),
                                            {"top_k": 2, "normalize_topk": True, "group_size": gs,
                                             "k3_version": K3_VERSION}), [x])
    _check_bf16(y, R.moe3r_ref(x, wr, *weights, top_k=2, normalize_topk=True, group_size=gs), isa)


@pytest.mark.parametrize("t,e,h", [(1, 16, 256), (3, 5, 100), (2, 64, 1024), (33, 8, 128)])
def test_moe3r_int8_router(ext, isa, t, e, h):
    """MoE3R with the router kept in 8 bits (u8 [E, H] + per-row scale / zero point, 14 inputs) vs the reference;
    decode with a small and a large (E x H >= 64K: expert chunks over the threads) router, prefill (token chunks)."""
    factory, core = ext
    rng = np.random.default_rng(_seed(t, e, h, "int8"))
    inter, gs = 64, 32 if h % 32 == 0 else h
    weights = _moe_case(rng, e, h, inter if gs <= inter else h, gs, "int3_asym")
    q = rng.integers(0, 256, (e, h)).astype(np.uint8)
    rs = (rng.uniform(0.5, 1.5, e) * 4 / np.sqrt(h) / 128).astype(np.float32)
    rz = rng.integers(100, 156, e).astype(np.float32)
    x = rng.standard_normal((t, h)).astype(np.float32)
    xp = ops.parameter([-1, h], np.float32)
    node = factory.create("MoE3R", [xp.output(0)] + _consts([q] + weights + [rs, rz]),
                          {"top_k": 2, "normalize_topk": True, "group_size": gs, "k3_version": K3_VERSION})
    y = core.compile_model(ov.Model([node.output(0)], [xp]), "CPU", F32)(x)[0]
    ref = R.moe3r_ref(x, q, *weights, router_scale=rs, router_zero_point=rz, top_k=2, normalize_topk=True,
                      group_size=gs)
    _check(y, ref, isa)
    # the 8-bit router gives the routing of its f32 dequantization (MoE3R with 12 inputs)
    wr = rs[:, None] * (q.astype(np.float32) - rz[:, None])
    y32 = _moe3r_model(ext, h, wr, weights, 2, True, gs)(x)[0]
    assert _rel(y, y32) < 1e-4


@pytest.mark.parametrize("t,e,h,inter,gs,mode", [
    (1, 16, 256, 128, 64, "int3_sym"),  # decode, scalar zero point (upstream INT3_SYM), router on the calling thread
    (3, 8, 96, 64, 32, "int3_asym"),  # H % 64 != 0: zero-padded activations; per-group zero points (group sums)
    (1, 64, 1024, 128, 128, "nf3"),  # decode, large router (E x H >= 64K): 16-expert chunks over the threads
    (40, 8, 128, 64, 32, "int3_asym"),  # prefill: token chunks over the threads, group sums per chunk
    (20, 5, 96, 96, 96, "int3_sym"),  # per-channel groups, padded, prefill
])
def test_moe3r_k3_router(ext, isa, t, e, h, inter, gs, mode):
    """MoE3R with the router kept in 3 bits (k3 codes [E, Hb, 12] + scales + zero points + codebook, 15 inputs: what
    transform() emits for upstream INT3_SYM's u3 router) vs the reference, and vs MoE3R fed the router's f32
    dequantization (12 inputs): the logits are exact f32 dot products in both."""
    factory, core = ext
    rng = np.random.default_rng(_seed(t, e, h, inter, gs, mode, "k3r"))
    weights = _moe_case(rng, e, h, inter, gs, mode)
    wr, sr, zr, cr = R.random_case(rng, e, h, gs, mode)
    x = rng.standard_normal((t, h)).astype(np.float32)
    xp = ops.parameter([-1, h], np.float32)
    node = factory.create("MoE3R", [xp.output(0)] + _consts([wr] + weights + [sr, zr, cr]),
                          {"top_k": 2, "normalize_topk": True, "group_size": gs, "k3_version": K3_VERSION})
    assert node.get_input_size() == 15
    y = core.compile_model(ov.Model([node.output(0)], [xp]), "CPU", F32)(x)[0]
    ref = R.moe3r_ref(x, wr, *weights, router_scale=sr, router_zero_point=zr, router_codebook=cr, top_k=2,
                      normalize_topk=True, group_size=gs)
    _check(y, ref, isa)
    w32 = R.dequantize(wr, sr, zr, cr, gs, h).astype(np.float32)
    y32 = _moe3r_model(ext, h, w32, weights, 2, True, gs)(x)[0]
    assert _rel(y, y32) < 1e-4


def test_moe3r_bad_operands_rejected(ext):
    factory, _ = ext
    rng = np.random.default_rng(8)
    e, h, inter, gs = 4, 64, 32, 32
    weights = _moe_case(rng, e, h, inter, gs, "int3_sym")
    x = ops.parameter([-1, h], np.float32)
    attrs = {"top_k": 2, "normalize_topk": True, "group_size": gs, "k3_version": K3_VERSION}
    with pytest.raises(Exception, match="disagree on the hidden size"):
        factory.create("MoE3R", [x.output(0)] + _consts([np.zeros((e, h + 32), np.float32)] + weights), attrs)
    with pytest.raises(Exception, match="disagree on the expert count"):
        factory.create("MoE3R", [x.output(0)] + _consts([np.zeros((e + 1, h), np.float32)] + weights), attrs)
    with pytest.raises(Exception, match="router_weight must be f32"):
        factory.create("MoE3R", [x.output(0)] + _consts([np.zeros((e, h), np.float16)] + weights), attrs)
    with pytest.raises(Exception, match="top_k 5 > expert count"):
        factory.create("MoE3R", [x.output(0)] + _consts([np.zeros((e, h), np.float32)] + weights), dict(attrs, top_k=5))
    q8, s8, z8 = np.zeros((e, h), np.uint8), np.ones(e, np.float32), np.zeros(e, np.float32)
    with pytest.raises(Exception, match="router_weight with router_scale / router_zero_point must be u8"):
        factory.create("MoE3R", [x.output(0)] + _consts([q8.astype(np.float32)] + weights + [s8, z8]), attrs)
    with pytest.raises(Exception, match=r"must be \[E\]"):
        factory.create("MoE3R", [x.output(0)] + _consts([q8] + weights + [s8[:2], z8]), attrs)
    with pytest.raises(Exception, match="takes 12 inputs"):
        factory.create("MoE3R", [x.output(0)] + _consts([q8] + weights + [s8]), attrs)
    w3, s3, z3, c3 = R.random_case(rng, e, h, gs, "int3_sym")
    with pytest.raises(Exception, match="does not hold H"):  # k3 router packed for another hidden size
        w_other = R.random_case(rng, e, h + 64, gs, "int3_sym")[0]
        factory.create("MoE3R", [x.output(0)] + _consts([w_other] + weights + [s3, z3, c3]), attrs)
    with pytest.raises(Exception, match="router k3 weights must be u8"):
        factory.create("MoE3R", [x.output(0)] + _consts([w3.astype(np.int8)] + weights + [s3, z3, c3]), attrs)
    with pytest.raises(Exception, match="router scales must be f16"):
        factory.create("MoE3R", [x.output(0)] + _consts([w3] + weights + [s3.astype(np.int32), z3, c3]), attrs)
    with pytest.raises(Exception, match="codebook must be"):
        factory.create("MoE3R", [x.output(0)] + _consts([w3] + weights + [s3, z3, c3.astype(np.int32)]), attrs)


def test_moe3_large_activations(ext, isa):
    """SwiGLU's vectorized exp saturates cleanly (gate values far outside [-88, 88])."""
    rng = np.random.default_rng(21)
    e, h, inter, gs = 4, 128, 64, 32
    weights = _moe_case(rng, e, h, inter, gs, "int3_sym")
    x = (rng.standard_normal((9, h)) * 300).astype(np.float32)
    logits = rng.standard_normal((9, e)).astype(np.float32)
    y = _moe3_model(ext, h, e, weights, 2, True, gs)([x, logits])[0]
    with np.errstate(over="ignore"):
        ref = R.moe3_ref(x, logits, *weights, top_k=2, normalize_topk=True, group_size=gs)
    assert np.isfinite(y).all()
    _check(y, ref, isa)


@pytest.mark.parametrize("kern", QUANT_ISAS)
@pytest.mark.parametrize("mode", ["int3_sym", "int3_asym", "nf3"])
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_q8_gemm_equals_gemv(ext, monkeypatch, mode, gs, kern):
    """The int8 GEMM (M > 4: unpacked 64-row tiles, 6-token VNNI micro-kernel or 32x32 AMX tiles; 256-bit forms:
    16-row tiles, 6- / 4-token micro-kernels) and the int8 GEMV
    (M <= 4) quantize the activations identically, so row-by-row results agree to float rounding; covers row and
    token tails (and, for AMX, the fallback to the VNNI GEMM at group size 32)."""
    import openvino_ext

    monkeypatch.setenv("NNCF_MOE3_ISA", _forced_isa(kern))
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    if openvino_ext.isa() != kern:
        pytest.skip(f"CPU lacks {kern}")
    rng = np.random.default_rng(gs)
    n, k = 150, 8 * gs  # 150 rows: 2 full 64-row tiles + a 22-row tail
    w, s, z, c = R.random_case(rng, n, k, gs, mode)
    cm = _matmul3_model(ext, k, w, s, z, c, gs)
    x = rng.standard_normal((23, k)).astype(np.float32)  # 3 full 6-token micro-tiles + a 5-token tail
    y = cm(x)[0]
    rows = np.concatenate([cm(x[i:i + 1])[0] for i in range(23)])
    np.testing.assert_allclose(y, rows, rtol=1e-5, atol=1e-5 * np.abs(rows).max())


def test_q8_per_channel_k_not_multiple_of_32(ext, monkeypatch):
    """Per-channel groups (gs = K = 100, tail block zero-padded) on the int8 GEMV and GEMM."""
    import openvino_ext

    monkeypatch.delenv("NNCF_MOE3_ISA", raising=False)
    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    if openvino_ext.isa() != "avx512_vnni":
        pytest.skip("CPU lacks AVX512-VNNI/VBMI")
    rng = np.random.default_rng(3)
    for mode in ("int3_sym", "int3_asym", "nf3"):
        w, s, z, c = R.random_case(rng, 70, 100, 100, mode)
        cm = _matmul3_model(ext, 100, w, s, z, c, 100)
        for m in (1, 3, 9):
            x = rng.standard_normal((m, 100)).astype(np.float32)
            _check(cm(x)[0], R.matmul3_ref(x, w, s, z, c, 100), "avx512_vnni")


@pytest.mark.parametrize("layout", ["split", "tight"])
@pytest.mark.parametrize("act_quant", ["0", "1"])
def test_transform_both_layouts_prefill(ext, monkeypatch, layout, act_quant):
    """An NNCF-form u3 decompression subgraph in either u3 byte layout -> transform("cpu") -> MatMul3, prefill and
    decode token counts, exact and int8 kernels, against the numpy dequantization of the same codes."""
    import openvino_ext
    from openvino_ext import u3

    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", act_quant)
    rng = np.random.default_rng(8)
    n, k, gs = 96, 256, 64
    codes = rng.integers(0, 8, (n, k // gs, gs)).astype(np.uint8)
    scale = (rng.uniform(0.5, 1.5, (n, k // gs, 1)) * 0.02).astype(np.float16)
    t = ov.Tensor(ov.Type.u3, ov.Shape(list(codes.shape)))
    t.data.view(np.uint8).reshape(-1)[:] = u3.pack(codes.reshape(-1), layout)[: t.data.view(np.uint8).size]
    wq = ov.op.Constant(t)
    wf = ops.multiply(ops.subtract(ops.convert(wq, ov.Type.f16), ops.convert(ops.constant(np.int8(4)), ov.Type.f16)),
                      ops.constant(scale))
    wf = ops.convert(ops.reshape(wf, ops.constant(np.array([n, k], np.int64)), False), ov.Type.f32)
    p = ops.parameter([-1, k], np.float32)
    model = ov.Model([ops.matmul(p, wf, False, True)], [p])
    model.set_rt_info(layout, ["nncf_moe3", "u3_layout"])
    openvino_ext.transform(model, "cpu", activations="f32")
    assert any(op.get_type_name() == "MatMul3" for op in model.get_ordered_ops())
    cm = ext[1].compile_model(model, "CPU", F32)
    wref = (codes.astype(np.float32) - 4) * scale.astype(np.float32)
    for m in (1, 7, 33):
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = x @ wref.reshape(n, k).T
        _check(cm(x)[0], ref, "avx512_vnni" if act_quant == "1" and openvino_ext.isa() == "avx512_vnni" else "exact")


@pytest.mark.parametrize("forced", ["avx512", "avx2", "scalar"])
def test_isa_forced_in_subprocess(forced):
    """NNCF_MOE3_ISA lowers the kernel ISA (read per call; checked here in fresh processes as the op would see it)."""
    import subprocess
    import sys

    import openvino_ext
    from openvino_ext.build import BuildError

    try:
        openvino_ext.library_path(build=True)
    except BuildError as e:
        pytest.skip(str(e))
    code = "import openvino_ext; print(openvino_ext.isa())"
    env = dict(os.environ, NNCF_MOE3_ISA=forced, NNCF_MOE3_ACT_QUANT="0")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    best = subprocess.run([sys.executable, "-c", code], env={k: v for k, v in env.items() if k != "NNCF_MOE3_ISA"},
                          capture_output=True, text=True, check=True).stdout.strip()
    order = ["scalar", "avx2", "avx512"]
    assert got == (forced if order.index(forced) <= order.index(best) else best)


def test_isa_unknown_name_warns():
    """An unknown NNCF_MOE3_ISA is named on stderr (once) and the best kernels run; the kernel names that isa()
    reports are accepted as values too."""
    import subprocess
    import sys

    import openvino_ext
    from openvino_ext.build import BuildError

    try:
        openvino_ext.library_path(build=True)
    except BuildError as e:
        pytest.skip(str(e))
    code = "import openvino_ext; print(openvino_ext.isa()); print(openvino_ext.isa())"

    def run(value):
        env = dict(os.environ, NNCF_MOE3_ISA=value)
        env.pop("NNCF_MOE3_ACT_QUANT", None)
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)

    best = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k not in ("NNCF_MOE3_ISA", "NNCF_MOE3_ACT_QUANT")})
    r = run("avx3000")
    assert r.stdout == best.stdout
    assert r.stderr.count("unknown NNCF_MOE3_ISA=avx3000") == 1
    name = best.stdout.split()[0]
    if name in ("avx512_vnni", "avx2_vnni", "avx2_int8"):
        r = run(name)
        assert r.stdout.split()[0] == name and "unknown" not in r.stderr


_GFNI_SCRIPT = r"""
import sys, numpy as np, openvino as ov, openvino_ext
from openvino import opset13 as ops
from openvino.utils.node_factory import NodeFactory
from openvino_ext import reference as R
f = NodeFactory(); f.add_extension(str(openvino_ext.library_path()))
core = ov.Core(); openvino_ext.register(core)
rng = np.random.default_rng(3)
outs = []
for mode, gs, k, m in (("int3_asym", 64, 320, 1), ("nf3", 32, 96, 3), ("int3_sym", 128, 512, 9)):
    w, s, z, c = R.random_case(rng, 77, k, gs, mode)
    p = ops.parameter([-1, k], np.float32)
    node = f.create("MatMul3", [p.output(0)] + [ops.constant(a).output(0) for a in (w, s, z, c)],
                    {"group_size": gs, "k3_version": R.K3_VERSION})
    cm = core.compile_model(ov.Model([node.output(0)], [p]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outs.append(cm(rng.standard_normal((m, k)).astype(np.float32))[0].ravel())
np.save(sys.argv[1], np.concatenate(outs))
"""


def test_gfni_unpack_identical(tmp_path, monkeypatch):
    """The GFNI unpack (default where the CPU has GFNI) and the shift+and unpack give bit-identical results (GEMV and
    GEMM, odd-block groups, NF3 LUT); NNCF_MOE3_GFNI is read once per process, so each setting runs in its own."""
    import subprocess
    import sys

    import openvino_ext

    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    monkeypatch.delenv("NNCF_MOE3_ISA", raising=False)
    if openvino_ext.isa() != "avx512_vnni":
        pytest.skip(f"int8 VNNI kernels not active on this CPU ({openvino_ext.isa()})")
    res = {}
    for v in ("0", "1"):
        out = tmp_path / f"y{v}.npy"
        subprocess.run([sys.executable, "-c", _GFNI_SCRIPT, str(out)], check=True,
                       env=dict(os.environ, NNCF_MOE3_GFNI=v))
        res[v] = np.load(out)
    assert res["0"].size == 77 * (1 + 3 + 9) and np.isfinite(res["0"]).all()
    np.testing.assert_array_equal(res["0"], res["1"])


# ---- packed operands (transform(.., "cpu") default): X (+ MoE3's logits) and ONE u8 constant per op
def _packed_forms(rng):
    """(op type, leading inputs as arrays, constant operands, attributes, reference output) per op form."""
    t, e, h, inter, gs = 3, 8, 128, 64, 32
    forms = []
    w, s, z, c = R.random_case(rng, 40, 256, 64, "int3_asym")
    x = rng.standard_normal((2, 256)).astype(np.float32)
    forms.append(("MatMul3", [x], [w, s, z, c], {"group_size": 64}, R.matmul3_ref(x, w, s, z, c, 64)))
    weights = _moe_case(rng, e, h, inter, gs, "nf3")
    x = rng.standard_normal((t, h)).astype(np.float32)
    moe = {"top_k": 2, "normalize_topk": True, "group_size": gs}
    logits = (rng.standard_normal((t, e)) * 2).astype(np.float32)
    forms.append(("MoE3", [x, logits], weights, moe, R.moe3_ref(x, logits, *weights, **moe)))
    wr = (rng.standard_normal((e, h)) / np.sqrt(h)).astype(np.float32)
    forms.append(("MoE3R", [x], [wr] + weights, moe, R.moe3r_ref(x, wr, *weights, **moe)))
    q = rng.integers(0, 256, (e, h)).astype(np.uint8)
    rs = (rng.uniform(0.5, 1.5, e) * 4 / np.sqrt(h) / 128).astype(np.float32)
    rz = rng.integers(100, 156, e).astype(np.float32)
    forms.append(("MoE3R", [x], [q] + weights + [rs, rz], moe,
                  R.moe3r_ref(x, q, *weights, router_scale=rs, router_zero_point=rz, **moe)))
    r3 = R.random_case(rng, e, h, gs, "int3_sym")
    forms.append(("MoE3R", [x], [r3[0]] + weights + list(r3[1:]), moe,
                  R.moe3r_ref(x, r3[0], *weights, router_scale=r3[1], router_zero_point=r3[2],
                              router_codebook=r3[3], **moe)))
    return forms


def _native_model(ext, op, leading, operands, attrs, packed):
    factory, core = ext
    params = [ops.parameter([-1, a.shape[1]], np.float32) for a in leading]
    consts = _consts([R.pack_operands(operands)] if packed else operands)
    node = factory.create(op, [p.output(0) for p in params] + consts, {**attrs, "k3_version": K3_VERSION})
    return ov.Model([node.output(0)], params)


@pytest.mark.parametrize("form", range(5), ids=["matmul3", "moe3", "moe3r_f32", "moe3r_u8", "moe3r_k3"])
def test_packed_operands_match_unpacked(ext, isa, form):
    """Every op form with its constant operands packed into one u8 input gives exactly the unpacked op's output
    (same kernels on views of the blob) and matches the reference."""
    _, core = ext
    op, leading, operands, attrs, ref = _packed_forms(np.random.default_rng(_seed("packed", form)))[form]
    packed = _native_model(ext, op, leading, operands, attrs, True)
    node = [n for n in packed.get_ordered_ops() if n.get_type_name() == op][0]
    assert node.get_input_size() == len(leading) + 1
    assert tuple(node.get_output_partial_shape(0))[-1] == ref.shape[-1]  # MatMul3: N read from the blob's header
    y = core.compile_model(packed, "CPU", F32)(leading)[0]
    y_unpacked = core.compile_model(_native_model(ext, op, leading, operands, attrs, False), "CPU", F32)(leading)[0]
    np.testing.assert_array_equal(y, y_unpacked)
    _check(y, ref, isa)


def test_packed_operands_ir_roundtrip(ext, tmp_path):
    """A packed op survives save_model / read_model (the blob is an ordinary u8 Constant)."""
    _, core = ext
    op, leading, operands, attrs, ref = _packed_forms(np.random.default_rng(3))[4]
    ov.save_model(_native_model(ext, op, leading, operands, attrs, True), tmp_path / "m.xml")
    y = core.compile_model(core.read_model(tmp_path / "m.xml"), "CPU", F32)(leading)[0]
    _check(y, ref, "avx512")


def test_packed_operands_bad_blob(ext):
    """Malformed packed operands raise clear errors: at construction for the header (magic, section count), at the
    first inference for operands the unpacked op would refuse (checked by the unpacked op's own validation)."""
    factory, core = ext
    op, leading, operands, attrs, _ = _packed_forms(np.random.default_rng(4))[0]
    x = ops.parameter([-1, 256], np.float32)
    a = {**attrs, "k3_version": K3_VERSION}
    blob = R.pack_operands(operands)
    bad = blob.copy()
    bad[0] ^= 0xFF
    with pytest.raises(Exception, match="bad magic"):
        factory.create("MatMul3", [x.output(0)] + _consts([bad]), a)
    with pytest.raises(Exception, match=r"S, Z, C\), got 3 sections"):
        factory.create("MatMul3", [x.output(0)] + _consts([R.pack_operands(operands[:3])]), a)
    x128 = ops.parameter([-1, 128], np.float32)  # the blob's W holds K = 256: checked from its header
    with pytest.raises(Exception, match="does not hold K = 128"):
        factory.create("MatMul3", [x128.output(0)] + _consts([blob]), a)
    wrong = R.pack_operands([operands[0], operands[1].astype(np.uint8), operands[2], operands[3]])  # u8 scales
    node = factory.create("MatMul3", [x.output(0)] + _consts([wrong]), a)
    cm = core.compile_model(ov.Model([node.output(0)], [x]), "CPU", F32)
    with pytest.raises(Exception, match="scales must be f16"):
        cm(leading)
    moe = _packed_forms(np.random.default_rng(4))[2]
    xr = ops.parameter([-1, 128], np.float32)
    with pytest.raises(Exception, match="packed operands hold 10 sections"):
        factory.create("MoE3R", [xr.output(0)] + _consts([R.pack_operands(moe[2][1:])]),
                       {**moe[3], "k3_version": K3_VERSION})
    with pytest.raises(ValueError, match="bad magic"):
        R.unpack_operands(bad)
    trunc = blob[:100].copy()
    with pytest.raises(ValueError, match="corrupt header|out of bounds"):
        R.unpack_operands(trunc)


def _rand_matmul3(ext, case):
    """A compiled random MatMul3 of one _rand_cases-style case and its input."""
    rng = np.random.default_rng(case["seed"])
    w, s, z, c = R.random_case(rng, case["n"], case["k"], case["gs"], case["mode"])
    return _matmul3_model(ext, case["k"], w, s, z, c, case["gs"]), rng.standard_normal((case["m"], case["k"])).astype(
        np.float32)


@pytest.mark.parametrize("kern", ["avx2_vnni", "avx2_int8"])
@pytest.mark.parametrize("case", _rand_cases(23, 9), ids=lambda c: f"m{c['m']}-n{c['n']}-k{c['k']}-g{c['gs']}-{c['mode']}")
def test_avx2_q8_matches_avx512_vnni(ext, monkeypatch, case, kern):
    """The 256-bit int8 kernels (AVX-VNNI or plain-AVX2 dot product) quantize the activations and build the levels
    exactly as the AVX-512 VNNI ones, so both give the same products up to float summation order (decode GEMV and
    the prefill path)."""
    import openvino_ext

    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    monkeypatch.setenv("NNCF_MOE3_ISA", _forced_isa(kern))
    if openvino_ext.isa() != kern:
        pytest.skip(f"CPU lacks {kern}")
    monkeypatch.setenv("NNCF_MOE3_ISA", "avx512")
    if openvino_ext.isa() != "avx512_vnni":
        pytest.skip("CPU lacks AVX512-VNNI (nothing to compare with)")
    cm, x = _rand_matmul3(ext, case)
    y512 = cm(x)[0]
    monkeypatch.setenv("NNCF_MOE3_ISA", _forced_isa(kern))
    y256 = cm(x)[0]
    np.testing.assert_allclose(y256, y512, rtol=1e-4, atol=1e-5 * np.abs(y512).max())


@pytest.mark.parametrize("case", [dict(m=m, n=n, k=k, gs=gs, mode=mode, seed=i) for i, (m, n, k, gs, mode) in enumerate(
    [(1, 135, 256, 64, "int3_sym"), (3, 77, 640, 128, "int3_asym"), (4, 50, 288, 96, "nf3"), (2, 9, 2304, 32, "nf3"),
     (7, 101, 64, 64, "int3_asym"), (128, 8, 224, 32, "int3_sym"), (33, 40, 768, 128, "int3_sym"),
     (17, 61, 4096, 4096, "int3_asym"), (33, 101, 384, 64, "nf3"), (9, 88, 224, 32, "nf3")])],
    ids=lambda c: f"m{c['m']}-n{c['n']}-k{c['k']}-g{c['gs']}-{c['mode']}")
def test_avx2_int8_equals_avx2_vnni(ext, monkeypatch, case):
    """vpmaddubsw (16-bit partial sums, widened per chunk) and vpdpbusd compute the same exact integer sums: with the
    same order of float operations (decode GEMV; prefill GEMM of integer codebooks, flushed per group) the outputs
    are bit-identical. Prefill differs in float summation order where the int16 sums are flushed more than once per
    group (> 64 values: 16-k-step chunks) and for NF3 (plain AVX2's tile holds signed levels, the 128 moved into the
    level offset): rtol 1e-5 there."""
    import openvino_ext

    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    monkeypatch.setenv("NNCF_MOE3_ISA", "avx2")
    if openvino_ext.isa() != "avx2_vnni":
        pytest.skip("CPU lacks AVX-VNNI (nothing to compare with)")
    cm, x = _rand_matmul3(ext, case)
    yv = cm(x)[0]
    monkeypatch.setenv("NNCF_MOE3_ISA", "avx2_int8")
    assert openvino_ext.isa() == "avx2_int8"
    yi = cm(x)[0]
    if case["m"] <= 4 or (case["mode"] != "nf3" and case["gs"] <= 64):
        np.testing.assert_array_equal(yi, yv)
    else:
        np.testing.assert_allclose(yi, yv, rtol=1e-5, atol=1e-6 * np.abs(yv).max())


@pytest.mark.parametrize("mode", ["int3_sym", "int3_asym", "nf3"])
@pytest.mark.parametrize("gs", [128, 1024, 4096])
def test_avx2_int8_no_saturation(ext, monkeypatch, mode, gs):
    """Worst case for the 16-bit partial sums of the plain-AVX2 dot product: every activation quantizes to +-127 and
    every row holds one code along K (row r: code r % 8, so the largest level of every codebook is there), over
    group sizes that take one chunk, several chunks (1024) and a 4096-wide per-channel group; a saturated vpmaddubsw
    or int16 sum would be off by tens of percent."""
    import openvino_ext

    from nncf_moe3.quantization import NF3_CODEBOOK

    monkeypatch.setenv("NNCF_MOE3_ACT_QUANT", "1")
    monkeypatch.setenv("NNCF_MOE3_ISA", "avx2_int8")
    if openvino_ext.isa() != "avx2_int8":
        pytest.skip("CPU lacks AVX2")
    n, k = 16, 4096
    rng = np.random.default_rng(gs)
    codes = np.repeat(np.arange(n)[:, None] % 8, k, axis=1)
    g = k // gs
    s = (rng.uniform(0.5, 1.5, (n, g)) * 0.02).astype(np.float16)
    if mode == "int3_sym":
        z, c = np.array([4], np.uint8), R.INT_CODEBOOK.astype(np.float16)
    elif mode == "int3_asym":
        z, c = rng.integers(0, 8, (n, g)).astype(np.uint8), R.INT_CODEBOOK.astype(np.float16)
    else:
        z, c = np.array([0], np.uint8), NF3_CODEBOOK.astype(np.float16)
    w = R.pack_k3(codes)
    cm = _matmul3_model(ext, k, w, s, z, c, gs)
    x = np.stack([np.full(k, 3.0), np.full(k, -2.5), np.where(np.arange(k) % 3, 1.5, -1.5)]).astype(np.float32)
    ref = R.matmul3_ref(x, w, s, z, c, gs)
    y = cm(x)[0]
    # int codebooks: exact integer sums (only f16 / f32 rounding); NF3: its 8-bit levels round the codebook
    assert _rel(y, ref) < (1e-4 if mode != "nf3" else 1e-2)


@pytest.mark.parametrize("codebook", [[-7, -5, -3, -1, 1, 3, 5, 7], [0, 1, 2, 4, 8, 16, 32, 255]],
                         ids=["odd_integers", "range_255"])
@pytest.mark.parametrize("m", [1, 3, 21])
def test_integer_codebook_not_the_codes(ext, isa, codebook, m):
    """Integer codebooks whose levels are not the codes themselves (a level table on every int8 path; with a level
    range of 255 plain AVX2's prefill GEMM cannot shift the levels to signed bytes and runs the GEMV over token
    chunks) against the numpy reference."""
    rng = np.random.default_rng(len(codebook) * m + codebook[-1])
    n, k, gs = 70, 512, 128
    w, s, _, _ = R.random_case(rng, n, k, gs, "int3_sym")
    c = np.array(codebook, np.float16)
    z = np.array([0], np.uint8)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = _matmul3_model(ext, k, w, s, z, c, gs)(x)[0]
    ref = R.matmul3_ref(x, w, s, z, c, gs)
    assert _rel(y, ref) < _tol(isa, 2e-5)
