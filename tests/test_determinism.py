"""Determinism: the same inputs give the same bits across calls, models and processes, and a
sequence's integers do not depend on the rest of its batch except through the padding rules
(docs/properties.md, "Batch composition"):

1. rows never interact: every op is per sequence (GEMMs reduce over the hidden dimension or
   over the row's own keys);
2. a padded key (``attention_mask == 0``) gets a 16-bit exponential of exactly 0, hence a
   probability of exactly 0, so it adds nothing to the row sum or to the context;
3. RoBERTa position ids count real tokens only (``pad + cumsum(ids != pad)``), so right and
   left padding give a token the same position; a pad id *inside* a sequence gets the padding
   position, as in transformers;
4. integers at padded positions (padded query rows) are computed but carry no guarantee.

Guaranteed bit for bit on the exact datapath (integers only). The transformers datapath is
deterministic across calls and processes, but a batch's shape can change its float32 GEMM
blocking, which moves float32 rounding of values above 2^24 (measured: IntGELU's wide
products), exactly as in transformers itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ibert_ref import strategies as S
from ibert_ref.model import IBertModel


def scaled(fraction: float, minimum: int = 5):
    return settings(max_examples=max(minimum, int(settings().max_examples * fraction)))


def per_token(name: str, a: np.ndarray, row: int, n: int) -> np.ndarray:
    """Sequence ``row``'s entries for its first ``n`` (real) tokens: (B, T, ...) -> [:n],
    attention (B, heads, T, T) -> [:, :n, :n]."""
    if name.endswith(("softmax", "softmax.act")):
        return a[row][:, :n, :n]
    return a[row][:n]


def trace_digest(trace: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(trace):
        a = np.ascontiguousarray(trace[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
@scaled(0.25)
@given(st.data(), S.datapath_names(include=("exact", "transformers")))
def test_same_inputs_give_the_same_bits_across_calls_and_recompiled_models(data, datapath):
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config))
    first = IBertModel.from_checkpoint(ckpt, datapath=datapath)
    second = IBertModel.from_checkpoint(ckpt, datapath=datapath)
    digests = {trace_digest(m(ids, mask, return_trace=True).trace) for m in (first, first, second)}
    assert len(digests) == 1


SCRIPT = """
import hashlib, json, sys
import numpy as np
from ibert_ref import IBertModel, Tokenizer
model = IBertModel.from_pretrained(datapath=sys.argv[1])
enc = Tokenizer.from_pretrained()(["The capital of France is Paris.", "Snow fell."])
trace = model(enc["input_ids"], attention_mask=enc["attention_mask"], return_trace=True).trace
h = hashlib.sha256()
for name in sorted(trace):
    a = np.ascontiguousarray(trace[name])
    h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
print(json.dumps(h.hexdigest()))
"""


def test_the_bundled_model_gives_the_same_bits_in_a_fresh_process():
    """Same text, same bits in this process and in two fresh interpreters (both datapaths)."""
    from ibert_ref import Tokenizer

    enc = Tokenizer.from_pretrained()(["The capital of France is Paris.", "Snow fell."])
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for datapath in ("exact", "transformers"):
        here = IBertModel.from_pretrained(datapath=datapath)
        local = trace_digest(here(enc["input_ids"], attention_mask=enc["attention_mask"], return_trace=True).trace)
        for _ in range(2):
            run = subprocess.run([sys.executable, "-c", SCRIPT, datapath], capture_output=True, text=True, env=env,
                                 timeout=120, check=True)
            assert json.loads(run.stdout.strip().splitlines()[-1]) == local


# ---------------------------------------------------------------------------------------
@scaled(0.5)
@given(st.data())
def test_a_sequence_gives_the_same_integers_alone_and_in_any_padded_batch(data):
    """Exact datapath, every trace entry, every real token: running a sequence alone (no
    padding) or inside a right-padded batch of other sequences gives the same integers, and its
    padded keys get exponentials and probabilities of exactly 0 (rules 1-2)."""
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config, max_batch=4))
    model = IBertModel.from_checkpoint(ckpt)
    full = model(ids, mask, return_trace=True).trace
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = model(ids[row : row + 1, :n], mask[row : row + 1, :n], return_trace=True).trace
        for name, a in alone.items():
            assert np.array_equal(per_token(name, full[name], row, n), per_token(name, a, 0, n)), name
        for name in (k for k in full if k.endswith(("softmax", "softmax.act"))):
            assert not full[name][row][:, :n, n:].any(), name


@scaled(0.5)
@given(st.data())
def test_left_and_right_padding_give_the_same_integers_to_real_tokens(data):
    """Rule 3: RoBERTa positions count real tokens only, so moving the padding to the left
    changes no real token's integers (exact datapath)."""
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config, max_batch=3))
    pad = ckpt.config["pad_token_id"]
    lens = mask.sum(axis=1)
    t = ids.shape[1]
    left_ids, left_mask = np.full_like(ids, pad), np.zeros_like(mask)
    for r, n in enumerate(lens):
        left_ids[r, t - n :], left_mask[r, t - n :] = ids[r, :n], 1
    model = IBertModel.from_checkpoint(ckpt)
    right = model(ids, mask, return_trace=True).trace
    left = model(left_ids, left_mask, return_trace=True).trace
    for name in right:
        for r, n in enumerate(lens):
            a, b = right[name][r], left[name][r]
            if name.endswith(("softmax", "softmax.act")):
                same = np.array_equal(a[:, :n, :n], b[:, t - n :, t - n :])
            else:
                same = np.array_equal(a[:n], b[t - n :])
            assert same, (name, r)


@scaled(0.5)
@given(st.data())
def test_permuting_the_batch_permutes_the_integers(data):
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config, max_batch=4))
    perm = data.draw(st.permutations(range(ids.shape[0])))
    model = IBertModel.from_checkpoint(ckpt)
    out = model(ids, mask, return_trace=True).trace
    out_p = model(ids[perm], mask[perm], return_trace=True).trace
    for name in out:
        assert np.array_equal(out[name][perm], out_p[name]), name
