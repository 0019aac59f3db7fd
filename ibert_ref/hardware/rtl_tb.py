"""Run the Verilog in ``rtl/`` against a folder of golden vectors (``ibert-ref vectors``).

The hardware flow, step by step (docs/hardware.md, "RTL flow"):

1. ``ibert-ref vectors --text "..." --out vectors/`` writes the golden vectors;
2. ``python -m ibert_ref.hardware.rtl_tb vectors/ [--layers 0] [--round-half-up]`` compiles
   ``rtl/tb_requant.v`` and ``rtl/tb_iexp.v`` with Icarus Verilog, writes each requantization
   op's per-channel multipliers as ``$readmemh`` files (``m``: 33-bit two's complement, ``e``:
   8 bits) into the build folder, and runs one ``vvp`` per op with the plusargs that name the
   op's hex files and constants (printed with ``--print-commands``, to re-run by hand);
3. every op prints ``PASS <op>: N elements bit-equal`` or its first mismatch and
   ``FAIL <op>: K of N elements differ``; the exit code is 1 if any op fails.

Ops covered: every ``requantize`` op (QuantAct: 8/16/22-bit outputs, with or without the
residual branch) and every ``int_exp`` op (IntSoftmax's i-exp and its 16-bit requantization).
Nothing is written into the vectors folder.

:func:`write_tie_vectors` writes a crafted vectors folder (same format) whose requantization
inputs hit exact ties ``z * m / 2^e = k + 1/2``, where round half to even and the shortcut
``(z * m + 2^(e-1)) >> e`` differ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..vectors import MANIFEST_NAME, write_hex

#: rtl/ of the source tree (the Verilog is not part of the installed package).
RTL_DIR = Path(__file__).resolve().parents[2] / "rtl"
RTL_SOURCES = ("ibert_requant.v", "ibert_iexp.v")
TESTBENCHES = {"requantize": "tb_requant", "int_exp": "tb_iexp"}
M_BITS, E_BITS = 33, 8


@dataclass
class OpResult:
    """One op run through its testbench: ``passed``, the PASS/FAIL line and the first mismatch."""

    name: str
    op: str
    passed: bool
    summary: str
    first_mismatch: str
    command: list[str]


def find_tool(name: str) -> str | None:
    return shutil.which(name)


def compile_testbenches(build: Path, rtl_dir: Path = RTL_DIR, round_half_up: bool = False,
                        max_elements: int | None = None) -> dict:
    """``iverilog -g2005`` each testbench with the RTL; returns ``{op kind: .vvp path}``.
    ``round_half_up`` defines ``IBERT_ROUND_HALF_UP`` (the shortcut requantizer);
    ``max_elements`` sizes the testbenches' memories (``-P tb.MAXN``; default: theirs)."""
    iverilog = find_tool("iverilog")
    if iverilog is None:
        raise FileNotFoundError("iverilog not found (Debian package iverilog)")
    build.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, tb in TESTBENCHES.items():
        vvp = build / (tb + ("_rhu" if round_half_up else "") + ".vvp")
        cmd = [iverilog, "-g2005", "-Wall", f"-I{rtl_dir}", "-o", str(vvp)]  # -I: the .vh includes
        if round_half_up:
            cmd.append("-DIBERT_ROUND_HALF_UP")
        if max_elements is not None:
            cmd += [f"-P{tb}.MAXN={int(max_elements)}", f"-P{tb}.MAXC={max(int(max_elements), 8)}" if kind == "requantize"
                    else f"-P{tb}.MAXR={max(int(max_elements), 8)}"]
        cmd += [str(rtl_dir / f) for f in RTL_SOURCES] + [str(rtl_dir / f"{tb}.v")]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"iverilog failed for {tb}:\n{done.stdout}{done.stderr}")
        out[kind] = vvp
    return out


def _entries(manifest: dict) -> dict:
    return {e["name"]: e for e in manifest["inputs"] + manifest["ops"]}


def _multiplier_files(build: Path, op_name: str, tag: str, dy: dict) -> tuple:
    """Write ``dy``'s per-channel m (33-bit) and e (8-bit) as $readmemh files; (m, e, channels)."""
    m = np.asarray(dy["m"], dtype=np.int64).reshape(-1)
    e = np.asarray(dy["e"], dtype=np.int64).reshape(-1)
    if np.any(e < 0) or np.any(e > 255):
        raise ValueError(f"{op_name}: shift e outside 0..255 (the RTL's 8-bit port)")
    folder = build / "params"
    folder.mkdir(parents=True, exist_ok=True)
    m_path, e_path = folder / f"{op_name}.{tag}m.hex", folder / f"{op_name}.{tag}e.hex"
    write_hex(m_path, m, M_BITS, f"{op_name} m")
    write_hex(e_path, np.where(e >= 128, e - 256, e), E_BITS, f"{op_name} e")  # unsigned 8 bits, same pattern
    return m_path, e_path, len(m)


