"""Save (or compare) whole forward traces and calibration results, for refactors that must not
change a single integer.

    python scripts/trace_snapshot.py save /tmp/trace_before.npz
    python scripts/trace_snapshot.py compare /tmp/trace_before.npz

Models: the bundled tiny model and a 768-wide, 2-layer random calibrated model (built with
transformers, ``ibert_ref.oracle.builders.make_calibrated_ibert``; skipped without torch).
Datapaths: exact, exact with the compiled backend (when numba is there), transformers (gemm numpy
and torch), arm, tensor-core, x86-vnni, generic acc_bits=24 overflow=saturate, and force_dequant
nonlinear (exact and transformers). Every trace entry, last_hidden_state (float32 and int8), the
attentions / hidden states and the overflow events are stored; a chunked forward, head_mask and
inputs_embeds run on the bundled model too. Calibration: ``calibrate_checkpoint`` on the bundled
model (ema, transformers and exact datapaths; search), every range, shift and buffer. Golden
vectors (manifest and arrays) on the bundled model: exact, arm, generic 16-bit wrap.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np

from ibert_ref import model as M
from ibert_ref.data import default_model_path
from ibert_ref.loading import load_checkpoint
from ibert_ref.model import IBertModel

TEXTS = ["The capital of France is Paris.", "Integers all the way down, and then some more.",
         "A short one.", "Quantization keeps every op in integer arithmetic, even the softmax."]
PROFILES = [("exact", {}), ("exact", {"fast": False}), ("transformers", {}), ("transformers", {"gemm": "torch"}), ("arm", {}),
            ("tensor-core", {}), ("x86-vnni", {}), ("generic", {"acc_bits": 24, "overflow": "saturate"}),
            ("generic", {"acc_bits": 16, "overflow": "wrap"}), ("generic", {"acc_bits": 18, "overflow": "saturate"})]


def _have(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def _inputs(vocab, pad=1, rows=3, seq=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(rows, seq))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for r, n in enumerate(np.linspace(seq, 4, rows).astype(int)):
        ids[r, n:] = pad
        mask[r, n:] = 0
    return ids, mask


def _build(ckpt, datapath, opts, force_dequant=None):
    if force_dequant is not None:
        ckpt.config = dict(ckpt.config, force_dequant=force_dequant)
    try:
        return IBertModel.from_checkpoint(ckpt, datapath=datapath, **opts)
    finally:
        if force_dequant is not None:
            ckpt.config = dict(ckpt.config, force_dequant="none")


def _store(out: dict, tag: str, res):
    out[f"{tag}|last_hidden_state"] = np.asarray(res.last_hidden_state)
    out[f"{tag}|last_hidden_state_int"] = np.asarray(res.last_hidden_state_int)
    if res.pooler_output is not None:
        out[f"{tag}|pooler_output"] = np.asarray(res.pooler_output)
    for k, v in (res.trace or {}).items():
        out[f"{tag}|trace|{k}"] = np.asarray(v)
        meta = res.trace_meta[k]
        out[f"{tag}|meta|{k}"] = np.array(f"{meta.kind}/{meta.bits}/{np.asarray(meta.scale).tobytes().hex()}")
    for name in ("attentions", "attentions_int", "hidden_states", "hidden_states_int"):
        for i, v in enumerate(getattr(res, name) or ()):
            out[f"{tag}|{name}|{i}"] = np.asarray(v)
    out[f"{tag}|overflow"] = np.array([repr(r) for r in res.overflow_events] or [""])


def forward_snapshots(out: dict, folders: dict):
    for mname, folder in folders.items():
        ckpt = load_checkpoint(folder)
        ids, mask = _inputs(ckpt.config["vocab_size"], ckpt.config.get("pad_token_id", 1))
        runs = [(dp, opts, None) for dp, opts in PROFILES]
        runs += [("exact", {}, "nonlinear"), ("transformers", {}, "nonlinear"), ("transformers", {}, "softmax"),
                 ("exact", {}, "gelu"), ("exact", {}, "layernorm")]
        if _have("numba"):
            runs.append(("exact", {"backend": "compiled"}, None))
        for dp, opts, fdq in runs:
            if opts.get("gemm") == "torch" and not _have("torch"):
                continue
            tag = f"{mname}|{dp}|{sorted(opts.items())}|{fdq}"
            model = _build(ckpt, dp, {k: v for k, v in opts.items() if k in ("gemm", "backend")} if dp in (
                "exact", "transformers") else {}, fdq) if dp in ("exact", "transformers") and "fast" not in opts else None
            if model is None:
                from ibert_ref.datapath import make_datapath
                model = _build(ckpt, make_datapath(dp, **opts), {}, fdq)
            res = model(ids, attention_mask=mask, return_trace=True, output_attentions=True,
                        output_hidden_states=True)
            _store(out, tag, res)
            print(tag, len(res.trace), "entries,", len(res.overflow_events), "overflow records", flush=True)
        if mname == "bundled":
            model = IBertModel.from_checkpoint(ckpt)
            heads = ckpt.config["num_attention_heads"]
            hm = np.ones(heads, dtype=np.int64)
            hm[0] = 0
            _store(out, "bundled|exact|head_mask", model(ids, attention_mask=mask, head_mask=hm, return_trace=True,
                                                           output_attentions=True))
            emb = np.random.default_rng(3).normal(size=(2, 7, ckpt.config["hidden_size"])).astype(np.float32)
            for dp in ("exact", "transformers", "arm"):
                m2 = IBertModel.from_checkpoint(ckpt, datapath=dp)
                _store(out, f"bundled|{dp}|inputs_embeds", m2(inputs_embeds=emb, return_trace=True))
            saved = M.CHUNK_ELEMENTS
            M.CHUNK_ELEMENTS = 1
            try:
                for dp in ("exact", "generic"):
                    from ibert_ref.datapath import make_datapath
                    m2 = IBertModel.from_checkpoint(ckpt, datapath=make_datapath(dp, **(
                        {"acc_bits": 20, "overflow": "wrap"} if dp == "generic" else {})))
                    _store(out, f"bundled|{dp}|chunked", m2(ids, attention_mask=mask, return_trace=True,
                                                             output_attentions=True, output_hidden_states=True))
            finally:
                M.CHUNK_ELEMENTS = saved


def calibration_snapshots(out: dict):
    from ibert_ref.calibrate import calibrate_checkpoint

    folder = default_model_path()
    for tag, kw in [("ema-transformers", {}), ("ema-exact", {"datapath": "exact"}),
                    ("search", {"range_method": "search"}), ("minmax", {"range_method": "minmax"})]:
        res = calibrate_checkpoint(folder, texts=TEXTS, batch_size=2, progress=False, **kw)
        for k, (lo, hi) in res.ranges.items():
            out[f"calib|{tag}|range|{k}"] = np.array([lo, hi], dtype=np.float64)
        for k, s in res.shifts.items():
            out[f"calib|{tag}|shift|{k}"] = np.array(s)
        for k, v in res.tensors.items():
            out[f"calib|{tag}|tensor|{k}"] = np.asarray(v)
        for k, c in res.clip_report.items():
            out[f"calib|{tag}|clip|{k}"] = np.array(repr(c))
        print("calibration", tag, len(res.ranges), "ranges", len(res.shifts), "shifts", flush=True)


def vectors_snapshots(out: dict):
    """Golden vectors (manifest text and every array) on the bundled model."""
    import json

    from ibert_ref.datapath import make_datapath
    from ibert_ref.vectors import load_vectors, write_vectors

    ckpt = load_checkpoint(default_model_path())
    ids, mask = _inputs(ckpt.config["vocab_size"])
    for dp, opts in [("exact", {}), ("arm", {}), ("generic", {"acc_bits": 16, "overflow": "wrap"})]:
        model = IBertModel.from_checkpoint(ckpt, datapath=make_datapath(dp, **opts))
        with tempfile.TemporaryDirectory() as d:
            write_vectors(model, ids, d, attention_mask=mask)
            manifest, arrays = load_vectors(d)
        manifest["model"]["source"] = ""
        out[f"vectors|{dp}|manifest"] = np.array(json.dumps(manifest, sort_keys=True))
        for k, v in arrays.items():
            out[f"vectors|{dp}|{k}"] = v
        print("vectors", dp, len(manifest["ops"]), "ops", flush=True)


def snapshot() -> dict:
    out: dict = {}
    folders = {"bundled": default_model_path()}
    tmp = None
    if _have("torch") and _have("transformers"):
        from ibert_ref.oracle.builders import make_calibrated_ibert

        tmp = tempfile.TemporaryDirectory()
        make_calibrated_ibert(tmp.name, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                              intermediate_size=3072, vocab_size=256, calib_batches=3, calib_max_len=16, seed=7)
        folders["wide768"] = tmp.name
    forward_snapshots(out, folders)
    vectors_snapshots(out)
    calibration_snapshots(out)
    return out


def compare(before: dict, after: dict) -> int:
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    differ = []
    for k in sorted(set(before) & set(after)):
        a, b = before[k], after[k]
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            differ.append(k)
    n = len(set(before) & set(after))
    print(f"{n} entries compared: {n - len(differ)} equal (bit for bit, dtype and shape), {len(differ)} differ, "
          f"{len(missing)} missing, {len(extra)} new")
    for k in differ[:20] + missing[:20] + extra[:20]:
        print("  ", k)
    return 0 if not (differ or missing or extra) else 1


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "compare"):
        print(__doc__)
        return 2
    snap = snapshot()
    if argv[1] == "save":
        np.savez(argv[2], **snap)
        print(f"{len(snap)} entries -> {argv[2]}")
        return 0
    with np.load(argv[2], allow_pickle=False) as z:
        before = {k: z[k] for k in z.files}
    return compare(before, snap)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
