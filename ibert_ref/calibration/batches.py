"""Calibration texts -> token batches."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np



# ---------------------------------------------------------------------------------------
def read_texts(path) -> List[str]:
    """Non-empty lines of a UTF-8 text file (one calibration text per line)."""
    with open(path, encoding="utf-8") as f:
        texts = [line.strip() for line in f]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no non-empty lines")
    return texts


def make_batches(tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 128):
    """Tokenize ``texts`` in order into right-padded batches ``[(input_ids, attention_mask), ...]``
    (int64), each sequence truncated to ``max_length`` tokens."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length)
        batches.append((enc["input_ids"], enc["attention_mask"]))
    return batches


def join_batches(batches, pad_token_id: int = 0):
    """Right-pad ``[(input_ids, attention_mask), ...]`` to the longest sequence and stack them
    into one ``(input_ids, attention_mask)`` batch (int64; padding ids ``pad_token_id``, mask 0)."""
    pairs = [(np.atleast_2d(np.asarray(i, dtype=np.int64)), np.atleast_2d(np.asarray(m, dtype=np.int64)))
             for i, m in batches]
    if not pairs:
        raise ValueError("no calibration batches")
    for ids, mask in pairs:
        if ids.shape != mask.shape:
            raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} differ in shape")
    length = max(ids.shape[1] for ids, _ in pairs)
    ids_out = np.concatenate([np.pad(i, ((0, 0), (0, length - i.shape[1])), constant_values=pad_token_id)
                              for i, _ in pairs])
    mask_out = np.concatenate([np.pad(m, ((0, 0), (0, length - m.shape[1]))) for _, m in pairs])
    return ids_out, mask_out
