"""openvino_ext/gpu/custom_layers.xml against the rules of OpenVINO's GPU custom-layer parser
(src/plugins/intel_gpu/src/plugin/custom_layer.cpp, ops/custom.cpp, graph/impls/ocl/custom_primitive.cpp), and the
XML's kernels executed on an OpenCL device (PoCL in CI) with the plugin's JIT header emulated."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from openvino_ext.gpu import config_path, harness as H, kernel_dir
from openvino_ext.reference import K3_VERSION, matmul3_ref, moe3_ref, random_case

# Op attributes as the CPU extension's visit_attributes must expose them (names and kinds).
OP_ATTRIBUTES = {"MatMul3": {"group_size": int, "k3_version": int},
                 "MoE3": {"top_k": int, "normalize_topk": bool, "group_size": int, "k3_version": int}}
OP_INPUTS = {"MatMul3": 5, "MoE3": 12}
FORMATS = {"BFYX", "bfyx", "BYXF", "byxf", "FYXB", "fyxb", "YXFB", "yxfb", "ANY", "any"}


def _layers():
    text = Path(config_path()).read_text()
    body = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
    root = ET.fromstring(f"<root>{body}</root>", parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    return list(root)


def _eval(rule: str, v: dict) -> int:
    """Port of the plugin's SimpleMathExpression (shunting-yard; + - * / % on int, parentheses, b f y x)."""
    prec = {"+": 0, "-": 0, "*": 1, "/": 1, "%": 1}
    out, ops, i = [], [], 0
    while i < len(rule):
        ch = rule[i]
        if ch in " \t":
            i += 1
            continue
        if ch.isdigit():
            j = i
            while j < len(rule) and rule[j].isdigit():
                j += 1
            out.append(int(rule[i:j]))
            i = j
            continue
        if ch in v:
            out.append(v[ch])
        elif ch in prec:
            while ops and ops[-1] in prec and prec[ops[-1]] >= prec[ch]:
                out.append(ops.pop())
            ops.append(ch)
        elif ch == "(":
            ops.append(ch)
        elif ch == ")":
            while ops and ops[-1] != "(":
                out.append(ops.pop())
            if not ops:
                raise ValueError(f"mismatched ) in {rule!r}")
            ops.pop()
        else:
            raise ValueError(f"illegal token {ch!r} in {rule!r}")
        i += 1
    while ops:
        if ops[-1] == "(":
            raise ValueError(f"mismatched ( in {rule!r}")
        out.append(ops.pop())
    st = []
    for t in out:
        if isinstance(t, int):
            st.append(t)
            continue
        b, a = st.pop(), st.pop()
        st.append({"+": a + b, "-": a - b, "*": a * b, "/": int(a / b), "%": a - int(a / b) * b}[t])
    if len(st) != 1:
        raise ValueError(f"illegal expression {rule!r}")
    return st[0]


def _vars(b, f, y, x):
    return {"b": b, "B": b, "f": f, "F": f, "y": y, "Y": y, "x": x, "X": x}


