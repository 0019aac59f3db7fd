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
# # 01 · One I-BERT encoder layer, integer by integer
#
# **I-BERT** (Kim et al., ICML 2021) runs a whole BERT/RoBERTa encoder in integer arithmetic.
# Every tensor is an integer `q` with a scale `s` known at compile time; the real value it
# stands for is `q · s`. Because the scales are constants, the run time only ever sees integers:
#
# * **GEMMs**: int8 × int8 products summed into **int32 accumulators**;
# * **requantization**: moving an integer to a new scale by a *dyadic* number `m / 2^e`
#   (an integer multiply and a shift) instead of a float multiply;
# * **non-linear functions** (exp in softmax, GELU, the square root in LayerNorm) replaced by
#   second-order polynomials and an integer square root that need only `+ × >>`.
#
# This notebook takes one sentence through **layer 0** of the bundled tiny I-BERT (hidden 64,
# 4 heads, intermediate 256) and calls the kernels of `ibert_ref.kernels` **by hand**, one op at
# a time, with the integer constants compiled in `model.compiled.layers[0]`. At each step it
# prints a small slice, the integer range and the number of bits that range needs, and checks
#
# 1. that the hand-called kernel gives the same integers as the model's own forward pass,
# 2. against Hugging Face **transformers**' I-BERT (when it is installed), and
# 3. against **float math** on the same (dequantized) input: how much did the integers lose?
#
# Sections 10 and 11 and the recap then draw the whole layer: a histogram of the integers of
# each op (with a table of what each integer is, its scale and why it is that wide), the error
# every requantization makes, and the bits each op needs against the bits it is declared with.
#
# If you are new to this, read the numbers in this order: the **integer** `q` (what the
# hardware holds), its **scale** `s` (a float fixed at compile time; never touched at run time),
# and its **width** (how many bits `q` needs: the hardware cost).

# %%
import math
import time
from pathlib import Path
import warnings
from fractions import Fraction

import numpy as np

from safetensors.numpy import load_file

from ibert_ref import IBertModel, QTensor, Tokenizer
from ibert_ref import kernels as K
from ibert_ref.figures import pyplot, show_fig

np.set_printoptions(linewidth=110)
t_start = time.perf_counter()
plt = pyplot()  # matplotlib on its headless Agg backend; show_fig displays a figure as a PNG

model = IBertModel.from_pretrained()  # the bundled tiny I-BERT, exact integer datapath
tok = Tokenizer.from_pretrained()
# the float weights of the same checkpoint, for the float-math checks
weights = load_file(str(Path(model.source) / "model.safetensors"))
dp = model.datapath  # the number system the kernels run on (here: exact int64 integers)
p = model.compiled.layers[0]  # every integer constant of layer 0
num_heads = model.config["num_attention_heads"]
print(model)

# %% [markdown]
# ## The input: one sentence, embedded
#
# The model's embeddings turn token ids into int8 vectors (the embeddings are an I-BERT
# block too, but this notebook starts at the encoder layer). We run the whole model once with
# `return_trace=True`: the trace holds, for every quantized module, the integers it produced,
# keyed by transformers' module names. Layer 0's input is the embeddings' int8 output.

# %%
text = "The capital of France is Paris."
enc = tok([text])
ids, mask = enc["input_ids"], enc["attention_mask"]
out = model(ids, attention_mask=mask, return_trace=True)
trace = out.trace
print("tokens:", ids.shape[1], " ids:", ids[0].tolist())

x_i8 = trace["embeddings.output_activation"]  # (1, T, 64) int8
s_in = model.compiled.embeddings.output_activation.out_scale  # its float32 scale
h = QTensor(x_i8.astype(np.int64), s_in)  # a value between ops: integers + scale
print("layer input dtype", x_i8.dtype, "range", x_i8.min(), x_i8.max(), " scale", s_in[0])

# %% [markdown]
# Three small helpers keep the rest readable: `show` prints a slice (token 1, the first
# channels), the range and the bits the range needs (two's complement); `check` compares our
# integers with the model's trace and with transformers; `vs_float` measures the error of the
# dequantized result `q · s` against a float reference computed from the same input.
#
# transformers' I-BERT *emulates* the integers with float32 tensors, and float32 holds an
# integer exactly only up to 2^24. So for the wide values (LayerNorm ~2^29, GELU ~2^33)
# transformers' integers are off in the low bits; `check` allows a relative difference of
# 1e-4 there and says how large it was. Notebook 03 reproduces those float32 artefacts bit
# for bit.

# %%
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
try:  # transformers is the optional oracle (the `verify` extra)
    from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert
except ImportError:
    hf_trace = None
    print("transformers not installed: the transformers checks are skipped")
else:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    hf_model = load_transformers_ibert(model.source)
    hf_trace = capture_transformers_trace(hf_model, ids, attention_mask=mask).trace
    print(f"captured {len(hf_trace)} quantized modules from transformers' I-BERT")

LAYER = "encoder.layer.0."
WIDTHS = {}  # step -> bits its range needs, collected for the recap


def bits_needed_signed(lo, hi):
    # the smallest two's-complement width n holding [lo, hi]: -2^(n-1) <= lo, hi <= 2^(n-1) - 1
    return 1 + max(int(v).bit_length() if v >= 0 else int(-v - 1).bit_length() for v in (lo, hi))


