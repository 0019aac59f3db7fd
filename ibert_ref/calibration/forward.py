"""The calibration forward: train-mode passes over batches that observe each QuantAct's input
and update its range (semantics: :mod:`ibert_ref.calibrate`)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import kernels as K
from ..compile import (
    ACT_BITS,
    check_config,
    compile_model,
    dequantized_ops,
    embedding_params,
    expected_shape,
    layernorm_params,
    op_params,
    requant_params,
    softmax_params,
)
from ..checkpoint_schema import (
    is_dead_quant_act,
    quant_act_names,
    layernorm_names,
    uncalibrated_quant_buffers,
)
from ..dataflow import (
    FIRST_CALL,
    INPUT_IDS,
    LAYER_ACT8,
    LAYER_INPUT,
    OUTPUT_ACT,
    POSITION_IDS,
    TOKEN_TYPE_IDS,
    block_ops,
    run_op,
    split_name,
)
from ..datapath import Datapath, QTensor, TransformersDatapath, make_datapath
from ..loading import Checkpoint
from ..model import roberta_position_ids, run_block
from ..quant import F32, symmetric_scale_f32, weight_scale_per_channel_f32
from .float_model import FloatModel
from .ranges import (
    DEFAULT_MOMENTUM,
    DEFAULT_PERCENTILE,
    RANGE_METHODS,
    SEARCH_TARGETS,
    CalibrationError,
    ClipChoice,
    RangeTracker,
    layernorm_train_shift,
    quant_act_bits,
    quantization_mse,
    range_for_clip,
    search_candidates,
    select_range,
)


# ---------------------------------------------------------------------------------------
class Calibrator:
    """Runs train-mode forward passes over batches and keeps the ranges (see module docstring).

    ``checkpoint``: a loaded :class:`~ibert_ref.loading.Checkpoint` (float weights; ranges are
    read from it only when ``reset=False``). ``range_method``: ``"ema"`` (transformers'
    semantics, any number of :meth:`step` calls) or ``"minmax"``/``"percentile"``/``"mse"``
    /``"search"`` (see the module docstring: exactly one :meth:`step`, on the whole calibration
    set as one padded batch; ``momentum`` is not used). After a search step, ``clip_report``
    maps each 8-bit QuantAct to its :class:`ClipChoice`. ``on_observe(name, values)``, when
    set, is called with the real-token values each searched QuantAct observed;
    ``on_search(name, clips, objectives)`` (``"search"`` only) with the candidates and their
    scores; ``on_output(name, qtensor)`` with the output of every QuantAct call of the pass, in
    order (the embeddings' 16-bit QuantAct twice: its second call is the one a model trace records) (for
    tests and analysis).

    ``range_method="search"`` (output-aware clipping) chooses each 8-bit QuantAct's clip, in
    forward order, among :func:`search_candidates` (the ``"mse"`` clip first). Each candidate
    range quantizes the QuantAct's input with the integer kernel of the datapath; the result
    goes on through the **float** model (:class:`FloatModel`, the other 8-bit QuantActs of the
    layer not yet chosen stay float, the ones already chosen keep their quantized outputs) up to
    the output ``y`` of the encoder layer that consumes it: its own layer, or the next one for
    the embeddings' output QuantAct / a layer's output QuantAct (the last layer's output
    activation is scored on its own output). The score is ``mean((y - t)^2)`` over the real
    tokens of the calibration batch and the hidden units, and the lowest score wins (ties: the
    earlier candidate, so the ``"mse"`` clip keeps its place). ``search_target`` sets ``t``:

    * ``"float"`` (default): that layer's output in the float model run on the same calibration
      batch. The score is the whole quantized model's error at that layer so far, so a clip can
      also offset upstream error.
    * ``"local"``: the same continuation from the QuantAct's unquantized input ``x``: only the
      error this one QuantAct adds, propagated to the layer output.

    Only the calibration batch is used; the 16/22-bit QuantActs and LayerNorm shifts are set as
    in the other search methods.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        datapath: str = "transformers",
        gemm: str = "numpy",
        momentum: float = DEFAULT_MOMENTUM,
        reset: bool = True,
        range_method: str = "ema",
        percentile: float = DEFAULT_PERCENTILE,
        progress: bool = False,
        search_target: str = "float",
    ):
        if range_method not in RANGE_METHODS:
            raise ValueError(f"range_method must be one of {', '.join(RANGE_METHODS)}, got {range_method!r}")
        if range_method == "percentile" and not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if range_method != "ema" and not reset:
            raise ValueError(f"range_method={range_method!r} chooses every range afresh; it cannot continue (reset=False)")
        if search_target not in SEARCH_TARGETS:
            raise ValueError(f"search_target must be one of {', '.join(SEARCH_TARGETS)}, got {search_target!r}")
        if search_target != "float" and range_method != "search":
            raise ValueError(f"search_target={search_target!r} applies to range_method='search' only")
        self.range_method = range_method
        self.search_target = search_target
        self.percentile = float(percentile)
        self.show_progress = progress
        self.clip_report: Dict[str, ClipChoice] = {}
        self.on_observe = None
        self.on_search = None
        self.on_output = None
        self._real_tokens: Optional[np.ndarray] = None
        self._float: Optional[FloatModel] = None  # range_method="search": the reference
        self._float_targets: List[np.ndarray] = []
        self._layer_state: Dict[str, np.ndarray] = {}
        self._search_bar = None
        self.checkpoint = checkpoint
        self.config = dict(checkpoint.config)
        check_config({**self.config, "quant_mode": True})
        if dequantized_ops(self.config):
            raise CalibrationError(
                f"force_dequant={self.config.get('force_dequant')!r}: calibration implements the all-integer "
                "model only (force_dequant='none')"
            )
        self.dp = make_datapath(datapath, gemm=gemm)
        # search methods: the 16/22-bit QuantActs keep running min/max over their one batch
        self.tracker = RangeTracker(momentum=momentum if range_method == "ema" else -1)
        n = self.config["num_hidden_layers"]
        for name in layernorm_names(n):
            self.tracker.shifts[name] = 0
        if not reset:
            for name in quant_act_names(n):
                if checkpoint.has(name + ".x_min"):
                    self.tracker.x_min[name] = self.get(name + ".x_min").reshape(1)
                    self.tracker.x_max[name] = self.get(name + ".x_max").reshape(1)
            for name in layernorm_names(n):
                if checkpoint.has(name + ".shift"):
                    self.tracker.shifts[name] = int(self.get(name + ".shift").reshape(-1)[0])
        #: the embedding tables, compiled once (their scales do not depend on any range)
        self._tables = {op.params: embedding_params(self.dp, self.get(op.module + ".weight"))
                        for op in block_ops(None) if op.kernel == "quant_embedding"}
        #: QuantActs called twice in a forward (the whole-set methods give both calls one range)
        self._called_twice = {op.module for op in block_ops(None) if op.name.endswith(FIRST_CALL)}
        self._compiled: Dict[str, object] = {}
        self._env: dict = {}
        self.batches = 0
        self.tokens = 0

    def get(self, key: str) -> np.ndarray:
        return self.checkpoint.tensor(key, shape=expected_shape(key, self.config)).astype(F32)

    # -- inputs ------------------------------------------------------------------------
    def _inputs(self, input_ids, attention_mask, token_type_ids):
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq) array, got shape {ids.shape}")
        vocab = self.config["vocab_size"]
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"input_ids outside the vocabulary [0, {vocab})")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must be 0/1 with the shape of input_ids")
        if not mask.any(axis=1).all():
            raise ValueError("an attention_mask row masks every token")
        tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        pad = self.config.get("pad_token_id", 1)
        pos = roberta_position_ids(ids, pad)
        maxpos = self.config["max_position_embeddings"]
        if pos.max() >= maxpos:
            raise ValueError(f"sequence too long: at most {maxpos - pad - 1} tokens")
        return ids, mask, tt, pos

    # -- the train-mode forward --------------------------------------------------------
    def step(self, input_ids, attention_mask=None, token_type_ids=None) -> None:
        """One train-mode forward over a batch: updates every live QuantAct range and LN shift."""
        ids, mask, tt, pos = self._inputs(input_ids, attention_mask, token_type_ids)
        dp = self.dp
        searching = self.range_method != "ema"
        if searching and self.batches:
            raise CalibrationError(
                f"range_method={self.range_method!r} calibrates on exactly one batch (the whole calibration set, "
                "see join_batches); step() was already called"
            )
        self._real_tokens = mask.astype(bool)
        if searching:
            from ..progress import Progress

            per_layer = len(LAYER_SEARCHED_ACTS)
            self._search_bar = Progress(1 + per_layer * self.config["num_hidden_layers"],
                                        desc=f"range search ({self.range_method})", unit="op",
                                        enabled=self.show_progress)
        if self.range_method == "search":
            self._float = FloatModel(self.get, self.config)
            self._float_targets = self._float.forward(ids, tt, pos, mask)
        try:
            h = self._embeddings(ids, tt, pos)
            emb_scale = h.scale
            for i in range(self.config["num_hidden_layers"]):
                h = self._layer(i, dp.layer_input(h, emb_scale), mask)
        finally:
            if self._search_bar is not None:
                self._search_bar.close()
                self._search_bar = None
            self._float_targets, self._layer_state = [], {}
        self.batches += 1
        self.tokens += int(mask.sum())

    def _embeddings(self, ids, tt, pos) -> QTensor:
        """The embeddings block in train mode: ids (B,T) -> int8 (B,T,H)."""
        return self._block(None, {INPUT_IDS: ids, TOKEN_TYPE_IDS: tt, POSITION_IDS: pos}, None)

    def _layer(self, i: int, h: QTensor, mask) -> QTensor:
        """Encoder layer ``i`` in train mode: int8 (B,T,H) -> int8 (B,T,H)."""
        if self.range_method == "search":
            self._layer_state = {"input": self._packed(self.dp.dequantize(h))}
        return self._block(i, {LAYER_INPUT: h}, mask)

    def _block(self, layer: Optional[int], env: dict, mask) -> QTensor:
        """One block of :mod:`ibert_ref.dataflow` (``layer`` None: the embeddings) in train mode,
        interpreted by :func:`~ibert_ref.model.run_block` with each op's constants compiled
        when the op runs (:meth:`_params`); returns the block's int8 output."""
        ops = block_ops(layer)
        self._compiled = {}
        self._env = env
        env = run_block(self.dp, ops, env, params=self._params, num_heads=self.config["num_attention_heads"],
                        mask=mask, after=self._after)
        return env[ops[-1].name]

    def _params(self, op, args):
        """The constants of ``op`` compiled from its inputs' scales and the ranges as they stand
        now: a QuantAct first observes its input (``identity + x`` in float32) and updates its
        range (:meth:`_act_params`), IntSoftmax's QuantAct observes ``exp_int``, a LayerNorm
        updates its shift (transformers' train mode); weights come from the checkpoint."""
        dp, k, name = self.dp, op.kernel, op.module
        if k == "quant_embedding":
            p = self._tables[op.params]
        elif k == "requantize":
            p = self._act_params(op, args[0], args[1] if len(args) > 1 else None)
        elif k == "int_exp":
            p = self._softmax_params(op, args[0], self._compiled[op.inputs[0]])
        elif k == "softmax_normalize":
            p = self._compiled[op.inputs[0]]
        elif k == "int_layernorm":
            shift = layernorm_train_shift(dp, args[0], self.tracker.shifts.get(name, 0), name)
            self.tracker.shifts[name] = shift
            p = layernorm_params(dp, self.get(name + ".weight"), self.get(name + ".bias"), np.array([shift], dtype=F32))
        else:  # quant_linear, the attention scales, int_gelu: from the inputs' scales, as compiled
            head_dim = self.config["hidden_size"] // self.config["num_attention_heads"]
            p = op_params(dp, op, [getattr(a, "scale", None) for a in args], self.get, head_dim=head_dim)
        self._compiled[op.name] = p
        return p

    def _after(self, op, out) -> None:
        """After a QuantAct call: keep a searched output for the float continuation, and hand
        the output to ``on_output``."""
        if op.kind != "QuantAct":
            return
        if self._searched(op):
            short = self._layer_act(op.name)[1]
            if short is not None:
                self._layer_state[short] = self._packed(self.dp.dequantize(out))
        if self.on_output is not None:
            self.on_output(op.module, out)

    def _searched(self, op) -> bool:
        """Whether ``range_method="search"`` chooses this QuantAct's clip (8 bits, no identity)."""
        return self.range_method == "search" and op.width == ACT_BITS and op.identity is None

    def _observe(self, name, x_act, bits=None):
        bits = quant_act_bits(name) if bits is None else bits
        if self.range_method == "ema" or bits != ACT_BITS:
            return self.tracker.observe(name, x_act, bits)
        values = self._real_values(name, x_act)
        if self.on_observe is not None:
            self.on_observe(name, values)
        (x_min, x_max), choice = select_range(values, bits, self.range_method, self.percentile)
        self.tracker.x_min[name], self.tracker.x_max[name] = x_min, x_max
        self.tracker.updates[name] = self.tracker.updates.get(name, 0) + 1
        self.clip_report[name] = choice
        if self._search_bar is not None:
            self._search_bar.update()
        return self.tracker.scale(name, bits)

    def _real_values(self, name, x_act) -> np.ndarray:
        """The values of ``x_act`` (batch, seq, ...) at real tokens (attention mask 1), flattened."""
        x = np.asarray(x_act)
        real = self._real_tokens
        if real is None or x.shape[:2] != real.shape:
            raise CalibrationError(f"{name}: activation shape {x.shape} does not start with (batch, seq)")
        return x[real].reshape(-1)

    def _act_params(self, op, x: QTensor, identity: Optional[QTensor]) -> K.RequantParams:
        """A QuantAct in train mode: observe ``identity + x`` (float32) and update the range, then
        requantize with it; a searched QuantAct's clip is chosen by :meth:`_search`.

        The QuantAct the embeddings call twice gets one range in the whole-set methods, chosen
        before its first call from the float32 sums of both calls computed from the dequantized
        tables (``q * scale``): ``x1 = token_type + word`` and ``x2 = position + x1`` (unquantized;
        the second call's actual input is ``position + s * q1``). It is running min/max over the
        two, as for the other 16-bit QuantActs: ``x_min = min(-1e-5 + min x1, min x2)``,
        ``x_max = max(1e-5 + max x1, max x2)``. Both calls then requantize (FixedPointMul, round
        half to even, clamp to 16 bits) to the one scale ``s = max(|x_min|, |x_max|) / (2^15 - 1)``:
        ``q1`` from ``word + token_type``, then ``q2`` from ``s * q1 + position``. These are the
        integers an eval forward of the written checkpoint computes (its first call uses the final
        range too); transformers' train mode (``ema``) instead quantizes the first call with the
        range of ``x1`` alone.
        """
        dp, name, bits = self.dp, op.module, op.width
        x_act = dp.dequantize(x) if identity is None else dp.dequantize(identity) + dp.dequantize(x)
        id_scale = None if identity is None else identity.scale
        if self._searched(op):
            return requant_params(bits, self._search(name, x, x_act), x.scale)
        if self.range_method != "ema" and name in self._called_twice:
            if op.name.endswith(FIRST_CALL):
                self.tracker.update(name, x_act)
                self.tracker.update(name, self._second_call_term(op) + x_act)
            return requant_params(bits, self.tracker.scale(name, bits), x.scale, id_scale)
        return requant_params(bits, self._observe(name, x_act, bits), x.scale, id_scale)

    def _second_call_term(self, first) -> np.ndarray:
        """The float32 term the second call of a twice-called QuantAct adds (its identity: a
        table lookup), computed before that call (whole-set methods, :meth:`_act_params`)."""
        ops = block_ops(None)
        second = next(o for o in ops if first.name in o.inputs)
        table = next(o for o in ops if o.name == second.identity)
        value = run_op(self.dp, table, self._tables[table.params], [self._env[n] for n in table.inputs])
        return self.dp.dequantize(value)

    def _softmax_params(self, op, scores, score_scale) -> K.SoftmaxParams:
        """IntSoftmax in train mode: its 16-bit QuantAct's range comes from ``exp_int`` (the i-exp
        polynomial shifted by ``30 - z_q``, as transformers' float32 value)."""
        dp = self.dp
        placeholder = softmax_params(dp, score_scale, np.ones(1, dtype=F32))
        z, z_q = exp_polynomial(dp, scores, placeholder)
        act_scale = self._observe(op.module, exp_integers_f32(dp, z, z_q), op.width)
        return softmax_params(dp, score_scale, act_scale)

    # -- range_method="search" ---------------------------------------------------------
    def _layer_act(self, name: str):
        """``(layer index, name inside the layer)``; ``(-1, None)`` for the embeddings' output QuantAct."""
        layer, short = split_name(name)
        return (-1, None) if layer is None else (layer, short)

    def _continue(self, name: str, value) -> np.ndarray:
        """The float continuation of the QuantAct output ``value`` to the output of the encoder
        layer :meth:`_target_layer` (see the class docstring)."""
        i, short = self._layer_act(name)
        if short is None or short == OUTPUT_ACT:
            if i + 1 == self.config["num_hidden_layers"]:
                return value  # the last layer's output activation: scored on its own output
            return self._float.layer(i + 1, {"input": value}, self._real_tokens)
        return self._float.layer(i, {**self._layer_state, short: value}, self._real_tokens)

    def _packed(self, x) -> np.ndarray:
        """``x`` (batch, seq, hidden) at the real tokens: (tokens, hidden) float32."""
        return np.asarray(x, dtype=F32)[self._real_tokens]

    @staticmethod
    def _score(y, target) -> float:
        """``mean((y - target)^2)`` over the real tokens and hidden units (float64)."""
        diff = np.asarray(y, dtype=np.float64) - target
        return float(np.mean(diff * diff))

    def _search(self, name: str, x: QTensor, x_act) -> np.ndarray:
        """Choose the clip of the 8-bit QuantAct ``name`` (input ``x``; its float value
        ``x_act``) by its downstream error; record it and return the output scale."""
        dp, bits = self.dp, ACT_BITS
        values = self._real_values(name, x_act)
        if self.on_observe is not None:
            self.on_observe(name, values)
        _, base = select_range(values, bits, "mse")
        clips = search_candidates(values, base.clip)
        if self.search_target == "local":
            target = self._continue(name, self._packed(x_act))
        else:
            target = self._float_targets[self._target_layer(name)]
        target = np.asarray(target, dtype=np.float64)
        scores = []
        for c in clips:
            x_min, x_max = range_for_clip(base.lo, base.hi, c)
            out = K.requantize(dp, x, requant_params(bits, symmetric_scale_f32(bits, x_min, x_max), x.scale))
            scores.append(self._score(self._continue(name, self._packed(dp.dequantize(out))), target))
        if not np.isfinite(scores).all():
            raise CalibrationError(f"{name}: non-finite search objective {scores}")
        k = int(np.argmin(scores))  # first minimum: the mse clip (index 0) wins ties
        if self.on_search is not None:
            self.on_search(name, list(clips), list(scores))
        c = clips[k]
        self.tracker.x_min[name], self.tracker.x_max[name] = range_for_clip(base.lo, base.hi, c)
        self.tracker.updates[name] = self.tracker.updates.get(name, 0) + 1
        amax = max(abs(base.lo), abs(base.hi))
        self.clip_report[name] = ClipChoice(
            lo=base.lo, hi=base.hi, clip=c, mse=quantization_mse(values, c, bits),
            mse_minmax=quantization_mse(values, amax, bits), count=base.count, mse_clip=base.clip,
            objective=scores[k], objective_mse=scores[0], candidates=len(clips))
        if self._search_bar is not None:
            self._search_bar.update()
        return self.tracker.scale(name, bits)

    def _target_layer(self, name: str) -> int:
        """Index of the encoder layer whose output scores the QuantAct ``name``."""
        i, short = self._layer_act(name)
        if short is None or short == OUTPUT_ACT:
            return min(i + 1, self.config["num_hidden_layers"] - 1)
        return i

    # -- results -----------------------------------------------------------------------
    def ranges(self) -> Dict[str, Tuple[float, float]]:
        """``{QuantAct name: (x_min, x_max)}`` for every range observed so far."""
        return {n: (float(self.tracker.x_min[n][0]), float(self.tracker.x_max[n][0])) for n in self.tracker.x_min}

    def buffers(self) -> Dict[str, np.ndarray]:
        """Every quantization buffer of the calibrated model (keys without prefix).

        ``x_min``/``x_max``/``act_scaling_factor`` of the live QuantActs, ``shift`` of every
        IntLayerNorm, and the derived QuantLinear/QuantEmbedding buffers (``weight_integer``,
        ``fc_scaling_factor``, ``bias_integer``, ``weight_scaling_factor``) as an eval forward of
        transformers leaves them (bias quantized with the stale layer-input scale). Dead QuantActs
        keep transformers' initial values.
        """
        n = self.config["num_hidden_layers"]
        missing = [a for a in quant_act_names(n) if not is_dead_quant_act(a) and a not in self.tracker.x_min]
        if missing:
            raise CalibrationError(f"no calibration batch has been run (first unset range: {missing[0]})")
        out = uncalibrated_quant_buffers(self.config)
        for name in self.tracker.x_min:
            out[name + ".x_min"] = self.tracker.x_min[name].copy()
            out[name + ".x_max"] = self.tracker.x_max[name].copy()
            out[name + ".act_scaling_factor"] = self.tracker.scale(name, quant_act_bits(name))
        for name, shift in self.tracker.shifts.items():
            out[name + ".shift"] = np.array([shift], dtype=F32)
        out.update(self._derived_buffers(out))
        return out

    def _derived_buffers(self, buffers) -> Dict[str, np.ndarray]:
        def get(key):
            return buffers[key] if key in buffers else self.get(key)

        tf = TransformersDatapath()
        cm = compile_model(tf, {**self.config, "quant_mode": True}, get, lambda k: k in buffers or self.checkpoint.has(k))
        out = {}
        for op in block_ops(None):
            if op.kind == "QuantEmbedding":
                params = getattr(cm.embeddings, op.params)
                out[op.module + ".weight_integer"] = np.asarray(params.w, dtype=F32)
                out[op.module + ".weight_scaling_factor"] = np.asarray(params.scale, dtype=F32).reshape(1)
        for i, layer in enumerate(cm.layers):
            for op in block_ops(i):
                if op.kind == "QuantLinear":
                    lp = getattr(layer, op.params)
                    out[op.module + ".weight_integer"] = np.asarray(lp.w, dtype=F32)
                    out[op.module + ".bias_integer"] = np.asarray(lp.b, dtype=F32)
                    w_f32 = self.get(op.module + ".weight")
                    out[op.module + ".fc_scaling_factor"] = weight_scale_per_channel_f32(w_f32)
        return out


