"""Golden test vectors for RTL: every op's integers, constants and wiring, written to a folder.

``write_vectors(model, input_ids, out)`` runs the integer model once and writes:

* ``vectors.npz``: every op output and model input, keyed by name, plus every op constant
  array (``param:<op>.<name>``), in their integer dtypes;
* ``hex/<name>.hex`` and ``params/<op>.<name>.hex``: ``$readmemh`` files, one element per
  line in row-major (C) order, two's complement at the declared width (wider, and flagged, if
  the values need it), ``ceil(bits / 4)`` hex digits, no ``0x`` prefix;
* ``manifest.json``: the model inputs, then the ops in execution order, each with its kernel
  (``op``), ``inputs`` (names of earlier entries), shape, dtype, declared ``bits``, output scale
  (float32 values, and their IEEE-754 bit patterns), and ``params``: widths, dyadic
  multipliers ``(m, e)`` (value ``m * 2^-e``), polynomial constants and references to the
  constant arrays; and the model's source and sha256 of config.json and the weight files.

Every op can be re-run from these files alone: :func:`rerun_op` rebuilds its kernel
parameters from the manifest and arrays and calls the same kernel
(:mod:`ibert_ref.kernels`); tests/test_vectors.py does this for every op.

The ops are those of :mod:`ibert_ref.dataflow` (:func:`~ibert_ref.dataflow.expand`): besides
the quantized modules of the trace, three intermediates are ops of their own so that each op's
inputs are in the files: the first call of the QuantAct the embeddings call twice, the attention
scores (``Q K^T`` per head, int32, *without* the mask: the mask is an input of the i-exp op) and
the attention context (``P V``, int32).

Integer datapaths only (``exact`` and the hardware profiles): the transformers datapath holds
floats between ops, so its ops cannot be re-run from integers.

Hardware profiles (:mod:`ibert_ref.hardware.profiles`): every kernel call is the profile's own
(its accumulators, requantization rounding, i-exp / IntGELU / LayerNorm variants), so the files
hold the profile's integers. The manifest records ``datapath_parameters`` (every parameter; the
re-run rebuilds the profile from them, :func:`datapath_from_manifest`), ``datapath_description``,
``datapath_semantics`` (parameter -> what its value computes) and per op the semantics that apply
to it and the run's ``overflow_events``. A value the profile holds with a power-of-two exponent
(the int32 IntGELU's output, ``data * 2^(3k)`` at the compiled scale) carries ``exponent`` in its
entry; the re-run hands it to the next requantization, whose shift becomes ``e - exponent``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import intops
from . import kernels as K
from .dataflow import Op, expand
from .dataflow import run_op as run_dataflow_op
from .datapath import QTensor
from .input_files import read_input_ids  # noqa: F401 - public here since the vectors API has it
from .quant import F32, Dyadic, bits_needed_signed

FORMAT_VERSION = 1
NPZ_NAME = "vectors.npz"
MANIFEST_NAME = "manifest.json"

#: Declared width of the model inputs.
INPUT_BITS = 32


class VectorsError(ValueError):
    """Vectors cannot be written or re-read as asked (a value does not fit its width, ...)."""


# ---------------------------------------------------------------------------------------
# $readmemh files
def hex_digits(bits: int) -> int:
    return (int(bits) + 3) // 4


def check_fits(values, bits: int, what: str = "value") -> None:
    """Raise :class:`VectorsError` if any value is outside ``[-2^(bits-1), 2^(bits-1) - 1]``."""
    v = np.asarray(values)
    if v.size == 0:
        return
    lo, hi = int(v.min()), int(v.max())
    if lo < -(1 << (bits - 1)) or hi > (1 << (bits - 1)) - 1:
        raise VectorsError(f"{what}: values in [{lo}, {hi}] do not fit {bits}-bit two's complement")


def to_hex_bytes(values, bits: int, what: str = "value") -> bytes:
    """``values`` (any int array) as ``$readmemh`` text: row-major, one element per line,
    two's complement in ``bits`` bits, ``ceil(bits/4)`` lowercase hex digits."""
    if not 1 <= bits <= 64:
        raise VectorsError(f"{what}: width {bits} is outside 1..64 bits")
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.integer):
        raise VectorsError(f"{what}: expected an integer array, got {v.dtype}")
    check_fits(v, bits, what)
    u = np.ascontiguousarray(v, dtype=np.int64).reshape(-1).view(np.uint64)
    if bits < 64:
        u = u & np.uint64((1 << bits) - 1)
    nd = hex_digits(bits)
    table = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((u.size, nd + 1), dtype=np.uint8)
    for k in range(nd):
        chars[:, nd - 1 - k] = table[((u >> np.uint64(4 * k)) & np.uint64(15)).astype(np.intp)]
    chars[:, nd] = ord("\n")
    return chars.tobytes()