def record(name, lo, hi):
    WIDTHS[name] = bits_needed_signed(lo, hi)


def show(name, q, scale=None, n=8):
    q = np.asarray(q)
    lo, hi = int(q.min()), int(q.max())
    record(name, lo, hi)
    sc = "" if scale is None else f"  scale {float(np.ravel(scale)[0]):.4g}"
    sc += " (per channel)" if scale is not None and np.size(scale) > 1 else ""
    print(f"{name}: shape {q.shape}, range [{lo}, {hi}] -> {bits_needed_signed(lo, hi)} bits{sc}")
    print("   token 1:", q.reshape(-1, q.shape[-1])[1, :n].tolist(), "...")


def check(module, q):
    ours = np.asarray(q, dtype=np.int64)
    assert np.array_equal(ours, trace[LAYER + module]), module  # hand-called == model forward
    msg = "model forward: equal"
    if hf_trace is not None:
        theirs = hf_trace[LAYER + module]
        diff = np.abs(ours - theirs)
        msg += f" | transformers: {ours.size - np.count_nonzero(diff)}/{ours.size} equal"
        if diff.any():
            rel = diff.max() / np.abs(theirs).max()
            msg += f", max |diff| {diff.max()} (relative {rel:.1e})"
            assert diff.max() <= max(1, 1e-4 * np.abs(theirs).max()), module
    print("   check:", msg)


def vs_float(q, scale, ref):
    err = np.abs(np.asarray(q, dtype=np.float64) * np.asarray(scale, dtype=np.float64) - ref)
    rel = err.max() / np.abs(ref).max()
    print(f"   vs float: max |error| {err.max():.3g}, relative to max |float| {rel:.1e}")
    return rel


def deq(t):
    return t.data.astype(np.float64) * t.scale.astype(np.float64)


def w(name):  # float32 weight from the checkpoint
    return weights[LAYER + name].astype(np.float64)


show("layer input x_i8", h.data, h.scale)

# %% [markdown]
# ## 1. Q, K, V: int8 × int8 → int32 accumulators
#
# `QuantLinear` holds int8 weights (one scale per output channel `s_w[c]`) and an int32 bias
# quantized with the accumulator's scale `s_x · s_w[c]`:
#
# `acc[c] = Σ_k x_q[k] · W_q[c, k] + b_q[c]`, scale `s_x · s_w[c]`.
#
# No rounding at all: the sum is exact. Each product needs at most 15 bits, so 64 of them need
# at most 21; the int32 accumulator is far from full.

# %%
lin = p.query
print("W_q int8:", lin.w.dtype, lin.w.shape, " row 0:", lin.w[0, :8].tolist(), "...")
print("b_q int32:", lin.b[:6].tolist(), "...  s_w[0:3] =", (lin.out_scale / s_in)[:3])
q_acc = K.quant_linear(dp, h, p.query)
k_acc = K.quant_linear(dp, h, p.key)
v_acc = K.quant_linear(dp, h, p.value)
show("query acc_i32", q_acc.data, q_acc.scale)
check("attention.self.query", q_acc.data)
check("attention.self.key", k_acc.data)
check("attention.self.value", v_acc.data)

# float reference: the dequantized int8 input times the *float* weights
ref = deq(h) @ w("attention.self.query.weight").T + w("attention.self.query.bias")
rel = vs_float(q_acc.data, q_acc.scale, ref)
assert rel < 0.02  # int8 weight rounding only

# %% [markdown]
# ## 2. Requantization: back to int8 with a dyadic multiplier
#
# The accumulator has scale `s_acc = s_x · s_w[c]`; the next op wants int8 with the calibrated
# scale `s_out`. So `q_out = round(acc · s_acc / s_out)`. The ratio is a compile-time constant,
# stored as a **dyadic number** `m / 2^e` with a 31-bit integer `m`:
#
# `q_out = clamp(rne(acc · m / 2^e), -128, 127)` — one integer multiply (here ~48 bits), one
# rounding shift. I-BERT (and transformers) round **half to even** (`rne`); the multiplier is
# per channel here, because the accumulator's scale is.

# %%
rq = p.query_activation
ratio = (q_acc.scale.astype(np.float64) / rq.out_scale.astype(np.float64))
print("s_acc / s_out, channels 0..2:", ratio[:3])
print("m:", rq.dy.m[:3], " e:", rq.dy.e[:3], " m / 2^e:", rq.dy.value[:3])

# One element by hand, with exact rational arithmetic
z, m, e = int(q_acc.data[0, 1, 0]), int(rq.dy.m[0]), int(rq.dy.e[0])
exact = Fraction(z * m, 2**e)
print(f"acc = {z}:  {z} * {m} / 2^{e} = {float(exact):.6f}  -> rne -> {round(exact)}"
      f"   (the product needs {bits_needed_signed(z * m, z * m)} bits)")
ties = [round(Fraction(k, 2)) for k in (1, 3, 5, -1, -3)]
print("ties round to even: 0.5, 1.5, 2.5, -0.5, -1.5 ->", ties)

