#!/usr/bin/env python
"""Regenerate the tables of ``docs/hardware.md``: the width census of a roberta-base-shaped layer
and the end-to-end distance of each hardware profile from the exact datapath.

* The roberta-base-shaped model (hidden 768, 12 heads, intermediate 3072, 2 layers, vocab 1024)
  is a random quant-mode I-BERT calibrated with transformers by ``scripts/make_tiny_model.py``
  and cached in ``--rb-model`` (default ``/tmp/ibert-roberta-base-2l``); building it needs the
  ``verify`` extra (torch + transformers) and takes ~3 minutes on 2 cores.
* Each table is written between ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers of the
  doc (``--doc``), or printed with ``--print``.

Usage::

    python scripts/hardware_tables.py [--rb-model /tmp/ibert-roberta-base-2l] [--print]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibert_ref.data import default_model_path  # noqa: E402
from ibert_ref.datapath import QTensor, make_datapath  # noqa: E402
from ibert_ref.model import IBertModel, Tracer, layer_forward  # noqa: E402
from ibert_ref.tokenizer import Tokenizer  # noqa: E402
from ibert_ref.widths import width_census  # noqa: E402

TEXTS = [
    "The capital of France is Paris.",
    "Tokyo, the capital of Japan, is one of the biggest cities in the world.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the window and let the cool air in.",
    "Could you pass me the salt, please?",
    "The river Nile flows north through Egypt into the Mediterranean Sea.",
    "Bees help flowers by carrying pollen from one plant to another.",
    "Hi",
]
CENSUS_TEXT = ["The capital of France is Paris, and the capital of Italy is Rome."]

#: (label, profile name, overrides): the rows of the end-to-end table.
CONFIGS = [
    ("exact profile (int64 acc, exact)", "generic", dict(acc_bits=64, overflow="exact")),
    ("**arm** (profile)", "arm", {}),
    ("**tensor-core** (profile, .satfinite)", "tensor-core", {}),
    ("tensor-core, overflow=wrap", "tensor-core", dict(overflow="wrap")),
    ("gelu=int32", "generic", dict(gelu="int32")),
    ("requant=arm, gelu=wide", "generic", dict(requant="arm")),
    ("requant=arm, gelu=int32", "generic", dict(requant="arm", gelu="int32")),
    ("requant=gemmlowp, gelu=int32", "generic", dict(requant="gemmlowp", gelu="int32")),
    ("requant=tflite-single, gelu=int32", "generic", dict(requant="tflite-single", gelu="int32")),
    ("requant=cutlass-f32, gelu=int32", "generic", dict(requant="cutlass-f32", gelu="int32")),
    ("exp=shift-right", "generic", dict(exp="shift-right")),
    ("exp=left-shift (int32 wrap)", "generic", dict(exp="left-shift")),
    ("exp=left-shift (int64)", "generic", dict(exp="left-shift", acc_bits=64)),
    ("ln_var=uint32", "generic", dict(ln_var="uint32")),
    ("ln_var=int32-sat", "generic", dict(ln_var="int32-sat")),
    ("sqrt=float32", "generic", dict(sqrt="float32")),
    ("probs=u8-sat", "generic", dict(probs="u8-sat")),
    ("acc_bits=24, saturate, k_step=32", "generic", dict(acc_bits=24, overflow="saturate", k_step=32)),
    ("acc_bits=16, wrap", "generic", dict(acc_bits=16, overflow="wrap")),
    ("acc_bits=16, saturate, k_step=32", "generic", dict(acc_bits=16, overflow="saturate", k_step=32)),
]


def ensure_rb_model(folder: Path) -> Path:
    """Build the roberta-base-shaped model with scripts/make_tiny_model.py unless cached."""
    if (folder / "model.safetensors").exists():
        return folder
    print(f"building the roberta-base-shaped model in {folder} (needs torch + transformers) ...", file=sys.stderr)
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_tiny_model  # noqa: PLC0415

    rc = make_tiny_model.main(
        ["--out", str(folder), "--hidden-size", "768", "--layers", "2", "--heads", "12",
         "--intermediate-size", "3072", "--qk-std", "0.25", "--calib-batches", "16"]
    )
    if rc:
        raise RuntimeError("building the roberta-base-shaped model failed")
    return folder


def int8_outputs(out) -> dict:
    """The trace entries that are 8-bit QuantAct outputs, in forward order."""
    return {k: v.astype(np.int64) for k, v in out.trace.items() if out.trace_meta[k].bits == 8}


def compare(ref, out) -> dict:
    """Distance of a profile's run from the exact run (int8 outputs, final hidden states)."""
    a, b = int8_outputs(ref), int8_outputs(out)
    diffs = [np.abs(b[k] - a[k]) for k in a]
    flat = np.concatenate([d.ravel() for d in diffs])
    first = next(((k, d) for k, d in zip(a, diffs) if d.any()), None)
    last = np.abs(out.last_hidden_state_int.astype(np.int64) - ref.last_hidden_state_int.astype(np.int64))
    return dict(
        max_d8=int(flat.max()),
        mean_d8=float(flat.mean()),
        frac_d8=float(np.mean(flat > 0)),
        first=None if first is None else (first[0], int(first[1].max()), float(np.mean(first[1] > 0))),
        last_agree=float(np.mean(last == 0)),
        last_max=int(last.max()),
        events=len(out.overflow_events),
    )


