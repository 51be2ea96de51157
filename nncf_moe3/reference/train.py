"""Train the embedded reference MoE model (Qwen3-MoE architecture) on the Python standard library.

Deterministic (fixed seeds, fixed step count, single process). Writes a HF checkpoint directory that loads
as ``Qwen3MoeForCausalLM`` + ``AutoTokenizer``, plus the frozen evaluation / calibration tokens and a model
card (``card.json``) with the held-out perplexity and the unigram baseline of the same tokenizer.

    python -m nncf_moe3.reference.train --out nncf_moe3/reference/checkpoint

The committed checkpoint was produced by exactly this command (see card.json for the settings and time).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from nncf_moe3.reference import data

# Architecture of the reference model. Dimensions are multiples of 128 so group sizes 32/64/128 all divide K.
MODEL_CONFIG = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=16,
    num_experts_per_tok=2,
    moe_intermediate_size=128,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    router_aux_loss_coef=0.01,
    rms_norm_eps=1e-6,
)
SEQ_LEN = 256
EVAL_WINDOWS = 128
CALIB_WINDOWS = 128
EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def unigram_ppl(train_stream: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model (fit on the training split) on the eval tokens.

    Evaluated on the same next-token positions the LM is scored on (every token but the first of a window).
    """
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = eval_tokens[:, 1:].ravel()
    return float(math.exp(-logp[targets].mean()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_texts = data.read_split("train")
    heldout_texts = data.read_split("heldout")
    tokenizer = train_tokenizer(train_texts, MODEL_CONFIG["vocab_size"])
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    train_stream = data.tokenize_texts(tokenizer, train_texts, eos_id)
    heldout_stream = data.tokenize_texts(tokenizer, heldout_texts, eos_id)
    eval_tokens = data.make_windows(heldout_stream, SEQ_LEN, EVAL_WINDOWS, seed=1234)
    calib_tokens = data.make_windows(train_stream, SEQ_LEN, CALIB_WINDOWS, seed=4321)
    print(f"train tokens {len(train_stream):,}  held-out tokens {len(heldout_stream):,}", flush=True)

    config = Qwen3MoeConfig(**MODEL_CONFIG, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model = Qwen3MoeForCausalLM(config)
    model.config._experts_implementation = "eager"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params / 1e6:.2f} M", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    rng = np.random.default_rng(args.seed)
    model.train()
    losses = []
    for step in tqdm(range(args.steps), desc="train", mininterval=10):
        starts = rng.integers(0, len(train_stream) - SEQ_LEN - 1, size=args.batch)
        batch = torch.from_numpy(np.stack([train_stream[s : s + SEQ_LEN] for s in starts]).astype(np.int64))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        outputs = model(input_ids=batch, labels=batch, output_router_logits=True)
        opt.zero_grad(set_to_none=True)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(outputs.loss.detach()))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} lr {lr_at(step):.2e}", flush=True)

    train_minutes = (time.time() - t_start) / 60
    model.eval()
    model = model.half()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    np.save(out / "eval_tokens.npy", eval_tokens.astype(np.int32))
    np.save(out / "calib_tokens.npy", calib_tokens.astype(np.int32))

    # Held-out perplexity of the saved (fp16) weights, evaluated in fp32.
    from nncf_moe3.accuracy import evaluate_torch

    reloaded = Qwen3MoeForCausalLM.from_pretrained(out, dtype=torch.float32)
    res = evaluate_torch(reloaded, eval_tokens)
    card = {
        "architecture": "Qwen3MoeForCausalLM",
        "parameters": n_params,
        "config": MODEL_CONFIG,
        "seq_len": SEQ_LEN,
        "train": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                  "tokens_seen": args.steps * args.batch * SEQ_LEN, "minutes": round(train_minutes, 1),
                  "threads": args.threads},
        "corpus": {"source": "Python standard library (*.py, tests/idlelib excluded), split by file hash",
                   "python": platform.python_version(), "train_tokens": int(len(train_stream)),
                   "heldout_tokens": int(len(heldout_stream)), "heldout_files": len(heldout_texts),
                   "train_files": len(train_texts)},
        "eval": {"windows": EVAL_WINDOWS, "seq_len": SEQ_LEN, "heldout_ppl": round(res.ppl, 4),
                 "unigram_ppl": round(unigram_ppl(train_stream, eval_tokens, MODEL_CONFIG["vocab_size"]), 4)},
        "machine": platform.processor() or platform.machine(),
        "command": "python -m nncf_moe3.reference.train --out " + str(args.out) + f" --steps {args.steps}",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card["eval"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