def requant_plusargs(folder: Path, manifest: dict, entry: dict, build: Path) -> list[str]:
    """The plusargs of ``tb_requant`` for one ``requantize`` op (writes its multiplier files)."""
    by_name = _entries(manifest)
    p = entry["params"]
    src = by_name[entry["inputs"][0]]
    n = int(np.prod(entry["shape"]))
    m_path, e_path, c = _multiplier_files(build, entry["name"], "", p["dy"])
    args = [f"+NAME={entry['name']}", f"+N={n}", f"+IN={folder / src['hex']}", f"+IN_BITS={src['bits']}",
            f"+M={m_path}", f"+E={e_path}", f"+C={c}", f"+OUT={folder / entry['hex']}",
            f"+OUT_BITS={entry['bits']}", f"+SAT={p['bits']}"]
    if len(entry["inputs"]) > 1:
        ident = by_name[entry["inputs"][1]]
        mid, eid, cid = _multiplier_files(build, entry["name"], "id_", p["dy_identity"])
        args += [f"+ID={folder / ident['hex']}", f"+ID_BITS={ident['bits']}", f"+M_ID={mid}", f"+E_ID={eid}",
                 f"+C_ID={cid}"]
    return args


def iexp_plusargs(folder: Path, manifest: dict, entry: dict, build: Path) -> list[str]:
    """The plusargs of ``tb_iexp`` for one ``int_exp`` op (constants inline, decimal)."""
    by_name = _entries(manifest)
    p = entry["params"]
    scores, mask = by_name[entry["inputs"][0]], by_name[entry["inputs"][1]]
    b, h, t, _ = entry["shape"]
    (m,), (e,) = p["dy_exact"]["m"], p["dy_exact"]["e"]
    return [f"+NAME={entry['name']}", f"+B={b}", f"+H={h}", f"+T={t}", f"+S={folder / scores['hex']}",
            f"+S_BITS={scores['bits']}", f"+MASK={folder / mask['hex']}", f"+MASK_BITS={mask['bits']}",
            f"+OUT={folder / entry['hex']}", f"+OUT_BITS={entry['bits']}", f"+X0={p['x0_int']}",
            f"+X030={p['x0_30']}", f"+BINT={p['b_int']}", f"+CINT={p['c_int']}", f"+M={m}", f"+E={e}"]


def _in_layers(name: str, layers) -> bool:
    if layers is None:
        return True
    if name.startswith("encoder.layer."):
        return int(name.split(".")[2]) in layers
    return -1 in layers


def run_vectors(folder, build, *, layers=None, round_half_up: bool = False, rtl_dir: Path = RTL_DIR,
                vvps: dict | None = None) -> list[OpResult]:
    """Run every requantize / int_exp op of the vectors in ``folder`` (encoder layers in
    ``layers``; -1 = embeddings; None = all) through its testbench. ``vvps``: testbenches
    already compiled by :func:`compile_testbenches` (else they are compiled into ``build``)."""
    folder, build = Path(folder), Path(build)
    with open(folder / MANIFEST_NAME, encoding="utf-8") as f:
        manifest = json.load(f)
    if vvps is None:
        largest = max([int(np.prod(e["shape"])) for e in manifest["inputs"] + manifest["ops"]] + [8])
        vvps = compile_testbenches(build, rtl_dir, round_half_up, max_elements=1 << (largest - 1).bit_length())
    vvp_tool = find_tool("vvp")
    if vvp_tool is None:
        raise FileNotFoundError("vvp not found (Debian package iverilog)")
    results = []
    for entry in manifest["ops"]:
        if entry["op"] not in TESTBENCHES or not _in_layers(entry["name"], layers):
            continue
        make_args = requant_plusargs if entry["op"] == "requantize" else iexp_plusargs
        cmd = [vvp_tool, "-n", str(vvps[entry["op"]])] + make_args(folder, manifest, entry, build)
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        lines = done.stdout.splitlines()
        summary = next((ln for ln in lines if ln.startswith(("PASS", "FAIL"))), f"FAIL (no verdict): {done.stdout}{done.stderr}")
        first = next((ln for ln in lines if ln.startswith("FIRST MISMATCH")), "")
        results.append(OpResult(entry["name"], entry["op"], summary.startswith("PASS "), summary, first, cmd))
    return results


