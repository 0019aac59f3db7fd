# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · One layer, several number systems: datapaths, widths and overflow
#
# The kernels of `ibert_ref.kernels` are written once, as I-BERT's algorithm. Every step
# whose result depends on *how numbers are held* (a division, a floor, a GEMM, a rounding) is
# a call on a **datapath**. Changing the datapath changes the number system under the same
# algorithm:
#
# * **`exact`**: int64 integers, exact floors and roundings, each layer receives its true input
#   scale. What I-BERT means.
# * **`transformers`**: Hugging Face's I-BERT, reproduced bit for bit. It holds the integers as
#   float32 tensors (exact only up to 2^24), recovers them by `x / s` without rounding, runs
#   the GEMMs in float32, and hands every layer the *embeddings'* scale instead of its own
#   (the stale scale, transformers#26738).
# * **hardware profiles** (ARM, Tensor Core, ...) registered in `ibert_ref.hardware`, when
#   present: integer widths and overflow rules of real instructions.
#
# This notebook runs the same layer under each, shows where they differ and why, counts the
# bits every op needs (the **width census**), and provokes overflows on purpose.

# %%
import time
import warnings

import numpy as np

from ibert_ref import IBertModel, QTensor, Tokenizer, available_datapaths
from ibert_ref import kernels as K
from ibert_ref.figures import pyplot, show_fig
from ibert_ref.hardware import IntegerOverflowError, int_matmul, wrap

np.set_printoptions(linewidth=110)
t_start = time.perf_counter()
plt = pyplot()  # matplotlib on its headless Agg backend; show_fig displays a figure as a PNG


def bits_needed_signed(lo, hi):
    # the smallest two's-complement width n holding [lo, hi]: -2^(n-1) <= lo, hi <= 2^(n-1) - 1
    return 1 + max(int(v).bit_length() if v >= 0 else int(-v - 1).bit_length() for v in (lo, hi))


print("datapaths:", available_datapaths())
tok = Tokenizer.from_pretrained()
enc = tok(["The capital of France is Paris."])
ids, mask = enc["input_ids"], enc["attention_mask"]
exact = IBertModel.from_pretrained(datapath="exact")
tfm = IBertModel.from_pretrained(datapath="transformers")  # float32 GEMMs in NumPy
out_exact = exact(ids, attention_mask=mask, return_trace=True)
out_tfm = tfm(ids, attention_mask=mask, return_trace=True)
num_heads = exact.config["num_attention_heads"]


# %% [markdown]
# ## 1. The same layer, the same int8 input
#
# Both models above ran the sentence with `return_trace=True`: every op's integers, keyed by
# transformers' module names. The embeddings produce the same int8 codes under both datapaths,
# so layer 0 of each gets the same int8 input, and both use the same integer constants for
# layer 0: every difference below comes from the number system alone.

# %%
def layer_trace(out, i):  # the traced integers of encoder layer i, keyed by the op's name in the layer
    prefix = f"encoder.layer.{i}."
    return {name[len(prefix):]: q for name, q in out.trace.items() if name.startswith(prefix)}


def compare(tr_a, tr_b, title):
    print(f"{title}\n{'op':42s} {'bits':>4s} {'equal':>11s} {'max|diff|':>10s} {'max|value|':>11s}")
    rows = []
    for name, qa in tr_a.items():
        qa, qb = qa.astype(np.int64), tr_b[name].astype(np.int64)
        diff = np.abs(qa - qb)
        need = bits_needed_signed(qa.min(), qa.max())
        rows.append((name, int(np.count_nonzero(diff == 0)), qa.size, int(diff.max())))
        print(f"{name:42s} {need:4d} {rows[-1][1]:5d}/{qa.size:<5d} {diff.max():10d}"
              f" {np.abs(qa).max():11d}")
    return rows


x0_i8 = out_exact.trace["embeddings.output_activation"]
assert np.array_equal(x0_i8, out_tfm.trace["embeddings.output_activation"])  # the same int8 input
rows0 = compare(layer_trace(out_exact, 0), layer_trace(out_tfm, 0), "layer 0, exact vs transformers, same int8 input")

