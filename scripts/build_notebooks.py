#!/usr/bin/env python
"""Write the teaching notebooks ``notebooks/*.ipynb`` from the cell sources in this file.

The notebooks are generated, so edit them here, not in Jupyter: every notebook is a list of
``md(...)`` / ``code(...)`` cells below. Cells get stable ids (``<notebook>-<n>``) and no outputs,
so rebuilding an unchanged notebook gives the same bytes (``tests/test_notebooks.py`` checks
that the stored notebooks are exactly what this script writes).

Usage::

    python scripts/build_notebooks.py            # write notebooks/*.ipynb
    python scripts/build_notebooks.py --out DIR  # write them somewhere else
    python scripts/build_notebooks.py --check    # exit 1 if a stored notebook is out of date

Needs ``nbformat`` (the ``notebooks`` extra).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


def md(text: str):
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str):
    return ("code", textwrap.dedent(text).strip("\n"))


# =========================================================================================
# 01: one encoder layer, op by op
# =========================================================================================
NB01 = [
    md(
        """
        # 01 · One I-BERT encoder layer, integer by integer

        **I-BERT** (Kim et al., ICML 2021) runs a whole BERT/RoBERTa encoder in integer arithmetic.
        Every tensor is an integer `q` with a scale `s` known at compile time; the real value it
        stands for is `q · s`. Because the scales are constants, the run time only ever sees integers:

        * **GEMMs**: int8 × int8 products summed into **int32 accumulators**;
        * **requantization**: moving an integer to a new scale by a *dyadic* number `m / 2^e`
          (an integer multiply and a shift) instead of a float multiply;
        * **non-linear functions** (exp in softmax, GELU, the square root in LayerNorm) replaced by
          second-order polynomials and an integer square root that need only `+ × >>`.

        This notebook takes one sentence through **layer 0** of the bundled tiny I-BERT (hidden 64,
        4 heads, intermediate 256) and calls the kernels of `ibert_ref.kernels` **by hand**, one op at
        a time, with the integer constants compiled in `model.compiled.layers[0]`. At each step it
        prints a small slice, the integer range and the number of bits that range needs, and checks

        1. that the hand-called kernel gives the same integers as the model's own forward pass,
        2. against Hugging Face **transformers**' I-BERT (when it is installed), and
        3. against **float math** on the same (dequantized) input: how much did the integers lose?
        """
    ),
    code(
        """
        import io
        import math
        import time
        import warnings
        from fractions import Fraction

        import matplotlib

        matplotlib.use("Agg")  # headless backend: figures are rendered to PNG and displayed below
        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Image, display

        from ibert_ref import IBertModel, QTensor, Tokenizer, intops
        from ibert_ref import kernels as K
        from ibert_ref.data import default_model_path
        from ibert_ref.loading import load_checkpoint
        from ibert_ref.quant import bits_needed_signed

        np.set_printoptions(linewidth=110)
        t_start = time.perf_counter()


        def show_fig(fig):  # render with Agg and display as a PNG (works in Jupyter and headless)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            display(Image(buf.getvalue()))


        model = IBertModel.from_pretrained()  # the bundled tiny I-BERT, exact integer datapath
        tok = Tokenizer.from_pretrained()
        ckpt = load_checkpoint(default_model_path())  # the float weights, for the float-math checks
        dp = model.datapath  # the number system the kernels run on (here: exact int64 integers)
        p = model.compiled.layers[0]  # every integer constant of layer 0
        num_heads = model.config["num_attention_heads"]
        print(model)
        """
    ),
    md(
        """
        ## The input: one sentence, embedded

        The model's embeddings turn token ids into int8 vectors (the embeddings are an I-BERT
        block too, but this notebook starts at the encoder layer). We run the whole model once with
        `return_trace=True`: the trace holds, for every quantized module, the integers it produced,
        keyed by transformers' module names. Layer 0's input is the embeddings' int8 output.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        Three small helpers keep the rest readable: `show` prints a slice (token 1, the first
        channels), the range and the bits the range needs (two's complement); `check` compares our
        integers with the model's trace and with transformers; `vs_float` measures the error of the
        dequantized result `q · s` against a float reference computed from the same input.

        transformers' I-BERT *emulates* the integers with float32 tensors, and float32 holds an
        integer exactly only up to 2^24. So for the wide values (LayerNorm ~2^29, GELU ~2^33)
        transformers' integers are off in the low bits; `check` allows a relative difference of
        1e-4 there and says how large it was. Notebook 03 reproduces those float32 artefacts bit
        for bit.
        """
    ),
    code(
        """
        warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers
        try:  # transformers is the optional oracle (the `verify` extra)
            from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert
        except ImportError:
            hf_trace = None
            print("transformers not installed: the transformers checks are skipped")
        else:
            import transformers

            transformers.utils.logging.disable_progress_bar()
            hf_model = load_transformers_ibert(default_model_path())
            hf_trace = capture_transformers_trace(hf_model, ids, attention_mask=mask).trace
            print(f"captured {len(hf_trace)} quantized modules from transformers' I-BERT")

        LAYER = "encoder.layer.0."
        WIDTHS = {}  # step -> bits its range needs, collected for the recap


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
            return ckpt.tensor(LAYER + name).astype(np.float64)


        show("layer input x_i8", h.data, h.scale)
        """
    ),
    md(
        """
        ## 1. Q, K, V: int8 × int8 → int32 accumulators

        `QuantLinear` holds int8 weights (one scale per output channel `s_w[c]`) and an int32 bias
        quantized with the accumulator's scale `s_x · s_w[c]`:

        `acc[c] = Σ_k x_q[k] · W_q[c, k] + b_q[c]`, scale `s_x · s_w[c]`.

        No rounding at all: the sum is exact. Each product needs at most 15 bits, so 64 of them need
        at most 21; the int32 accumulator is far from full.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 2. Requantization: back to int8 with a dyadic multiplier

        The accumulator has scale `s_acc = s_x · s_w[c]`; the next op wants int8 with the calibrated
        scale `s_out`. So `q_out = round(acc · s_acc / s_out)`. The ratio is a compile-time constant,
        stored as a **dyadic number** `m / 2^e` with a 31-bit integer `m`:

        `q_out = clamp(rne(acc · m / 2^e), -128, 127)` — one integer multiply (here ~48 bits), one
        rounding shift. I-BERT (and transformers) round **half to even** (`rne`); the multiplier is
        per channel here, because the accumulator's scale is.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 3. Attention scores and i-exp

        Scores `S = Q_q · K_q^T` per head are int8 × int8 sums again (int32), with scale
        `s = s_q · s_k / √d_head` (the `1/√d` is folded into the scale, not computed).

        Softmax needs `exp`. I-BERT's **i-exp** subtracts the row maximum (so `x ≤ 0`), then writes
        `x = -z · ln2 + r` with an integer `z` and `r ∈ (-ln2, 0]`, so `exp(x) = 2^-z · exp(r)`.
        `exp(r)` on that short interval is a second-order polynomial, `0.3585 (r + 1.353)² + 0.344`
        in the paper, `a r² + b r + 1` with `a = 0.35815`, `b = 0.96963` in transformers' code, and
        `2^-z` is a shift. In integers, with the polynomial divided by `a` so its leading
        coefficient is 1 (constants precomputed from `s`):

        ```
        x     = max(S - rowmax(S), 30 · x0)          x0 = floor(-0.6931 / s)
        z     = floor(x / x0);  r = x - x0 · z        (quotient and remainder)
        poly  = (r + b') · r + c'                     b' = floor((b / a) / s), c' = floor((1 / a) / s²)
        exp   = poly · 2^(30 - z)                     scale a · s² / 2^30
        ```

        (`30 · x0` clamps scores more than 30 · ln2 below the maximum: their `exp` is below 2^-30.)
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        `exp_int` is far too wide to keep. A **16-bit QuantAct** requantizes it, like step 2:
        `e16 = clamp(rne(exp_int · m / 2^e), 0, 2^15 - 1)`. Its scale `act_scale` was calibrated
        (by transformers) on `exp_int` itself, so it is in units of `exp_int` and huge; the real
        value of `e16` is `e16 · act_scale · exp_scale`. The exact datapath never builds the wide
        `exp_int`: it folds the left shift `2^(30 - z)` into the right shift `e`.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 4. Softmax rows: integer normalisation

        Dividing each exponential by the row sum takes one integer division per row:
        `factor = floor(2^32 / Σ e16)`, then `p = floor(e16 · factor / 2^24)`, an 8-bit fraction
        (scale 2^-8). Floors only, so a row sums to a little less than 256. A row with one live key
        gives exactly 256, which needs 9 bits.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 5. Context, output projection and the residual

        `context = P · V` (probabilities 0..256 times int8 values) has scale `2^-8 · s_v` and is
        requantized to int8. The output projection is another QuantLinear. The residual add
        happens *inside a requantization*: the dense output and the layer input have different
        scales, so each gets its own dyadic multiplier onto the common 22-bit scale:

        `q = clamp(rne(acc · m₁ / 2^e₁) + rne(x · m₂ / 2^e₂), -2^21, 2^21 - 1)`.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 6. LayerNorm with an integer square root

        `LayerNorm(x) = (x - mean) / std · γ + β`. In integers, over the 64 channels of a token:

        ```
        mean   = rne(Σ x / D);   y = x - mean
        var    = Σ floor(y / 2^shift)²                 (shift: a calibrated guard so var < 2^32)
        std    = isqrt(var) · 2^shift                  isqrt: integer floor square root
        factor = floor(2^31 / std)
        out    = floor(y · factor / 2) + bias_q        scale √D / 2^30 · γ  (per channel)
        ```

        `isqrt` is computed digit by digit with shifts, adds and compares (`intops.isqrt_floor`):
        I-BERT's "known algorithm for the integer square root". γ goes into the output *scale*, β
        into the integer bias `bias_q`.
        """
    ),
    code(
        """
        lp = p.attn_layernorm
        xi = a22.data
        mean = intops.div_round_half_even(xi.sum(axis=-1, keepdims=True), xi.shape[-1])
        y = xi - mean
        var = ((y >> lp.shift) ** 2).sum(axis=-1, keepdims=True)
        root = intops.isqrt_floor(var)
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
        """
    ),
    md(
        """
        ## 7. The feed-forward block and i-GELU

        After the LayerNorm output is requantized to int8 (twice: `output_activation` then
        `pre_intermediate_act`), the intermediate QuantLinear widens to 256 channels and applies
        **i-GELU**. `GELU(x) = x · ½ (1 + erf(x / √2))`; I-BERT approximates `erf` on `[0, 1.769]` by
        `-0.2888 (min(|x|, 1.769) - 1.769)² + 1` (with the sign of `x`), which clips to ±1 outside.
        In integers, with `s' = s / √2` and per-channel constants `b = floor(-1.769 / s')`,
        `c = floor(-1 / 0.2888 / s'²)`:

        ```
        erf_q = sign(x) · ((min(|x|, -b) + b)² + c)
        erf_q = floor(erf_q / 2^14)                    (drops 14 bits before the last product)
        out   = x · (erf_q + one)                      one = floor(1 / s_erf); scale s · s_erf / 2
        ```

        The final product is the widest integer in I-BERT (~40 bits on roberta-base). `s_erf` is
        negative (it carries the `-0.2888`), so the output scale is negative too: a positive GELU
        value is stored as a negative integer.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 8. Down projection, second residual and LayerNorm: the layer output

        The rest repeats steps 1, 2, 5 and 6: int8 GELU output → QuantLinear (256 → 64) → 22-bit
        residual add with the block input → IntLayerNorm → int8. The int8 result is the next layer's
        input.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 9. The whole layer against float math

        Finally, the same layer in float64 — float weights, exact softmax, erf-GELU, float
        LayerNorm, no quantization anywhere — on the same dequantized input. The gap is what 8-bit
        quantization plus the integer approximations cost on this (random, calibrated) model.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## Recap: the widths of one layer

        Every step above recorded how many bits (two's complement) its integers needed on this
        sentence. int8 activations, int32 accumulators that never come near 32 bits, a 16-bit
        exponential, a 22-bit residual, LayerNorm's sum of squares near 2^31 (its calibrated `shift`
        keeps it below 2^32), and two values
        that do **not** fit 32 bits: the i-exp `exp_int` (before its requantization) and the i-GELU
        product. These are what a hardware datapath has to plan for (notebook 03).
        """
    ),
    code(
        """
        for name, bits in WIDTHS.items():
            print(f"{name:36s} {bits:3d} bits  {'#' * bits}{'   > 32 bits' if bits > 32 else ''}")
        print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
        """
    ),
    md(
        """
        **In short.** Every step of the layer was `+`, `×`, a comparison or a shift on integers, with the
        scales used only at compile time to build `m, e`, `b, c`, `x0`, `one` and `bias_q`. Widths:
        int8 activations, int32 accumulators, a 16-bit exponential, a 22-bit residual, ~31-bit
        LayerNorm outputs and a GELU product wider than 32 bits. Notebook 02 measures the
        approximations themselves; notebook 03 runs the same layer on other number systems.
        """
    ),
]

# =========================================================================================
# 02: the non-linear kernels against their float counterparts
# =========================================================================================
NB02 = [
    md(
        """
        # 02 · I-BERT's non-linear kernels against float

        GEMMs are easy in integers; the hard part of a Transformer is its non-linear functions.
        I-BERT replaces each one with something that needs only integer `+ × >>` and a comparison:

        | float op | I-BERT kernel | idea |
        |---|---|---|
        | `exp` (softmax) | **i-exp** | `exp(x) = 2^-z · exp(r)`, `r ∈ (-ln2, 0]`: a polynomial and a shift |
        | `GELU` | **i-GELU** | `erf` ≈ 2nd-order polynomial on `[0, 1.769]`, clipped to ±1 beyond |
        | `sqrt` (LayerNorm) | **integer sqrt** | digit-by-digit floor square root |
        | `softmax` | **integer softmax** | i-exp, then one integer division per row |

        This notebook runs the library's kernels (`ibert_ref.kernels`, exact integer datapath) over a
        dense grid of inputs, measures their error against the float functions, reproduces the
        paper's comparison of GELU approximations (Table 1 and Figure 2 of Kim et al., 2021) by our
        own measurement, and shows what changes with the **scale factor** of the input.

        The integer kernels take integers `q` and a scale `s`; the constants they need (`b`, `c`,
        `x0`, ...) are computed from `s` at compile time by `ibert_ref.compile`, exactly as in the
        model.
        """
    ),
    code(
        """
        import io
        import math
        import time

        import matplotlib

        matplotlib.use("Agg")  # headless backend: figures are rendered to PNG and displayed below
        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Image, display

        from ibert_ref import QTensor, intops
        from ibert_ref import kernels as K
        from ibert_ref.compile import GELU_COEF, SOFTMAX_COEF, SOFTMAX_X0, gelu_params, softmax_params
        from ibert_ref.datapath import ExactDatapath

        np.set_printoptions(linewidth=110)
        t_start = time.perf_counter()


        def show_fig(fig):  # render with Agg and display as a PNG (works in Jupyter and headless)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            display(Image(buf.getvalue()))
        dp = ExactDatapath()
        F32 = np.float32
        erf = np.vectorize(math.erf, otypes=[float])


        def gelu(x):
            return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


        def scale(v):  # a per-tensor float32 scale, shape (1,)
            return np.array([v], dtype=F32)
        """
    ),
    md(
        """
        ## 1. i-GELU

        `GELU(x) = x · ½ (1 + erf(x / √2))`. I-BERT's polynomial for `erf`:

        `L(x) = sign(x) · [a (min(|x|, -b) + b)² + 1]` with `a = -0.2888`, `b = -1.769`,

        so `i-GELU(x) = x · ½ (1 + L(x / √2))`. Below: the float polynomial (the approximation alone)
        and the integer kernel `kernels.int_gelu` at an input scale typical of the model
        (`s = 1e-4`, i.e. the int32 accumulator of a QuantLinear), against GELU and two cheaper
        approximations the paper compares with: **ReLU** and **h-GELU** `x · ReLU6(1.702 x + 3) / 6`.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        The paper's Table 1 compares GELU approximations by their **L2** and **L∞** distance from GELU
        over `[-4, 4]`. We measure both on our 8001-point grid (L2 here is the root mean square
        difference over the grid): compare with the table. i-GELU is several times closer to GELU than
        h-GELU, in both norms, and the integer kernel is as close as the float polynomial: quantizing
        to integers costs nothing visible at this scale.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 2. i-exp

        Softmax subtracts the row maximum first, so `exp` is only ever needed for `x ≤ 0`. Write
        `x = -z · ln2 + r` with integer `z ≥ 0` and `r ∈ (-ln2, 0]`: `exp(x) = exp(r) >> z`. On the
        short interval `(-ln2, 0]`, `exp(r) ≈ L(r) = 0.3585 (r + 1.353)² + 0.344` (the paper's form;
        transformers uses `0.35815 r² + 0.96963 r + 1`, evaluated here). The integer version (see
        notebook 01) computes `z = floor(x / x0)` with `x0 = floor(-0.6931 / s)`, the polynomial on
        the remainder, and `poly · 2^(30 - z)` with scale `0.35815 · s² / 2^30`.

        We evaluate three things on `[-8, 0]`: the float approximation `2^-z · L(r)`, the integer
        i-exp (`exp_int` before any requantization, built from the kernel's own constants), and the
        16-bit value `kernels.int_exp` hands to the softmax.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 3. Integer square root

        LayerNorm divides by `std = sqrt(var)`. I-BERT computes `isqrt(var) = floor(sqrt(var))` with
        integers only; `intops.isqrt_floor` does it digit by digit (one result bit per step: a
        shift, an add, a compare), 31 steps for any `var < 2^62`.

        transformers computes `floor(sqrt(var))` in **float32** instead. float32 has a 24-bit
        mantissa, so once `var ≥ 2^24` it can round `k² - 1` up to `k²` and return `k` instead of
        `k - 1`. LayerNorm's `var` is up to ~2^32 (notebook 01), right in that zone.
        """
    ),
    code(
        """
        rng = np.random.default_rng(0)
        k = rng.integers(1, 2**31 - 1, size=20000, dtype=np.int64)
        n = np.concatenate([
            rng.integers(0, 2**62, size=20000, dtype=np.int64),  # anything
            k * k, k * k - 1, k * k + 1,  # around perfect squares
            np.arange(0, 5000, dtype=np.int64),
        ])
        root = intops.isqrt_floor(n)
        assert all(math.isqrt(int(v)) == int(r) for v, r in zip(n, root))
        print(f"isqrt_floor == math.isqrt on all {n.size} inputs (random, k^2 - 1, k^2, k^2 + 1, 0..4999)")

        # transformers' way: round var to float32, float sqrt, floor. Per octave of var, how often is it wrong?
        def f32_isqrt(v):
            return np.floor(np.sqrt(v.astype(np.float32))).astype(np.int64)


        octaves = np.arange(16, 35)
        frac_random, frac_near_square = [], []
        for b in octaves:
            v = rng.integers(2**b, 2 ** (b + 1), size=20000, dtype=np.int64)
            frac_random.append(np.mean(f32_isqrt(v) != intops.isqrt_floor(v)))
            kk = intops.isqrt_floor(v) + 1  # the next perfect square above v
            v2 = kk * kk - 1
            frac_near_square.append(np.mean(f32_isqrt(v2) != intops.isqrt_floor(v2)))
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
        rel = (np.sqrt(nn) - intops.isqrt_floor(nn)) / np.sqrt(nn)
        assert np.all(rel < 1 / np.sqrt(nn)) and np.all(rel >= 0)
        print(f"floor costs a relative error below 1/sqrt(var): {rel[nn > 2**20].max():.1e} once var > 2^20")
        """
    ),
    md(
        """
        ## 4. Integer softmax

        `kernels.int_softmax` = i-exp → 16-bit QuantAct → `factor = floor(2^32 / Σ e)` →
        `p = floor(e · factor / 2^24)`: probabilities as integers `0..256` with scale `2^-8`.

        We draw random score rows (16 keys, real scores with standard deviation 3), quantize them
        with scale `s`, and compare with the float softmax of the *same quantized* scores, so only
        the softmax's own error is measured. The floors make each row sum to a little under 256.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 5. What changes with the scale factor

        Every integer constant is `floor(constant / s)` or `floor(constant / s²)`. A small `s` means
        large integers and precise constants (and wider intermediates); a large `s` means coarse
        constants: at `s = 0.1`, `x0 = floor(-0.6931 / 0.1) = -7` stands for `ln2 ≈ 0.7`, and the
        i-GELU clip point `-1.769 / s'` is a handful of steps. We sweep the input scale and measure,
        for each kernel, the max error against the float function evaluated on the same quantized
        inputs, and the bits the i-GELU product needs.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        **Reading the sweep.** For small scales the integer kernels are exactly as good as the float
        polynomials they implement: the error is the approximation's own (dotted lines). As `s` grows
        the constants become coarse and the error climbs. i-GELU breaks down completely above
        `s ≈ 3e-3`: its fixed `>> 14` (the `2^14` in `s_erf`) assumes a fine input scale, and at
        coarse scales it shifts away every bit of the erf polynomial. That is why I-BERT applies
        i-GELU to the int32 accumulator of the intermediate QuantLinear (`s ~ 1e-4`), never to an
        int8 value. The price is width: `x ~ 1/s` and `one ~ 1/s²`, so the product grows by about
        3 bits per halving of `s`, and at the model's scales it needs more than 32 bits.
        """
    ),
    code(
        """
        print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
        """
    ),
]

# =========================================================================================
# 03: the same layer on different datapaths; widths; overflow
# =========================================================================================
NB03 = [
    md(
        """
        # 03 · One layer, several number systems: datapaths, widths and overflow

        The kernels of `ibert_ref.kernels` are written once, as I-BERT's algorithm. Every step
        whose result depends on *how numbers are held* (a division, a floor, a GEMM, a rounding) is
        a call on a **datapath**. Changing the datapath changes the number system under the same
        algorithm:

        * **`exact`**: int64 integers, exact floors and roundings, each layer receives its true input
          scale. What I-BERT means.
        * **`transformers`**: Hugging Face's I-BERT, reproduced bit for bit. It holds the integers as
          float32 tensors (exact only up to 2^24), recovers them by `x / s` without rounding, runs
          the GEMMs in float32, and hands every layer the *embeddings'* scale instead of its own
          (the stale scale, transformers#26738).
        * **hardware profiles** (ARM, Tensor Core, ...) registered in `ibert_ref.hardware`, when
          present: integer widths and overflow rules of real instructions.

        This notebook runs the same layer under each, shows where they differ and why, counts the
        bits every op needs (the **width census**), and provokes overflows on purpose.
        """
    ),
    code(
        """
        import io
        import time
        import warnings

        import matplotlib

        matplotlib.use("Agg")  # headless backend: figures are rendered to PNG and displayed below
        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Image, display

        from ibert_ref import IBertModel, QTensor, Tokenizer
        from ibert_ref import kernels as K
        from ibert_ref.datapath import available_datapaths
        from ibert_ref.hardware import IntegerOverflowError, int_matmul, wrap
        from ibert_ref.model import Tracer, layer_forward
        from ibert_ref.quant import bits_needed_signed

        np.set_printoptions(linewidth=110)
        t_start = time.perf_counter()


        def show_fig(fig):  # render with Agg and display as a PNG (works in Jupyter and headless)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            display(Image(buf.getvalue()))


        print("datapaths:", available_datapaths())
        tok = Tokenizer.from_pretrained()
        enc = tok(["The capital of France is Paris."])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        exact = IBertModel.from_pretrained(datapath="exact")
        tfm = IBertModel.from_pretrained(datapath="transformers")  # float32 GEMMs in NumPy
        out_exact = exact(ids, attention_mask=mask, return_trace=True)
        out_tfm = tfm(ids, attention_mask=mask, return_trace=True)
        num_heads = exact.config["num_attention_heads"]
        """
    ),
    md(
        """
        ## 1. The same layer, the same int8 input

        We feed layer 0 of each model the same int8 input (the embeddings' output) and trace every
        op. Both datapaths use the same integer constants for layer 0, so every difference below
        comes from the number system alone.
        """
    ),
    code(
        """
        def run_layer(model, i, x_i8, s_in):
            # Run layer i of `model` on the int8 input x_i8 (true scale s_in); returns its trace.
            dp = model.datapath
            emb_scale = model.compiled.embeddings.output_activation.out_scale
            h = dp.layer_input(dp.emit(x_i8.astype(np.int64), s_in), emb_scale)  # transformers: stale scale
            rec = Tracer(dp)
            layer_forward(dp, model.compiled.layers[i], h, mask, num_heads, rec, f"layer{i}.")
            return rec.values, rec.meta, h


        def compare(tr_a, tr_b, meta, title):
            print(f"{title}\\n{'op':42s} {'bits':>4s} {'equal':>11s} {'max|diff|':>10s} {'max|value|':>11s}")
            rows = []
            for name, qa in tr_a.items():
                qa, qb = qa.astype(np.int64), tr_b[name].astype(np.int64)
                diff = np.abs(qa - qb)
                need = bits_needed_signed(qa.min(), qa.max())
                rows.append((name, int(np.count_nonzero(diff == 0)), qa.size, int(diff.max())))
                print(f"{name.split('.', 1)[1]:42s} {need:4d} {rows[-1][1]:5d}/{qa.size:<5d} {diff.max():10d}"
                      f" {np.abs(qa).max():11d}")
            return rows


        x0_i8 = out_exact.trace["embeddings.output_activation"]
        s0 = exact.compiled.embeddings.output_activation.out_scale
        tr_e, meta_e, _ = run_layer(exact, 0, x0_i8, s0)
        tr_t, _, _ = run_layer(tfm, 0, x0_i8, s0)
        rows0 = compare(tr_e, tr_t, meta_e, "layer 0, exact vs transformers, same int8 input")
        """
    ),
    md(
        """
        Reading the table: every int8 and int32 value agrees. The differences are in the ops whose
        integers exceed float32's 24-bit mantissa, the IntLayerNorm outputs (~2^29) and the i-GELU
        product (~2^33): transformers rounds them to float32, so their low bits differ, by a relative
        1e-7..1e-5. A 16-bit softmax value can differ by one where a float32 division lands on the
        other side of a rounding boundary. After requantization to int8 these differences almost
        always vanish.

        ## 2. Layer 1: the stale scale

        From layer 1 on, transformers passes the embeddings' scale to every layer instead of the
        previous layer's output scale. The layer then recovers its input as `x · s_true / s_stale`,
        which is not an integer, its bias is quantized with the wrong scale, and the int32
        "accumulators" are off by the ratio of the two scales.
        """
    ),
    code(
        """
        x1_i8 = out_exact.trace["encoder.layer.0.output.output_activation"]
        s1 = exact.compiled.layers[0].output_activation.out_scale
        tr_e1, meta_e1, _ = run_layer(exact, 1, x1_i8, s1)
        tr_t1, _, h_t1 = run_layer(tfm, 1, x1_i8, s1)
        recovered = tfm.datapath.recover(h_t1)  # what transformers' QuantLinear computes on
        frac = np.abs(recovered - np.rint(recovered))
        print(f"true input scale {s1[0]:.6g}, stale scale {h_t1.scale[0]:.6g} (ratio {s1[0] / h_t1.scale[0]:.4f})")
        print(f"recovered input x / s_stale: {recovered[0, 1, :5]} ...  fractional parts up to {frac.max():.3f}")
        rows1 = compare(tr_e1, tr_t1, meta_e1, "\\nlayer 1, exact vs transformers, same int8 input")
        """
    ),
    md(
        """
        ## 3. The whole model, and the transformers oracle

        Over the full model the differences compound layer after layer. Below: the fraction of int8
        activation codes that differ between the two datapaths, per layer. Then the check that our
        `transformers` datapath *is* transformers: with `gemm="torch"` (torch's own float32 GEMMs,
        verification only) every traced integer equals the one captured from transformers' I-BERT.
        NumPy's float32 GEMMs sum in another order, so with `gemm="numpy"` a few accumulators from
        layer 1 on differ by one.
        """
    ),
    code(
        """
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
            from ibert_ref.data import default_model_path
            from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert
        except ImportError:
            print("transformers not installed: oracle check skipped")
        else:
            import transformers

            transformers.utils.logging.disable_progress_bar()
            hf = capture_transformers_trace(load_transformers_ibert(default_model_path()), ids, attention_mask=mask)
            out_torch = IBertModel.from_pretrained(datapath="transformers", gemm="torch")(
                ids, attention_mask=mask, return_trace=True)
            for label, tr in (("gemm='torch'", out_torch.trace), ("gemm='numpy'", out_tfm.trace)):
                bad = [n for n in hf.trace if not np.array_equal(hf.trace[n], tr[n])]
                print(f"transformers datapath, {label}: {len(hf.trace) - len(bad)}/{len(hf.trace)} traced ops"
                      f" bit-exact with transformers' I-BERT" + (f" (first difference: {bad[0]})" if bad else ""))
            assert all(np.array_equal(hf.trace[n], out_torch.trace[n]) for n in hf.trace)
            assert np.array_equal(hf.last_hidden_state, out_torch.last_hidden_state)
        """
    ),
    md(
        """
        ## 4. The width census

        For hardware the question is: how many bits does each op's output need? The exact
        datapath's trace holds the true integers, so the census is a min/max per op, turned into a
        two's-complement width (`quant.bits_needed_signed`), next to the width the op is declared
        with (the QuantAct bit widths of I-BERT, 32 for accumulators and LayerNorm). Over all four
        layers, for this sentence:
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        `softmax` needs 9 bits signed: probabilities are `0..256`, 256 when one key takes the whole
        row (here the maximum is below 256, but 255 already needs 9 signed bits). The i-GELU
        product needs more than 32 bits even on this tiny model; the GEMM accumulators
        (`query`, `dense`, ...) need 17-18 bits of their 32.

        ## 5. Hardware profiles

        Hardware datapaths (ARM SDOT/SMMLA with int32 wrap-around, Tensor Core IMMA with optional
        saturation, gemmlowp-style requantization) register themselves with `make_datapath` when
        `ibert_ref.hardware.profiles` is installed. Every registered profile runs the same sentence
        here and is compared, op by op, with the exact datapath.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        ## 6. Accumulators: wrap, saturate, and an overflow on purpose

        `hardware.int_matmul` models a GEMM accumulator: int8 products summed into an `acc_bits`
        register a few `k` at a time (`k_step`: 4 for SDOT, 32 for an IMMA `m16n8k32`), with what
        happens on overflow: `wrap` (two's complement, ARM and IMMA without `.satfinite`),
        `saturate` (IMMA `.satfinite`, once per k-chunk), `raise`, or `exact`. Every chunk where the
        register leaves its range is reported as an `OverflowEvent`.

        First, layer 0's query projection through a real int32 accumulator: nothing overflows, and
        the result equals the exact accumulator. An int8 GEMM cannot overflow int32 unless
        `K · 128 · 127 ≥ 2^31`, i.e. `K > 132,104`.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        Now a hypothetical **16-bit accumulator**, too narrow for these sums. `wrap` keeps the low 16
        bits (the result is the exact sum modulo 2^16, whatever the order), `saturate` clamps after
        every 8-wide chunk, and because saturating addition is not associative, summing the chunks
        in another order gives another answer.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        And an int32 overflow provoked on purpose: a dot product just longer than the safe `K`, with
        the worst-case operands `-128 × -127`.
        """
    ),
    code(
        """
        k_long = (2**31 - 1) // (128 * 127) + 1000
        a_bad = np.full((1, k_long), -128, dtype=np.int8)
        b_bad = np.full((k_long, 1), -127, dtype=np.int8)
        for mode in ("wrap", "saturate"):
            r = int_matmul(a_bad, b_bad, acc_bits=32, overflow=mode, k_step=32)
            print(f"K = {k_long}, {mode:8s}: exact {int(r.exact_i64[0, 0])}, int32 register holds {int(r.values[0, 0])}"
                  f"  ({len(r.events)} overflowing chunks, the first at k {r.events[0].k_start}..{r.events[0].k_stop})")
        """
    ),
    md(
        """
        ## 7. What really overflows in I-BERT: outside the GEMMs

        The census showed it: the i-GELU product `x · (erf_q + one)` needs more than 32 bits. If a
        datapath held it in an int32 register with wrap-around, what would happen downstream? We
        wrap layer 0's GELU output to 32 bits and requantize it to int8 as the model does.
        """
    ),
    code(
        """
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
        """
    ),
    md(
        """
        A wrapped GELU product is not a small error. The widest products belong to the large
        positive pre-activations (where GELU(x) ≈ x; the output scale is negative, so they are
        large *negative* integers); wrapped to 32 bits they change sign, so a strongly active unit
        comes out negative. A hardware
        datapath must give this product ~40 bits (roberta-base), or compute it differently (split
        the product, shift before multiplying). The int8 GEMMs, by contrast, are safe in int32.
        """
    ),
]


NOTEBOOKS = {
    "01_one_layer": NB01,
    "02_nonlinear_kernels": NB02,
    "03_datapaths": NB03,
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    for i, (kind, source) in enumerate(cells):
        cell_id = f"{name[:2]}-{i:02d}"
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(source, id=cell_id))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source, id=cell_id))
    nbformat.validate(nb)
    return nb


def render(nb) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=NOTEBOOK_DIR, help="folder to write the .ipynb files into")
    ap.add_argument("--check", action="store_true", help="only compare with the stored notebooks; exit 1 if stale")
    args = ap.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = render(build(name, cells))
        path = args.out / f"{name}.ipynb"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run scripts/build_notebooks.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
