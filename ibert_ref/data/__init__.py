"""Bundled model files. ``default_model_path()`` is the tiny calibrated I-BERT that
``ibert-ref run`` uses when no ``--model`` is given (made by scripts/make_tiny_model.py)."""

from pathlib import Path

DEFAULT_MODEL_NAME = "tiny-ibert"


def default_model_path() -> str:
    """Folder of the bundled tiny I-BERT (config.json, model.safetensors, tokenizer.json)."""
    return str(Path(__file__).resolve().parent / DEFAULT_MODEL_NAME)