# %% [markdown]
# Reading the table: every int8 and int32 value agrees. The differences are in the ops whose
# integers exceed float32's 24-bit mantissa, the IntLayerNorm outputs (~2^29) and the i-GELU
# product (~2^33): transformers rounds them to float32, so their low bits differ, by a relative
# 1e-7..1e-5. A 16-bit softmax value can differ by one where a float32 division lands on the
# other side of a rounding boundary. After requantization to int8 these differences almost
# always vanish.
#
# ## 2. Layer 1: the stale scale
#
# From layer 1 on, transformers passes the embeddings' scale to every layer instead of the
# previous layer's output scale. The layer then recovers its input as `x · s_true / s_stale`,
# which is not an integer, its bias is quantized with the wrong scale, and the int32
# "accumulators" are off by the ratio of the two scales.
#
# Layer 0's int8 output is the same under both datapaths (checked below), so layer 1 of each
# again gets the same int8 codes; transformers hands them on as float32 values `x · s_true`
# and divides by the stale scale, without rounding, in float32.

# %%
x1_i8 = out_exact.trace["encoder.layer.0.output.output_activation"]
assert np.array_equal(x1_i8, out_tfm.trace["encoder.layer.0.output.output_activation"])
s1 = out_exact.trace_meta["encoder.layer.0.output.output_activation"].scale  # the true scale
s_stale = out_exact.trace_meta["embeddings.output_activation"].scale  # what transformers hands on
recovered = (x1_i8.astype(np.float32) * s1) / s_stale  # what transformers' QuantLinear computes on
frac = np.abs(recovered - np.rint(recovered))
print(f"true input scale {s1[0]:.6g}, stale scale {s_stale[0]:.6g} (ratio {s1[0] / s_stale[0]:.4f})")
print(f"recovered input x / s_stale: {recovered[0, 1, :5]} ...  fractional parts up to {frac.max():.3f}")
rows1 = compare(layer_trace(out_exact, 1), layer_trace(out_tfm, 1), "\nlayer 1, exact vs transformers, same int8 input")

# %% [markdown]
# ## 3. The whole model, and the transformers oracle
#
# Over the full model the differences compound layer after layer. Below: the fraction of int8
# activation codes that differ between the two datapaths, per layer. Then the check that our
# `transformers` datapath *is* transformers: with `gemm="torch"` (torch's own float32 GEMMs,
# verification only) every traced integer equals the one captured from transformers' I-BERT.
# NumPy's float32 GEMMs sum in another order, so with `gemm="numpy"` a few accumulators from
# layer 1 on differ by one.

# %%
n_layers = exact.config["num_hidden_layers"]
share = []
for i in range(n_layers):
    names = [n for n in out_exact.trace if n.startswith(f"encoder.layer.{i}.") and n.endswith("activation")]
    differ = sum(np.count_nonzero(out_exact.trace[n] != out_tfm.trace[n]) for n in names)
    total = sum(out_exact.trace[n].size for n in names)
    share.append(differ / total)
