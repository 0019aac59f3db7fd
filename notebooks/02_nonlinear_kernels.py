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
# # 02 · I-BERT's non-linear kernels against float
#
# GEMMs are easy in integers; the hard part of a Transformer is its non-linear functions.
# I-BERT replaces each one with something that needs only integer `+ × >>` and a comparison:
#
# | float op | I-BERT kernel | idea |
# |---|---|---|
# | `exp` (softmax) | **i-exp** | `exp(x) = 2^-z · exp(r)`, `r ∈ (-ln2, 0]`: a polynomial and a shift |
# | `GELU` | **i-GELU** | `erf` ≈ 2nd-order polynomial on `[0, 1.769]`, clipped to ±1 beyond |
# | `sqrt` (LayerNorm) | **integer sqrt** | digit-by-digit floor square root |
# | `softmax` | **integer softmax** | i-exp, then one integer division per row |
#
# This notebook runs the library's kernels (`ibert_ref.kernels`, exact integer datapath) over a
# dense grid of inputs, measures their error against the float functions, reproduces the
# paper's comparison of GELU approximations (Table 1 and Figure 2 of Kim et al., 2021) by our
# own measurement, and shows what changes with the **scale factor** of the input.
#
# The integer kernels take integers `q` and a scale `s`; the constants they need (`b`, `c`,
# `x0`, ...) are computed from `s` at compile time by `ibert_ref.compile`, exactly as in the
# model.

# %%
import math
import time

import numpy as np

from ibert_ref import QTensor, make_datapath
from ibert_ref import kernels as K
from ibert_ref.figures import pyplot, show_fig
from ibert_ref.compile import GELU_COEF, SOFTMAX_COEF, SOFTMAX_X0, gelu_params, softmax_params

np.set_printoptions(linewidth=110)
t_start = time.perf_counter()
plt = pyplot()  # matplotlib on its headless Agg backend; show_fig displays a figure as a PNG
dp = make_datapath("exact")  # the exact integer number system the kernels run on
F32 = np.float32
erf = np.vectorize(math.erf, otypes=[float])


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def scale(v):  # a per-tensor float32 scale, shape (1,)
    return np.array([v], dtype=F32)


# %% [markdown]
# ## 1. i-GELU
#
# `GELU(x) = x · ½ (1 + erf(x / √2))`. I-BERT's polynomial for `erf`:
#
# `L(x) = sign(x) · [a (min(|x|, -b) + b)² + 1]` with `a = -0.2888`, `b = -1.769`,
#
# so `i-GELU(x) = x · ½ (1 + L(x / √2))`. Below: the float polynomial (the approximation alone)
# and the integer kernel `kernels.int_gelu` at an input scale typical of the model
# (`s = 1e-4`, i.e. the int32 accumulator of a QuantLinear), against GELU and two cheaper
# approximations the paper compares with: **ReLU** and **h-GELU** `x · ReLU6(1.702 x + 3) / 6`.

# %%
a_coef, b_coef = GELU_COEF[0], GELU_COEF[1]


def igelu_float(x):
    u = x / math.sqrt(2.0)
    erf_poly = np.sign(u) * (a_coef * (np.minimum(np.abs(u), -b_coef) + b_coef) ** 2 + 1.0)
    return 0.5 * x * (1.0 + erf_poly)


def igelu_int(x_real, s):
    # quantize x onto the scale s, run the integer kernel, dequantize. Returns (x_q * s, result)
    s32 = scale(s)
    x_q = np.rint(x_real / float(s32[0])).astype(np.int64)
    out = K.int_gelu(dp, QTensor(x_q, s32), gelu_params(dp, s32))
    return x_q * float(s32[0]), out.data * float(out.scale[0])


def hgelu(x):
    return x * np.clip(1.702 * x + 3.0, 0.0, 6.0) / 6.0


x = np.linspace(-4.0, 4.0, 8001)
xq, y_int = igelu_int(x, 1e-4)
ref = gelu(xq)  # GELU at the quantized inputs: measures the kernel, not the input rounding

