"""CPU benchmark: native 3-bit MoE3 / MatMul3 (nncf_moe3 extension) vs stock OpenVINO INT4 / INT3 / widened u3->u4.

Workloads (graphs built directly from random codes, with exactly the decompression subgraphs NNCF / nncf-moe3 emit,
so ``openvino_ext.transform`` is exercised):

* ``moe``: a random-init transformers Qwen3-MoE with Qwen3-30B-A3B layer shapes (hidden 2048, 32 q / 4 KV heads
  x 128, expert intermediate 768, ``--experts`` experts, top-``--top-k``, ``--layers`` layers, vocab 1000), exported
  stateless by ``nncf_moe3.export`` (tiled MoE blocks); its attention and expert weights are then replaced by
  random-code decompression subgraphs (router, embeddings and lm_head stay f32). Decode = a 1-token forward (no KV
  cache, so attention over one token), prefill = a ``--prefill``-token forward.
* ``dense``: ``--layers`` chained 4096x4096 MatMuls (decode only).

Variants: ``int4`` (u4 + u4 zero point, g128: NNCF INT4_ASYM form, stock plugin), ``int3_stock`` (NNCF INT3_SYM: u3 +
scalar i8 zero point 4, g128; stock OV folds u3), ``widen`` (the INT3_SYM IR after ``transform(target="widen")``),
``moe3`` (the INT3_SYM IR after ``transform(target="cpu")``: MoE3R with the router inside + MatMul3, bf16 activation
edges where the CPU plugin runs bf16; run with the extension). Each variant runs in a fresh
subprocess that reads the IR from disk; "resident" = RSS after compile + runs minus the RSS of the same process
after loading the CPU plugin and the extension (a trivial model compiled and run). The MoE-stack decode times the
acceptance ratios use come from one more process that holds every MoE variant and times them in ``--rounds``
alternating rounds (drift and noise of this shared VM then hit all variants alike); that process also times
``moe3_s4`` (the session-4 op set on the same weights: ``transform(target="gpu")``, MoE3 taking the graph's router
logits, f32 activation edges), ``moe3_unpacked`` (the moe3 graph with the ops' constant operands as separate
inputs, ``transform(.., pack=False)``: what packing them into one input saves in the CPU plugin) and ``@f32`` rows: INT4, stock INT3 and MoE3 (from an IR transformed with
``activations="f32"``) under INFERENCE_PRECISION_HINT=f32, the CPU plugin's precision on CPUs without native bf16 / f16
(there stock INT3 computes with its f32-folded weights); the acceptance ratios are printed for both executions.

GB/s = bytes of compressed weights read per token (attention + router + the experts actually selected, codes +
scales + zero points, in the variant's storage format; for ``int3_stock`` the 3-bit size although OV reads its
folded copy) / time. Roofline = GB/s / read bandwidth measured in the same run at the same thread count
(``openvino_ext.read_bandwidth``: a 1 GiB AVX sum on the same threads).

    nncf-moe3 bench [--layers 8 --experts 16 --threads 2 --iters 20 --prefill 128]
    python examples/bench_cpu.py ...   (the same)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H, I_EXP, Q_DIM, KV_DIM, GS = 2048, 768, 4096, 512, 128
VOCAB = 1000  # distinct from every projection width (lm_head stays float)


# ----------------------------------------------------------------------------------------------------------------
# graph construction (parent process)
# ----------------------------------------------------------------------------------------------------------------
def _decompress(rng, lead, n, k, fmt):
    """Decompression subgraph output f32 [*lead, n, k] in NNCF's form; returns (output, bytes of storage)."""
    import openvino as ov
    from openvino import opset13 as ops

    from openvino_ext import u3

    g = k // GS
    shape = (*lead, n, g, GS)
    scale = ops.constant((rng.uniform(0.5, 1.5, (*lead, n, g, 1)) * (1.0 / np.sqrt(k)) / 4).astype(np.float16))
    if fmt == "int4":
        w = ops.constant(rng.integers(0, 16, shape, dtype=np.uint8), dtype=ov.Type.u4)
        zp = ops.constant(rng.integers(6, 10, (*lead, n, g, 1), dtype=np.uint8), dtype=ov.Type.u4)
        nbytes = np.prod(shape) // 2 + np.prod(shape[:-1]) * 2 + np.prod(shape[:-1]) // 2
    else:  # NNCF INT3_SYM
        w = u3.constant(rng.integers(0, 8, shape, dtype=np.uint8))
        zp = ops.constant(np.int8(4), dtype=ov.Type.i8)
        nbytes = np.prod(shape) * 3 // 8 + np.prod(shape[:-1]) * 2
    x = ops.subtract(ops.convert(w, ov.Type.f16), ops.convert(zp, ov.Type.f16))
    x = ops.multiply(x, scale)
    x = ops.reshape(x, ops.constant(np.array([*lead, n, k], dtype=np.int64)), special_zero=False)
    return ops.convert(x, ov.Type.f32), int(nbytes)