def layer_local(exact_model, ref, dp, mask) -> tuple:
    """Teacher-forced cost: each encoder layer of ``dp`` fed the exact run's layer input.

    Returns (share of the layers' int8 outputs that differ, max |difference|): the error a
    profile introduces inside one layer, without the cascade from earlier layers.
    """
    num_heads = exact_model.config["num_attention_heads"]
    differing, total, worst = 0, 0, 0
    for i, layer in enumerate(exact_model.compiled.layers):
        src = "embeddings.output_activation" if i == 0 else f"encoder.layer.{i - 1}.output.output_activation"
        h = QTensor(ref.trace[src].astype(np.int64), np.asarray(ref.trace_meta[src].scale))
        tracer = Tracer(dp)
        dp.begin_run()
        layer_forward(dp, layer, h, mask, num_heads, tracer, f"encoder.layer.{i}.")
        dp.end_run()
        for name, q in tracer.values.items():
            if tracer.meta[name].bits != 8:
                continue
            d = np.abs(q.astype(np.int64) - ref.trace[name].astype(np.int64))
            differing += int(np.count_nonzero(d))
            total += d.size
            worst = max(worst, int(d.max()))
    return differing / total, worst


def short_op(name: str) -> str:
    return name.replace("encoder.layer.", "L").replace("attention.", "attn.").replace("intermediate.", "inter.")


def end_to_end_table(path, texts) -> tuple:
    tok = Tokenizer.from_pretrained(path)
    enc = tok(texts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    exact_model = IBertModel.from_pretrained(path)
    ref = exact_model(ids, attention_mask=mask, return_trace=True)
    lines = [
        "| datapath | layer-local: int8 differing (max \\|Δ\\|) | first differing op (max \\|Δ\\|, share) "
        "| end to end: max \\|Δ\\| int8 | mean \\|Δ\\| int8 | int8 differing "
        "| final hidden int8 equal (max \\|Δ\\|) | overflow records |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, name, kw in CONFIGS:
        t0 = time.time()
        model = IBertModel.from_pretrained(path, datapath=make_datapath(name, **kw))
        out = model(ids, attention_mask=mask, return_trace=True)
        c = compare(ref, out)
        local_share, local_max = layer_local(exact_model, ref, model.datapath, mask)
        first = "—" if c["first"] is None else f"`{short_op(c['first'][0])}` ({c['first'][1]}, {100 * c['first'][2]:.2f} %)"
        lines.append(
            f"| {label} | {100 * local_share:.2f} % ({local_max}) | {first} | {c['max_d8']} | {c['mean_d8']:.4f} | "
            f"{100 * c['frac_d8']:.2f} % | {100 * c['last_agree']:.2f} % ({c['last_max']}) | {c['events']} |"
        )
        print(f"  {label:40s} {time.time() - t0:5.1f}s", file=sys.stderr)
    return lines, tuple(ids.shape)


def census_tables(path) -> dict:
    tok = Tokenizer.from_pretrained(path)
    enc = tok(CENSUS_TEXT)
    out = {}
    exact = width_census(IBertModel.from_pretrained(path), enc["input_ids"], enc["attention_mask"])
    out["census-exact"] = exact.format(layers={-1, 0}, markdown=True)
    arm = width_census(IBertModel.from_pretrained(path, datapath="arm"), enc["input_ids"], enc["attention_mask"])
    out["census-arm"] = arm.format(layers={-1, 0}, markdown=True)
    # single-key softmax rows: a one-token sequence next to a full one
    ids = np.array([[0, 1, 1, 1, 1], enc["input_ids"][0, :5]])
    mask = np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    rows = ["| datapath | softmax.act out max | softmax `e * factor` max | softmax out max | need (signed / unsigned) |",
            "|---|---|---|---|---|"]
    for name in ("exact", "transformers", "arm"):
        c = width_census(IBertModel.from_pretrained(path, datapath=name), ids, mask)
        act = c.find("layer.0.attention.self.softmax.act", "out")
        prod = c.find("layer.0.attention.self.softmax", "e * factor")
        sm = c.find("layer.0.attention.self.softmax", "out")
        rows.append(f"| {name} | {act.hi} | {prod.hi} | {sm.hi} | {sm.need_signed} / {sm.need_unsigned} |")
    out["census-single-key"] = rows
    return out


def write_blocks(doc: Path, blocks: dict) -> None:
    text = doc.read_text()
    for name, lines in blocks.items():
        pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise KeyError(f"{doc} has no <!-- BEGIN {name} --> block")
        text = pattern.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text)
    doc.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rb-model", default="/tmp/ibert-roberta-base-2l", help="roberta-base-shaped model folder (cache)")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "hardware.md"))
    ap.add_argument("--print", action="store_true", help="print the tables instead of writing the doc")
    args = ap.parse_args(argv)

    rb = ensure_rb_model(Path(args.rb_model))
    blocks = {}
    print("width census (roberta-base-shaped) ...", file=sys.stderr)
    blocks.update(census_tables(rb))
    print("end to end, bundled model ...", file=sys.stderr)
    lines, shape = end_to_end_table(default_model_path(), TEXTS)
    blocks["e2e-bundled"] = [f"Inputs: {len(TEXTS)} corpus sentences, padded batch {shape}.", ""] + lines
    print("end to end, roberta-base-shaped model ...", file=sys.stderr)
    lines, shape = end_to_end_table(rb, TEXTS[:4])
    blocks["e2e-roberta-base"] = [f"Inputs: 4 corpus sentences, padded batch {shape}.", ""] + lines
    if args.print:
        for name, body in blocks.items():
            print(f"## {name}\n" + "\n".join(body) + "\n")
    else:
        write_blocks(Path(args.doc), blocks)
        print(f"wrote {len(blocks)} tables into {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
