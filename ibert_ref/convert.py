"""Float BERT / RoBERTa checkpoint -> transformers I-BERT layout (then calibrate).

I-BERT (``model_type="ibert"``) has RoBERTa's module names, so most float tensors copy across
unchanged. What differs:

* **Positions.** I-BERT numbers real tokens ``pad+1, pad+2, ...`` and gives padding position
  ``pad`` (RoBERTa's scheme). RoBERTa checkpoints already store their table that way and copy
  as is. BERT numbers tokens ``0, 1, ...``, so BERT's row ``p`` becomes I-BERT row
  ``p + pad + 1``; rows ``0 .. pad`` are zero (row ``pad`` is what padding tokens read; zeros
  do not widen the table's quantization range) and ``max_position_embeddings`` grows by
  ``pad + 1``. The sequence limit is unchanged (BERT's ``max_position_embeddings`` tokens).
  This matches BERT exactly for right-padded batches (BERT gives left padding shifted
  positions; I-BERT does not).
* **Quantization buffers.** Every QuantAct ``x_min``/``x_max`` (uncalibrated: -1e-5/+1e-5,
  transformers' initial values), ``act_scaling_factor``, IntLayerNorm ``shift`` (0) and the
  derived QuantLinear/QuantEmbedding buffers (zeros) are added, so that transformers loads the
  folder without missing keys. :func:`ibert_ref.calibrate.calibrate_checkpoint` fills them.
* **Config.** ``model_type="ibert"``, ``quant_mode=true``, ``force_dequant="none"``,
  ``architectures=["IBertModel"]``; sizes, dropout, ``layer_norm_eps``, ``type_vocab_size``
  and ``pad_token_id`` carried over.

Task heads (``cls.*``, ``lm_head.*``, ``classifier.*``, ``qa_outputs.*``) are dropped; the
pooler (``pooler.dense``) is kept when present. The tokenizer files are copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .checkpoint_schema import (  # noqa: F401 - re-exported: the names used to live here
    DEAD_QUANT_ACT_SUFFIXES,
    EMBEDDING_QUANT_ACTS,
    EMBEDDING_TABLES,
    LAYER_LAYERNORMS,
    LAYER_LINEARS,
    LAYER_QUANT_ACTS,
    UNCALIBRATED_MAX_F32,
    UNCALIBRATED_MIN_F32,
    float_parameter_keys,
    is_dead_quant_act,
    layernorm_names,
    linear_names,
    quant_act_names,
    uncalibrated_quant_buffers,
)
from .checkpoint_writer import TOKENIZER_FILES, copy_tokenizer_files, write_checkpoint  # noqa: F401
from .dataflow import POSITION_IDS, block_ops
from .loading import Checkpoint, load_checkpoint
from .quant import F32

#: Config fields copied from the float model.
CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


class ConvertError(ValueError):
    """The source checkpoint cannot be converted (unsupported model type, option or layout)."""


# ---------------------------------------------------------------------------------------
@dataclass
class Conversion:
    """The I-BERT layout of a float checkpoint: ``config`` and ``tensors`` (no prefix), and
    what was dropped (``dropped``: source keys not carried over) or noted (``notes``)."""

    config: dict
    tensors: Dict[str, np.ndarray]
    source_type: str
    dropped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _strip_prefix(tensors: Dict[str, np.ndarray], prefix: str):
    """Split into (base model tensors without ``prefix``, other keys)."""
    base, other = {}, []
    for k, v in tensors.items():
        if k.startswith(prefix):
            base[k[len(prefix):]] = v
        elif k.startswith(("embeddings.", "encoder.", "pooler.")):
            base[k] = v
        else:
            other.append(k)
    return base, other


def bert_position_table_for_ibert(bert_pos_f32: np.ndarray, pad_token_id: int) -> np.ndarray:
    """BERT's (P, H) absolute position table -> I-BERT's (P + pad + 1, H) table.

    I-BERT row ``p + pad + 1`` holds BERT row ``p``; rows ``0 .. pad`` are zero.
    """
    if pad_token_id < 0:
        raise ConvertError(f"pad_token_id must be >= 0, got {pad_token_id}")
    p, h = bert_pos_f32.shape
    table = np.zeros((p + pad_token_id + 1, h), dtype=F32)
    table[pad_token_id + 1:] = bert_pos_f32
    return table


def convert_tensors(checkpoint: Checkpoint) -> Conversion:
    """Map a float BERT or RoBERTa checkpoint to I-BERT's keys and config (uncalibrated)."""
    src = checkpoint.config
    model_type = src.get("model_type")
    if model_type not in ("bert", "roberta"):
        raise ConvertError(
            f"{checkpoint.source}: model_type {model_type!r} is not supported; expected 'bert' or 'roberta' "
            "(an 'ibert' checkpoint needs no conversion: run `ibert-ref calibrate` on it)"
        )
    pet = src.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise ConvertError(f"position_embedding_type={pet!r}: I-BERT only has absolute position embeddings")
    act = src.get("hidden_act", "gelu")
    if act != "gelu":
        raise ConvertError(f"hidden_act={act!r}: I-BERT only implements GELU (IntGELU)")
    if src.get("is_decoder") or src.get("add_cross_attention"):
        raise ConvertError("decoder / cross-attention models cannot be converted to I-BERT")

    base, other = _strip_prefix(checkpoint.tensors, model_type + ".")
    notes = []
    dropped = sorted(other)  # task heads (cls., lm_head., classifier., ...) and anything else
    if "embeddings.position_ids" in base:
        del base["embeddings.position_ids"]
        dropped.append("embeddings.position_ids")

    config = {k: src[k] for k in CONFIG_FIELDS if k in src}
    default_pad = 0 if model_type == "bert" else 1
    pad = int(config.get("pad_token_id", default_pad) if config.get("pad_token_id") is not None else default_pad)
    config["pad_token_id"] = pad
    config.setdefault("type_vocab_size", 2 if model_type == "bert" else 1)

    tensors: Dict[str, np.ndarray] = {}
    for key in float_parameter_keys(config):
        if key not in base:
            raise ConvertError(f"{checkpoint.source}: tensor {key!r} (or {model_type}.{key}) is missing")
        tensors[key] = np.asarray(base[key], dtype=F32)
    for key in ("pooler.dense.weight", "pooler.dense.bias"):
        if key in base:
            tensors[key] = np.asarray(base[key], dtype=F32)
    extra = sorted(set(base) - set(tensors) - {"embeddings.position_ids"})
    dropped += extra

    pos_key = next(op.module for op in block_ops(None) if POSITION_IDS in op.inputs) + ".weight"
    if model_type == "bert":
        bert_rows = tensors[pos_key].shape[0]
        tensors[pos_key] = bert_position_table_for_ibert(tensors[pos_key], pad)
        config["max_position_embeddings"] = bert_rows + pad + 1
        notes.append(
            f"positions: BERT row p -> I-BERT row p+{pad + 1} (pad_token_id={pad}); "
            f"max_position_embeddings {bert_rows} -> {bert_rows + pad + 1}"
        )
    config.update(
        {
            "model_type": "ibert",
            "architectures": ["IBertModel"],
            "quant_mode": True,
            "force_dequant": "none",
            "position_embedding_type": "absolute",
        }
    )
    tensors.update(uncalibrated_quant_buffers(config))
    return Conversion(config=config, tensors=tensors, source_type=model_type, dropped=dropped, notes=notes)