def build_moe(fmt, layers, experts, top_k, seed=0):
    """(ov.Model, bytes per decode token, bytes of all weights)."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)
    x_in = ops.parameter([-1, H], np.float32, name="x")
    x = x_in
    per_tok, total = 0, 0
    e = experts
    for _ in range(layers):
        wq, bq = _decompress(rng, (), Q_DIM, H, fmt)
        wk, bk = _decompress(rng, (), KV_DIM, H, fmt)
        wv, bv = _decompress(rng, (), KV_DIM, H, fmt)
        wo, bo = _decompress(rng, (), H, Q_DIM, fmt)
        q = ops.matmul(x, wq, False, True)
        kv = ops.add(ops.matmul(x, wk, False, True), ops.matmul(x, wv, False, True))
        mix = ops.add(q, ops.tile(kv, ops.constant(np.array([1, Q_DIM // KV_DIM], dtype=np.int64))))
        x = ops.add(x, ops.multiply(ops.matmul(mix, wo, False, True), ops.constant(np.float32(0.1))))
        attn = bq + bk + bv + bo
        # router (f32, as nncf-moe3 / optimum keep it high precision) + tiled experts, as export.py emits them
        x = ops.reshape(x, ops.constant(np.array([-1, H], dtype=np.int64)), False)
        wr = ops.constant((rng.standard_normal((e, H)) * 0.05).astype(np.float32))
        logits = ops.matmul(x, wr, False, True)
        topk = ops.topk(ops.softmax(logits, -1), ops.constant(np.int64(top_k)), -1, "max", "value", ov.Type.i64)
        wts = ops.divide(topk.output(0), ops.reduce_sum(topk.output(0), ops.constant(np.array([-1])), True))
        idx = ops.convert(topk.output(1), ov.Type.i32)
        rows = ops.gather(ops.shape_of(idx), ops.constant(np.array([0], dtype=np.int64)), ops.constant(np.int64(0)))
        zeros = ops.broadcast(ops.constant(np.float32(0)),
                              ops.concat([rows, ops.constant(np.array([e], dtype=np.int64))], 0))
        scat = ops.scatter_elements_update(zeros, idx, wts, ops.constant(np.int64(1)))
        r = ops.reshape(ops.transpose(scat, ops.constant(np.array([1, 0]))),
                        ops.constant(np.array([e, -1, 1], dtype=np.int64)), False)
        t = ops.reshape(ops.tile(x, ops.constant(np.array([e, 1], dtype=np.int64))),
                        ops.constant(np.array([e, -1, H], dtype=np.int64)), False)
        wg, bg = _decompress(rng, (e,), I_EXP, H, fmt)
        wu, bu = _decompress(rng, (e,), I_EXP, H, fmt)
        wd, bd = _decompress(rng, (e,), H, I_EXP, fmt)
        g = ops.swish(ops.matmul(t, wg, False, True))
        u = ops.matmul(t, wu, False, True)
        d = ops.reshape(ops.matmul(ops.multiply(g, u), wd, False, True),
                        ops.constant(np.array([e, -1, H], dtype=np.int64)), False)
        moe = ops.reduce_sum(ops.multiply(d, r), ops.constant(np.array([0], dtype=np.int64)), False)
        x = ops.add(x, moe)
        expert_bytes = (bg + bu + bd) // e
        per_tok += attn + e * H * 4 + top_k * expert_bytes
        total += attn + e * H * 4 + e * expert_bytes
    return ov.Model([x], [x_in]), per_tok, total


_EXPORTED = {}


def exported_qwen3_moe(layers, experts, top_k):
    """A random-init Qwen3-MoE of the real Qwen3-30B-A3B layer shapes, exported with nncf_moe3.export (tiled MoE
    blocks exactly as the compressor sees them; OpenVINO's CPU plugin turns them into GatherMatmul)."""
    key = (layers, experts, top_k)
    if key not in _EXPORTED:
        import torch
        from transformers import AutoModelForCausalLM

        from nncf_moe3.export import export_model, tiny_config

        cfg = tiny_config("qwen3_moe", hidden_size=H, num_hidden_layers=layers, num_attention_heads=Q_DIM // 128,
                          num_key_value_heads=KV_DIM // 128, head_dim=128, moe_intermediate_size=I_EXP,
                          intermediate_size=I_EXP, num_experts=experts, num_experts_per_tok=top_k, vocab_size=VOCAB,
                          initializer_range=0.02)
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(cfg).eval()
        _EXPORTED[key] = export_model(model, seq_len_hint=4)
        del model
    return _EXPORTED[key]


def build_moe_exported(fmt, layers, experts, top_k, seed=0):
    """The exported stack with every attention / expert weight replaced by a random-code decompression subgraph
    (router, embeddings, lm_head stay float). Returns (model, bytes per decode token, bytes of all weights)."""
    rng = np.random.default_rng(seed)
    model = exported_qwen3_moe(layers, experts, top_k).clone()
    per_tok, total = 0, 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "MatMul" or not op.get_attributes().get("transpose_b"):
            continue
        c = op.input_value(1).get_node()
        while c.get_type_name() == "Convert":
            c = c.input_value(0).get_node()
        if c.get_type_name() != "Constant":
            continue
        shape = tuple(c.get_output_shape(0))
        if len(shape) == 2 and shape[0] in (experts, VOCAB):  # router / lm_head: keep float
            per_tok += int(np.prod(shape)) * 4
            total += int(np.prod(shape)) * 4
            continue
        w, nbytes = _decompress(rng, shape[:-2], shape[-2], shape[-1], fmt)
        op.input(1).replace_source_output(w.output(0))
        total += nbytes
        per_tok += nbytes if len(shape) == 2 else nbytes * top_k // experts
    model.validate_nodes_and_infer_types()
    return model, per_tok, total


def build_dense(fmt, layers, n=4096, seed=1):
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)
    x_in = ops.parameter([-1, n], np.float32, name="x")
    x, tot = x_in, 0
    for _ in range(layers):
        w, b = _decompress(rng, (), n, n, fmt)
        x = ops.matmul(x, w, False, True)
        tot += b
    return ov.Model([x], [x_in]), tot, tot


