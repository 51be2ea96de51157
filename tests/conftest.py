import os

import pytest


def pytest_configure(config):
    # Tests are small; one intra-op thread avoids thread-pool thrash on 2-core CI machines.
    import torch

    torch.set_num_threads(int(os.environ.get("NNCF_MOE3_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_models():
    """{arch: (torch model, fp32 ov.Model)} for the three tiny random MoE architectures (built once)."""
    import torch
    from transformers import AutoModelForCausalLM

    from nncf_moe3.export import export_model, tiny_config

    out = {}
    for i, arch in enumerate(["qwen3_moe", "mixtral", "qwen2_moe"]):
        torch.manual_seed(i)
        m = AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
        out[arch] = (m, export_model(m))
    return out