q8 = K.requantize(dp, q_acc, p.query_activation)
k8 = K.requantize(dp, k_acc, p.key_activation)
v8 = K.requantize(dp, v_acc, p.value_activation)
assert q8.data[0, 1, 0] == round(exact)
show("query int8", q8.data, q8.scale)
check("attention.self.query_activation", q8.data)
check("attention.self.key_activation", k8.data)
check("attention.self.value_activation", v8.data)
rel = vs_float(q8.data, q8.scale, deq(q_acc))
assert rel < 0.01  # at most half an int8 step

# %% [markdown]
# ## 3. Attention scores and i-exp
#
# Scores `S = Q_q · K_q^T` per head are int8 × int8 sums again (int32), with scale
# `s = s_q · s_k / √d_head` (the `1/√d` is folded into the scale, not computed).
#
# Softmax needs `exp`. I-BERT's **i-exp** subtracts the row maximum (so `x ≤ 0`), then writes
# `x = -z · ln2 + r` with an integer `z` and `r ∈ (-ln2, 0]`, so `exp(x) = 2^-z · exp(r)`.
# `exp(r)` on that short interval is a second-order polynomial, `0.3585 (r + 1.353)² + 0.344`
# in the paper, `a r² + b r + 1` with `a = 0.35815`, `b = 0.96963` in transformers' code, and
# `2^-z` is a shift. In integers, with the polynomial divided by `a` so its leading
# coefficient is 1 (constants precomputed from `s`):
#
# ```
# x     = max(S - rowmax(S), 30 · x0)          x0 = floor(-0.6931 / s)
# z     = floor(x / x0);  r = x - x0 · z        (quotient and remainder)
# poly  = (r + b') · r + c'                     b' = floor((b / a) / s), c' = floor((1 / a) / s²)
# exp   = poly · 2^(30 - z)                     scale a · s² / 2^30
# ```
#
# (`30 · x0` clamps scores more than 30 · ln2 below the maximum: their `exp` is below 2^-30.)

# %%
sp = p.softmax
scores = K.attention_scores(dp, q8, k8, num_heads, mask, p.score_scale)  # (1, heads, T, T)
s = float(p.score_scale[0])
show("scores (int32)", scores, p.score_scale)
print(f"score scale s = {s:.4g};  x0 = {sp.x0_int.item()}, b' = {sp.b_int.item()}, c' = {sp.c_int.item()}")

x = np.maximum(scores - scores.max(axis=-1, keepdims=True), sp.x0_30)
z = x // sp.x0_int
r = x - sp.x0_int * z
poly = (r + sp.b_int) * r + sp.c_int
row = (0, 0, 1)  # batch 0, head 0, query token 1
print("x    :", x[row][:6].tolist(), "  (real:", np.round(x[row][:6] * s, 3).tolist(), ")")
print("z    :", z[row][:6].tolist(), "  r:", r[row][:6].tolist())
print("poly :", poly[row][:6].tolist(), f"  needs {bits_needed_signed(poly.min(), poly.max())} bits")
record("i-exp polynomial", poly.min(), poly.max())

# exp = poly * 2^(30 - z) with Python integers (it can exceed 64 bits)
exp_int = [int(pv) << int(30 - zv) for pv, zv in zip(poly[row], z[row])]
widest = max(int(pv) << int(30 - zv) for pv, zv in zip(poly.ravel(), z.ravel()))
print(f"exp_int: {exp_int[:3]} ...  the largest in this layer needs {widest.bit_length() + 1} bits")
record("i-exp exp_int = poly << (30 - z)", 0, widest)
exp_real = np.array(exp_int, dtype=np.float64) * float(sp.exp_scale[0])
print("i-exp:", np.round(exp_real[:6], 4).tolist())
print("exp  :", np.round(np.exp(x[row][:6] * s), 4).tolist())

# %% [markdown]
# `exp_int` is far too wide to keep. A **16-bit QuantAct** requantizes it, like step 2:
# `e16 = clamp(rne(exp_int · m / 2^e), 0, 2^15 - 1)`. Its scale `act_scale` was calibrated
# (by transformers) on `exp_int` itself, so it is in units of `exp_int` and huge; the real
# value of `e16` is `e16 · act_scale · exp_scale`. The exact datapath never builds the wide
# `exp_int`: it folds the left shift `2^(30 - z)` into the right shift `e`.

# %%
e16 = K.int_exp(dp, scores, sp)
m16, sh16 = sp.dy_exact.m.item(), sp.dy_exact.e.item()
s_e16 = float(sp.act_scale[0]) * float(sp.exp_scale[0])  # real value of one e16 step
print(f"16-bit act: m = {m16}, e = {sh16};  one step of e16 is worth {s_e16:.3g}")
print(f"exp(0) = 1 would be {1 / s_e16:.0f}: the 16-bit clamp cuts exp(x) above {32767 * s_e16:.3f}")
by_hand = [min(round(Fraction(v * m16, 2**sh16)), 2**15 - 1) for v in exp_int]
assert by_hand == e16.data[row].tolist()
show("softmax.act (16 bit)", e16.data, e16.scale)
check("attention.self.softmax.act", e16.data)
ref_exp = np.exp((scores - scores.max(axis=-1, keepdims=True)) * s)
rel = vs_float(e16.data, s_e16, ref_exp)
assert rel < 0.02

