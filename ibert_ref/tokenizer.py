"""Tokenizer for the I-BERT reference simulator (wraps ``tokenizers.Tokenizer``).

Loads ``tokenizer.json`` from a local folder or a Hub repo id (same resolution as
:func:`ibert_ref.loading.resolve_file`: cache, revision, ``local_files_only``, ``HF_HUB_OFFLINE``).
Folders that only have the RoBERTa byte-level BPE files ``vocab.json`` + ``merges.txt`` are also
accepted: the tokenizer is then rebuilt the way ``transformers.RobertaTokenizer`` builds it.

Encoding adds the special tokens of the tokenizer's post-processor (RoBERTa ``<s> ... </s>`` or
BERT ``[CLS] ... [SEP]``) and pads on the right with the pad token, returning numpy int64 arrays
equal to ``transformers.AutoTokenizer.from_pretrained(folder)(texts, padding=True)``.

This module imports only the standard library, numpy, tokenizers and :mod:`ibert_ref.loading`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

from .loading import CONFIG_NAME, CheckpointError, read_json, resolve_file

__all__ = ["Tokenizer", "TOKENIZER_FILE", "TOKENIZER_CONFIG_FILE", "SPECIAL_TOKENS_MAP_FILE"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

# transformers uses int(1e30) as "no limit" for model_max_length.
_NO_LIMIT = 10**12

_ROBERTA_SPECIALS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config / special_tokens_map: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class Tokenizer:
    """Text -> ``input_ids`` / ``attention_mask`` numpy arrays for the I-BERT simulator."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        pad_token_id: int | None = None,
        model_max_length: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        source: str | None = None,
    ) -> None:
        """Wrap a ``tokenizers.Tokenizer``.

        Args:
            tokenizer: the backend; its own padding/truncation settings are disabled (this class
                pads and truncates explicitly per call).
            pad_token_id: id used for padding; if None, ``<pad>`` or ``[PAD]`` is looked up.
            model_max_length: default length limit when ``truncation=True`` and no
                ``max_length`` is given (None: no limit).
            padding_side: ``"right"`` (default) or ``"left"``.
            truncation_side: ``"right"`` (default) or ``"left"``.
            source: where the tokenizer was loaded from (for messages).
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {truncation_side!r}")
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        if pad_token_id is None:
            for name in ("<pad>", "[PAD]"):
                pad_token_id = self._tok.token_to_id(name)
                if pad_token_id is not None:
                    break
        self._pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.source = source

    # -----------------------------------------------------------------------------------------
    # Loading
    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> "Tokenizer":
        """Load from a local folder (or a ``tokenizer.json`` path) or a Hub repo id.

        ``name_or_path=None`` loads the tokenizer of the bundled tiny model
        (:func:`ibert_ref.data.default_model_path`).

        Reads ``tokenizer.json`` (or, failing that, RoBERTa ``vocab.json`` + ``merges.txt``) and,
        when present, ``tokenizer_config.json``, ``special_tokens_map.json`` and ``config.json``.

        The pad token id is, in order: ``pad_token`` of ``tokenizer_config.json``, of
        ``special_tokens_map.json``, the padding id baked into ``tokenizer.json``, the id of
        ``<pad>`` / ``[PAD]``, and ``pad_token_id`` of ``config.json``.

        Raises:
            CheckpointError: naming the folder/repo/file when the tokenizer files are missing or
                malformed.
        """
        if name_or_path is None:
            from .data import default_model_path

            name_or_path = default_model_path()
        kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        where = os.fspath(name_or_path)

        def optional_json(filename: str) -> dict:
            path = resolve_file(name_or_path, filename, required=False, **kw)
            return read_json(path) if path is not None else {}

        tok_config = optional_json(TOKENIZER_CONFIG_FILE)
        special_map = optional_json(SPECIAL_TOKENS_MAP_FILE)

        tok_path = resolve_file(name_or_path, TOKENIZER_FILE, required=False, **kw)
        if tok_path is not None:
            try:
                backend = tokenizers.Tokenizer.from_file(tok_path)
            except Exception as exc:
                raise CheckpointError(f"{tok_path}: cannot parse tokenizer file: {exc}") from exc
            source = os.path.dirname(tok_path)
        else:
            vocab_path = resolve_file(name_or_path, VOCAB_FILE, required=False, **kw)
            merges_path = resolve_file(name_or_path, MERGES_FILE, required=False, **kw)
            if vocab_path is None or merges_path is None:
                raise CheckpointError(
                    f"no {TOKENIZER_FILE!r} (nor {VOCAB_FILE!r} + {MERGES_FILE!r}) found for {where!r}"
                )
            backend = _build_roberta_bpe(vocab_path, merges_path, tok_config, special_map)
            source = os.path.dirname(vocab_path)

        baked_padding = backend.padding
        pad_id: int | None = None
        for conf in (tok_config, special_map):
            name = _token_content(conf.get("pad_token"))
            if name is not None:
                pad_id = backend.token_to_id(name)
                if pad_id is None:
                    raise CheckpointError(
                        f"{where!r}: pad token {name!r} named in the tokenizer config is not in the vocabulary"
                    )
                break
        if pad_id is None and baked_padding is not None:
            pad_id = baked_padding.get("pad_id")
        if pad_id is None:
            for name in ("<pad>", "[PAD]"):
                pad_id = backend.token_to_id(name)
                if pad_id is not None:
                    break
        if pad_id is None:
            config_path = resolve_file(name_or_path, CONFIG_NAME, required=False, **kw)
            if config_path is not None:
                value = read_json(config_path).get("pad_token_id")
                if isinstance(value, int) and not isinstance(value, bool):
                    pad_id = value

        max_len = tok_config.get("model_max_length")
        if not isinstance(max_len, (int, float)) or isinstance(max_len, bool) or max_len >= _NO_LIMIT:
            max_len = None
        return cls(
            backend,
            pad_token_id=pad_id,
            model_max_length=None if max_len is None else int(max_len),
            padding_side=tok_config.get("padding_side", "right") or "right",
            truncation_side=tok_config.get("truncation_side", "right") or "right",
            source=source,
        )

    # -----------------------------------------------------------------------------------------
    # Properties
    # -----------------------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int | None:
        """Id used for padding (None if the tokenizer has no pad token)."""
        return self._pad_token_id

    @property
    def vocab_size(self) -> int:
        """Size of the id space, added/special tokens included (every id is ``< vocab_size``)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def __len__(self) -> int:
        """Same as :attr:`vocab_size`."""
        return self.vocab_size

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None if it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        """Token string of id ``index``, or None if out of range."""
        return self._tok.id_to_token(int(index))

    # -----------------------------------------------------------------------------------------
    # Encoding / decoding
    # -----------------------------------------------------------------------------------------

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: bool | str = True,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, np.ndarray]:
        """Tokenize a text or a batch of texts.

        Args:
            texts: one string (batch of 1) or a list of strings.
            padding: ``True`` / ``"longest"`` pads to the longest sequence; ``"max_length"`` pads
                to ``max_length``; ``False`` / ``"do_not_pad"`` requires equal lengths.
            truncation: truncate to ``max_length`` (default ``model_max_length``) tokens,
                special tokens included.
            max_length: length limit for truncation and ``padding="max_length"``.
            add_special_tokens: add the post-processor's special tokens (``<s> ... </s>``).

        Returns:
            ``{"input_ids": int64 (B, T), "attention_mask": int64 (B, T)}``; padding positions
            hold the pad id and mask 0.

        Raises:
            ValueError: bad arguments, a missing pad token when padding is needed, or ragged
                lengths with padding disabled.
        """
        if isinstance(texts, str):
            batch = [texts]
        else:
            batch = list(texts)
            if not batch:
                raise ValueError("texts must be a string or a non-empty list of strings")
            for i, t in enumerate(batch):
                if not isinstance(t, str):
                    raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if padding is True or padding == "longest":
            pad_mode = "longest"
        elif padding is False or padding == "do_not_pad" or padding is None:
            pad_mode = "none"
        elif padding == "max_length":
            pad_mode = "max_length"
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
        else:
            raise ValueError(f"unknown padding mode {padding!r}")

        limit: int | None = None
        if truncation:
            limit = max_length if max_length is not None else self.model_max_length
            if limit is not None and limit < 1:
                raise ValueError(f"max_length must be positive, got {limit}")

        try:
            if limit is not None:
                self._tok.enable_truncation(int(limit), direction=self.truncation_side)
            try:
                encodings = self._tok.encode_batch(batch, add_special_tokens=add_special_tokens)
            finally:
                if limit is not None:
                    self._tok.no_truncation()
        except Exception as exc:
            if isinstance(exc, (ValueError, TypeError)):
                raise
            raise ValueError(f"tokenization failed: {exc}") from exc

        seqs = [enc.ids for enc in encodings]
        lengths = [len(s) for s in seqs]
        longest = max(lengths)
        if pad_mode == "longest":
            width = longest
        elif pad_mode == "max_length":
            width = int(max_length)
            if longest > width:
                raise ValueError(
                    f"a sequence has {longest} tokens > max_length={width}; pass truncation=True"
                )
        else:
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"sequences have different lengths {lengths}; use padding=True to batch them"
                )
            width = longest

        needs_pad = any(n < width for n in lengths)
        if needs_pad and self._pad_token_id is None:
            raise ValueError("this tokenizer has no pad token; cannot pad sequences of different lengths")
        pad = self._pad_token_id if self._pad_token_id is not None else 0
        input_ids = np.full((len(seqs), width), pad, dtype=np.int64)
        attention_mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, ids in enumerate(seqs):
            n = len(ids)
            if self.padding_side == "right":
                input_ids[i, :n] = ids
                attention_mask[i, :n] = 1
            else:
                input_ids[i, width - n:] = ids
                attention_mask[i, width - n:] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        """Turn ids back into text.

        Args:
            ids: a 1-D sequence/array of ids (returns a string) or a 2-D array / list of
                sequences (returns a list of strings).
            skip_special_tokens: drop special tokens (``<s>``, ``</s>``, ``<pad>`` ...).
        """
        arr = np.asarray(ids)
        if arr.ndim == 2:
            return [self._tok.decode([int(x) for x in row], skip_special_tokens=skip_special_tokens) for row in arr]
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"decode expects 1-D or 2-D ids, got shape {arr.shape}")
        return self._tok.decode([int(x) for x in arr], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
            f"pad_token_id={self.pad_token_id})"
        )


