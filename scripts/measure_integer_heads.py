"""Measure the integer heads (``integer_heads=True``) against the float32 heads.

    python scripts/measure_integer_heads.py [--rows 32] [--seq 16] [--seed 0]

For each of the five task heads it builds a tiny calibrated transformers model (the
configuration of ``tests/test_heads.py``), runs the encoder once on a right-padded random
batch, and feeds the same encoder output to the float32 head (transformers' computation)
and to the integer head. It prints, per datapath, the max / mean absolute logit error, the
largest |logit|, and how often the argmax agrees (question answering: argmax of the start
and end logits over the unpadded positions; multiple choice: over the choices; masked LM
and token classification: over labels, real tokens only). The last rows compare the
integer pooler (int8 linear + int_tanh) of the bundled model with its float pooler on the
built-in corpus. These are the figures of docs/heads.md.

Needs the verify extra (torch + transformers) to build the models.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ibert_ref import IBertModel, Tokenizer
from ibert_ref import heads as H
from ibert_ref.float_ops import FloatLinearParams
from ibert_ref.integer_heads import IntegerTanhHead, compare_logits

VOCAB = 96
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=VOCAB,
            calib_batches=3, calib_max_len=16, seed=11)
BUILDS = {
    "IBertForSequenceClassification": dict(num_labels=3),
    "IBertForMaskedLM": dict(),
    "IBertForTokenClassification": dict(num_labels=5),
    "IBertForQuestionAnswering": dict(),
    "IBertForMultipleChoice": dict(),
}


def padded_batch(rows, seq, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(rows, seq))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for r, n in enumerate(rng.integers(3, seq + 1, size=rows)):
        ids[r, n - 1] = 2
        ids[r, n:] = 1
        mask[r, n:] = 0
    return ids, mask


def measure(model, cls_name, ids, mask):
    seq = ids.shape[1]
    if cls_name == "IBertForMultipleChoice":
        ids3, mask3 = np.stack([ids, np.roll(ids, 1, 0)], 1), np.stack([mask, np.roll(mask, 1, 0)], 1)
        enc = model.ibert(ids3.reshape(-1, seq), mask3.reshape(-1, seq))
        q, s = model.int_logits(enc)
        return compare_logits(model.float_logits(enc).reshape(-1, 2), (q * s).reshape(-1, 2))
    enc = model.ibert(ids, mask)
    f = model.float_logits(enc)
    q, s = model.int_logits(enc)
    i = q * s
    if cls_name == "IBertForSequenceClassification":
        return compare_logits(f, i)
    c = compare_logits(f, i, mask.astype(bool))
    if cls_name == "IBertForQuestionAnswering":
        agree = [np.mean(np.where(mask, f[..., k], -np.inf).argmax(1) == np.where(mask, i[..., k], -np.inf).argmax(1))
                 for k in (0, 1)]
        c.argmax_agreement, c.rows = float(np.mean(agree)), 2 * ids.shape[0]
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=32, help="sequences in the batch (default 32)")
    ap.add_argument("--seq", type=int, default=16, help="padded sequence length (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random batch (default 0)")
    args = ap.parse_args(argv)

    from ibert_ref.oracle.builders import CORPUS, make_calibrated_ibert

    ids, mask = padded_batch(args.rows, args.seq, args.seed)
    print("| head | datapath | max abs err | mean abs err | max abs logit | argmax agreement | rows |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for cls_name, kw in BUILDS.items():
            folder = Path(tmp) / cls_name
            make_calibrated_ibert(folder, model_class=cls_name, **TINY, **kw)
            for dp in ("transformers", "exact"):
                model = getattr(H, cls_name).from_pretrained(str(folder), datapath=dp, integer_heads=True)
                c = measure(model, cls_name, ids, mask)
                print(f"| {cls_name} | {dp} | {c.max_abs_error:.3g} | {c.mean_abs_error:.3g} | "
                      f"{c.max_abs_logit:.3g} | {c.argmax_agreement:.4f} | {c.rows} |")

    enc_in = Tokenizer.from_pretrained()(CORPUS)
    for dp in ("transformers", "exact"):
        model = IBertModel.from_pretrained(datapath=dp)
        enc = model(enc_in["input_ids"], enc_in["attention_mask"])
        p = model.compiled.pooler
        h = p.w.shape[0]
        identity = FloatLinearParams(np.eye(h, dtype=np.float32), np.zeros(h, np.float32))
        pooler = IntegerTanhHead.build(FloatLinearParams(p.w, p.b), identity, enc.last_hidden_state_scale)
        codes = pooler.hidden(enc.last_hidden_state_int[:, 0, :], enc.last_hidden_state_scale)
        err = np.abs(codes / 127 - enc.pooler_output)
        sign = np.mean(np.sign(codes) == np.sign(enc.pooler_output))
        print(f"| bundled pooler (tanh output) | {dp} | {err.max():.3g} | {err.mean():.3g} | "
              f"{np.abs(enc.pooler_output).max():.3g} | sign {sign:.4f} | {len(CORPUS)} |")


if __name__ == "__main__":
    main()