def prepare(workdir: Path, args):
    """Write the IRs of every (workload, variant); return their metadata."""
    import openvino as ov

    import openvino_ext

    meta = {}
    for workload in ("moe", "dense"):
        for fmt in ("int4", "int3"):
            t0 = time.time()
            if workload == "moe":
                model, per_tok, total = build_moe_exported(fmt, args.layers, args.experts, args.top_k)
            else:
                model, per_tok, total = build_dense(fmt, args.layers)
            variants = {"int4": [("int4", None)], "int3": [("int3_stock", None), ("widen", "widen"), ("moe3", "cpu")]}
            for name, target in variants[fmt]:
                m = model.clone() if target else model
                if target:
                    openvino_ext.transform(m, target)
                path = workdir / f"{workload}_{name}.xml"
                ov.save_model(m, path, compress_to_fp16=False)
                bpt = per_tok
                if name == "widen":  # u4 codes instead of u3
                    bpt = int(per_tok * (0.5 + 2 / GS) / (0.375 + 2 / GS))
                meta[(workload, name)] = dict(path=str(path), bytes_per_token=bpt, total_bytes=total,
                                              custom=name == "moe3")
                del m
            if workload == "moe" and fmt == "int3":
                # interleaved-timing extras: the moe3 IR with f32 activation edges (for the f32-hint row) and the
                # session-4 op set (MoE3 taking the graph's router logits, f32 edges = transform target "gpu")
                for name, target, kw in (("moe3_f32act", "cpu", dict(activations="f32")), ("moe3_s4", "gpu", {}),
                                         ("moe3_unpacked", "cpu", dict(pack=False))):
                    m = openvino_ext.transform(model.clone(), target, **kw)
                    path = workdir / f"moe_{name}.xml"
                    ov.save_model(m, path, compress_to_fp16=False)
                    meta[("extra", name)] = dict(path=str(path), bytes_per_token=per_tok, total_bytes=total, custom=True)
                    del m
            print(f"  built {workload}/{fmt} in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
            del model
    return meta


# ----------------------------------------------------------------------------------------------------------------
# measurement (child process)
# ----------------------------------------------------------------------------------------------------------------
def child(spec: dict) -> dict:
    import openvino as ov

    from nncf_moe3.measure import rss_mb as _rss_mb
    from openvino import opset13 as ops

    import openvino_ext

    core = ov.Core()
    openvino_ext.register(core)  # every variant: same libraries loaded before the baseline
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": spec["threads"], "NUM_STREAMS": 1}
    p = ops.parameter([1, 8], np.float32)
    core.compile_model(ov.Model([ops.relu(p)], [p]), "CPU", cfg)(np.ones((1, 8), np.float32))  # load the plugin
    base = _rss_mb()
    model = core.read_model(spec["path"])
    t0 = time.time()
    cm = core.compile_model(model, "CPU", cfg)
    compile_s = time.time() - t0
    del model
    req = cm.create_infer_request()
    rng = np.random.default_rng(0)
    k = spec["k"]
    out = {"compile_s": compile_s}
    prof = pm = None
    if spec["custom"]:  # time spent inside the MoE3 / MatMul3 ops (the extension's profile, C entry points)
        import ctypes

        lib = ctypes.CDLL(str(openvino_ext.library_path()))
        prof, pm = lib.nncf_moe3_profile, lib.nncf_moe3_profile_matmul3
        prof.restype = pm.restype = ctypes.c_int64
        prof.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_int]
        pm.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int]
        prof(None, 1, 1)
    for label, tokens, iters in spec["runs"]:
        if spec["ids"]:
            xs = [rng.integers(0, 512, (1, tokens)) for _ in range(iters + 2)]
        else:
            xs = [rng.standard_normal((tokens, k)).astype(np.float32) for _ in range(iters + 2)]
        for x in xs[:2]:
            req.infer([x])
        if prof:
            t6 = (ctypes.c_double * 6)()
            prof(None, 1, 0)
        times, moe3 = [], []
        for x in xs[2:]:
            t = time.perf_counter()
            req.infer([x])
            times.append(time.perf_counter() - t)
            if prof and prof(t6, 1, 0):  # this inference's MoE3 seconds (all layers) and per-phase split
                moe3.append(list(t6))
        out[label] = float(np.median(times))
        if moe3:  # per-token medians (a mean is moved by the odd stalled token of a shared VM)
            med = np.median(np.array(moe3), axis=0)
            out[f"{label}_moe3"] = float(med[5])
            out[f"{label}_moe3_phases"] = [float(v) for v in med[:5]]
            out[f"{label}_mean"] = out[label]
    out["rss_mb"] = _rss_mb() - base
    if spec.get("node_profile"):  # where a decode step goes, per executed node kind (separate compile: PERF_COUNT)
        import collections

        cm2 = core.compile_model(core.read_model(spec["path"]), "CPU", dict(cfg, PERF_COUNT=True))
        req2 = cm2.create_infer_request()
        xs = [rng.integers(0, 512, (1, 1)) if spec["ids"] else rng.standard_normal((1, k)).astype(np.float32)
              for _ in range(spec["runs"][0][2] + 2)]
        agg = collections.defaultdict(float)
        def totals():  # the CPU plugin reports each node's mean over ALL inferences so far: sum = mean x count
            t = collections.defaultdict(float)
            for pi in req2.get_profiling_info():
                if pi.status == ov.ProfilingInfo.Status.EXECUTED:
                    kind = pi.node_type  # extension ops run as "Reference" nodes: MoE3 keeps the experts' name
                    if kind == "Reference":
                        kind = "MoE3" if "experts" in pi.node_name else "MatMul3"
                    t[kind] += pi.real_time.total_seconds()
            return t

        warm = 2  # the first inference includes one-time work (the ops' huge-page weight copies)
        steps = []
        for i, x in enumerate(xs):
            t = time.perf_counter()
            req2.infer([x])
            if i >= warm:
                steps.append(time.perf_counter() - t)
            if i == warm - 1:
                before = totals()
                if prof:  # the ops' own evaluate() time from here on, in the same inferences as the node times
                    prof(None, 1, 0)
                    pm(None, 1)
        after = totals()
        n = len(xs)
        if prof:  # per token: seconds in evaluate() and calls, of MoE3 and of MatMul3
            t6, mm = (ctypes.c_double * 6)(), ctypes.c_double()
            moe3_calls, mm_calls = prof(t6, 1, 0), pm(ctypes.byref(mm), 1)
            out["decode_eval"] = {"MoE3": (t6[5] / (n - warm), moe3_calls / (n - warm)),
                                  "MatMul3": (mm.value / (n - warm), mm_calls / (n - warm))}
        for kind, mean_all in after.items():  # per-token mean over the inferences after the warm-up
            agg[kind] = (mean_all * n - before.get(kind, 0.0) * warm) / (n - warm)
        out["decode_nodes"] = dict(sorted(agg.items(), key=lambda kv: -kv[1]))
        # the same inferences' wall time per token (mean, as the node times): step - sum(nodes) = the CPU plugin's
        # per-inference work outside any node (graph walk, dynamic-shape updates, infer-request overhead)
        out["decode_nodes_step"] = float(np.mean(steps))
    return out