def test_xml_structure_matches_plugin_parser():
    nodes = _layers()
    first = next(i for i, n in enumerate(nodes) if n.tag == "CustomLayer")
    # LoadFromFile walks document_element() and ALL its next siblings (comments included) as CustomLayer nodes
    assert all(n.tag == "CustomLayer" for n in nodes[first:]), "only CustomLayer elements after the first one"
    layers = nodes[first:]
    assert sorted(n.get("name") for n in layers) == sorted(OP_ATTRIBUTES)
    for layer in layers:
        name = layer.get("name")
        assert layer.get("type") == "SimpleGPU" and layer.get("version") == "1"
        kernels = layer.findall("Kernel")
        assert len(kernels) == 1 and kernels[0].get("entry")
        kern = kernels[0]
        srcs = [s.get("filename") for s in kern.findall("Source")]
        assert srcs and srcs[0] == "k3_common.cl"
        for s in srcs:
            assert (Path(kernel_dir()) / s).is_file(), s
        src = "".join((Path(kernel_dir()) / s).read_text() for s in srcs)
        assert re.search(rf"__kernel\s+void\s+{kern.get('entry')}\s*\(", src), "entry point exists"
        for d in kern.findall("Define"):
            assert d.get("name") and d.get("param") in OP_ATTRIBUTES[name], (name, d.attrib)
            assert d.get("type") in ("int", "float", "int[]", "float[]") and d.get("default") is not None
            assert re.search(rf"\b{d.get('name')}\b", src), f"define {d.get('name')} unused by the kernel"
        assert {d.get("param") for d in kern.findall("Define")} == set(OP_ATTRIBUTES[name])
        bufs = layer.find("Buffers")
        assert bufs is not None and not bufs.findall("Data"), "weights must be inputs, <Data> is rejected"
        tensors = bufs.findall("Tensor")
        args = sorted(int(t.get("arg-index")) for t in tensors)
        assert args == list(range(len(tensors))), "arg-index contiguous from 0"
        ins = sorted(int(t.get("port-index")) for t in tensors if t.get("type") == "input")
        outs = [t for t in tensors if t.get("type") == "output"]
        assert ins == list(range(OP_INPUTS[name])) and len(outs) == 1 and outs[0].get("port-index") == "0"
        assert all(t.get("type") in ("input", "output") and t.get("format", "BFYX") in FORMATS for t in tensors)
        # kernel parameter count = number of Tensor nodes, in arg-index order
        sig = re.search(rf"__kernel\s+void\s+{kern.get('entry')}\s*\(([^)]*)\)", src).group(1)
        assert sig.count("__global") == len(tensors)
        assert len(layer.findall("CompilerOptions")) <= 1
        ws = layer.find("WorkSizes")
        assert ws is not None and ws.get("dim", "output") == "output"
        for rule in ws.get("global").split(",") + ws.get("local").split(","):
            assert rule == rule.strip() and _eval(rule, _vars(1, 1, 1, 1)) > 0  # IsLegalSizeRule: all vars = 1


def _jit(inputs, output, defines):
    """Header the plugin prepends (custom_primitive.cpp get_jit_constant + ops/custom.cpp layer defines)."""
    def dims(a):
        s = list(np.shape(a)) + [1] * (4 - np.ndim(a))
        return "(int []){ " + ", ".join(str(v) for v in s) + ", }"

    lines = [f"#define NUM_INPUTS {len(inputs)}"]
    lines += [f"#define INPUT{i}_DIMS {dims(a)}" for i, a in enumerate(inputs)]
    lines += [f"#define OUTPUT0_DIMS {dims(output)}"]
    lines += [f"#define {k} {v}" for k, v in defines.items()]
    return "\n".join(lines) + "\n"


def _run_layer(name, attrs, inputs, out_shape):
    import pyopencl as cl

    layer = next(n for n in _layers() if n.tag == "CustomLayer" and n.get("name") == name)
    kern = layer.find("Kernel")
    defines = {}
    for d in kern.findall("Define"):
        v = attrs.get(d.get("param"), d.get("default"))
        defines[d.get("name")] = int(v) if isinstance(v, bool) else v  # std::to_string(bool) -> 1 / 0
    src = "".join((Path(kernel_dir()) / s.get("filename")).read_text() for s in kern.findall("Source"))
    rt = H.runtime()
    out = np.zeros(out_shape, np.float32)
    prg = cl.Program(rt.ctx, _jit(inputs, out, defines) + src).build(
        options=layer.find("CompilerOptions").get("options").split())
    ws = layer.find("WorkSizes")
    shp = list(out_shape) + [1] * (4 - len(out_shape))
    v = _vars(*shp)
    gws = [_eval(r, v) for r in ws.get("global").split(",")]
    lws = [_eval(r, v) for r in ws.get("local").split(",")]
    bufs = [rt.buf(np.ascontiguousarray(a).reshape(-1)) for a in inputs]
    ybuf = rt.empty(out.nbytes)
    knl = cl.Kernel(prg, kern.get("entry"))
    knl.set_args(*bufs, ybuf)
    cl.enqueue_nd_range_kernel(rt.queue, knl, gws, lws)
    return rt.read(ybuf, out_shape)


needs_ocl = pytest.mark.skipif(H.available() is not None, reason=f"OpenCL unavailable: {H.available()}")


