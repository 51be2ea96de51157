"""`nncf-moe3 compress` on checkpoints given by path (tiny random Mixtral / Qwen2-MoE with a tokenizer)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import openvino as ov
import pytest
import torch

from nncf_moe3.accuracy import CPU_EXACT_CONFIG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from nncf_moe3.export import tiny_config

    d = tmp_path_factory.mktemp("mixtral")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("mixtral")).save_pretrained(d)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 50,
                            trainers.BpeTrainer(vocab_size=128, special_tokens=["<eos>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(d)
    (d / "corpus").mkdir()
    (d / "corpus" / "a.py").write_text("import os\n\ndef main():\n    print(os.getcwd())\n" * 200)
    return d


def _run(*args):
    return subprocess.run([sys.executable, "-m", "nncf_moe3.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("mode,extra", [("int3_asym", []), ("nf3", ["--dataset", "CORPUS", "--subset-size", "4", "--seq-len", "64"])])
def test_compress_checkpoint_by_path(checkpoint, tmp_path, mode, extra):
    extra = [str(checkpoint / "corpus") if a == "CORPUS" else a for a in extra]
    r = _run("compress", str(checkpoint), str(tmp_path), "--mode", mode, "--group-size", "32", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bits/weight" in r.stdout
    xml = tmp_path / "openvino_model.xml"
    assert xml.exists() and (tmp_path / "tokenizer.json").exists()
    model = ov.Core().read_model(str(xml))  # stock OpenVINO reads and runs it
    assert any(op.get_element_type().get_type_name() == "u3" for op in model.get_ops() if op.get_type_name() == "Constant")
    out = ov.Core().compile_model(model, "CPU", CPU_EXACT_CONFIG)({"input_ids": np.arange(10)[None]})[0]
    assert out.shape == (1, 10, 128) and np.isfinite(out).all()


def test_compress_cli_errors(checkpoint, tmp_path):
    r = _run("compress", str(tmp_path / "missing"), str(tmp_path / "o"))
    assert r.returncode == 2 and "neither an IR" in r.stderr
    r = _run("compress", str(checkpoint), str(tmp_path / "o"), "--mode", "nf3", "--group-size", "48")
    assert r.returncode == 2 and "does not divide" in r.stderr
