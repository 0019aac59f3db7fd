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

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .loading import Checkpoint, load_checkpoint
from .quant import F32

#: transformers' initial QuantAct range (``zeros(1) -/+ 1e-5`` in float32).
UNCALIBRATED_MIN_F32 = np.array([-1e-5], dtype=F32)
UNCALIBRATED_MAX_F32 = np.array([1e-5], dtype=F32)

#: Tokenizer files copied next to a converted / calibrated checkpoint when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)

# Module names of I-BERT (relative to the base model), the single source of the key layout.
EMBEDDING_TABLES = ("word_embeddings", "token_type_embeddings", "position_embeddings")
EMBEDDING_QUANT_ACTS = ("embeddings_act1", "embeddings_act2", "LayerNorm.activation", "output_activation")
LAYER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
LAYER_LAYERNORMS = ("attention.output.LayerNorm", "output.LayerNorm")
LAYER_QUANT_ACTS = (
    "attention.self.query_activation",
    "attention.self.key_activation",
    "attention.self.value_activation",
    "attention.self.output_activation",
    "attention.self.softmax.act",
    "attention.output.ln_input_act",
    "attention.output.LayerNorm.activation",
    "attention.output.output_activation",
    "intermediate.output_activation",
    "output.ln_input_act",
    "output.LayerNorm.activation",
    "output.output_activation",
    "pre_intermediate_act",
    "pre_output_act",
)
#: QuantActs transformers creates but never calls (their buffers stay at the initial values).
DEAD_QUANT_ACT_SUFFIXES = ("embeddings_act2", "LayerNorm.activation")

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
def quant_act_names(num_layers: int) -> List[str]:
    """Every QuantAct of an IBertModel (dead ones included), in module order."""
    names = [f"embeddings.{a}" for a in EMBEDDING_QUANT_ACTS]
    for i in range(num_layers):
        names += [f"encoder.layer.{i}.{a}" for a in LAYER_QUANT_ACTS]
    return names


def is_dead_quant_act(name: str) -> bool:
    """Whether transformers never calls this QuantAct (``embeddings_act2``, ``*.LayerNorm.activation``)."""
    return name.endswith(DEAD_QUANT_ACT_SUFFIXES)


def layernorm_names(num_layers: int) -> List[str]:
    names = ["embeddings.LayerNorm"]
    for i in range(num_layers):
        names += [f"encoder.layer.{i}.{n}" for n in LAYER_LAYERNORMS]
    return names


def linear_names(num_layers: int) -> List[str]:
    return [f"encoder.layer.{i}.{n}" for i in range(num_layers) for n in LAYER_LINEARS]


def float_parameter_keys(config: dict) -> List[str]:
    """The float tensors an IBertModel needs (pooler excluded), without prefix."""
    keys = [f"embeddings.{t}.weight" for t in EMBEDDING_TABLES]
    keys += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for name in linear_names(config["num_hidden_layers"]):
        keys += [name + ".weight", name + ".bias"]
    for i in range(config["num_hidden_layers"]):
        for ln in LAYER_LAYERNORMS:
            keys += [f"encoder.layer.{i}.{ln}.weight", f"encoder.layer.{i}.{ln}.bias"]
    return keys


def uncalibrated_quant_buffers(config: dict) -> Dict[str, np.ndarray]:
    """Every quantization buffer of an IBertModel at transformers' initial values (no prefix).

    QuantAct: ``x_min=-1e-5``, ``x_max=+1e-5``, ``act_scaling_factor=0``; IntLayerNorm
    ``shift=0``; QuantLinear ``weight_integer``/``fc_scaling_factor``/``bias_integer`` and
    QuantEmbedding ``weight_integer``/``weight_scaling_factor`` zeros of the right shapes.
    """
    h, inter, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    rows = {
        "word_embeddings": config["vocab_size"],
        "token_type_embeddings": config.get("type_vocab_size", 1),
        "position_embeddings": config["max_position_embeddings"],
    }
    out: Dict[str, np.ndarray] = {}
    for table in EMBEDDING_TABLES:
        out[f"embeddings.{table}.weight_scaling_factor"] = np.zeros(1, F32)
        out[f"embeddings.{table}.weight_integer"] = np.zeros((rows[table], h), F32)
    for name in quant_act_names(n):
        out[name + ".x_min"] = UNCALIBRATED_MIN_F32.copy()
        out[name + ".x_max"] = UNCALIBRATED_MAX_F32.copy()
        out[name + ".act_scaling_factor"] = np.zeros(1, F32)
    for name in layernorm_names(n):
        out[name + ".shift"] = np.zeros(1, F32)
    shapes = {
        "attention.self.query": (h, h),
        "attention.self.key": (h, h),
        "attention.self.value": (h, h),
        "attention.output.dense": (h, h),
        "intermediate.dense": (inter, h),
        "output.dense": (h, inter),
    }
    for i in range(n):
        for lin, (o, k) in shapes.items():
            p = f"encoder.layer.{i}.{lin}"
            out[p + ".weight_integer"] = np.zeros((o, k), F32)
            out[p + ".fc_scaling_factor"] = np.zeros(o, F32)
            out[p + ".bias_integer"] = np.zeros(o, F32)
    return out


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

    pos_key = "embeddings.position_embeddings.weight"
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
def write_checkpoint(folder, config: dict, tensors: Dict[str, np.ndarray], tokenizer_from=None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (metadata ``format=pt``, as transformers
    writes it) and copy the tokenizer files of ``tokenizer_from`` (a folder) when given."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(contiguous, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_from is not None:
        copy_tokenizer_files(tokenizer_from, folder)
    return folder


def copy_tokenizer_files(src_folder, dst_folder) -> List[str]:
    """Copy the tokenizer files present in ``src_folder``; returns the names copied."""
    copied = []
    src_folder, dst_folder = Path(src_folder), Path(dst_folder)
    if src_folder.resolve() == dst_folder.resolve():
        return copied
    for name in TOKENIZER_FILES:
        if (src_folder / name).is_file():
            shutil.copyfile(src_folder / name, dst_folder / name)
            copied.append(name)
    return copied


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