def write_hex(path, values, bits: int, what: str = "value") -> None:
    Path(path).write_bytes(to_hex_bytes(values, bits, what))


def read_hex(path, bits: int, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Read a ``$readmemh`` file written by :func:`write_hex` back to int64 (sign-extended)."""
    lines = Path(path).read_bytes().split()
    nd = hex_digits(bits)
    if any(len(t) != nd for t in lines):
        raise VectorsError(f"{path}: every line must have {nd} hex digits")
    if not lines:
        return np.zeros(shape or (0,), dtype=np.int64)
    chars = np.frombuffer(b"".join(lines), dtype=np.uint8).reshape(len(lines), nd)
    digit = np.where(chars >= ord("a"), chars - ord("a") + 10, chars - ord("0")).astype(np.uint64)
    u = np.zeros(len(lines), dtype=np.uint64)
    for k in range(nd):
        u = (u << np.uint64(4)) | digit[:, k]
    v = u.view(np.int64) if bits == 64 else u.astype(np.int64)
    if bits < 64:
        sign = np.int64(1) << np.int64(bits - 1)
        v = np.where(v >= sign, v - (sign << np.int64(1)), v)
    return v.reshape(shape) if shape is not None else v


# ---------------------------------------------------------------------------------------
# Input ids from a file (CLI --input-ids)
# ---------------------------------------------------------------------------------------
# The op graph: the dataflow's ops, expanded for the model's layers
#: Every op of an IBertModel forward, in execution order (:func:`ibert_ref.dataflow.expand`).
op_graph = expand


# ---------------------------------------------------------------------------------------
# Running one op (from compiled params or from the files)
def _f32_list(a) -> list:
    return [float(x) for x in np.asarray(a, dtype=F32).reshape(-1)]


def _f32_hex(a) -> list:
    return [f"{int(x):08x}" for x in np.asarray(a, dtype=F32).reshape(-1).view(np.uint32)]


@dataclass
class OpValue:
    """One op output as the datapath holds it: integers ``ints``, float32 ``scale``, and
    ``exponent`` (None, or per channel) when a hardware profile holds the value with a
    power-of-two exponent (``ints * 2^exponent`` is the integer of the op's compiled output
    scale; ``scale`` already includes ``2^exponent``; the next requantization folds the
    exponent into its shift, ``e - exponent``: the int32 IntGELU of ``gelu="int32"``)."""

    ints: np.ndarray
    scale: np.ndarray
    exponent: Optional[np.ndarray] = None


def _qtensor(v: OpValue) -> QTensor:
    data = np.asarray(v.ints, dtype=np.int64)
    scale = np.asarray(v.scale, dtype=F32)
    if v.exponent is None:
        return QTensor(data, scale)
    from .hardware.profiles import ShiftedQTensor

    return ShiftedQTensor(data, scale, exponent=np.asarray(v.exponent, dtype=np.int64))


def run_op(dp, spec: Op, params, num_heads: int, inputs: List[OpValue]) -> OpValue:
    """Run ``spec``'s kernel on datapath ``dp`` (:func:`ibert_ref.dataflow.run_op`, the call
    the model makes, with the datapath's own kernel variants) on integer inputs; returns its
    output integers, scale and exponent (see :class:`OpValue`). The scores are computed
    without the mask; ``int_exp`` takes the mask as its second input."""
    out = run_dataflow_op(dp, spec, params, [_qtensor(v) for v in inputs], num_heads=num_heads)
    if not isinstance(out, QTensor):  # attention_scores: the raw int32 accumulators
        return OpValue(np.asarray(out, dtype=np.int64), np.asarray(params, dtype=F32))
    exponent = getattr(out, "exponent", None)
    exponent = None if exponent is None else np.asarray(exponent, dtype=np.int64)
    return OpValue(np.asarray(dp.integers(out), dtype=np.int64), np.asarray(out.scale, dtype=F32), exponent)


def run_graph(compiled, dp, inputs: Dict[str, np.ndarray], config):
    """Run every op of :func:`op_graph` in order on ``dp``, each from the outputs of earlier
    ops (``inputs``: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``).

    Returns ``(values, events)``: ``values`` maps every input and op name to an
    :class:`OpValue`; ``events`` maps op names to the overflow records
    (:class:`~ibert_ref.hardware.oplog.OverflowRecord`) the datapath filed for them (hardware
    profiles; named as the model names them). These are the model's integers op for op
    (``write_vectors`` checks it against the trace)."""
    values: Dict[str, OpValue] = {n: OpValue(np.asarray(v, dtype=np.int64), np.ones(1, F32)) for n, v in inputs.items()}
    events: Dict[str, list] = {}
    log = getattr(dp, "oplog", None)
    dp.begin_run()
    try:
        for spec in op_graph(config["num_hidden_layers"]):
            v = run_op(dp, spec, _params_of(compiled, spec), config["num_attention_heads"],
                       [values[n] for n in spec.sources])
            values[spec.name] = v
            if spec.traced:
                before = len(log.events) if log is not None else 0
                dp.end_op(spec.name, spec.kind)
                if log is not None and len(log.events) > before:
                    for rec in log.events[before:]:
                        events.setdefault(rec.op, []).append(rec)
    finally:
        dp.end_run()
    return values, events


def _params_of(compiled, spec: Op):
    group = compiled.embeddings if spec.layer is None else compiled.layers[spec.layer]
    return getattr(group, spec.params)


# ---------------------------------------------------------------------------------------
# Writing
class _Writer:
    def __init__(self, out: Path, param_hex: bool, strict_widths: bool = False):
        self.out = out
        self.param_hex = param_hex
        self.strict_widths = strict_widths
        self.warnings: List[str] = []
        self.arrays: Dict[str, np.ndarray] = {}
        (out / "hex").mkdir(parents=True, exist_ok=True)
        if param_hex:
            (out / "params").mkdir(parents=True, exist_ok=True)

    def tensor(self, name, values, bits, scale=None) -> dict:
        values = np.asarray(values)
        entry = {"name": name}
        needed = bits_needed_signed(int(values.min()), int(values.max())) if values.size else 1
        if needed > bits:
            if self.strict_widths:
                raise VectorsError(
                    f"{name}: values in [{int(values.min())}, {int(values.max())}] need {needed} bits, more than the "
                    f"declared {bits}; drop strict_widths (--strict-widths) to write them {needed} bits wide")
            self.warnings.append(f"{name}: needs {needed} bits, declared {bits}: written {needed} bits wide")
            entry["declared_bits"] = int(bits)
            bits = needed
        path = f"hex/{name}.hex"
        write_hex(self.out / path, values, bits, name)
        self.arrays[name] = values
        entry.update({"shape": list(values.shape), "dtype": str(values.dtype), "bits": int(bits),
                      "hex": path, "npz_key": name})
        if scale is not None:
            entry["scale"] = _f32_list(scale)
            entry["scale_f32_bits"] = _f32_hex(scale)
        return entry

    def param(self, op_name, pname, values, bits) -> dict:
        values = np.asarray(values)
        key = f"param:{op_name}.{pname}"
        self.arrays[key] = values
        entry = {"npz_key": key, "shape": list(values.shape), "dtype": str(values.dtype), "bits": int(bits)}
        if self.param_hex:
            path = f"params/{op_name}.{pname}.hex"
            write_hex(self.out / path, values, bits, key)
            entry["hex"] = path
        return entry


def _dyadic(dy: Optional[Dyadic]):
    if dy is None:
        return None
    return {"m": np.asarray(dy.m, dtype=np.int64).tolist(), "e": np.asarray(dy.e, dtype=np.int64).tolist(),
            "value": np.asarray(dy.value, dtype=np.float64).tolist()}


EXACT_SEMANTICS = {
    "gemm": "int8 x int8 products summed exactly (int64), + int32 bias",
    "requant": "round half to even of q * m / 2^e on the exact rational, then saturate to bits",
    "exp": "R(poly * m / 2^(e - 30 + q)): i-exp's left shift folded into the requantization shift (exact)",
    "gelu": "IntGELU x * (erf_q + one) exact in int64",
    "layernorm": "var = sum((y >> shift)^2) exact, integer floor-sqrt",
    "probs": "P V operand: probabilities 0..256",
}


def datapath_manifest(dp) -> dict:
    """The manifest's record of the datapath: ``datapath_parameters`` (what
    :func:`datapath_from_manifest` rebuilds it from), ``datapath_description`` and
    ``datapath_semantics`` (parameter -> what its value computes)."""
    params = getattr(dp, "parameters", None)
    if params is None:
        return {"datapath_parameters": {}, "datapath_description": f"{dp.name}: exact integers",
                "datapath_semantics": dict(EXACT_SEMANTICS)}
    return {"datapath_parameters": dict(params()),
            "datapath_description": dp.describe() if hasattr(dp, "describe") else dp.name,
            "datapath_semantics": dp.semantics() if hasattr(dp, "semantics") else {}}


def datapath_from_manifest(manifest: dict):
    """The datapath a vectors folder was written with: its registered name with the recorded
    parameters (a hardware profile with overrides), or a
    :class:`~ibert_ref.hardware.profiles.HardwareDatapath` of those parameters when the name
    is not registered."""
    from .datapath import available_datapaths, make_datapath

    name = manifest["datapath"]
    params = dict(manifest.get("datapath_parameters") or {})
    if not params:
        return make_datapath(name)
    if name in available_datapaths():
        return make_datapath(name, **params)
    from .hardware.profiles import HardwareDatapath

    return HardwareDatapath(**params, name=name)


def _event_dict(r) -> dict:
    return {"op": r.op, "part": r.part, "action": r.action, "bits": int(r.bits), "count": int(r.count),
            "first_index": int(r.first_index), "exact": str(r.exact), "produced": str(r.produced),
            "detail": r.detail, "text": r.describe()}


def _semantic(dp, key: str, default: str) -> str:
    table = dp.semantics() if hasattr(dp, "semantics") else {}
    return table.get(key, default)


def _describe_params(w: _Writer, spec: Op, p, in_scales, dp=None) -> dict:
    """The manifest ``params`` of one op (constants inline, arrays by reference), with the
    datapath's semantics of the op where a hardware profile changes it."""
    op = spec.kernel
    hw = dp is not None and hasattr(dp, "semantics")
    if op == "quant_embedding":
        return {"table": w.param(spec.name, "table", np.asarray(p.w, dtype=np.int8), 8),
                "scale": _f32_list(p.scale)}
    if op == "requantize":
        d = {"bits": int(p.bits), "out_scale": _f32_list(p.out_scale), "dy": _dyadic(p.dy),
             "dy_identity": _dyadic(p.dy_identity), "input_scale": _f32_list(in_scales[0]),
             "rounding": "round half to even of q * m / 2^e, then saturate to bits"}
        if hw:
            d["rounding"] = _semantic(dp, "requant", d["rounding"]) + "; the terms added, then saturate to bits"
        if len(in_scales) > 1:
            d["identity_scale"] = _f32_list(in_scales[1])
        return d
    if op == "quant_linear":
        d = {"weight": w.param(spec.name, "weight", np.asarray(p.w, dtype=np.int8), 8),
             "bias": w.param(spec.name, "bias", np.asarray(p.b, dtype=np.int64), 32),
             "out_scale": _f32_list(p.out_scale)}
        if hw:
            d["accumulator"] = _semantic(dp, "acc_bits", "") + "; overflow: " + _semantic(dp, "overflow", "")
        return d
    if op in ("attention_scores", "attention_context"):
        d = {"num_heads": None, "scale": _f32_list(p)}
        if hw:
            d["accumulator"] = _semantic(dp, "acc_bits", "") + "; overflow: " + _semantic(dp, "overflow", "")
            if op == "attention_context":
                d["probs"] = _semantic(dp, "probs", "")
        return d
    if op in ("int_exp", "softmax_normalize"):
        d = {"x0_int": int(p.x0_int.reshape(-1)[0]), "x0_30": int(p.x0_30.reshape(-1)[0]),
             "b_int": int(p.b_int.reshape(-1)[0]), "c_int": int(p.c_int.reshape(-1)[0]),
             "exp_scale": _f32_list(p.exp_scale), "act_scale": _f32_list(p.act_scale),
             "dy_exact": _dyadic(p.dy_exact), "dy_tf": _dyadic(p.dy_tf),
             "act_bits": int(p.act_bits), "out_bits": int(p.out_bits)}
        if hw and op == "int_exp":
            d["exp_variant"] = _semantic(dp, "exp", "")
            d["rounding"] = _semantic(dp, "requant", "")
        return d
    if op == "int_gelu":
        d = {"b_int": w.param(spec.name, "b_int", np.asarray(p.b_int, dtype=np.int64).reshape(-1), 64),
             "c_int": w.param(spec.name, "c_int", np.asarray(p.c_int, dtype=np.int64).reshape(-1), 64),
             "one": w.param(spec.name, "one", np.asarray(p.one, dtype=np.int64).reshape(-1), 64),
             "out_scale": _f32_list(p.out_scale)}
        if hw:
            d["gelu_variant"] = _semantic(dp, "gelu", "")
            if getattr(dp, "gelu", None) == "int32":
                k, b2, c2, one2 = dp.gelu_int32_constants(p)
                d["int32_constants"] = {
                    "k": w.param(spec.name, "int32_k", np.asarray(k, dtype=np.int64).reshape(-1), 64),
                    "b": w.param(spec.name, "int32_b", np.asarray(b2, dtype=np.int64).reshape(-1), 32),
                    "c": w.param(spec.name, "int32_c", np.asarray(c2, dtype=np.int64).reshape(-1), 32),
                    "one": w.param(spec.name, "int32_one", np.asarray(one2, dtype=np.int64).reshape(-1), 32),
                    "derived": "from b_int, c_int, one (ibert_ref.hardware.profiles.gelu_int32_constants); "
                               "informative: the re-run derives them again"}
        return d
    if op == "int_layernorm":
        d = {"shift": int(p.shift),
             "bias_int": w.param(spec.name, "bias_int", np.asarray(p.bias_int, dtype=np.int64).reshape(-1), 64),
             "out_scale": _f32_list(p.out_scale)}
        if hw:
            d["var"] = _semantic(dp, "ln_var", "")
            d["sqrt"] = _semantic(dp, "sqrt", "")
        return d
    raise VectorsError(f"unknown op {op!r}")  # pragma: no cover


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_vectors(
    model,
    input_ids,
    out,
    *,
    attention_mask=None,
    token_type_ids=None,
    param_hex: bool = True,
    strict_widths: bool = False,
    checkpoint_files: Sequence[str] = (),
) -> dict:
    """Run ``model`` (an :class:`~ibert_ref.model.IBertModel` on an integer datapath) once and
    write the vectors of every op into ``out`` (see the module docstring). Each op is re-run
    from its recorded inputs while writing and must reproduce the model's own output (a wiring
    check). Returns the manifest (also written to ``manifest.json``).

    An op whose values need more bits than its declared width (e.g. an IntLayerNorm output
    above 2^31 on real weights) is written at the width it needs, with ``declared_bits`` in its
    entry and a line in the manifest's ``warnings``; ``strict_widths=True`` raises instead."""
    from .model import roberta_position_ids

    dp = model.datapath
    if np.issubdtype(np.dtype(dp.working_dtype), np.floating):
        raise VectorsError(f"datapath {dp.name!r} holds floats between ops; vectors need an integer datapath "
                           "(exact or a hardware profile)")
    if getattr(model.compiled, "force_dequant", frozenset()):
        raise VectorsError("force_dequant models run float ops; vectors cover the all-integer model only")
    cfg = model.config
    ids = np.asarray(input_ids, dtype=np.int64)
    ids = ids[None, :] if ids.ndim == 1 else ids
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64).reshape(ids.shape)
    tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64).reshape(ids.shape)
    pos = roberta_position_ids(ids, cfg.get("pad_token_id", 1))
    result = model(ids, attention_mask=mask, token_type_ids=tt, position_ids=pos, return_trace=True)

    out = Path(out)
    w = _Writer(out, param_hex, strict_widths)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "position_ids": pos}
    manifest_inputs = [w.tensor(n, v, INPUT_BITS) for n, v in inputs.items()]
    graph, events = run_graph(model.compiled, dp, inputs, cfg)
    num_heads = cfg["num_attention_heads"]
    manifest_ops = []
    for index, spec in enumerate(op_graph(cfg["num_hidden_layers"])):
        params = _params_of(model.compiled, spec)
        in_scales = [graph[n].scale for n in spec.sources]
        v = graph[spec.name]
        q = v.ints
        if spec.name in result.trace:
            traced = np.asarray(result.trace[spec.name], dtype=np.int64)
            if not np.array_equal(traced, q):
                raise VectorsError(f"{spec.name}: re-running the op from its inputs does not reproduce the "
                                   f"model's trace (wiring error, datapath {dp.name!r})")
            bits = result.trace_meta[spec.name].bits
            q = result.trace[spec.name]
        else:
            bits = spec.width
            q = q.astype(intops.smallest_int_dtype(int(q.min()), int(q.max())) if q.size else np.int64)
        entry = w.tensor(spec.name, q, bits, v.scale)
        if v.exponent is not None:
            entry["exponent"] = np.asarray(v.exponent, dtype=np.int64).reshape(-1).tolist()
            entry["exponent_semantics"] = ("held as data * 2^exponent at the op's compiled output scale (scale above "
                                           "includes 2^exponent); the next requantization uses shift e - exponent")
        entry.update({"index": index, "kind": spec.kind, "op": spec.kernel, "inputs": list(spec.sources),
                      "params": _describe_params(w, spec, params, in_scales, dp)})
        if spec.kernel in ("attention_scores", "attention_context"):
            entry["params"]["num_heads"] = num_heads
        if spec.name in events:
            entry["overflow_events"] = [_event_dict(r) for r in events[spec.name]]
        manifest_ops.append(entry)
    # records of the attention GEMMs are filed under the attention block (``...attention.self``)
    op_names = {e["name"] for e in manifest_ops}
    other_events = [_event_dict(r) for name, recs in events.items() if name not in op_names for r in recs]

    folder = getattr(model, "source", "") or ""
    files = list(checkpoint_files)
    if not files and folder and os.path.isdir(folder):
        files = [str(Path(folder) / n) for n in ("config.json", "model.safetensors") if (Path(folder) / n).is_file()]
    manifest = {
        "format": "ibert-ref golden vectors",
        "format_version": FORMAT_VERSION,
        "datapath": dp.name,
        **datapath_manifest(dp),
        "model": {
            "source": folder,
            "config": {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                           "intermediate_size", "vocab_size", "max_position_embeddings",
                                           "type_vocab_size", "pad_token_id") if k in cfg},
            "sha256": {Path(f).name: _sha256(f) for f in files},
        },
        "hex_format": "$readmemh: one element per line, row-major (C order), two's complement at 'bits', "
                      "ceil(bits/4) lowercase hex digits",
        "npz": NPZ_NAME,
        "warnings": w.warnings,
        "overflow_events": other_events,
        "inputs": manifest_inputs,
        "ops": manifest_ops,
    }
    np.savez(out / NPZ_NAME, **w.arrays)
    with open(out / MANIFEST_NAME, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


# ---------------------------------------------------------------------------------------
# Reading back and re-running
def load_vectors(folder):
    """``(manifest, arrays)``: the manifest dict and every array of ``vectors.npz``."""
    folder = Path(folder)
    with open(folder / MANIFEST_NAME, encoding="utf-8") as f:
        manifest = json.load(f)
    with np.load(folder / manifest.get("npz", NPZ_NAME), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return manifest, arrays


def _dy(d) -> Optional[Dyadic]:
    if d is None:
        return None
    return Dyadic(m=np.asarray(d["m"], dtype=np.int64), e=np.asarray(d["e"], dtype=np.int64))


def params_from_manifest(entry: dict, arrays: Dict[str, np.ndarray], dp):
    """Rebuild the kernel parameters of one op from its manifest entry and the arrays."""
    p = entry["params"]

    def arr(ref, dtype=np.int64):
        return np.asarray(arrays[ref["npz_key"]], dtype=dtype)

    def f32(v):
        return np.asarray(v, dtype=F32)

    op = entry["op"]
    if op == "quant_embedding":
        return K.EmbeddingParams(w=dp.weights(arr(p["table"], F32)), scale=f32(p["scale"]))
    if op == "requantize":
        return K.RequantParams(bits=p["bits"], out_scale=f32(p["out_scale"]), dy=_dy(p["dy"]),
                               dy_identity=_dy(p["dy_identity"]))
    if op == "quant_linear":
        return K.LinearParams(w=dp.weights(arr(p["weight"], F32)), b=dp.const(arr(p["bias"], F32)),
                              out_scale=f32(p["out_scale"]))
    if op in ("attention_scores", "attention_context"):
        return f32(p["scale"])
    if op in ("int_exp", "softmax_normalize"):
        one = np.ones(1, dtype=np.int64)
        return K.SoftmaxParams(x0_int=dp.const(p["x0_int"] * one), x0_30=dp.const(p["x0_30"] * one),
                               b_int=dp.const(p["b_int"] * one), c_int=dp.const(p["c_int"] * one),
                               exp_scale=f32(p["exp_scale"]), act_scale=f32(p["act_scale"]),
                               dy_tf=_dy(p["dy_tf"]), dy_exact=_dy(p["dy_exact"]),
                               act_bits=p["act_bits"], out_bits=p["out_bits"])
    if op == "int_gelu":
        return K.GeluParams(b_int=dp.const(arr(p["b_int"])), c_int=dp.const(arr(p["c_int"])),
                            one=dp.const(arr(p["one"])), out_scale=f32(p["out_scale"]))
    if op == "int_layernorm":
        return K.LayerNormParams(shift=p["shift"], bias_int=dp.const(arr(p["bias_int"])),
                                 out_scale=f32(p["out_scale"]))
    raise VectorsError(f"unknown op {op!r}")


def rerun_op(entry: dict, arrays: Dict[str, np.ndarray], manifest: dict, dp=None) -> np.ndarray:
    """Re-run one op of a vectors folder from the files alone; returns its output integers.

    The inputs are the arrays named in ``entry["inputs"]``, their scales (and, for a value a
    hardware profile holds with a power-of-two exponent, that ``exponent``) come from their own
    manifest entries, the constants from ``entry["params"]``; the kernel is the same
    :mod:`ibert_ref.kernels` function the model uses, on the manifest's datapath with its
    recorded parameters (:func:`datapath_from_manifest`).
    """
    dp = dp or datapath_from_manifest(manifest)
    by_name = {e["name"]: e for e in manifest["inputs"] + manifest["ops"]}
    inputs = []
    for n in entry["inputs"]:
        ref = by_name[n]
        exponent = ref.get("exponent")
        inputs.append(OpValue(np.asarray(arrays[ref["npz_key"]], dtype=np.int64),
                              np.asarray(ref.get("scale", [1.0]), dtype=F32),
                              None if exponent is None else np.asarray(exponent, dtype=np.int64)))
    spec = Op(entry["name"], entry["kind"], entry["op"], tuple(entry["inputs"]), None)
    heads = entry["params"].get("num_heads") or manifest["model"]["config"]["num_attention_heads"]
    return run_op(dp, spec, params_from_manifest(entry, arrays, dp), heads, inputs).ints