@needs_ocl
@pytest.mark.parametrize("mode,m", [("int3_asym", 1), ("nf3", 5)])
def test_matmul3_layer_runs_as_the_plugin_would(mode, m):
    rng = np.random.default_rng(21)
    w, s, z, c = random_case(rng, 45, 256, 64, mode)
    x = rng.standard_normal((m, 256)).astype(np.float32)
    y = _run_layer("MatMul3", {"group_size": 64, "k3_version": K3_VERSION}, [x, w, s, z, c], (m, 45))
    r = matmul3_ref(x, w, s, z, c, 64)
    assert np.abs(y - r).max() / np.abs(r).max() < 2e-5


@needs_ocl
@pytest.mark.parametrize("mode,t,norm", [("int3_sym", 1, True), ("int3_asym", 3, False)])
def test_moe3_layer_runs_as_the_plugin_would(mode, t, norm):
    rng = np.random.default_rng(22)
    e, h, i, gs, k = 5, 640, 96, 32, 2  # H > one 512-row hidden tile
    ops = []
    for n, kk in ((i, h), (i, h), (h, i)):
        ops += list(random_case(rng, n, kk, gs, mode, (e,)))[:3]
    c = random_case(rng, 1, 32, 32, mode)[3]
    x = rng.standard_normal((t, h)).astype(np.float32)
    lg = rng.standard_normal((t, e)).astype(np.float32)
    attrs = {"top_k": k, "normalize_topk": norm, "group_size": gs, "k3_version": K3_VERSION}
    y = _run_layer("MoE3", attrs, [x, lg, *ops, c], (t, h))
    r = moe3_ref(x, lg, *ops, c, top_k=k, normalize_topk=norm, group_size=gs)
    assert np.abs(y - r).max() / np.abs(r).max() < 2e-5


@needs_ocl
@pytest.mark.parametrize("attrs", [{"group_size": 64}, {"group_size": 64, "k3_version": 1}])
def test_layer_refuses_other_k3_versions(attrs):
    """An IR without k3_version (the XML default 1 = the old self-contained-block layout) or with another version
    must fail to build rather than read the weights in the wrong layout."""
    import pyopencl as cl

    rng = np.random.default_rng(23)
    w, s, z, c = random_case(rng, 8, 128, 64, "int3_sym")
    x = rng.standard_normal((1, 128)).astype(np.float32)
    with pytest.raises(cl.RuntimeError, match="layout version"):
        _run_layer("MatMul3", attrs, [x, w, s, z, c], (1, 8))


@needs_ocl
def test_layer_k_tail_blocks():
    """K = 96 (k3 pads each row to 128 values: Kb = 4 blocks, the last is all padding) and K = 80 with
    group_size == K (a partial 32-value block) through the MatMul3 layer; MoE3 with H = I = 80, group_size 80."""
    rng = np.random.default_rng(24)
    for k, gs in ((96, 32), (80, 80)):
        w, s, z, c = random_case(rng, 11, k, gs, "int3_asym")
        assert w.shape[1] == 2 * -(-k // 64)
        x = rng.standard_normal((3, k)).astype(np.float32)
        y = _run_layer("MatMul3", {"group_size": gs, "k3_version": K3_VERSION}, [x, w, s, z, c], (3, 11))
        r = matmul3_ref(x, w, s, z, c, gs)
        assert np.abs(y - r).max() / np.abs(r).max() < 2e-5, (k, gs)
    e, h, i, k = 4, 80, 80, 2
    ops = []
    for n, kk in ((i, h), (i, h), (h, i)):
        ops += list(random_case(rng, n, kk, 80, "nf3", (e,)))[:3]
    c = random_case(rng, 1, 32, 32, "nf3")[3]
    x = rng.standard_normal((2, h)).astype(np.float32)
    lg = rng.standard_normal((2, e)).astype(np.float32)
    attrs = {"top_k": k, "normalize_topk": True, "group_size": 80, "k3_version": K3_VERSION}
    y = _run_layer("MoE3", attrs, [x, lg, *ops, c], (2, h))
    r = moe3_ref(x, lg, *ops, c, top_k=k, normalize_topk=True, group_size=80)
    assert np.abs(y - r).max() / np.abs(r).max() < 2e-5