# node kinds that read the weights of the expert / attention / lm_head projections (step anatomy)
_WEIGHT_NODES = ("MoE3", "MatMul3", "GatherMatmul", "GatherMatmulCompressed", "FullyConnected",
                 "FullyConnectedCompressed")


def interleaved_child(spec: dict) -> dict:
    """Decode time of several IRs measured in ONE process in alternating rounds (machine noise and drift hit every
    variant alike, so their ratios are steadier than across separate processes)."""
    import openvino as ov

    import openvino_ext

    core = ov.Core()
    openvino_ext.register(core)
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": spec["threads"], "NUM_STREAMS": 1}
    reqs = {n: core.compile_model(core.read_model(p), "CPU", cfg).create_infer_request()
            for n, p in spec["paths"].items()}
    # f32 execution (INFERENCE_PRECISION_HINT=f32 = the CPU plugin's default on CPUs without native bf16/f16): INT4,
    # stock INT3 and MoE3 (the IR transformed with f32 activation edges)
    for n, p in spec.get("f32_paths", {}).items():
        reqs[n + "@f32"] = core.compile_model(core.read_model(p), "CPU",
                                             dict(cfg, INFERENCE_PRECISION_HINT="f32")).create_infer_request()
    rng = np.random.default_rng(1)
    times = {n: [] for n in reqs}
    for rnd in range(spec["rounds"] + 1):
        for n, req in reqs.items():
            for _ in range(spec["iters"]):
                x = rng.integers(0, 512, (1, 1))
                t = time.perf_counter()
                req.infer([x])
                if rnd:  # round 0 warms every variant up
                    times[n].append(time.perf_counter() - t)
    return {n: float(np.median(v)) for n, v in times.items()}


