"""Sweep grids: which datapath configurations a sweep runs.

A grid is a list of *points*; each point is a named hardware profile (``base``: ``generic``,
``arm``, ``tensor-core``, or any profile registered with
:func:`~ibert_ref.datapath.register_datapath`) and keyword overrides of its parameters
(``acc_bits``, ``overflow``, ``k_step``, ``requant``, ``exp``, ``gelu``, ``ln_var``, ``sqrt``,
``probs``; see docs/hardware.md).

Two ways to write one:

* a **product spec**: ``"base=generic acc_bits=16,20,24,32 overflow=wrap,saturate"`` is the
  Cartesian product of the listed values (``base`` defaults to ``generic``); several specs
  (``--grid`` repeated, or joined with ``|``) are concatenated;
* a **JSON (or YAML) file**: a list of entries, or ``{"grid": [...]}``; each entry is a dict of
  parameters whose list values expand as a product, so non-product lists are written entry by
  entry. An entry may carry ``"name"`` (its label in the table and plot).

Every point is built once on the client (:func:`parse_grid`), so an unknown parameter, a value
a profile rejects or an impossible width fails before any work starts. Points that resolve to
the same datapath parameters are kept once (the first label wins).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

# PARAMETERS: what a grid may set, in the column order of results.csv
from ..hardware.profiles import PARAMETERS

__all__ = ["GridError", "GridPoint", "parse_grid", "parse_spec", "load_grid_file", "PARAMETERS", "ALIASES"]


class GridError(ValueError):
    """A grid that cannot be run (raised before any work)."""



#: Spellings accepted for some values (the canonical name is what results.csv shows).
ALIASES = {"requant": {"rne": "ibert"}}

_INT_PARAMETERS = ("acc_bits", "k_step")


@dataclass(frozen=True)
class GridPoint:
    """One configuration: the profile ``base``, the overrides as written, and every resolved
    parameter (``params``). ``config_id`` names its result files."""

    base: str
    overrides: tuple  # ((key, value), ...) in PARAMETERS order
    params: tuple  # ((key, value), ...) every parameter, resolved
    name: Optional[str] = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if not self.overrides:
            return self.base
        return self.base + " " + " ".join(f"{k}={_show(v)}" for k, v in self.overrides)

    @property
    def config_id(self) -> str:
        blob = json.dumps({"base": self.base, "params": dict(self.params)}, sort_keys=True)
        return "cfg-" + hashlib.sha1(blob.encode()).hexdigest()[:12]

    def datapath_kwargs(self) -> dict:
        return dict(self.overrides)

    def to_json(self) -> dict:
        return {"base": self.base, "overrides": dict(self.overrides), "params": dict(self.params), "name": self.name}


def _show(v) -> str:
    return "none" if v is None else str(v)


def _profiles() -> tuple:
    """The registered hardware profiles (the datapaths a grid point may be based on)."""
    from ..datapath import DATAPATHS, available_datapaths

    return tuple(n for n in available_datapaths() if n not in DATAPATHS)


def _parse_value(key: str, raw, where: str):
    """One parameter value from a spec string or a JSON scalar."""
    if key in _INT_PARAMETERS:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() == "none"):
            if key == "acc_bits":
                raise GridError(f"{where}: acc_bits=none is not a width; give a number of bits in [2, 64]")
            return None
        if isinstance(raw, bool):
            raise GridError(f"{where}: {key}={raw!r} is not an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        try:
            return int(str(raw).strip())
        except ValueError:
            raise GridError(f"{where}: {key}={raw!r} is not an integer") from None
    if not isinstance(raw, str):
        raise GridError(f"{where}: {key}={raw!r} must be a string")
    value = raw.strip()
    return ALIASES.get(key, {}).get(value, value)


def parse_spec(spec: str) -> List[dict]:
    """A product spec (``"base=generic acc_bits=16,24 overflow=wrap,saturate"``; several
    joined with ``|``) -> entries ``{key: [values]}`` (not yet validated)."""
    entries = []
    for part in spec.split("|"):
        part = part.strip()
        if not part:
            raise GridError(f"--grid {spec!r}: empty product between '|'")
        entry: Dict[str, list] = {}
        for token in part.split():
            if "=" not in token:
                raise GridError(f"--grid: {token!r} is not KEY=VALUE[,VALUE...] (e.g. acc_bits=16,24)")
            key, _, values = token.partition("=")
            key = key.strip()
            if key == "profile":
                key = "base"
            if key in entry:
                raise GridError(f"--grid: {key} is given twice in {part!r}; list its values once, comma-separated")
            items = [v for v in values.split(",")]
            if not values or any(not v.strip() for v in items):
                raise GridError(f"--grid: {token!r} has an empty value")
            entry[key] = [v.strip() for v in items]
        entries.append(entry)
    return entries


def load_grid_file(path: str) -> List[dict]:
    """Entries from a JSON or YAML grid file (a list, or ``{"grid": [...]}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise GridError(f"--grid {path}: cannot read ({exc.strerror or exc})") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # noqa: PLC0415 - optional
        except ImportError:
            raise GridError(f"--grid {path}: YAML grid files need PyYAML (pip install pyyaml); or write it as JSON") from None
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GridError(f"--grid {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GridError(f"--grid {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(obj, dict) and set(obj) == {"grid"}:
        obj = obj["grid"]
    if not isinstance(obj, list) or not obj:
        raise GridError(f"--grid {path}: expected a non-empty list of entries (or {{\"grid\": [...]}})")
    entries = []
    for i, entry in enumerate(obj):
        if not isinstance(entry, dict) or not entry:
            raise GridError(f"--grid {path}: entry {i} must be a non-empty object of parameters")
        out = {}
        for key, value in entry.items():
            key = "base" if key == "profile" else key
            if key == "name":
                if not isinstance(value, str) or not value.strip():
                    raise GridError(f"--grid {path}: entry {i}: name must be a non-empty string")
                out[key] = value
                continue
            values = value if isinstance(value, list) else [value]
            if not values:
                raise GridError(f"--grid {path}: entry {i}: {key} has an empty list")
            out[key] = values
        entries.append(out)
    return entries


def _expand(entry: dict, where: str) -> List[GridPoint]:
    from ..datapath import make_datapath

    profiles = _profiles()
    name = entry.get("name")
    keys = [k for k in entry if k not in ("base", "name")]
    unknown = [k for k in keys if k not in PARAMETERS]
    if unknown:
        raise GridError(
            f"{where}: unknown parameter {unknown[0]!r}; a grid sets base and the profile parameters "
            + ", ".join(PARAMETERS)
        )
    bases = entry.get("base", ["generic"])
    for b in bases:
        if not isinstance(b, str) or b.strip() not in profiles:
            hint = " (the exact datapath is every sweep's baseline: it is always in the table)" if b == "exact" else ""
            raise GridError(f"{where}: unknown profile base={b!r}; expected one of {profiles}{hint}")
    value_lists = []
    for k in PARAMETERS:
        if k in entry:
            parsed = []
            for raw in entry[k]:
                v = _parse_value(k, raw, where)
                if v not in parsed:
                    parsed.append(v)
            value_lists.append([(k, v) for v in parsed])
    combos = list(itertools.product(*value_lists)) if value_lists else [()]
    if name is not None and (len(bases) > 1 or len(combos) > 1):
        raise GridError(f"{where}: 'name' labels a single point, but this entry expands to {len(bases) * len(combos)}")
    points = []
    for b in bases:
        b = b.strip()
        for combo in combos:
            overrides = tuple(combo)
            if dict(overrides).get("overflow") == "raise":
                raise GridError(
                    f"{where}: overflow=raise stops a run at its first overflow; a sweep counts overflows: "
                    "use overflow=exact (keeps exact values, records where they would not fit), wrap or saturate"
                )
            try:
                dp = make_datapath(b, **dict(overrides))
            except (ValueError, TypeError) as exc:
                shown = " ".join(f"{k}={_show(v)}" for k, v in overrides)
                raise GridError(f"{where}: base={b} {shown}: {exc}") from None
            params = getattr(dp, "parameters", None)
            if params is None:
                raise GridError(f"{where}: base={b} is not a hardware profile (it has no parameters to sweep)")
            resolved = dict(params())
            points.append(GridPoint(base=b, overrides=overrides, params=tuple((k, resolved.get(k)) for k in PARAMETERS),
                                    name=name))
    return points


def parse_grid(specs: Sequence[str], max_points: int = 10000) -> List[GridPoint]:
    """``--grid`` values (product specs or grid-file paths) -> validated, de-duplicated points."""
    if not specs:
        raise GridError("--grid is required (e.g. --grid \"base=generic acc_bits=16,24,32 overflow=wrap,saturate\")")
    points: List[GridPoint] = []
    seen = {}
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise GridError("--grid: empty grid")
        spec = spec.strip()
        is_file = spec.endswith((".json", ".yaml", ".yml")) or (os.path.isfile(spec) and "=" not in spec)
        if is_file:
            entries = [(e, f"--grid {spec}: entry {i}") for i, e in enumerate(load_grid_file(spec))]
        else:
            entries = [(e, f"--grid {spec!r}") for e in parse_spec(spec)]
        for entry, where in entries:
            for p in _expand(entry, where):
                key = p.params  # same parameters, same integers: run once
                if key in seen:
                    continue
                seen[key] = p
                points.append(p)
                if len(points) > max_points:
                    raise GridError(f"--grid: more than {max_points} configurations; split the sweep")
    return points