# %% [markdown]
# ## 4. Softmax rows: integer normalisation
#
# Dividing each exponential by the row sum takes one integer division per row:
# `factor = floor(2^32 / Σ e16)`, then `p = floor(e16 · factor / 2^24)`, an 8-bit fraction
# (scale 2^-8). Floors only, so a row sums to a little less than 256. A row with one live key
# gives exactly 256, which needs 9 bits.

# %%
factor = (2**32) // e16.data.sum(axis=-1, keepdims=True)
probs_by_hand = (e16.data * factor) >> 24
probs = K.softmax_normalize(dp, e16, sp)
assert np.array_equal(probs.data, probs_by_hand)
show("softmax probs (x 2^-8)", probs.data, probs.scale)
print("row sums:", sorted(set(probs.data.sum(axis=-1).ravel().tolist())))
check("attention.self.softmax", probs.data)

sc = scores * s
ref_p = np.exp(sc - sc.max(-1, keepdims=True))
ref_p /= ref_p.sum(-1, keepdims=True)
err = np.abs(probs.data / 256 - ref_p)
print(f"   vs float softmax: max |error| {err.max():.4f} (one step is 1/256 = {1 / 256:.4f})")
assert err.max() < 3 / 256

fig, axs = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, img, title in zip(axs, (probs.data[0, 0] / 256, ref_p[0, 0], probs.data[0, 0] / 256 - ref_p[0, 0]),
                          ("integer softmax / 256", "float softmax", "difference")):
    lim = np.abs(img).max() if title == "difference" else None
    im = ax.imshow(img, cmap="coolwarm" if lim else "viridis", vmin=-lim if lim else None, vmax=lim)
    ax.set_title(f"head 0: {title}", fontsize=9)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    fig.colorbar(im, ax=ax, fraction=0.046)
show_fig(fig)

# %% [markdown]
# ## 5. Context, output projection and the residual
#
# `context = P · V` (probabilities 0..256 times int8 values) has scale `2^-8 · s_v` and is
# requantized to int8. The output projection is another QuantLinear. The residual add
# happens *inside a requantization*: the dense output and the layer input have different
# scales, so each gets its own dyadic multiplier onto the common 22-bit scale:
#
# `q = clamp(rne(acc · m₁ / 2^e₁) + rne(x · m₂ / 2^e₂), -2^21, 2^21 - 1)`.

# %%
ctx = dp.attention_context(probs, v8, num_heads, p.context_scale)
show("context P.V", ctx.data, ctx.scale)
ctx8 = K.requantize(dp, ctx, p.self_output_activation)
check("attention.self.output_activation", ctx8.data)

a_acc = K.quant_linear(dp, ctx8, p.attn_dense)
check("attention.output.dense", a_acc.data)
ra = p.attn_ln_input_act
print(f"residual requant: dense m, e = {int(ra.dy.m[0])}, {int(ra.dy.e[0])} (channel 0);"
      f" identity m, e = {int(ra.dy_identity.m[0])}, {int(ra.dy_identity.e[0])}")
a22 = K.requantize(dp, a_acc, ra, identity=h)
show("dense + residual (22 bit)", a22.data, a22.scale)
check("attention.output.ln_input_act", a22.data)
ref = deq(a_acc) + deq(h)
rel = vs_float(a22.data, a22.scale, ref)
assert rel < 0.001

# %% [markdown]
# ## 6. LayerNorm with an integer square root
#
# `LayerNorm(x) = (x - mean) / std · γ + β`. In integers, over the 64 channels of a token:
#
# ```
# mean   = rne(Σ x / D);   y = x - mean
# var    = Σ floor(y / 2^shift)²                 (shift: a calibrated guard so var < 2^32)
# std    = isqrt(var) · 2^shift                  isqrt: integer floor square root
# factor = floor(2^31 / std)
# out    = floor(y · factor / 2) + bias_q        scale √D / 2^30 · γ  (per channel)
# ```
#
# `isqrt` is computed digit by digit with shifts, adds and compares (written out below, one
# result bit per step): I-BERT's "known algorithm for the integer square root". `rne(Σ x / D)`
# is an integer division rounded half to even. γ goes into the output *scale*, β into the
# integer bias `bias_q`.

# %%
def div_round_half_even(a, d):  # rne(a / d) for integers a and d > 0
    q, r = np.divmod(a, d)  # floor division: 0 <= r < d
    return q + ((2 * r > d) | ((2 * r == d) & (q % 2 == 1)))


def isqrt_digit_by_digit(n):  # floor(sqrt(n)) for an integer n >= 0: shifts, adds, compares
    n, root = int(n), 0
    bit = 1 << ((n.bit_length() - 1) & ~1) if n else 0  # the highest power of 4 <= n
    while bit:
        if n >= root + bit:
            n -= root + bit
            root = (root >> 1) + bit
        else:
            root >>= 1
        bit >>= 2
    return root