#: The 8-bit QuantActs of one encoder layer, the ones a range search chooses (with the
#: embeddings' output QuantAct): from :mod:`ibert_ref.dataflow`.
LAYER_SEARCHED_ACTS = LAYER_ACT8


# ---------------------------------------------------------------------------------------
def exp_polynomial(dp: Datapath, scores, p: K.SoftmaxParams):
    """Steps 1-3 of :func:`ibert_ref.kernels.int_exp`: ``(poly, z_q)`` before the ``2^(30 - z_q)`` shift."""
    x = scores - scores.max(axis=-1, keepdims=True)
    x = np.maximum(x, p.x0_30)
    z_q = dp.floor_div(x, p.x0_int)
    r = x - p.x0_int * z_q
    return (r + p.b_int) * r + p.c_int, z_q


def exp_integers_f32(dp: Datapath, poly, z_q) -> np.ndarray:
    """``exp_int = max(floor(poly * 2^(30 - z_q)), 0)`` as the float32 values transformers'
    16-bit QuantAct observes (float32 arithmetic in the transformers datapath; the exact integer,
    then rounded to float32, otherwise)."""
    if np.issubdtype(np.asarray(poly).dtype, np.integer):
        exact = np.maximum(poly, 0).astype(np.float64) * np.exp2((30 - z_q).astype(np.float64))
        return exact.astype(F32)
    return np.maximum(np.floor(poly * dp.pow2(F32(30) - z_q)), F32(0))
