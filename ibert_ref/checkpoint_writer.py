"""Writing an I-BERT checkpoint folder: ``model.safetensors``, ``config.json``, tokenizer files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np

from .outdir import current_umask

#: Tokenizer files copied next to a converted / calibrated checkpoint when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def write_checkpoint(folder, config: dict, tensors: Dict[str, np.ndarray], tokenizer_from=None) -> Path:
    """Write ``model.safetensors`` (metadata ``format=pt``, as transformers writes it), then
    ``config.json``, and copy the tokenizer files of ``tokenizer_from`` (a folder) when given.

    The weights go first, so a failure while writing them never leaves a new ``config.json``
    beside old weights; safetensors creates its file with mode 0600, which is widened to what
    the process umask gives any other file (as ``config.json`` gets). For a folder that appears
    whole or not at all, write through :func:`ibert_ref.outdir` (a temporary sibling folder renamed into place).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    weights = folder / "model.safetensors"
    save_file(contiguous, str(weights), metadata={"format": "pt"})
    os.chmod(weights, 0o666 & ~current_umask())
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
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