def _build_roberta_bpe(
    vocab_path: str, merges_path: str, tok_config: dict, special_map: dict
) -> tokenizers.Tokenizer:
    """Rebuild a RoBERTa byte-level BPE tokenizer from ``vocab.json`` + ``merges.txt``.

    Mirrors ``transformers.RobertaTokenizer``: BPE without unk fusion, ByteLevel pre-tokenizer
    and decoder, ``RobertaProcessing(</s>, <s>)`` and the special tokens registered as added
    special tokens.
    """
    try:
        bpe = models.BPE.from_file(
            vocab_path,
            merges_path,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    except Exception as exc:
        raise CheckpointError(f"{vocab_path} / {merges_path}: cannot build BPE tokenizer: {exc}") from exc
    add_prefix_space = bool(tok_config.get("add_prefix_space", False))
    trim_offsets = bool(tok_config.get("trim_offsets", True))
    backend = tokenizers.Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()

    specials: dict[str, str] = {}
    for key, default in _ROBERTA_SPECIALS.items():
        value = _token_content(tok_config.get(key)) or _token_content(special_map.get(key)) or default
        specials[key] = value

    # Per-token flags (lstrip/rstrip/normalized) from tokenizer_config's added_tokens_decoder.
    flags: dict[str, dict] = {}
    for conf in (special_map, tok_config):  # AddedToken dicts of special_tokens_map / tokenizer_config
        for value in conf.values():
            if isinstance(value, dict) and isinstance(value.get("content"), str):
                flags[value["content"]] = value
    decoder_entries = tok_config.get("added_tokens_decoder")
    if isinstance(decoder_entries, dict):
        for entry in decoder_entries.values():
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                flags[entry["content"]] = entry
    added = []
    for content in dict.fromkeys(specials.values()):
        f = flags.get(content, {})
        added.append(
            AddedToken(
                content,
                single_word=bool(f.get("single_word", False)),
                lstrip=bool(f.get("lstrip", False)),
                rstrip=bool(f.get("rstrip", False)),
                normalized=bool(f.get("normalized", False)),
                special=True,
            )
        )
    backend.add_special_tokens(added)

    sep_id = backend.token_to_id(specials["sep_token"])
    cls_id = backend.token_to_id(specials["cls_token"])
    if sep_id is None or cls_id is None:
        raise CheckpointError(f"{vocab_path}: special tokens {specials['cls_token']!r}/{specials['sep_token']!r} missing")
    backend.post_processor = processors.RobertaProcessing(
        (specials["sep_token"], sep_id),
        (specials["cls_token"], cls_id),
        trim_offsets=trim_offsets,
        add_prefix_space=add_prefix_space,
    )
    return backend
