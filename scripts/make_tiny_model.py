#!/usr/bin/env python
"""Build the bundled default model ``ibert_ref/data/tiny-ibert/`` with transformers (the oracle).

A RoBERTa-style byte-level BPE tokenizer is trained on the built-in corpus
(``ibert_ref.oracle.builders.CORPUS``), and a random quant-mode I-BERT (hidden 64, 4 layers,
4 heads, intermediate 256, max_position_embeddings 130 -> up to 128 tokens) is re-initialised so that
its integer pipeline is non-degenerate, then calibrated in train mode (dropout 0) on the tokenized
corpus: every sentence on its own plus multi-sentence passages up to 128 tokens. Deterministic
for a given ``--seed``.

Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
special_tokens_map.json, then prints a summary (config, sizes, sha256, QuantAct ranges,
LayerNorm shifts, attention uniformity on a held-out check batch).

Needs the ``verify`` extra (torch + transformers). Usage::

    python scripts/make_tiny_model.py [--out ibert_ref/data/tiny-ibert] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibert_ref.oracle import builders  # noqa: E402

MAX_TOKENS = 128  # max_position_embeddings - pad_token_id - 1


def passages(sentences_ids, n_passages, rng, max_tokens=MAX_TOKENS):
    """Join runs of 2..12 random corpus sentences into ``<s> ... </s>`` passages of <= max_tokens."""
    out = []
    for _ in range(n_passages):
        k = int(rng.integers(2, 13))
        picks = rng.choice(len(sentences_ids), size=k, replace=False)
        body = []
        for j in picks:
            body += sentences_ids[j][1:-1]  # drop each sentence's own <s> ... </s>
        body = body[: max_tokens - 2]
        out.append([builders.BOS_ID] + body + [builders.EOS_ID])
    return out


def sha256(path):
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None):
    """Build, calibrate, save and summarise the tiny model."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "ibert_ref" / "data" / "tiny-ibert"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate-size", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--max-position-embeddings", type=int, default=MAX_TOKENS + 2)
    ap.add_argument("--qk-std", type=float, default=0.25)
    ap.add_argument("--calib-batches", type=int, default=40)
    ap.add_argument("--calib-batch-size", type=int, default=8)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = builders.make_tokenizer(out, vocab_size=args.vocab_size, min_frequency=1,
                                  model_max_length=args.max_position_embeddings - 2)
    vocab = tok.get_vocab_size()

    rng = np.random.default_rng(args.seed)
    sent_ids = builders.encode_corpus(tok)
    # Hold out every 8th sentence (plus fresh passages) for the check batch.
    calib_sent = [s for i, s in enumerate(sent_ids) if i % 8 != 0]
    check_sent = [s for i, s in enumerate(sent_ids) if i % 8 == 0]
    calib_ids = calib_sent + passages(calib_sent, 3 * len(calib_sent) // 4, rng)
    check_ids = check_sent[:7] + passages(check_sent, 1, rng)

    model, _ = builders.make_calibrated_ibert(
        out,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
        vocab_size=vocab,
        max_position_embeddings=args.max_position_embeddings,
        type_vocab_size=1,
        qk_std=args.qk_std,
        seed=args.seed,
        calib_ids=calib_ids,
        calib_batches=args.calib_batches,
        calib_batch_size=args.calib_batch_size,
        calib_max_len=args.max_position_embeddings - 2,
        architectures=["IBertModel"],
    )

    ids, mask = builders.pad_batch(check_ids)
    report = builders.calibration_report(model, ids, mask)
    cfg = json.loads((out / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings", "type_vocab_size", "quant_mode", "force_dequant", "pad_token_id")
    print(f"tiny I-BERT written to {out}")
    print("config: " + ", ".join(f"{k}={cfg.get(k)}" for k in keys))
    print(f"tokenizer: {vocab} tokens; corpus {len(sent_ids)} sentences; calibration: "
          f"{len(calib_ids)} sequences in {args.calib_batches} batches of {args.calib_batch_size}")
    total = 0
    for p in sorted(out.iterdir()):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.name:28s} {p.stat().st_size:>9d} B  sha256 {sha256(p)[:16]}")
    print(f"  total {total} B ({total / 2**20:.2f} MiB)")
    print(f"check batch: {tuple(ids.shape)}, lengths {mask.sum(1).tolist()}")
    for line in builders.format_report(report):
        print(line)
    bad = [n for n, a in report["attention"].items() if a["uniform_fraction"] > 0.05]
    if report["softmax_overflow"] or bad:
        print(f"WARNING: degenerate attention in {bad} (overflow={report['softmax_overflow']})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
