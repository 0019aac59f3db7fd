"""NumPy calibration of I-BERT's activation ranges, by concern:

* :mod:`.ranges` — the range rules: transformers' QuantAct EMA and IntLayerNorm shift, and the
  whole-set choices (min/max, percentile, MSE-optimal clip, search candidates);
* :mod:`.float_model` — the float I-BERT in float32 NumPy (the search's reference);
* :mod:`.forward` — the calibration forward that observes every QuantAct's input;
* :mod:`.batches` — texts to token batches.

:func:`ibert_ref.calibrate.calibrate_checkpoint` ties them together and writes the checkpoint.
"""