final = np.abs(out_exact.last_hidden_state - out_tfm.last_hidden_state)
print("int8 codes that differ, exact vs transformers, per layer:", [f"{v:.1%}" for v in share])
print(f"last_hidden_state: max |diff| {final.max():.3f}, mean {final.mean():.4f}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(range(n_layers), share)
ax.set_xticks(range(n_layers))
ax.set_xlabel("layer")
ax.set_ylabel("int8 codes differing")
ax.set_title("exact vs transformers datapath (same sentence)", fontsize=9)
show_fig(fig)

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
try:
    from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert
except ImportError:
    print("transformers not installed: oracle check skipped")
else:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    hf = capture_transformers_trace(load_transformers_ibert(exact.source), ids, attention_mask=mask)
    out_torch = IBertModel.from_pretrained(datapath="transformers", gemm="torch")(
        ids, attention_mask=mask, return_trace=True)
    for label, tr in (("gemm='torch'", out_torch.trace), ("gemm='numpy'", out_tfm.trace)):
        bad = [n for n in hf.trace if not np.array_equal(hf.trace[n], tr[n])]
        print(f"transformers datapath, {label}: {len(hf.trace) - len(bad)}/{len(hf.trace)} traced ops"
              f" bit-exact with transformers' I-BERT" + (f" (first difference: {bad[0]})" if bad else ""))
    assert all(np.array_equal(hf.trace[n], out_torch.trace[n]) for n in hf.trace)
    assert np.array_equal(hf.last_hidden_state, out_torch.last_hidden_state)

# %% [markdown]
# ## 4. The width census
#
# For hardware the question is: how many bits does each op's output need? The exact
# datapath's trace holds the true integers, so the census is a min/max per op, turned into a
# two's-complement width (`bits_needed_signed`, defined at the top), next to the width the op is declared
# with (the QuantAct bit widths of I-BERT, 32 for accumulators and LayerNorm). Over all four
# layers, for this sentence:

# %%
census = {}
for name, q in out_exact.trace.items():
    op = name.split(".", 3)[-1] if name.startswith("encoder.") else name
    need = bits_needed_signed(q.min(), q.max())
    declared = out_exact.trace_meta[name].bits
    old = census.get(op, (0, declared, ""))
    census[op] = (max(old[0], need), declared, out_exact.trace_meta[name].kind)

print(f"{'op (max over layers)':42s} {'kind':14s} {'needs':>5s} {'declared':>8s}")
for op, (need, declared, kind) in census.items():
    flag = "  > 32 bits" if need > 32 else ""
    print(f"{op:42s} {kind:14s} {need:5d} {declared:8d}{flag}")

layer_ops = [op for op in census if not op.startswith("embeddings.")]
fig, ax = plt.subplots(figsize=(8, 5))
needs = [census[op][0] for op in layer_ops]
ax.barh(layer_ops, needs, color=["C3" if n > 32 else "C0" for n in needs])
ax.axvline(32, color="k", ls="--", lw=0.8)
ax.invert_yaxis()
ax.set_xlabel("bits needed (max over the 4 layers)")
ax.set_title("width census of an encoder layer (red: more than 32 bits)", fontsize=9)
ax.tick_params(axis="y", labelsize=7)
show_fig(fig)
assert census["intermediate.intermediate_act_fn"][0] > 32  # the i-GELU product
assert census["attention.self.softmax"][0] == 9  # probabilities 0..256 (9 bits signed)

# %% [markdown]
# `softmax` needs 9 bits signed: probabilities are `0..256`, 256 when one key takes the whole
# row (here the maximum is below 256, but 255 already needs 9 signed bits). The i-GELU
# product needs more than 32 bits even on this tiny model; the GEMM accumulators
# (`query`, `dense`, ...) need 17-18 bits of their 32.
#
# ## 5. Hardware profiles
#
# Hardware datapaths (ARM SDOT/SMMLA with int32 wrap-around, Tensor Core IMMA with optional
# saturation, gemmlowp-style requantization) register themselves with `make_datapath` when
# `ibert_ref.hardware.profiles` is installed. Every registered profile runs the same sentence
# here and is compared, op by op, with the exact datapath.

# %%
profiles = [n for n in available_datapaths() if n not in ("exact", "transformers")]
if not profiles:
    print("no hardware profiles registered in this version: see section 6 for the accumulator model")
for name in profiles:
    out_hw = IBertModel.from_pretrained(datapath=name)(ids, attention_mask=mask, return_trace=True)
    differ = {n: int(np.count_nonzero(out_hw.trace[n].astype(np.int64) != q.astype(np.int64)))
              for n, q in out_exact.trace.items() if n in out_hw.trace}
    changed = {n: c for n, c in differ.items() if c}
    print(f"{name}: {len(differ) - len(changed)}/{len(differ)} traced ops equal to the exact datapath")
    for n, c in list(changed.items())[:8]:
        print(f"   {n}: {c} of {out_exact.trace[n].size} values differ")

# %% [markdown]
# ## 6. Accumulators: wrap, saturate, and an overflow on purpose
#
# `hardware.int_matmul` models a GEMM accumulator: int8 products summed into an `acc_bits`
# register a few `k` at a time (`k_step`: 4 for SDOT, 32 for an IMMA `m16n8k32`), with what
# happens on overflow: `wrap` (two's complement, ARM and IMMA without `.satfinite`),
# `saturate` (IMMA `.satfinite`, once per k-chunk), `raise`, or `exact`. Every chunk where the
# register leaves its range is reported as an `OverflowEvent`.
#
# First, layer 0's query projection through a real int32 accumulator: nothing overflows, and
# the result equals the exact accumulator. An int8 GEMM cannot overflow int32 unless
# `K · 128 · 127 ≥ 2^31`, i.e. `K > 132,104`.

# %%
lin = exact.compiled.layers[0].query
a = x0_i8.astype(np.int64)  # (1, T, 64) int8 activations
b = lin.w.T.astype(np.int64)  # (64, 64) int8 weights, transposed
bias = np.broadcast_to(lin.b, a.shape[:-1] + (b.shape[1],))
r32 = int_matmul(a, b, acc_bits=32, overflow="wrap", k_step=4, initial=bias, op_name="layer0.query")
assert np.array_equal(r32.values, out_exact.trace["encoder.layer.0.attention.self.query"])
print(f"int32 accumulator, SDOT-style k_step=4: {len(r32.events)} overflow events; equal to the exact acc")
acc_bits_needed = bits_needed_signed(r32.exact_i64.min(), r32.exact_i64.max())
print(f"largest |acc| {np.abs(r32.exact_i64).max()} needs {acc_bits_needed} bits;"
      f" int8 GEMMs are safe in int32 up to K = {(2**31 - 1) // (128 * 127)}")

# %% [markdown]
# Now a hypothetical **16-bit accumulator**, too narrow for these sums. `wrap` keeps the low 16
# bits (the result is the exact sum modulo 2^16, whatever the order), `saturate` clamps after
# every 8-wide chunk, and because saturating addition is not associative, summing the chunks
# in another order gives another answer.

# %%
r_wrap = int_matmul(a, b, acc_bits=16, overflow="wrap", k_step=8, op_name="layer0.query")
r_sat = int_matmul(a, b, acc_bits=16, overflow="saturate", k_step=8, op_name="layer0.query")
r_sat_rev = int_matmul(a[..., ::-1], b[::-1], acc_bits=16, overflow="saturate", k_step=8)
for label, r in (("wrap", r_wrap), ("saturate", r_sat)):
    wrong = np.count_nonzero(r.values != r.exact_i64)
    print(f"{label:9s}: {len(r.events)} overflow events, {wrong} wrong outputs;  {r.events[0].describe()}")
assert np.all((r_wrap.values.astype(np.int64) - r_wrap.exact_i64) % 2**16 == 0)  # wrap = exact mod 2^16
order = np.count_nonzero(r_sat.values != r_sat_rev.values)
print(f"saturate, k chunks summed in reverse order: {order} outputs differ from the forward order")
try:
    int_matmul(a, b, acc_bits=16, overflow="raise", k_step=8, op_name="layer0.query")
except IntegerOverflowError as err:
    print("raise    :", err)

# %% [markdown]
# And an int32 overflow provoked on purpose: a dot product just longer than the safe `K`, with
# the worst-case operands `-128 × -127`.

# %%
k_long = (2**31 - 1) // (128 * 127) + 1000
a_bad = np.full((1, k_long), -128, dtype=np.int8)
b_bad = np.full((k_long, 1), -127, dtype=np.int8)
for mode in ("wrap", "saturate"):
    r = int_matmul(a_bad, b_bad, acc_bits=32, overflow=mode, k_step=32)
    print(f"K = {k_long}, {mode:8s}: exact {int(r.exact_i64[0, 0])}, int32 register holds {int(r.values[0, 0])}"
          f"  ({len(r.events)} overflowing chunks, the first at k {r.events[0].k_start}..{r.events[0].k_stop})")

# %% [markdown]
# ## 7. What really overflows in I-BERT: outside the GEMMs
#
# The census showed it: the i-GELU product `x · (erf_q + one)` needs more than 32 bits. If a
# datapath held it in an int32 register with wrap-around, what would happen downstream? We
# wrap layer 0's GELU output to 32 bits and requantize it to int8 as the model does.

# %%
p0 = exact.compiled.layers[0]
gelu_i64 = out_exact.trace["encoder.layer.0.intermediate.intermediate_act_fn"].astype(np.int64)
gelu_scale = out_exact.trace_meta["encoder.layer.0.intermediate.intermediate_act_fn"].scale
gelu_wrapped = wrap(gelu_i64, 32).astype(np.int64)
n_wrapped = np.count_nonzero(gelu_wrapped != gelu_i64)
dp = exact.datapath
good = K.requantize(dp, QTensor(gelu_i64, gelu_scale), p0.intermediate_output_activation).data
bad = K.requantize(dp, QTensor(gelu_wrapped, gelu_scale), p0.intermediate_output_activation).data
assert np.array_equal(good, out_exact.trace["encoder.layer.0.intermediate.output_activation"])
print(f"i-GELU products outside int32: {n_wrapped} of {gelu_i64.size}")
print(f"after requantization to int8: {np.count_nonzero(good != bad)} codes wrong,"
      f" max |error| {np.abs(good - bad).max()} (the correct codes range over {good.min()}..{good.max()})")
hit = gelu_wrapped != gelu_i64
print("int8 outputs of the wrapped units, correct:", good[hit][:8], " with int32 wrap:", bad[hit][:8])
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")

# %% [markdown]
# A wrapped GELU product is not a small error. The widest products belong to the large
# positive pre-activations (where GELU(x) ≈ x; the output scale is negative, so they are
# large *negative* integers); wrapped to 32 bits they change sign, so a strongly active unit
# comes out negative. A hardware
# datapath must give this product ~40 bits (roberta-base), or compute it differently (split
# the product, shift before multiplying). The int8 GEMMs, by contrast, are safe in int32.