fig, axs = plt.subplots(1, 2, figsize=(11, 3.6))
axs[0].plot(x, gelu(x), "k", lw=2, label="GELU")
axs[0].plot(x, np.maximum(x, 0), "--", label="ReLU")
axs[0].plot(x, hgelu(x), ":", label="h-GELU")
axs[0].plot(xq, y_int, "-", lw=1, label="i-GELU (integer kernel)")
axs[0].set_title("GELU and its approximations (cf. paper Fig. 2, left)", fontsize=9)
axs[0].legend(fontsize=8)
axs[1].plot(x, hgelu(x) - gelu(x), ":", label="h-GELU - GELU")
axs[1].plot(x, igelu_float(x) - gelu(x), label="i-GELU float polynomial - GELU")
axs[1].plot(xq, y_int - ref, lw=0.8, label="i-GELU integer kernel - GELU")
axs[1].set_title("error", fontsize=9)
axs[1].legend(fontsize=8)
for ax in axs:
    ax.grid(alpha=0.3)
    ax.set_xlabel("x")
show_fig(fig)

# %% [markdown]
# The paper's Table 1 compares GELU approximations by their **L2** and **L∞** distance from GELU
# over `[-4, 4]`. We measure both on our 8001-point grid (L2 here is the root mean square
# difference over the grid): compare with the table. i-GELU is several times closer to GELU than
# h-GELU, in both norms, and the integer kernel is as close as the float polynomial: quantizing
# to integers costs nothing visible at this scale.

# %%
candidates = {
    "ReLU": np.maximum(x, 0),
    "x·sigmoid(1.702x)": x / (1 + np.exp(-1.702 * x)),
    "h-GELU": hgelu(x),
    "i-GELU (float polynomial)": igelu_float(x),
}
g = gelu(x)
print(f"{'approximation':28s} {'L2 (rms)':>10s} {'L_inf':>10s}   on [-4, 4]")
dist = {}
for name, y in candidates.items():
    d = y - g
    dist[name] = (np.sqrt(np.mean(d**2)), np.abs(d).max())
d = y_int - ref
dist["i-GELU (integer, s=1e-4)"] = (np.sqrt(np.mean(d**2)), np.abs(d).max())
for name, (l2, linf) in dist.items():
    print(f"{name:28s} {l2:10.4f} {linf:10.4f}")

assert dist["i-GELU (float polynomial)"][0] < dist["h-GELU"][0] / 3
assert dist["i-GELU (float polynomial)"][1] < dist["h-GELU"][1] / 3
assert abs(dist["i-GELU (integer, s=1e-4)"][1] - dist["i-GELU (float polynomial)"][1]) < 1e-3

# %% [markdown]
# ## 2. i-exp
#
# Softmax subtracts the row maximum first, so `exp` is only ever needed for `x ≤ 0`. Write
# `x = -z · ln2 + r` with integer `z ≥ 0` and `r ∈ (-ln2, 0]`: `exp(x) = exp(r) >> z`. On the
# short interval `(-ln2, 0]`, `exp(r) ≈ L(r) = 0.3585 (r + 1.353)² + 0.344` (the paper's form;
# transformers uses `0.35815 r² + 0.96963 r + 1`, evaluated here). The integer version (see
# notebook 01) computes `z = floor(x / x0)` with `x0 = floor(-0.6931 / s)`, the polynomial on
# the remainder, and `poly · 2^(30 - z)` with scale `0.35815 · s² / 2^30`.
#
# We evaluate three things on `[-8, 0]`: the float approximation `2^-z · L(r)`, the integer
# i-exp (`exp_int` before any requantization, built from the kernel's own constants), and the
# 16-bit value `kernels.int_exp` hands to the softmax.

# %%
LN2 = -SOFTMAX_X0  # 0.6931, the constant the kernel uses


def iexp_float(x):
    z = np.floor(x / -LN2)
    r = x + z * LN2
    return (SOFTMAX_COEF[0] * (r**2 + SOFTMAX_COEF[1] * r + SOFTMAX_COEF[2])) * 2.0**-z


def iexp_int(x_real, s):
    # returns (x_q * s, exp_int * exp_scale, e16 * its real step): integer i-exp and the 16-bit act
    s32 = scale(s)
    x_q = np.rint(x_real / float(s32[0])).astype(np.int64)
    prm = softmax_params(dp, s32, scale(1.0))
    c_int = int(prm.c_int[0])
    # the 16-bit QuantAct is calibrated on exp_int (transformers' convention): exp(0) -> 2^15 - 1
    act = scale(c_int * 2.0**30 / (2**15 - 1))
    prm = softmax_params(dp, s32, act)
    xc = np.maximum(x_q, prm.x0_30)
    z = xc // prm.x0_int
    r = xc - prm.x0_int * z
    poly = (r + prm.b_int) * r + prm.c_int
    exp_real = poly * float(prm.exp_scale[0]) * 2.0 ** (30 - z)  # exact integers, scaled in float64
    rows = np.stack([x_q, np.zeros_like(x_q)], axis=-1)  # row max 0: the kernel sees x itself
    e16 = K.int_exp(dp, rows, prm).data[:, 0]
    step16 = float(act[0]) * float(prm.exp_scale[0])
    return x_q * float(s32[0]), exp_real, e16 * step16