lp = p.attn_layernorm
xi = a22.data
mean = div_round_half_even(xi.sum(axis=-1, keepdims=True), xi.shape[-1])
y = xi - mean
var = ((y >> lp.shift) ** 2).sum(axis=-1, keepdims=True)
root = np.vectorize(isqrt_digit_by_digit, otypes=[np.int64])(var)
std = root << lp.shift
ln_factor = (2**31) // std
ln_by_hand = ((y * ln_factor) >> 1) + lp.bias_int
print(f"shift = {lp.shift};  var (token 1) = {int(var[0, 1, 0])}  -> isqrt = {int(root[0, 1, 0])}"
      f"  (math.isqrt: {math.isqrt(int(var[0, 1, 0]))})")
record("LayerNorm var (sum of squares)", 0, var.max())
print(f"var needs {WIDTHS['LayerNorm var (sum of squares)']} bits (signed);"
      f" factor (token 1) = {int(ln_factor[0, 1, 0])}")
assert all(math.isqrt(int(v)) == int(r) for v, r in zip(var.ravel(), root.ravel()))

ln = K.int_layernorm(dp, a22, lp)
assert np.array_equal(ln.data, ln_by_hand)
show("LayerNorm (int32)", ln.data, ln.scale)
check("attention.output.LayerNorm", ln.data)

xf = deq(a22)
mu, sd = xf.mean(-1, keepdims=True), xf.std(-1, keepdims=True)
ref = (xf - mu) / sd * w("attention.output.LayerNorm.weight") + w("attention.output.LayerNorm.bias")
rel = vs_float(ln.data, ln.scale, ref)
assert rel < 0.01

# %% [markdown]
# ## 7. The feed-forward block and i-GELU
#
# After the LayerNorm output is requantized to int8 (twice: `output_activation` then
# `pre_intermediate_act`), the intermediate QuantLinear widens to 256 channels and applies
# **i-GELU**. `GELU(x) = x · ½ (1 + erf(x / √2))`; I-BERT approximates `erf` on `[0, 1.769]` by
# `-0.2888 (min(|x|, 1.769) - 1.769)² + 1` (with the sign of `x`), which clips to ±1 outside.
# In integers, with `s' = s / √2` and per-channel constants `b = floor(-1.769 / s')`,
# `c = floor(-1 / 0.2888 / s'²)`:
#
# ```
# erf_q = sign(x) · ((min(|x|, -b) + b)² + c)
# erf_q = floor(erf_q / 2^14)                    (drops 14 bits before the last product)
# out   = x · (erf_q + one)                      one = floor(1 / s_erf); scale s · s_erf / 2
# ```
#
# The final product is the widest integer in I-BERT (~40 bits on roberta-base). `s_erf` is
# negative (it carries the `-0.2888`), so the output scale is negative too: a positive GELU
# value is stored as a negative integer.

# %%
a8 = K.requantize(dp, ln, p.attn_output_activation)
check("attention.output.output_activation", a8.data)
a8 = K.requantize(dp, a8, p.pre_intermediate_act)
check("pre_intermediate_act", a8.data)
f_acc = K.quant_linear(dp, a8, p.intermediate_dense)
show("intermediate acc_i32", f_acc.data, f_acc.scale)
check("intermediate.dense", f_acc.data)

gp = p.gelu
xg = f_acc.data
erf_q = np.sign(xg) * ((np.minimum(np.abs(xg), -gp.b_int) + gp.b_int) ** 2 + gp.c_int)
print(f"channel 0: b = {int(gp.b_int[0])}, c = {int(gp.c_int[0])}, one = {int(gp.one[0])}")
record("i-GELU erf polynomial", erf_q.min(), erf_q.max())
print(f"erf polynomial needs {WIDTHS['i-GELU erf polynomial']} bits before the >> 14")
erf_q = erf_q >> 14
gelu_by_hand = xg * (erf_q + gp.one)
g = K.int_gelu(dp, f_acc, gp)
assert np.array_equal(g.data, gelu_by_hand)
show("i-GELU product", g.data, g.scale)
check("intermediate.intermediate_act_fn", g.data)

xf = deq(f_acc)
erf = np.vectorize(math.erf)
ref = xf * 0.5 * (1 + erf(xf / math.sqrt(2)))
rel = vs_float(g.data, g.scale, ref)
assert rel < 0.02  # i-GELU's approximation error (notebook 02 measures it)

# %% [markdown]
# ## 8. Down projection, second residual and LayerNorm: the layer output
#
# The rest repeats steps 1, 2, 5 and 6: int8 GELU output → QuantLinear (256 → 64) → 22-bit
# residual add with the block input → IntLayerNorm → int8. The int8 result is the next layer's
# input.

# %%
g8 = K.requantize(dp, g, p.intermediate_output_activation)
check("intermediate.output_activation", g8.data)
g8 = K.requantize(dp, g8, p.pre_output_act)
check("pre_output_act", g8.data)
o_acc = K.quant_linear(dp, g8, p.output_dense)
check("output.dense", o_acc.data)
o22 = K.requantize(dp, o_acc, p.output_ln_input_act, identity=a8)
check("output.ln_input_act", o22.data)
o_ln = K.int_layernorm(dp, o22, p.output_layernorm)
check("output.LayerNorm", o_ln.data)
y8 = K.requantize(dp, o_ln, p.output_activation)
show("layer 0 output int8", y8.data, y8.scale)
check("output.output_activation", y8.data)


