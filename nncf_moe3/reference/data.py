"""Text corpus for the reference model: the Python standard-library source of the running interpreter.

The corpus exists on every machine that runs Python, so the reference model can be (re)trained without any
download. Files are split train / held-out *by file* with a stable hash of the path relative to the stdlib
root, so the split does not depend on the machine or on the order of directory listings.

The tokens the project evaluates on are frozen next to the committed checkpoint (``eval_tokens.npy``,
``calib_tokens.npy``) so perplexities are comparable across machines whose stdlib differs slightly.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np

#: One file in HELDOUT_MODULUS goes to the held-out split.
HELDOUT_MODULUS = 10
#: Sub-trees of the stdlib left out of the corpus (test suites are huge and repetitive; idlelib is GUI glue).
EXCLUDED_PARTS = ("test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """All ``.py`` files of the stdlib (sorted, excluded sub-trees removed)."""
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_PARTS for part in rel.parts[:-1]):
            continue
        files.append(path)
    if not files:
        raise FileNotFoundError(f"No Python sources found under {root}; cannot build the reference corpus.")
    return files


def split_of(rel_path: str) -> str:
    """'heldout' or 'train' for a path relative to the stdlib root (stable across machines)."""
    digest = hashlib.sha1(rel_path.replace("\\", "/").encode()).digest()
    return "heldout" if digest[0] % HELDOUT_MODULUS == 0 else "train"


def read_split(split: str, root: Path | None = None) -> list[str]:
    """Texts of every file in ``split`` ('train' or 'heldout')."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    root = Path(root) if root is not None else stdlib_root()
    texts = []
    for path in stdlib_files(root):
        if split_of(str(path.relative_to(root))) == split:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def read_text_path(path: str | Path) -> list[str]:
    """Texts of a file, or of every text-like file under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")]
    if path.is_dir():
        exts = {".txt", ".py", ".md", ".rst", ".json", ".c", ".h", ".cpp", ".js", ".html"}
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in exts)
        if not files:
            raise FileNotFoundError(f"No text files ({sorted(exts)}) under {path}")
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]
    raise FileNotFoundError(f"Text data path does not exist: {path}")


def tokenize_texts(tokenizer, texts: list[str], eos_id: int | None = None) -> np.ndarray:
    """Concatenate the token ids of ``texts`` (an EOS token between documents) into one int32 stream."""
    ids: list[int] = []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for seq in encoded:
        ids.extend(seq)
        if eos_id is not None:
            ids.append(eos_id)
    return np.asarray(ids, dtype=np.int32)


def make_windows(stream: np.ndarray, seq_len: int, count: int | None = None, seed: int | None = None) -> np.ndarray:
    """Cut a token stream into ``[n, seq_len]`` windows: consecutive, or ``count`` random ones when ``seed`` is set."""
    n_full = len(stream) // seq_len
    if n_full == 0:
        raise ValueError(f"Token stream of length {len(stream)} is shorter than one window of {seq_len}")
    if seed is None:
        windows = stream[: n_full * seq_len].reshape(n_full, seq_len)
        return windows[:count] if count is not None else windows
    starts = _random_starts(len(stream), seq_len, count, seed)
    return np.stack([stream[s : s + seq_len] for s in starts])


def _random_starts(n: int, seq_len: int, count: int, seed: int) -> np.ndarray:
    """Start positions of :func:`make_windows`' ``count`` random windows (one definition, so that
    :func:`disjoint_windows` can avoid exactly them)."""
    return np.random.default_rng(seed).integers(0, n - seq_len, size=count)


def disjoint_windows(stream: np.ndarray, seq_len: int, count: int, taken_seed: int, taken_count: int,
                     taken_len: int | None = None, seed: int = 0) -> np.ndarray:
    """``count`` windows of ``stream`` at random (``seed``) positions that overlap none of the ``taken_count``
    random windows :func:`make_windows` cuts with ``seed=taken_seed`` (e.g. validation windows next to the frozen
    evaluation windows of the held-out split), nor each other. Raises when the stream has too little free room."""
    taken_len = taken_len or seq_len
    starts = _random_starts(len(stream), taken_len, taken_count, taken_seed)
    used = np.zeros(len(stream) + 1, dtype=np.int64)
    np.add.at(used, starts, 1)
    np.add.at(used, starts + taken_len, -1)
    free = np.cumsum(used)[: len(stream)] == 0
    # candidate starts: seq_len-aligned slots that are entirely free
    slots = [p for p in range(0, len(stream) - seq_len + 1, seq_len) if free[p: p + seq_len].all()]
    if len(slots) < count:
        raise ValueError(f"only {len(slots)} of {count} windows of {seq_len} tokens are free of the taken windows")
    pick = np.sort(np.random.default_rng(seed).choice(len(slots), size=count, replace=False))
    return np.stack([stream[slots[i]: slots[i] + seq_len] for i in pick])