x = np.linspace(-8.0, 0.0, 8001)
xq, e_int, e16 = iexp_int(x, 1e-3)
fig, axs = plt.subplots(1, 2, figsize=(11, 3.6))
axs[0].plot(x, np.exp(x), "k", lw=2, label="exp")
axs[0].plot(xq, e_int, "--", label="i-exp (integer)")
axs[0].set_title("exp and i-exp (cf. paper Fig. 2, right)", fontsize=9)
axs[0].legend(fontsize=8)
axs[1].plot(x, iexp_float(x) - np.exp(x), label="float approximation - exp")
axs[1].plot(xq, e_int - np.exp(xq), lw=0.8, label="integer i-exp - exp")
axs[1].plot(xq, e16 - np.exp(xq), lw=0.6, alpha=0.6, label="16-bit act - exp")
axs[1].set_title("error (s = 1e-3)", fontsize=9)
axs[1].legend(fontsize=8)
for ax in axs:
    ax.grid(alpha=0.3)
    ax.set_xlabel("x")
show_fig(fig)

err_float = np.abs(iexp_float(x) - np.exp(x)).max()
err_int = np.abs(e_int - np.exp(xq)).max()
err16 = np.abs(e16 - np.exp(xq)).max()
print(f"max |error| on [-8, 0]: float approximation {err_float:.2e}, integer i-exp {err_int:.2e},"
      f" after the 16-bit act {err16:.2e} (one 16-bit step is {1 / 32767:.1e})")
r = np.linspace(-LN2, 0, 2001)
rel_r = np.abs(iexp_float(r) / np.exp(r) - 1).max()
print(f"on (-ln2, 0] the polynomial's relative error is at most {rel_r:.2e};"
      " the shift 2^-z keeps that relative error for every x")
assert err_int < 2 * err_float and err_float < 3e-3

# %% [markdown]
# ## 3. Integer square root
#
# LayerNorm divides by `std = sqrt(var)`. I-BERT computes `isqrt(var) = floor(sqrt(var))` with
# integers only. The classic way is digit by digit (the restoring method, written out below):
# one result bit per step, each step a shift, an add and a compare, 31 steps for any
# `var < 2^62`. The library's `floor_sqrt` (what `kernels.int_layernorm` calls on the exact
# datapath) must give the same roots; it may compute them faster, as long as they are equal.
#
# transformers computes `floor(sqrt(var))` in **float32** instead. float32 has a 24-bit
# mantissa, so once `var ≥ 2^24` it can round `k² - 1` up to `k²` and return `k` instead of
# `k - 1`. LayerNorm's `var` is up to ~2^32 (notebook 01), right in that zone.

# %%
rng = np.random.default_rng(0)
k = rng.integers(1, 2**31 - 1, size=20000, dtype=np.int64)
n = np.concatenate([
    rng.integers(0, 2**62, size=20000, dtype=np.int64),  # anything
    k * k, k * k - 1, k * k + 1,  # around perfect squares
    np.arange(0, 5000, dtype=np.int64),
])


def isqrt_digit_by_digit(n):
    # floor(sqrt(n)) for int64 0 <= n < 2^62: one result bit per step, no float anywhere
    rem, root, bit = n.copy(), np.zeros_like(n), np.int64(1) << 60  # bit: the highest power of 4
    while bit > 0:
        take = rem >= root + bit
        rem = np.where(take, rem - (root + bit), rem)
        root = np.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


root = isqrt_digit_by_digit(n)
assert all(math.isqrt(int(v)) == int(r) for v, r in zip(n, root))
assert np.array_equal(dp.floor_sqrt(n), root)
print(f"digit-by-digit isqrt == math.isqrt == dp.floor_sqrt on all {n.size} inputs"
      " (random, k^2 - 1, k^2, k^2 + 1, 0..4999)")

# transformers' way: round var to float32, float sqrt, floor. Per octave of var, how often is it wrong?
def f32_isqrt(v):
    return np.floor(np.sqrt(v.astype(np.float32))).astype(np.int64)