# %% [markdown]
# ## 9. The whole layer against float math
#
# Finally, the same layer in float64 — float weights, exact softmax, erf-GELU, float
# LayerNorm, no quantization anywhere — on the same dequantized input. The gap is what 8-bit
# quantization plus the integer approximations cost on this (random, calibrated) model.

# %%
def float_layer(x):
    def linear(v, name):
        return v @ w(name + ".weight").T + w(name + ".bias")

    def layernorm(v, name):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-12) * w(
            name + ".weight") + w(name + ".bias")

    b, t, hid = x.shape
    hd = hid // num_heads

    def heads(v):
        return v.reshape(b, t, num_heads, hd).transpose(0, 2, 1, 3)

    qf, kf, vf = (heads(linear(x, "attention.self." + n)) for n in ("query", "key", "value"))
    sf = qf @ kf.transpose(0, 1, 3, 2) / math.sqrt(hd)
    pf = np.exp(sf - sf.max(-1, keepdims=True))
    pf /= pf.sum(-1, keepdims=True)
    cf = (pf @ vf).transpose(0, 2, 1, 3).reshape(b, t, hid)
    af = layernorm(linear(cf, "attention.output.dense") + x, "attention.output.LayerNorm")
    ff = linear(af, "intermediate.dense")
    ff = ff * 0.5 * (1 + erf(ff / math.sqrt(2)))
    return layernorm(linear(ff, "output.dense") + af, "output.LayerNorm")


ref = float_layer(deq(h))
yf = deq(y8)
cos = (yf * ref).sum(-1) / np.linalg.norm(yf, axis=-1) / np.linalg.norm(ref, axis=-1)
print(f"max |int - float| = {np.abs(yf - ref).max():.3f} on values up to {np.abs(ref).max():.2f};"
      f" cosine similarity per token >= {cos.min():.4f}")
assert cos.min() > 0.98

# %% [markdown]
# ## 10. Every integer of the layer, at a glance
#
# The steps above printed slices and ranges. Here are the whole distributions: one histogram
# per op, of the integers themselves (x axis: the integer `q`; y axis, logarithmic: how many
# elements of this sentence's layer 0 hold it). What the integers are:
#
# | op | the integer `q` | its scale `s` (real value `q · s`) | width | why that width |
# |---|---|---|---|---|
# | layer input, q/k/v, context, GELU output | an activation, rounded to 256 levels | one per tensor, calibrated: `max(abs(x)) / 127` | int8 | I-BERT runs its GEMMs on int8 |
# | QuantLinear accumulator | `Σ x_q · W_q + b_q`, exact | `s_x · s_w[c]`, one per output channel | int32 | a product of two int8 needs 15 bits; 64 of them at most 21; int32 is safe up to `K` = 132,104 |
# | i-exp (`softmax.act`) | `exp(score - row max)`, requantized | one step is worth `s_e16` (exp(0) is near 2^15) | 16 bits | enough levels for probabilities to 1/256 |
# | softmax | a probability, `0..256` | `2^-8` | 9 bits (int16) | 8 fractional bits, plus 256 for a one-key row |
# | dense + residual (`ln_input_act`) | the sum of two branches | calibrated, `max(abs(x)) / (2^21 - 1)` | 22 bits | finer than int8 before LayerNorm divides by std |
# | LayerNorm | `(x - mean) / std · 2^30 / √D` plus `bias_q` | `√D / 2^30 · γ[c]`, per channel | int32 | `floor(2^31 / std)` keeps ~30 bits of the normalized value |
# | i-GELU product | `x · (erf_q + one)` | `s_x · s_erf / 2` per channel, **negative** | int64 | an int32 accumulator times a ~20-bit integer: more than 32 bits |
#
# Things to notice: the int8 activations use most of their 256 levels (that is what
# calibration is for); the int32 accumulators use about 17 of their 32 bits; the 16-bit
# exponential has a spike at 32767, one per row and head: the row maximum, `exp(0) = 1`, would be
# about 33,000 steps and is clamped to `2^15 - 1`; softmax is bunched at 0 (most keys get almost
# nothing); the i-GELU product is mostly *negative* integers,
# because its scale is negative: positive GELU outputs are stored as negative integers, and the
# small spike on the other side is GELU's negative dip (≥ -0.17).

# %%
meta = out.trace_meta


def traced(module):  # (integers, scale, declared bits) of a layer-0 module, from the model's trace
    return trace[LAYER + module], meta[LAYER + module].scale, meta[LAYER + module].bits


def scale_text(scale):
    sc = np.ravel(scale).astype(np.float64)
    if sc.size == 1:
        return f"scale {sc[0]:.3g}"
    sign = ", all < 0" if np.all(sc < 0) else (", some < 0" if np.any(sc < 0) else "")
    return f"|scale| per channel {np.abs(sc).min():.2g} to {np.abs(sc).max():.2g}{sign}"


