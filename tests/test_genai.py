"""openvino-genai ``LLMPipeline`` on the 3-bit reference model: native MoE3 ops vs plain decompression.

openvino-genai is a hard dependency of these tests: if it is not importable they FAIL (CI installs it with
``pip install -e .[test]``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import openvino as ov
import pytest

from nncf_moe3 import reference

PROMPTS = ["import os\nimport sys\n\n\ndef main(", "class Foo(object):\n    def __init__(self"]
MAX_NEW_TOKENS = 32


def _require_genai():
    try:
        import openvino_genai  # noqa: F401
        import openvino_tokenizers  # noqa: F401
    except ImportError as exc:  # a hard failure, not a skip
        pytest.fail(f"openvino_genai / openvino_tokenizers not importable ({exc}); `pip install -e .[test]`")


@pytest.fixture(scope="module")
def genai_dirs(tmp_path_factory):
    """Reference model exported stateful, int3_asym g64 data-free: native (MoE3) and plain-decompression folders."""
    _require_genai()
    from nncf_moe3 import genai

    info = genai.prepare(reference.checkpoint_dir(), tmp_path_factory.mktemp("genai"), mode="int3_asym",
                         group_size=64, activations="f32", progress=False)  # pipelines run EXACT_CONFIG (f32)
    assert info["tokenizer_error"] is None, info["tokenizer_error"]
    return info


def test_genai_importable():
    _require_genai()


def test_native_ir_contains_moe3(genai_dirs):
    """The native IR really runs MoE3 (one per MoE layer) and cannot load without the extension."""
    import openvino_genai

    from nncf_moe3 import genai

    layers = reference.card()["config"]["num_hidden_layers"]
    assert genai_dirs["native_ops"]["MoE3R"] == layers  # router inside the op (int8 router folded to f32)
    assert genai.native_op_counts(genai_dirs["native"] / "openvino_model.xml")["MoE3R"] == layers
    # no u3 expert weights left outside MoE3 in the native IR; the baseline keeps them (stock decompression)
    core = ov.Core()
    import openvino_ext

    openvino_ext.register(core, "CPU")
    native = core.read_model(str(genai_dirs["native"] / "openvino_model.xml"))
    plain = core.read_model(str(genai_dirs["baseline"] / "openvino_model.xml"))

    def u3_3d(model):
        return [n for n in model.get_ops() if n.get_type_name() == "Constant"
                and n.get_output_element_type(0) == ov.Type.u3 and len(n.get_output_shape(0)) >= 3]

    assert not u3_3d(native)
    assert len(u3_3d(plain)) >= 3 * layers
    assert genai.native_op_counts(plain)["MoE3"] == genai.native_op_counts(plain)["MoE3R"] == 0
    assert len(native.get_sinks()) == 2 * layers  # stateful KV cache
    # genai without the extension cannot read the native IR: no silent fallback to another path
    with pytest.raises(RuntimeError, match="MoE3"):
        openvino_genai.LLMPipeline(str(genai_dirs["native"]), "CPU")


_SCRIPT = textwrap.dedent("""
    import json, sys
    from nncf_moe3 import genai
    native, baseline, prompts, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    out = {}
    for backend in ("PA", "SDPA"):
        props = genai.attention_backend_properties(backend)
        for name, path, is_native in (("native", native, True), ("plain", baseline, False)):
            pipe = genai.load_pipeline(path, native=is_native, **props)
            out[backend + "/" + name] = [genai.greedy(pipe, p, max_new_tokens=n) for p in prompts]
            del pipe
    print("RESULT " + json.dumps(out))
""")


def test_genai_greedy_native_equals_plain_decompression(genai_dirs):
    """Greedy tokens of LLMPipeline + MoE3 extension == LLMPipeline on the untransformed IR (stock decompression).

    Runs in a subprocess: the MoE3 kernel variant (``NNCF_MOE3_ACT_QUANT=0``: exact f32 activations) is fixed per
    process at first use, and other tests may already have used the extension in this one.
    """
    env = dict(os.environ, NNCF_MOE3_ACT_QUANT="0")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(genai_dirs["native"]), str(genai_dirs["baseline"]), json.dumps(PROMPTS),
         str(MAX_NEW_TOKENS)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    for backend in ("PA", "SDPA"):
        native, plain = res[f"{backend}/native"], res[f"{backend}/plain"]
        for prompt, a, b in zip(PROMPTS, native, plain):
            assert len(a["tokens"]) > 0 and a["text"], (backend, prompt)
            assert a["tokens"] == b["tokens"], (backend, prompt, a["text"], b["text"])
            assert a["text"] == b["text"]
            assert np.isfinite(a["tokens_per_s"]) and a["tokens_per_s"] > 0
    # PagedAttention (continuous batching; genai's default on x86-64, here forced so that a failure cannot fall back
    # silently) and the stateful SDPA pipeline generate the same tokens
    assert [r["tokens"] for r in res["PA/native"]] == [r["tokens"] for r in res["SDPA/native"]]
