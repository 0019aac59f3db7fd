"""Argument checks shared by the subcommands: argparse ``type=`` functions (so a bad value is
reported by argparse naming its option: ``argument --layers: ...``), the help formatter, and
checks of text that came in through ``argv`` (invalid UTF-8 arrives as lone surrogates)."""

from __future__ import annotations

import argparse
import math
import re

from ..input_files import printable

__all__ = [
    "HelpFormatter", "ArgError", "bounded_int", "bounded_float", "nonempty", "model_name", "input_text",
    "layer_list", "profile_option", "profile_option_names", "check_utf8", "printable",
]


class ArgError(ValueError):
    """A value given on the command line that cannot be used (the message names the option)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` once: not when the help already says what the default is, and not for
    ``None`` / ``False`` / empty defaults (flags and options whose absence means 'not given')."""

    def _get_help_string(self, action):
        text = action.help or ""
        if re.search(r"\bdefault\b", text) or action.default in (None, False, [], (), argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def check_utf8(text: str, what: str) -> str:
    """Refuse text that is not valid UTF-8: argv bytes that did not decode (lone surrogates
    ``\\udc80``-``\\udcff``) or other lone surrogates. Returns ``text``."""
    for i, ch in enumerate(text):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            if 0xDC80 <= ord(ch) <= 0xDCFF:
                why = f"byte 0x{ord(ch) - 0xDC00:02x} at character {i}"
            else:
                why = f"lone surrogate U+{ord(ch):04X} at character {i}"
            raise ArgError(f"{what} is not valid UTF-8 ({why}): '{printable(text)}'")
    return text


def _type(fn, name: str):
    fn.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return fn


def nonempty(what: str = "value"):
    """A string that is not empty or blank."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"empty {what}")
        return text

    return _type(parse, what)


def model_name(text: str) -> str:
    """``--model``: a folder or a Hub id, not empty (an empty value used to mean the bundled model)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty model name; leave --model out for the bundled tiny model")
    return text


def input_text(text: str) -> str:
    """A text to tokenize: valid UTF-8, not empty."""
    try:
        check_utf8(text, "the text")
    except ArgError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not text.strip():
        raise argparse.ArgumentTypeError("empty text: give at least one character to tokenize")
    return text


def bounded_int(lo=None, hi=None, what: str = "integer"):
    """An integer in ``[lo, hi]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{printable(text)!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {_range(lo, hi)}")
        return value

    return _type(parse, what)


def bounded_float(lo=None, hi=None, what: str = "number", also=(), lo_open: bool = False):
    """A finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``) or one of the values ``also``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{printable(text)!r} is not a number") from None
        if value in also:
            return value
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        if not math.isfinite(value) or low_bad or (hi is not None and value > hi):
            extra = "".join(f" or {a:g}" for a in also)
            left = "(" if lo_open else "["
            span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: expected {span}{extra}")
        return value

    return _type(parse, what)


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def layer_list(embeddings: bool = False):
    """``--layers``: comma-separated layer numbers (and ``emb`` when ``embeddings``) -> a set
    (``-1`` stands for the embeddings). Whether the model has those layers is checked later."""

    def parse(text: str) -> frozenset:
        out = set()
        for item in text.split(","):
            item = item.strip()
            if embeddings and item in ("emb", "embeddings"):
                out.add(-1)
                continue
            if not re.fullmatch(r"\d{1,6}", item):
                hint = ", e.g. '0' or '0,3'" + (" ('emb' = the embeddings)" if embeddings else "")
                raise argparse.ArgumentTypeError(f"{printable(item)!r} is not a layer number{hint}")
            out.add(int(item))
        return frozenset(out)

    return _type(parse, "layer list")


def check_layers(layers, num_layers: int, option: str = "--layers") -> None:
    """Refuse layer numbers the model does not have (they used to print nothing)."""
    if layers is None:
        return
    missing = sorted(n for n in layers if n >= num_layers)
    if missing:
        raise ArgError(f"{option}: the model has {num_layers} encoder layer(s) (0-{num_layers - 1}); "
                       f"no layer {', '.join(map(str, missing))}")


# ---------------------------------------------------------------------------------------
# --profile-option KEY=VALUE
def _profile_values():
    """Option name -> its allowed values (a tuple) or a description of them (a string). Keyword
    parameters of ``HardwareDatapath`` that are not listed here are accepted with any value and
    checked by the datapath itself."""
    import inspect

    from ..hardware import profiles as P
    from ..hardware import x86

    params = [n for n, q in inspect.signature(P.HardwareDatapath.__init__).parameters.items()
              if n not in ("self", "name") and q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
    known = {
        "acc_bits": "an integer from 2 to 64",
        "k_step": "a positive integer or none",
        "overflow": P.OVERFLOW_POLICIES,
        "requant": tuple(P.REQUANT_MODES),
        "exp": P.EXP_VARIANTS,
        "gelu": P.GELU_VARIANTS,
        "ln_var": P.LN_VAR_VARIANTS,
        "sqrt": P.SQRT_VARIANTS,
        "probs": P.PROBS_VARIANTS,
        "madd": tuple(x86.MADD_VARIANTS),  # x86-vnni only
    }
    return {**known, **{n: None for n in params if n not in known}}


def profile_option_names() -> tuple:
    return tuple(_profile_values())


def profile_option(text: str) -> str:
    """``KEY=VALUE`` with a known KEY and a valid VALUE; returns the normalised ``key=value``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{printable(text)!r} is not KEY=VALUE, e.g. acc_bits=24")
    key, value = (s.strip() for s in text.split("=", 1))
    values = _profile_values()
    if key not in values:
        raise argparse.ArgumentTypeError(f"unknown profile option {printable(key)!r}; valid options: "
                                         f"{', '.join(values)}")
    allowed = values[key]
    if allowed is None:
        return f"{key}={value}"
    if key in ("acc_bits", "k_step"):
        if key == "k_step" and value.lower() == "none":
            return "k_step=none"
        lo, hi = (2, 64) if key == "acc_bits" else (1, None)
        if not re.fullmatch(r"\d{1,6}", value) or int(value) < lo or (hi is not None and int(value) > hi):
            raise argparse.ArgumentTypeError(f"{key}={printable(value)}: {key} must be {allowed}")
        return f"{key}={int(value)}"
    if value not in allowed:
        raise argparse.ArgumentTypeError(f"{key}={printable(value)}: {key} must be one of {', '.join(allowed)}")
    return f"{key}={value}"