HISTS = [  # title, integers, scale, declared bits
    ("layer input x", h.data, h.scale, meta["embeddings.output_activation"].bits),
    ("query accumulator", *traced("attention.self.query")),
    ("query after requantization", *traced("attention.self.query_activation")),
    ("i-exp, 16-bit (softmax.act)", e16.data, np.array([s_e16]), traced("attention.self.softmax.act")[2]),
    ("softmax probabilities", *traced("attention.self.softmax")),
    ("dense + residual", *traced("attention.output.ln_input_act")),
    ("LayerNorm", *traced("attention.output.LayerNorm")),
    ("i-GELU product", *traced("intermediate.intermediate_act_fn")),
    ("GELU after requantization", *traced("intermediate.output_activation")),
]

fig, axs = plt.subplots(3, 3, figsize=(13, 10))
for ax, (title, q, scale, declared) in zip(axs.ravel(), HISTS):
    q = np.asarray(q, dtype=np.int64).ravel()
    lo, hi = int(q.min()), int(q.max())
    need = bits_needed_signed(lo, hi)
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo < 300 else 60  # one bin per integer when few
    ax.hist(q, bins=bins, color="C3" if need > 32 else "C0")
    ax.set_yscale("log")
    ax.set_title(f"{title}: {q.size} integers in [{lo}, {hi}]\n"
                 f"need {need} of {declared} bits; {scale_text(scale)}", fontsize=8.5)
    ax.tick_params(labelsize=7)
    ax.xaxis.get_offset_text().set_fontsize(7)
for ax in axs[-1]:
    ax.set_xlabel("integer q", fontsize=8)
for ax in axs[:, 0]:
    ax.set_ylabel("count", fontsize=8)
show_fig(fig)

# %% [markdown]
# ## 11. What requantization costs
#
# Requantization is the only place where the layer rounds on purpose (apart from the floors
# inside the non-linear kernels): an integer `q_in` with scale `s_in` becomes `q_out` with scale
# `s_out`, `q_out = clamp(rne(q_in · m / 2^e))` with `m / 2^e ≈ s_in / s_out`. In real values,
# the error is `q_out · s_out - q_in · s_in`: the dequantized output minus the float value it
# replaces. Measured in steps of the output (`/ s_out`) it must lie in `[-½, ½]` (one rounding)
# unless the value was outside the output's range and got **clamped** (saturated) to
# `-2^(b-1)` or `2^(b-1) - 1`. The residual requantizations (`ln_input_act`) round twice, once
# per branch, so their error can reach one step.
#
# First the staircase of the query projection: every float accumulator value on the x axis,
# its int8 replacement on the y axis. Then, for every requantization of the layer, the error in
# output steps.

# %%
def real(q, scale):  # the real value an integer stands for, in float64
    return np.asarray(q, dtype=np.float64) * np.asarray(scale, dtype=np.float64)


REQUANTS = [  # label, the float value before, the module whose integers replace it
    ("query: int32 -> int8", deq(q_acc), "attention.self.query_activation"),
    ("key: int32 -> int8", deq(k_acc), "attention.self.key_activation"),
    ("value: int32 -> int8", deq(v_acc), "attention.self.value_activation"),
    ("context P.V: int32 -> int8", deq(ctx), "attention.self.output_activation"),
    ("dense + residual -> 22 bit", deq(a_acc) + deq(h), "attention.output.ln_input_act"),
    ("LayerNorm: int32 -> int8", real(*traced("attention.output.LayerNorm")[:2]),
     "attention.output.output_activation"),
    ("int8 -> int8 (pre_intermediate_act)", real(*traced("attention.output.output_activation")[:2]),
     "pre_intermediate_act"),
    ("i-GELU: int64 -> int8", deq(g), "intermediate.output_activation"),
    ("int8 -> int8 (pre_output_act)", real(*traced("intermediate.output_activation")[:2]), "pre_output_act"),
    ("dense + residual -> 22 bit ", deq(o_acc) + deq(a8), "output.ln_input_act"),
    ("LayerNorm: int32 -> int8 (layer output)", deq(o_ln), "output.output_activation"),
]

errors = {}
print(f"{'requantization':40s} {'s_out':>9s} {'max|err|':>9s} {'rms':>6s} {'clamped':>8s}   (err in output steps)")
for label, before, module in REQUANTS:
    q_out, s_out, bits = traced(module)
    qmax = 2 ** (bits - 1) - 1
    err = (real(q_out, s_out) - before) / np.float64(s_out[0])
    clamped = np.abs(before / np.float64(s_out[0])) > qmax + 0.5
    errors[label] = err[~clamped]
    e = errors[label]
    print(f"{label:40s} {float(s_out[0]):9.3g} {np.abs(e).max():9.3f} {np.sqrt(np.mean(e**2)):6.3f}"
          f" {np.count_nonzero(clamped):8d}")
    limit = 1.0 if "residual" in label else 0.5
    assert np.abs(e).max() <= limit + 1e-3, label

fig, axs = plt.subplots(1, 2, figsize=(11, 3.8))
q_out, s_out, _ = traced("attention.self.query_activation")
x_before, y_after = deq(q_acc).ravel(), real(q_out, s_out).ravel()
for ax, window in zip(axs, (None, 0.35)):
    sel = slice(None) if window is None else np.abs(x_before) < window
    ax.plot(x_before[sel], y_after[sel], ".", ms=3 if window else 1.5, label="int8 · s_out")
    lim = np.abs(x_before[sel]).max()
    ax.plot([-lim, lim], [-lim, lim], "k", lw=0.6, label="no rounding (y = x)")
    ax.set_xlabel("float value before requantization (int32 acc · s_acc)")
    ax.set_ylabel("dequantized int8")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