octaves = np.arange(16, 35)
frac_random, frac_near_square = [], []
for b in octaves:
    v = rng.integers(2**b, 2 ** (b + 1), size=20000, dtype=np.int64)
    frac_random.append(np.mean(f32_isqrt(v) != dp.floor_sqrt(v)))
    kk = dp.floor_sqrt(v) + 1  # the next perfect square above v
    v2 = kk * kk - 1
    frac_near_square.append(np.mean(f32_isqrt(v2) != dp.floor_sqrt(v2)))
first_k = next(k for k in range(2, 2**17) if f32_isqrt(np.array([k * k - 1]))[0] != k - 1)
print(f"float32 floor(sqrt(k^2 - 1)) returns k instead of k - 1 from k = {first_k}"
      f" (k^2 - 1 = {first_k**2 - 1}, just above 2^24)")

fig, ax = plt.subplots(figsize=(8, 3.2))
ax.bar(octaves - 0.2, frac_random, width=0.4, label="random var in [2^b, 2^(b+1))")
ax.bar(octaves + 0.2, frac_near_square, width=0.4, label="var = k² - 1")
ax.set_xlabel("b (var in [2^b, 2^(b+1)))")
ax.set_ylabel("fraction wrong")
ax.set_yscale("log")
ax.set_ylim(1e-5, 2)
ax.set_title("transformers' float32 floor(sqrt(var)) vs the exact integer floor-sqrt", fontsize=9)
ax.legend(fontsize=8)
show_fig(fig)
i32 = list(octaves).index(32)
print(f"var in [2^32, 2^33): wrong for {frac_random[i32]:.2%} of random values, for every k^2 - 1")
assert frac_random[0] == 0 and frac_near_square[0] == 0 and frac_near_square[-1] == 1

# relative error of the floor itself: below 1 / sqrt(var)
nn = np.unique(np.logspace(0, 12, 400).astype(np.int64))
rel = (np.sqrt(nn) - dp.floor_sqrt(nn)) / np.sqrt(nn)
assert np.all(rel < 1 / np.sqrt(nn)) and np.all(rel >= 0)
print(f"floor costs a relative error below 1/sqrt(var): {rel[nn > 2**20].max():.1e} once var > 2^20")


# %% [markdown]
# ## 4. Integer softmax
#
# `kernels.int_softmax` = i-exp → 16-bit QuantAct → `factor = floor(2^32 / Σ e)` →
# `p = floor(e · factor / 2^24)`: probabilities as integers `0..256` with scale `2^-8`.
#
# We draw random score rows (16 keys, real scores with standard deviation 3), quantize them
# with scale `s`, and compare with the float softmax of the *same quantized* scores, so only
# the softmax's own error is measured. The floors make each row sum to a little under 256.

# %%
def int_softmax_rows(scores_real, s):
    s32 = scale(s)
    q = np.rint(scores_real / float(s32[0])).astype(np.int64)
    c_int = int(softmax_params(dp, s32, scale(1.0)).c_int[0])
    prm = softmax_params(dp, s32, scale(c_int * 2.0**30 / (2**15 - 1)))
    probs = K.int_softmax(dp, q, prm).data
    x = q * float(s32[0])
    ref = np.exp(x - x.max(-1, keepdims=True))
    return probs, ref / ref.sum(-1, keepdims=True)


scores_real = rng.normal(0.0, 3.0, size=(4000, 16))
probs, ref = int_softmax_rows(scores_real, 1e-3)
err = probs / 256 - ref
sums = probs.sum(-1)
print(f"max |p_int / 256 - softmax| = {np.abs(err).max():.4f}  (1/256 = {1 / 256:.4f});"
      f" mean |error| {np.abs(err).mean():.5f}")
print("row sums:", {int(v): int(c) for v, c in zip(*np.unique(sums, return_counts=True))})
assert np.abs(err).max() < 2.5 / 256 and sums.max() <= 256

fig, axs = plt.subplots(1, 2, figsize=(11, 3.4))
axs[0].plot(ref.ravel(), err.ravel(), ".", ms=1, alpha=0.3)
axs[0].axhline(-1 / 256, color="r", lw=0.8, ls="--", label="-1/256 (one floor step)")
axs[0].set_xlabel("float softmax probability")
axs[0].set_ylabel("p_int / 256 - float")
axs[0].legend(fontsize=8)
axs[0].set_title("integer softmax error (s = 1e-3)", fontsize=9)
axs[1].hist(sums, bins=np.arange(sums.min() - 0.5, 257.5), rwidth=0.8)
axs[1].set_xlabel("row sum of the probability integers")
axs[1].set_title("rows sum to a little under 256", fontsize=9)
show_fig(fig)