# ---------------------------------------------------------------------------------------
def write_requant_vectors(out, name: str, z, z_bits: int, dy, out_bits: int, *, z_id=None, id_bits: int = 0,
                          dy_id=None, note: str = "") -> dict:
    """A crafted vectors folder (manifest + hex + npz, the format of ``ibert-ref vectors``) with
    one ``requantize`` op: input ``z`` (``[..., C]``, ``z_bits`` wide), per-channel ``dy`` (a
    :class:`~ibert_ref.quant.Dyadic` over the last axis), optional residual branch, ``out_bits``
    saturation. The golden output is :func:`ibert_ref.kernels.requantize` on the exact datapath."""
    from .. import kernels as K
    from ..datapath import make_datapath
    from ..quant import F32

    out = Path(out)
    (out / "hex").mkdir(parents=True, exist_ok=True)
    exact = make_datapath("exact")
    one = np.ones(1, dtype=F32)
    z = np.asarray(z, dtype=np.int64)
    params = K.RequantParams(bits=out_bits, out_scale=one, dy=dy, dy_identity=dy_id)
    identity = None if z_id is None else exact.emit(np.asarray(z_id, dtype=np.int64), one)
    golden = exact.integers(K.requantize(exact, exact.emit(z, one), params, identity=identity))
    arrays = {"z": z, name: golden}
    inputs = [{"name": "z", "shape": list(z.shape), "bits": z_bits, "hex": "hex/z.hex", "npz_key": "z"}]
    write_hex(out / "hex/z.hex", z, z_bits)
    if z_id is not None:
        arrays["z_id"] = np.asarray(z_id, dtype=np.int64)
        inputs.append({"name": "z_id", "shape": list(z.shape), "bits": id_bits, "hex": "hex/z_id.hex", "npz_key": "z_id"})
        write_hex(out / "hex/z_id.hex", z_id, id_bits)
    write_hex(out / f"hex/{name}.hex", golden, out_bits)
    np.savez(out / "vectors.npz", **arrays)

    def dyd(d):
        return None if d is None else {"m": np.asarray(d.m).tolist(), "e": np.asarray(d.e).tolist(),
                                       "value": [float(v) for v in np.asarray(d.value).reshape(-1)]}

    manifest = {
        "format": "ibert-ref golden vectors", "format_version": 1, "datapath": "exact",
        "note": note or "crafted by ibert_ref.hardware.rtl_tb", "npz": "vectors.npz", "inputs": inputs,
        "ops": [{"name": name, "index": 0, "kind": "QuantAct", "op": "requantize", "inputs": [i["name"] for i in inputs],
                 "shape": list(z.shape), "bits": out_bits, "hex": f"hex/{name}.hex", "npz_key": name,
                 "params": {"bits": out_bits, "dy": dyd(dy), "dy_identity": dyd(dy_id)}}],
    }
    with open(out / MANIFEST_NAME, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def write_tie_vectors(out, n: int = 4096, seed: int = 0) -> dict:
    """Crafted vectors (:func:`write_requant_vectors`) whose requantization inputs hit exact
    ties. ``m = 3 * 2^29``, ``e = 31`` (the multiplier 0.75): ``z * 0.75`` is ``k + 1/2``
    exactly when ``z = 2 mod 4``; half of the n int16 inputs are such (both signs, small enough
    not to saturate), the rest random; a 16-bit residual branch with ``m = 2^30, e = 31`` (0.5:
    odd inputs tie; zero for the first quarter) is added, and the sum saturated to 8 bits."""
    from ..quant import Dyadic

    rng = np.random.default_rng(seed)
    z = rng.integers(-(1 << 15), 1 << 15, n)
    z[: n // 2] = 4 * rng.integers(-40, 40, n // 2) + 2  # 0.75 z = k + 1/2, |.| < 128
    z_id = rng.integers(-200, 200, n)
    z_id[: n // 2] = 2 * rng.integers(-30, 30, n // 2) + 1  # 0.5 z_id = k + 1/2
    z_id[: n // 4] = 0  # a quarter: the main branch alone
    dy, dy_id = Dyadic(m=np.array([3 << 29]), e=np.array([31])), Dyadic(m=np.array([1 << 30]), e=np.array([31]))
    return write_requant_vectors(out, "ties.requant", z, 16, dy, 8, z_id=z_id, id_bits=16, dy_id=dy_id,
                                 note="crafted by write_tie_vectors: requantization inputs at exact ties")


def write_extreme_vectors(out, rows: int = 256, seed: int = 0) -> dict:
    """Crafted vectors (:func:`write_requant_vectors`) at the edges of the RTL's ranges: 62-bit
    inputs (the exact datapath's limit; extremes and random magnitudes), ``|m| = 2^31`` and
    ``2^30`` of both signs, shifts ``e`` from 0 to 255 (one per channel; ``e >= 96`` must give
    0), 22-bit saturation."""
    from ..quant import Dyadic

    rng = np.random.default_rng(seed)
    e = np.array([0, 1, 2, 30, 31, 32, 52, 62, 63, 64, 90, 94, 95, 96, 97, 100, 127, 128, 159, 200, 254, 255])
    m = np.resize(np.array([1 << 31, -(1 << 31), 1 << 30, -(1 << 30), (1 << 31) - 1, -(1 << 30) - 12345]), e.size)
    widths = rng.integers(0, 62, (rows, e.size))
    z = rng.integers(-(1 << 61), 1 << 61, (rows, e.size)) >> widths
    z[:4] = [[(1 << 61) - 1], [-(1 << 61)], [1], [-1]]
    return write_requant_vectors(out, "extreme.requant", z, 64, Dyadic(m=m, e=e), 22,
                                 note="crafted by write_extreme_vectors: 62-bit inputs, |m| = 2^31, e = 0..255")


def count_ties(folder, layers=None) -> dict:
    """Per requantize op of a vectors folder: how many elements are exact ties
    (``z * m mod 2^e = 2^(e-1)``, in either branch), i.e. where RNE and round-half-up differ."""
    folder = Path(folder)
    with open(folder / MANIFEST_NAME, encoding="utf-8") as f:
        manifest = json.load(f)
    with np.load(folder / manifest.get("npz", "vectors.npz"), allow_pickle=False) as zf:
        arrays = {k: zf[k] for k in zf.files}
    by_name = _entries(manifest)
    out = {}
    for entry in manifest["ops"]:
        if entry["op"] != "requantize" or not _in_layers(entry["name"], layers):
            continue
        ties = 0
        for src, key in zip(entry["inputs"], ("dy", "dy_identity")):
            z = arrays[by_name[src]["npz_key"]].astype(object)
            m = np.asarray(entry["params"][key]["m"], dtype=object)
            e = np.asarray(entry["params"][key]["e"], dtype=object)
            m, e = np.broadcast_to(m, z.shape), np.broadcast_to(e, z.shape)
            prod, half = z * m, np.array([1 << (int(k) - 1) if k > 0 else -1 for k in e.ravel()], dtype=object)
            mod = np.array([int(p) % (1 << int(k)) for p, k in zip(prod.ravel(), e.ravel())], dtype=object)
            ties += int(np.count_nonzero(mod == half))
        out[entry["name"]] = ties
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ibert_ref.hardware.rtl_tb", description=__doc__.split("\n")[0])
    ap.add_argument("vectors", help="a folder written by `ibert-ref vectors` (or write_tie_vectors)")
    ap.add_argument("--build", default="rtl_build", help="folder for the compiled testbenches and multiplier files")
    ap.add_argument("--layers", default=None, help="only these encoder layers, e.g. '0' or '0,1'; 'emb' = embeddings")
    ap.add_argument("--round-half-up", action="store_true", help="build the shortcut requantizer (expected to FAIL)")
    ap.add_argument("--rtl", default=str(RTL_DIR), help="folder of the Verilog sources")
    ap.add_argument("--print-commands", action="store_true", help="print each vvp command line")
    args = ap.parse_args(argv)
    layers = None
    if args.layers:
        layers = {-1 if s.strip() in ("emb", "embeddings") else int(s) for s in args.layers.split(",")}
    results = run_vectors(args.vectors, args.build, layers=layers, round_half_up=args.round_half_up,
                          rtl_dir=Path(args.rtl))
    for r in results:
        if args.print_commands:
            print(" ".join(r.command))
        if r.first_mismatch:
            print(r.first_mismatch)
        print(r.summary)
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} of {len(results)} ops PASS")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