def run_child(spec: dict) -> dict:
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-m", "nncf_moe3.bench", "--child", json.dumps(spec)], capture_output=True,
                         text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"child failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bandwidth_child(threads: int) -> float:
    code = ("import openvino_ext; print(openvino_ext.read_bandwidth(1 << 30, 7))")
    env = dict(os.environ, NNCF_MOE3_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="nncf-moe3 bench", description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--prefill-iters", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where the IRs are written (default: a temp dir)")
    ap.add_argument("--keep", default=None,
                    help="write the IRs into this folder and keep them; an existing one (meta.json) is reused")
    ap.add_argument("--only", default=None,
                    help="comma-separated workload/variant list to measure (int4 baselines are always measured)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved decode timing: all MoE variants in one process, this many alternating rounds of "
                         "--iters/rounds tokens each (0: off); the acceptance ratios use it")
    ap.add_argument("--node-profile", action="store_true",
                    help="also print where a MoE-stack decode step goes per executed node kind (PERF_COUNT pass)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.layers, args.experts, args.top_k, args.threads, args.iters, args.prefill, args.prefill_iters) < 1:
        ap.error("--layers, --experts, --top-k, --threads, --iters, --prefill and --prefill-iters must be >= 1")
    if args.top_k > args.experts:
        ap.error(f"--top-k {args.top_k} > --experts {args.experts}")
    if args.rounds < 0:
        ap.error("--rounds must be >= 0")
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(interleaved_child(spec) if "paths" in spec else child(spec)))
        return 0

    import openvino as ov

    import openvino_ext

    print(f"OpenVINO {ov.__version__}, extension ISA {openvino_ext.isa()}, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.2f} (machine shared with other jobs)", flush=True)
    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        mfile = keep / "meta.json"
        from openvino_ext.reference import K3_VERSION

        # IRs of another k3 layout / transformation version are rebuilt
        cfg_key = [args.layers, args.experts, args.top_k, K3_VERSION, "fuse-v2-router-bf16-extras-packed"]
        old = json.loads(mfile.read_text()) if mfile.is_file() else None
        if old and old["cfg"] == cfg_key:
            meta = {tuple(k.split("/")): v for k, v in old["meta"].items()}
            print(f"  reusing the IRs in {keep}", file=sys.stderr, flush=True)
        else:
            meta = prepare(keep, args)
            mfile.write_text(json.dumps({"cfg": cfg_key, "meta": {"/".join(k): v for k, v in meta.items()}}))
    else:
        tmp = tempfile.TemporaryDirectory(dir=args.workdir)
        meta = prepare(Path(tmp.name), args)
    if args.only:
        want = set(args.only.split(",")) | {f"{w}/int4" for w, _ in meta}
        meta = {k: v for k, v in meta.items() if "/".join(k) in want}
    bw = bandwidth_child(args.threads)
    rows = {}
    extra = {name: m["path"] for (workload, name), m in meta.items() if workload == "extra"}
    meta = {k: v for k, v in meta.items() if k[0] != "extra"}
    for (workload, name), m in meta.items():
        runs = [("decode", 1, args.iters)]
        if workload == "moe":
            runs.append(("prefill", args.prefill, args.prefill_iters))
        spec = dict(path=m["path"], custom=m["custom"], threads=args.threads, runs=runs,
                    k=4096, ids=workload == "moe", node_profile=args.node_profile and workload == "moe")
        r = run_child(spec)
        rows[(workload, name)] = (m, r)
        print(f"  measured {workload}/{name}: {r}", file=sys.stderr, flush=True)
    inter = None
    if args.rounds:
        paths = {name: m["path"] for (workload, name), m in meta.items() if workload == "moe"}
        f32_paths = {n: p for n, p in paths.items() if n in ("int4", "int3_stock")}
        if "moe3" in paths and "moe3_f32act" in extra:
            f32_paths["moe3"] = extra["moe3_f32act"]  # under an f32 hint: the IR with f32 activation edges
        if "moe3" in paths and "moe3_s4" in extra:
            paths["moe3_s4"] = extra["moe3_s4"]  # session-4 graph (MoE3 + router outside, f32 edges)
        if "moe3" in paths and "moe3_unpacked" in extra:
            paths["moe3_unpacked"] = extra["moe3_unpacked"]  # the same ops with separate operand inputs
        inter = run_child(dict(paths=paths, f32_paths=f32_paths, threads=args.threads, rounds=args.rounds,
                               iters=max(6, args.iters // args.rounds)))
        print(f"  interleaved moe decode: {inter}", file=sys.stderr, flush=True)
    bw2 = bandwidth_child(args.threads)

    print(f"\nread bandwidth ({args.threads} threads, 1 GiB): {bw:.1f} GB/s before, {bw2:.1f} GB/s after; "
          f"roofline uses the max {max(bw, bw2):.1f}")
    bw = max(bw, bw2)
    print(f"MoE stack: {args.layers} layers x {args.experts} experts (H {H}, I {I_EXP}, top-{args.top_k}) + "
          f"Qwen3 attention projections; dense: {args.layers} x 4096x4096\n")
    hdr = (f"| workload | variant | decode ms/tok | GB/s | roofline | prefill {args.prefill} tok s | "
           f"prefill ms/tok | resident MB | vs int4 decode | vs int4 prefill | vs int4 memory |")
    print(hdr)
    print("|" + "---|" * hdr.count("|")[:-0] if False else "|---|---|---|---|---|---|---|---|---|---|---|")
    for (workload, name), (m, r) in rows.items():
        base = rows[(workload, "int4")][1]
        dec = r["decode"]
        gbs = m["bytes_per_token"] / dec / 1e9
        pre = r.get("prefill")
        pre_s = f"{pre:.3f}" if pre else "-"
        pre_tok = f"{pre / args.prefill * 1e3:.2f}" if pre else "-"
        rel_pre = f"{pre / base['prefill']:.2f}x" if pre else "-"
        print(f"| {workload} | {name} | {dec * 1e3:.2f} | {gbs:.1f} | {gbs / bw:.2f} | {pre_s} | {pre_tok} | "
              f"{r['rss_mb']:.0f} | {dec / base['decode']:.2f}x | {rel_pre} | {r['rss_mb'] / base['rss_mb']:.2f}x |")
    for (workload, name), (m, r) in rows.items():
        if "decode_moe3" in r:
            ph = ", ".join(f"{n} {v * 1e3:.2f}" for n, v in
                           zip(("route", "quantize_x", "gate_up", "quantize_act", "down"), r["decode_moe3_phases"]))
            print(f"\n{workload}/{name} decode: MoE3 ops {r['decode_moe3'] * 1e3:.2f} ms of "
                  f"{r['decode_mean'] * 1e3:.2f} ms per token (medians) = {r['decode_moe3'] / r['decode_mean']:.0%}; "
                  f"the rest (attention MatMul3 ops, attention math, router, norms, ...) {(r['decode_mean'] - r['decode_moe3']) * 1e3:.2f} ms. "
                  f"MoE3 phases (ms/token, all layers): {ph}")
            if "prefill_moe3" in r:
                print(f"{workload}/{name} prefill: MoE3 ops {r['prefill_moe3'] * 1e3:.1f} ms of "
                      f"{r['prefill_mean'] * 1e3:.1f} ms (medians) = {r['prefill_moe3'] / r['prefill_mean']:.0%}")
    anatomy = {}
    for (workload, name), (m, r) in rows.items():
        if "decode_nodes" in r:
            tot = sum(r["decode_nodes"].values())
            top = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in list(r["decode_nodes"].items())[:8])
            print(f"{workload}/{name} decode per node kind (ms/token, PERF_COUNT, sum {tot * 1e3:.2f}): {top}")
            weights = sum(v for k, v in r["decode_nodes"].items() if k in _WEIGHT_NODES)
            anatomy[name] = (r["decode_nodes_step"], weights, tot - weights, r["decode_nodes_step"] - tot,
                             m["bytes_per_token"])
    if anatomy:
        print("\nMoE-stack decode step anatomy (PERF_COUNT run, mean ms/token): weight nodes = the nodes that read "
              "expert / projection weights (MoE3, MatMul3, GatherMatmul*, FullyConnected*); outside = step - all nodes")
        print("| variant | step | weight nodes | other nodes | outside nodes | weight-node GB/s |")
        print("|---|---|---|---|---|---|")
        for name, (st, w, o, out_, b) in anatomy.items():
            gbs = "-" if name == "int3_stock" else f"{b / w / 1e9:.1f}"  # stock INT3 reads bf16-folded weights
            print(f"| {name} | {st * 1e3:.2f} | {w * 1e3:.2f} | {o * 1e3:.2f} | {out_ * 1e3:.2f} | {gbs} |")
        for (workload, name), (m, r) in rows.items():
            if "decode_eval" in r and "decode_nodes" in r:
                parts = []
                for kind, (sec, calls) in r["decode_eval"].items():
                    node = r["decode_nodes"].get(kind)
                    if node is not None and calls > 0:
                        parts.append(f"{kind} {node * 1e3:.2f} ms in {calls:.0f} nodes vs {sec * 1e3:.2f} ms in "
                                     f"evaluate() = {(node - sec) / calls * 1e6:.0f} us per call")
                if parts:
                    print(f"{name} extension nodes per token (PERF_COUNT vs the ops' own evaluate time, same "
                          f"inferences): " + "; ".join(parts) + " (the CPU plugin's work per extension node: its "
                          "shape-inference fallback, re-run on every inference and on cold caches after the "
                          "weight streams - openvino_ext/cpu/tools/fallback_bench.cpp)")
        if "moe3" in anatomy and "int3_stock" in anatomy:
            st, w, o, out_, b = anatomy["moe3"]
            ideal = b / (bw * 1e9) + o + out_
            print(f"bound: MoE3 with its weight nodes at the read probe ({bw:.1f} GB/s) and the same other / outside "
                  f"time = {ideal * 1e3:.2f} ms -> stock INT3 / MoE3 <= {anatomy['int3_stock'][0] / ideal:.1f}x in "
                  f"this run (measured {anatomy['int3_stock'][0] / st:.1f}x; MoE3's weight nodes ran at "
                  f"{b / w / 1e9:.1f} GB/s = {b / w / 1e9 / bw:.2f} of the probe)")
    if inter:
        print(f"\nMoE-stack decode, all variants in one process, {args.rounds} alternating rounds (median ms/token): "
              + ", ".join(f"{n} {v * 1e3:.2f} ({v / inter['int4']:.2f}x int4)" for n, v in inter.items()))
        if "moe3@f32" in inter and "int4@f32" in inter:
            print(f"  with INFERENCE_PRECISION_HINT=f32 (MoE3: the IR with f32 activation edges): "
                  f"moe3@f32 / int4 = {inter['moe3@f32'] / inter['int4']:.2f}, "
                  f"moe3@f32 / int4@f32 = {inter['moe3@f32'] / inter['int4@f32']:.2f}, "
                  f"int3_stock / moe3@f32 = {inter.get('int3_stock', float('nan')) / inter['moe3@f32']:.1f}x")
        if "moe3_s4" in inter and "moe3" in inter:
            print(f"  moe3_s4 = the session-4 op set on the same IR (transform target 'gpu': MoE3 taking the graph's "
                  f"router logits, f32 activation edges): moe3 / moe3_s4 = {inter['moe3'] / inter['moe3_s4']:.2f}")
        if "moe3_unpacked" in inter and "moe3" in inter:
            print(f"  moe3_unpacked = the same ops with their constant operands as separate inputs (transform "
                  f"pack=False): moe3 / moe3_unpacked = {inter['moe3'] / inter['moe3_unpacked']:.2f}")
    moe = {n: rows[("moe", n)][1] for n in ("int4", "int3_stock", "moe3") if ("moe", n) in rows}
    if "moe3" in moe:
        dec = {n: (inter[n] if inter and n in inter else moe[n]["decode"]) for n in moe}
        how = "interleaved" if inter else "separate processes"
        stock = (f"int3_stock/moe3 = {dec['int3_stock'] / dec['moe3']:.1f}x (target >= 5); "
                 if "int3_stock" in moe else "")
        default = (args.layers, args.experts, args.top_k) == (8, 16, 8)
        how += "" if default else "; the targets are set for the default 8 layers x 16 experts, top-8 stack"
        print(f"\nacceptance (moe stack; decode from the {how} timing): "
              f"decode moe3/int4 = {dec['moe3'] / dec['int4']:.2f} (target <= 0.45); " + stock +
              f"memory moe3/int4 = {moe['moe3']['rss_mb'] / moe['int4']['rss_mb']:.2f} (target <= 0.8); "
              f"prefill moe3/int4 = {moe['moe3']['prefill'] / moe['int4']['prefill']:.2f} (target <= 0.6)")
        if inter and all(f"{n}@f32" in inter for n in ("int4", "int3_stock", "moe3")):
            print(f"acceptance decode ratios in f32 execution (INFERENCE_PRECISION_HINT=f32 for every variant: the "
                  f"CPU plugin's default on CPUs without native bf16/f16; stock INT3 then computes with its "
                  f"f32-folded weights): moe3/int4 = {inter['moe3@f32'] / inter['int4@f32']:.2f} (target <= 0.45); "
                  f"int3_stock/moe3 = {inter['int3_stock@f32'] / inter['moe3@f32']:.1f}x (target >= 5)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
