"""Smoke test of the CPU benchmark CLI (``nncf-moe3 bench``) on a one-layer, four-expert stack: it must build every
variant's IR, run each in its own process and print the table, the step anatomy and the acceptance line. No timing
is asserted (speed is the benchmark's output, not a unit-test property); resident memory is: the folded upstream INT3
IR must take several times the memory of the native 3-bit ops."""

import re
import subprocess
import sys

import pytest

pytest.importorskip("openvino")
pytest.importorskip("transformers")


def test_bench_cli_tiny_stack(tmp_path):
    cmd = [sys.executable, "-m", "nncf_moe3.cli", "bench", "--layers", "1", "--experts", "4", "--top-k", "2",
           "--iters", "2", "--prefill", "8", "--prefill-iters", "1", "--rounds", "1", "--node-profile",
           "--keep", str(tmp_path / "ir")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\| (moe|dense) \| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| [^|]+\| [^|]+\| ([\d.]+) \|", line)
        if m:
            rows[(m[1], m[2])] = dict(ms=float(m[3]), gbs=float(m[4]), mb=float(m[6]))
    want = {(w, v) for w in ("moe", "dense") for v in ("int4", "int3_stock", "widen", "moe3")}
    assert set(rows) == want, out
    assert all(r["ms"] > 0 and r["gbs"] > 0 for r in rows.values())
    for w in ("moe", "dense"):
        assert rows[(w, "int3_stock")]["mb"] > 2 * rows[(w, "moe3")]["mb"], out
    assert "decode step anatomy" in out and re.search(r"\| moe3 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| -?[\d.]+ \|", out)
    assert re.search(r"stock INT3 / MoE3 <= [\d.]+x", out)
    # the plugin's work per extension node, from the same PERF_COUNT inferences as the ops' own evaluate() time
    assert re.search(r"moe3 extension nodes per token .*MoE3 [\d.]+ ms in 1 nodes vs [\d.]+ ms in evaluate\(\) = "
                     r"-?\d+ us per call; MatMul3 [\d.]+ ms in 2 nodes", out), out
    acc = re.search(r"acceptance .*decode moe3/int4 = ([\d.]+).*int3_stock/moe3 = ([\d.]+)x.*memory moe3/int4 = "
                    r"([\d.]+).*prefill moe3/int4 = ([\d.]+)", out)
    assert acc and "targets are set for the default" in out, out
    # f32 execution: every variant (stock INT3 included) timed again under INFERENCE_PRECISION_HINT=f32
    acc32 = re.search(r"acceptance decode ratios in f32 execution .*moe3/int4 = ([\d.]+) .*int3_stock/moe3 = ([\d.]+)x",
                      out)
    assert acc32 and float(acc32[1]) > 0 and float(acc32[2]) > 0, out
    # the packed ops against the same ops with separate operand inputs, in the interleaved run
    assert re.search(r"moe3_unpacked = .*moe3 / moe3_unpacked = [\d.]+", out), out
    # a second run reuses the IRs written by the first (--keep)
    res2 = subprocess.run(cmd[:-2] + ["--keep", str(tmp_path / "ir"), "--only", "moe/moe3"], capture_output=True,
                          text=True, timeout=600)
    assert res2.returncode == 0 and "reusing the IRs" in res2.stderr, res2.stderr[-3000:]


@pytest.mark.parametrize("args, msg", [(["--top-k", "17"], "--top-k 17 > --experts 16"),
                                       (["--layers", "0"], "must be >= 1")])
def test_bench_cli_bad_arguments(args, msg):
    res = subprocess.run([sys.executable, "-m", "nncf_moe3.cli", "bench", *args], capture_output=True, text=True)
    assert res.returncode == 2 and msg in res.stderr
