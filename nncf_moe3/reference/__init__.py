"""The embedded reference model: a small Qwen3-MoE LM trained by this project on the Python stdlib source.

``CHECKPOINT`` is a HF checkpoint directory (``Qwen3MoeForCausalLM`` + tokenizer) with frozen held-out
evaluation windows (``eval_tokens.npy``) and calibration windows from the training split (``calib_tokens.npy``).
Retrain with ``python -m nncf_moe3.reference.train --out <dir>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"


def _require(path: Path) -> Path:
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"Reference checkpoint not found at {path}. It is committed with the repository; "
            "retrain it with `python -m nncf_moe3.reference.train --out <dir>`."
        )
    return path


def checkpoint_dir() -> Path:
    return _require(CHECKPOINT)


def card(path: Path | None = None) -> dict:
    return json.loads((_require(Path(path or CHECKPOINT)) / "card.json").read_text())


def eval_tokens(path: Path | None = None) -> np.ndarray:
    """Frozen held-out windows ``[n, seq_len]`` (int64)."""
    return np.load(_require(Path(path or CHECKPOINT)) / "eval_tokens.npy").astype(np.int64)


def calib_tokens(path: Path | None = None) -> np.ndarray:
    """Calibration windows from the training split ``[n, seq_len]`` (int64)."""
    return np.load(_require(Path(path or CHECKPOINT)) / "calib_tokens.npy").astype(np.int64)


def load_model(path: Path | None = None, dtype=None):
    """The reference model as ``Qwen3MoeForCausalLM`` in eval mode (fp32 by default)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_require(Path(path or CHECKPOINT)), dtype=dtype or torch.float32)
    return model.eval()
