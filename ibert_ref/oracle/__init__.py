"""The oracle: Hugging Face transformers' I-BERT, used only to build test models and to verify.

This subpackage is the only part of ``ibert_ref`` that imports torch and transformers (the optional
``verify`` extra, pinned in pyproject.toml). Importing ``ibert_ref.oracle`` itself does not import
torch; the submodules do:

* :mod:`ibert_ref.oracle.builders` -- a small byte-level BPE tokenizer and calibrated random
  quant-mode I-BERT models (``make_tokenizer``, ``make_calibrated_ibert``, ``calibration_report``).
* :mod:`ibert_ref.oracle.capture` -- forward hooks on every quantized module of a transformers
  I-BERT, recording the integers each one produces (``capture_transformers_trace``,
  ``load_transformers_ibert``).
* :mod:`ibert_ref.oracle.replay` -- op-by-op replay: each of our kernels fed the inputs
  transformers gave the module of the same name (``replay_capture``).
* :mod:`ibert_ref.oracle.verify` -- ``ibert-ref verify``: replay and end-to-end comparison with
  every difference classified by checking its cause.
"""

__all__ = ["builders", "capture", "replay", "verify"]
