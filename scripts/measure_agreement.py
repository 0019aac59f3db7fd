"""Measure how ibert-ref's datapaths agree with transformers' I-BERT, per layer and op type.

    python scripts/measure_agreement.py [--out docs/agreement.md] [--big]

For each model (the bundled tiny model, a few tiny random configs, and with --big a
768-wide 4-layer model) and a padded batch, it captures transformers' integers
(ibert_ref.oracle.capture) and compares them with:

* the transformers datapath, torch GEMM backend (expected: 100% everywhere),
* the transformers datapath, numpy GEMM backend,
* the exact datapath end to end,
* the exact datapath replayed op by op on transformers' inputs.

Needs the verify extra (torch + transformers).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np

from ibert_ref import IBertModel
from ibert_ref.data import default_model_path
from ibert_ref.datapath import make_datapath
from ibert_ref.loading import load_checkpoint
from ibert_ref.oracle.builders import make_calibrated_ibert
from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert
from ibert_ref.oracle.replay import compare_integers, module_kind, replay_capture


def group_of(name: str) -> str:
    return "embeddings" if name.startswith("embeddings.") else "layer " + name.split(".")[2]


def summarise(comparisons):
    """{(group, kind): [equal, elements, max_abs_diff]}"""
    table = collections.OrderedDict()
    for c in comparisons:
        key = (group_of(c.name), c.kind)
        row = table.setdefault(key, [0, 0, 0])
        row[0] += c.equal
        row[1] += c.elements
        row[2] = max(row[2], c.max_abs_diff)
    return table


def end_to_end(model, capture, ids, mask):
    out = model(ids, attention_mask=mask, return_trace=True)
    comps = [compare_integers(n, module_kind(n), out.trace[n], capture.trace[n]) for n in capture.trace]
    lhs_equal = bool(np.array_equal(out.last_hidden_state, capture.last_hidden_state))
    return comps, lhs_equal


def markdown(title, table, lhs_equal=None):
    lines = [f"#### {title}", ""]
    if lhs_equal is not None:
        lines += [f"last_hidden_state bit-equal: **{lhs_equal}**", ""]
    lines += ["| where | op type | equal | max abs diff |", "|---|---|---:|---:|"]
    for (group, kind), (eq, n, mx) in table.items():
        lines.append(f"| {group} | {kind} | {100.0 * eq / n:.2f}% ({eq}/{n}) | {mx} |")
    return lines + [""]


def padded_batch(vocab, batch=4, seq=32, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, seq))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for row, length in enumerate(np.linspace(seq, seq // 3, batch).astype(int)):
        ids[row, length - 1] = 2
        ids[row, length:] = 1
        mask[row, length:] = 0
    return ids, mask


def measure(name, folder, vocab, seq):
    torch_model = load_transformers_ibert(folder)
    checkpoint = load_checkpoint(folder)
    ids, mask = padded_batch(vocab, seq=seq)
    capture = capture_transformers_trace(torch_model, ids, attention_mask=mask)
    get = lambda key: checkpoint.tensor(key).astype(np.float32)  # noqa: E731
    lines = [f"### {name}", "", f"batch {ids.shape[0]} x {ids.shape[1]} tokens, right-padded to 4 lengths", ""]
    runs = [
        ("transformers datapath, torch GEMM", dict(datapath="transformers", gemm="torch")),
        ("transformers datapath, numpy GEMM", dict(datapath="transformers", gemm="numpy")),
        ("exact datapath, end to end", dict(datapath="exact")),
    ]
    for title, kw in runs:
        model = IBertModel.from_checkpoint(checkpoint, **kw)
        comps, lhs = end_to_end(model, capture, ids, mask)
        lines += markdown(title, summarise(comps), lhs)
    replay = replay_capture(capture, get, make_datapath("exact"))
    lines += markdown("exact datapath, op-by-op replay on transformers' inputs", summarise(replay.values()))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    ap.add_argument("--big", action="store_true", help="also a 768-wide, 4-layer random model (slow)")
    args = ap.parse_args(argv)
    t0 = time.time()
    lines = ["# Agreement with transformers' I-BERT, per layer and op type", "",
             "Produced by `python scripts/measure_agreement.py"
             + (" --big" if args.big else "") + "` (transformers 5.24.0, torch 2.13.0 CPU).", ""]
    lines += measure("bundled tiny model (hidden 64, 4 layers, 4 heads)", default_model_path(), 1024, 32)
    configs = [
        ("random h48, 3 layers, 4 heads, qk std 0.3", dict(hidden_size=48, num_hidden_layers=3,
                                                          num_attention_heads=4, intermediate_size=96)),
    ]
    if args.big:
        configs.append(("random h768, 4 layers, 12 heads, qk std 0.3",
                        dict(hidden_size=768, num_hidden_layers=4, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=130)))
    with tempfile.TemporaryDirectory() as tmp:
        for title, cfg in configs:
            folder = os.path.join(tmp, str(len(lines)))
            print(f"building {title} ...", file=sys.stderr)
            make_calibrated_ibert(folder, vocab_size=512, seed=3, qk_std=0.3, **cfg)
            lines += measure(title, folder, 512, 32)
    lines.append(f"_(took {time.time() - t0:.0f} s)_")
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