step = float(s_out[0])
axs[0].set_title(f"query: {x_before.size} values, int8 steps of s_out = {step:.3g}", fontsize=9)
axs[1].set_title("zoom: each float lands on the nearest step", fontsize=9)
axs[1].set_yticks(np.arange(-5, 6) * step)
axs[1].set_yticklabels([f"{k}·s" for k in range(-5, 6)], fontsize=7)
show_fig(fig)

fig, ax = plt.subplots(figsize=(9, 4.6))
labels = list(errors)
jitter = np.random.default_rng(0)
for row, label in enumerate(labels):  # one dot per element, spread vertically to show the density
    e = errors[label].ravel()
    ax.plot(e, row + jitter.uniform(-0.32, 0.32, e.size), ".", ms=1.5, alpha=0.35, color=f"C{row % 10}")
for x in (-0.5, 0.5):
    ax.axvline(x, color="r", ls="--", lw=0.8)
ax.set_yticks(range(len(labels)))
ax.set_yticklabels(labels, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("dequantized output - float value before, in output steps (s_out)")
ax.set_title("requantization error of every requantization in layer 0 (clamped values left out)", fontsize=9)
ax.grid(alpha=0.3, axis="x")
show_fig(fig)

# %% [markdown]
# The errors are spread evenly over `[-½, ½]` step (an rms of `1/√12 ≈ 0.29`), the signature of
# round-to-nearest; the two residual requantizations reach further because both branches are
# rounded. One exception: `pre_output_act` moves int8 codes to a scale only about 2 % smaller
# (`s_in / s_out ≈ 1.019`): every code below 27 keeps its value, so its error is `-0.019 · q`,
# one of a few discrete values, and GELU's int8 outputs are mostly small codes: hence the dense
# band of stripes between -½ and 0. The `clamped` column counts values that fell outside the output range: none here,
# the ranges were calibrated on sentences like this one. A clamped value's error is not bounded
# by half a step: it is the part of the value beyond the range.
#
# ## Recap: the widths of one layer
#
# For hardware the question is how many bits each integer needs. Below, for every op of layer 0
# in the model's trace, the bits its integers needed on this sentence (two's complement, from
# the range) against the width the op is declared with (`trace_meta[...].bits`), followed by
# the values that live *inside* the kernels and are never stored (recorded by hand above).
# int8 activations fill their 8 bits; int32 accumulators need about 17 of 32; the 16-bit
# exponential and the 9-bit softmax sit in 16; the residual fills its 22 bits; LayerNorm needs
# ~30 of 32, and its sum of squares is kept below 2^32 by the calibrated `shift`. Two values do
# **not** fit 32 bits: the i-exp `exp_int` (which the kernel never builds: it folds the shift
# into the requantization) and the i-GELU product, declared int64. These are what a hardware
# datapath has to plan for (notebook 03).

# %%
ops = [name for name in trace if name.startswith(LAYER)]
rows = [(name[len(LAYER):], bits_needed_signed(trace[name].min(), trace[name].max()), meta[name].bits)
        for name in ops]
inside = [(name, bits, None) for name, bits in WIDTHS.items()
          if name.startswith(("i-exp", "LayerNorm var", "i-GELU erf"))]
rows += inside

fig, ax = plt.subplots(figsize=(9, 7.5))
y = np.arange(len(rows))
declared = [d if d is not None else 0 for _, _, d in rows]
needed = [n for _, n, _ in rows]
ax.barh(y, declared, color="0.85", edgecolor="0.5", label="declared width (trace_meta bits)")
colors = ["C3" if n > 32 else ("C1" if d is None else "C0") for _, n, d in rows]
ax.barh(y, needed, height=0.5, color=colors, label="bits needed on this sentence")
for yi, (name, n, d) in zip(y, rows):
    ax.text(max(n, d or 0) + 0.5, yi, f"{n}" + (f" / {d}" if d is not None else " (never stored)"),
            va="center", fontsize=7)
ax.axvline(32, color="k", ls="--", lw=0.8)
ax.set_yticks(y)
ax.set_yticklabels([name for name, _, _ in rows], fontsize=7)
ax.invert_yaxis()
ax.set_xlim(0, 70)
ax.set_xlabel("bits (two's complement)")
ax.set_title("layer 0: bits needed vs declared (red: more than 32; orange: never stored)", fontsize=9)
ax.legend(fontsize=8, loc="lower right")
show_fig(fig)

for name, need, decl in rows:
    assert decl is None or need <= decl, name  # every op fits the width it is declared with
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")

# %% [markdown]
# **In short.** Every step of the layer was `+`, `×`, a comparison or a shift on integers, with the
# scales used only at compile time to build `m, e`, `b, c`, `x0`, `one` and `bias_q`. Widths:
# int8 activations, int32 accumulators, a 16-bit exponential, a 22-bit residual, ~31-bit
# LayerNorm outputs and a GELU product wider than 32 bits. Notebook 02 measures the
# approximations themselves; notebook 03 runs the same layer on other number systems.