# %% [markdown]
# ## 5. What changes with the scale factor
#
# Every integer constant is `floor(constant / s)` or `floor(constant / s²)`. A small `s` means
# large integers and precise constants (and wider intermediates); a large `s` means coarse
# constants: at `s = 0.1`, `x0 = floor(-0.6931 / 0.1) = -7` stands for `ln2 ≈ 0.7`, and the
# i-GELU clip point `-1.769 / s'` is a handful of steps. We sweep the input scale and measure,
# for each kernel, the max error against the float function evaluated on the same quantized
# inputs, and the bits the i-GELU product needs.

# %%
scales = np.logspace(-5, -0.5, 19)
xg = np.linspace(-4.0, 4.0, 4001)
xe = np.linspace(-8.0, 0.0, 4001)
rows = rng.normal(0.0, 3.0, size=(500, 16))
gelu_err, exp_err, smax_err, gelu_bits = [], [], [], []
for s in scales:
    xq, y = igelu_int(xg, s)
    gelu_err.append(np.abs(y - gelu(xq)).max())
    s32 = scale(s)
    x_q = np.rint(xg / float(s32[0])).astype(np.int64)
    prod = K.int_gelu(dp, QTensor(x_q, s32), gelu_params(dp, s32)).data
    gelu_bits.append(int(np.abs(prod).max()).bit_length() + 1)
    xq, e_int, _ = iexp_int(xe, s)
    exp_err.append(np.abs(e_int - np.exp(xq)).max())
    p_int, p_ref = int_softmax_rows(rows, s)
    smax_err.append(np.abs(p_int / 256 - p_ref).max())

fig, axs = plt.subplots(1, 2, figsize=(11, 3.6))
axs[0].loglog(scales, gelu_err, "o-", label="i-GELU on [-4, 4]")
axs[0].loglog(scales, exp_err, "s-", label="i-exp on [-8, 0]")
axs[0].loglog(scales, smax_err, "^-", label="integer softmax (16 keys)")
axs[0].axhline(dist["i-GELU (float polynomial)"][1], color="C0", ls=":", lw=0.8)
axs[0].axhline(err_float, color="C1", ls=":", lw=0.8)
axs[0].set_xlabel("input scale s")
axs[0].set_ylabel("max |error|")
axs[0].set_title("error vs scale (dotted: the float approximations' own error)", fontsize=9)
axs[0].legend(fontsize=8)
axs[1].semilogx(scales, gelu_bits, "o-")
axs[1].axhline(32, color="r", ls="--", lw=0.8)
axs[1].set_xlabel("input scale s")
axs[1].set_ylabel("bits")
axs[1].set_title("bits of the i-GELU product x · (erf_q + one) on [-4, 4]", fontsize=9)
for ax in axs:
    ax.grid(alpha=0.3, which="both")
show_fig(fig)

print(f"{'s':>9s} {'i-GELU':>9s} {'i-exp':>9s} {'softmax':>9s} {'GELU bits':>9s}")
for row in zip(scales, gelu_err, exp_err, smax_err, gelu_bits):
    print(f"{row[0]:9.1e} {row[1]:9.4f} {row[2]:9.4f} {row[3]:9.4f} {row[4]:9d}")
small = scales < 1e-3
assert np.max(np.array(gelu_err)[small]) < 1.2 * dist["i-GELU (float polynomial)"][1]
assert gelu_err[-1] > 2 * gelu_err[0] and exp_err[-1] > 2 * exp_err[0]

# %% [markdown]
# **Reading the sweep.** For small scales the integer kernels are exactly as good as the float
# polynomials they implement: the error is the approximation's own (dotted lines). As `s` grows
# the constants become coarse and the error climbs. i-GELU breaks down completely above
# `s ≈ 3e-3`: its fixed `>> 14` (the `2^14` in `s_erf`) assumes a fine input scale, and at
# coarse scales it shifts away every bit of the erf polynomial. That is why I-BERT applies
# i-GELU to the int32 accumulator of the intermediate QuantLinear (`s ~ 1e-4`), never to an
# int8 value. The price is width: `x ~ 1/s` and `one ~ 1/s²`, so the product grows by about
# 3 bits per halving of `s`, and at the model's scales it needs more than 32 bits.

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