# ---------------------------------------------------------------------------------------
def convert_checkpoint(
    source,
    out,
    *,
    texts: Optional[List[str]] = None,
    batch_size: int = 8,
    max_length: int = 128,
    datapath: str = "transformers",
    gemm: str = "numpy",
    momentum: float = 0.95,
    progress: bool = True,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
):
    """Convert a float BERT/RoBERTa checkpoint into ``out`` and calibrate it on ``texts``.

    Writes the uncalibrated I-BERT layout first, then (when ``texts`` is given) runs
    :func:`ibert_ref.calibrate.calibrate_checkpoint` on it in place (``batch_size``,
    ``max_length``, ``datapath``, ``gemm``, ``momentum`` are passed on). Returns
    ``(Conversion, CalibrationResult or None)``.
    """
    ckpt = load_checkpoint(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    conv = convert_tensors(ckpt)
    write_checkpoint(out, conv.config, conv.tensors, tokenizer_from=ckpt.source)
    if not (Path(out) / "tokenizer.json").is_file():  # a Hub source: fetch the tokenizer files too
        from .tokenizer import Tokenizer

        tok = Tokenizer.from_pretrained(source, revision=revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only)
        if tok.source:
            copy_tokenizer_files(tok.source, out)
    result = None
    if texts is not None:
        from .calibrate import calibrate_checkpoint

        result = calibrate_checkpoint(
            os.fspath(out),
            texts=texts,
            out=os.fspath(out),
            batch_size=batch_size,
            max_length=max_length,
            datapath=datapath,
            gemm=gemm,
            momentum=momentum,
            progress=progress,
        )
    return conv, result
