"""Large batches run in blocks of rows (bounded peak memory): the same integers as one call."""

from __future__ import annotations

import numpy as np
import pytest

import ibert_ref.model as M
from ibert_ref import IBertModel, Tokenizer
from ibert_ref.datapath import make_datapath

TEXTS = ["The capital of France is Paris.", "Hi", "Water boils at one hundred degrees Celsius at sea level.",
         "Integers all the way down.", "A", "Light travels faster than sound, and sound faster than rumours."]


@pytest.fixture(scope="module")
def enc():
    return Tokenizer.from_pretrained()(TEXTS)


def test_rows_per_chunk_rule():
    cfg = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
    assert M.rows_per_chunk(cfg, 128) == (1 << 24) // (128 * 3072) == 42
    assert M.rows_per_chunk(cfg, 512) == (1 << 24) // (512 * 12 * 512) == 5  # attention scores are widest
    assert M.rows_per_chunk(cfg, 10**6) == 1
    assert M.rows_per_chunk(cfg, 128, budget=1) == 1


# The integer datapaths only: the transformers datapath's float32 GEMMs may round differently
# for another row count on some BLAS builds (docs/properties.md), which is not ours to assert.
@pytest.mark.parametrize("datapath,kw", [("exact", {}), ("generic", dict(acc_bits=16, overflow="wrap")),
                                         ("arm", {}), ("tensor-core", {}), ("x86-avx2", {})])
def test_chunked_forward_equals_one_call(enc, monkeypatch, datapath, kw):
    model = IBertModel.from_pretrained(datapath=make_datapath(datapath, **kw))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    whole = model(ids, attention_mask=mask, return_trace=True, output_hidden_states=True, output_attentions=True)
    calls = []
    forward = IBertModel._forward

    def counting(self, input_ids, *a, **k):
        calls.append(input_ids.shape[0])
        return forward(self, input_ids, *a, **k)

    monkeypatch.setattr(IBertModel, "_forward", counting)
    width = max(model.config["intermediate_size"], model.config["num_attention_heads"] * ids.shape[1])
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 4 * ids.shape[1] * width)  # blocks of 4 rows: 4 + 2
    part = model(ids, attention_mask=mask, return_trace=True, output_hidden_states=True, output_attentions=True)
    assert calls == [4, 2]
    np.testing.assert_array_equal(part.last_hidden_state, whole.last_hidden_state)
    np.testing.assert_array_equal(part.last_hidden_state_int, whole.last_hidden_state_int)
    np.testing.assert_array_equal(part.pooler_output, whole.pooler_output)
    assert part.trace.keys() == whole.trace.keys()
    for k in whole.trace:
        assert part.trace[k].dtype == whole.trace[k].dtype, k
        np.testing.assert_array_equal(part.trace[k], whole.trace[k], err_msg=k)
    for a, b in zip(part.hidden_states_int, whole.hidden_states_int):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(part.attentions_int, whole.attentions_int):
        np.testing.assert_array_equal(a, b)
    # overflow records: the same ops and parts, counts summed over the blocks
    def counts(events):
        c = {}
        for r in events:
            c[(r.op, r.part, r.action)] = c.get((r.op, r.part, r.action), 0) + r.count
        return c

    if kw.get("acc_bits") == 16:
        assert whole.overflow_events and all("batch rows" in r.detail for r in part.overflow_events)
    assert counts(part.overflow_events).keys() == counts(whole.overflow_events).keys()


def test_a_large_roberta_base_batch_runs_in_blocks(monkeypatch):
    """8000 x 128 on the roberta-base shape is cut into blocks of 42 rows (2^24-element budget):
    checked on the block plan, without running it."""
    cfg = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
    rows = M.rows_per_chunk(cfg, 128)
    assert rows * 128 * 3072 <= M.CHUNK_ELEMENTS and -(-8000 // rows) == 191


def test_a_later_block_that_needs_a_wider_dtype_widens_the_output():
    whole = M._batch_array(np.zeros((2, 3), np.int32), 4)
    whole = M._put(whole, slice(0, 2), np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    whole = M._put(whole, slice(2, 4), np.array([[1 << 40, 0, 0], [0, 0, -(1 << 40)]], np.int64))
    assert whole.dtype == np.int64
    np.testing.assert_array_equal(whole, [[1, 2, 3], [4, 5, 6], [1 << 40, 0, 0], [0, 0, -(1 << 40)]])
