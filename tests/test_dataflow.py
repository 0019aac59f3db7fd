"""One dataflow: the forward, calibration, golden vectors and op replay all visit the ops of
:mod:`ibert_ref.dataflow`, in its order; and ``ibert_ref`` has no import cycle.

Each tool's visits are recorded at its one kernel dispatcher (:func:`ibert_ref.dataflow.run_op`,
as the tool's module names it), so an op a tool wrote by hand, skipped or reordered shows up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from ibert_ref import dataflow as D
from ibert_ref.data import default_model_path
from ibert_ref.loading import load_checkpoint
from ibert_ref.model import IBertModel

PACKAGE = Path(D.__file__).parent
LAYERS = 4  # the bundled model


def _record(monkeypatch, module, attr, name_arg=1):
    """Wrap ``module.attr`` (a dispatcher, or replay's entry) to record the op (or module) name
    each call is for: its argument ``name_arg`` (an :class:`~ibert_ref.dataflow.Op` or a name)."""
    seen = []
    real = getattr(module, attr)

    def spy(*args, **kwargs):
        op = args[name_arg]
        seen.append(op if isinstance(op, str) else op.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, spy)
    return seen


def _batch():
    ids = np.array([[0, 31, 7, 99, 2, 1, 1], [0, 5, 6, 40, 41, 42, 2]])
    return ids, (ids != 1).astype(np.int64)


def expected_ops():
    return [op.name for op in D.expand(LAYERS)]


def test_bundled_model_has_the_layers_this_test_expands():
    assert load_checkpoint(default_model_path()).config["num_hidden_layers"] == LAYERS


def test_the_forward_visits_every_op_of_the_dataflow_in_order(monkeypatch):
    import ibert_ref.model as M

    seen = _record(monkeypatch, M, "run_op")
    ids, mask = _batch()
    out = IBertModel.from_pretrained()(ids, attention_mask=mask, return_trace=True)
    assert seen == expected_ops()
    assert list(out.trace) == [op.name for op in D.expand(LAYERS) if op.traced]


@pytest.mark.parametrize("datapath", ["transformers", "exact"])
def test_calibration_visits_every_op_of_the_dataflow_in_order(monkeypatch, datapath):
    import ibert_ref.model as M
    from ibert_ref.calibrate import Calibrator

    cal = Calibrator(load_checkpoint(default_model_path()), datapath=datapath)
    seen = _record(monkeypatch, M, "run_op")
    cal.step(*_batch())
    assert seen == expected_ops()


def test_the_float_reference_visits_the_dataflow_ops():
    from ibert_ref.calibrate import Calibrator, FloatModel

    cal = Calibrator(load_checkpoint(default_model_path()))
    seen = []

    class Recording(FloatModel):
        def kernel(self, op, args, mask):
            seen.append(op.name)
            return super().kernel(op, args, mask)

    ids, mask = _batch()
    Recording(cal.get, cal.config).forward(ids, np.zeros_like(ids), np.cumsum(mask, 1) * mask + 1, mask)
    assert sorted(seen) == sorted(expected_ops())  # evaluated on demand: each op once


def test_vectors_visit_every_op_of_the_dataflow_in_order(monkeypatch, tmp_path):
    import ibert_ref.vectors as V

    seen = _record(monkeypatch, V, "run_dataflow_op")
    ids, mask = _batch()
    manifest = V.write_vectors(IBertModel.from_pretrained(), ids, tmp_path, attention_mask=mask, param_hex=False)
    assert seen == expected_ops()
    assert [e["name"] for e in manifest["ops"]] == expected_ops()
    assert [e["inputs"] for e in manifest["ops"]] == [list(op.sources) for op in D.expand(LAYERS)]


def test_op_replay_visits_every_module_of_the_dataflow(monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import ibert_ref.oracle.replay as R
    from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert

    ids, mask = _batch()
    capture = capture_transformers_trace(load_transformers_ibert(default_model_path()), ids, mask)
    ckpt = load_checkpoint(default_model_path())
    seen = _record(monkeypatch, R, "replay_op", name_arg=2)
    dispatched = _record(monkeypatch, R, "run_op")
    results = R.replay_capture(capture, lambda k: ckpt.tensor(k).astype(np.float32))
    calls = [op.module for op in D.expand(LAYERS) if op.module is not None]
    assert list(results) == D.module_names(LAYERS)
    assert sorted(seen) == sorted(calls)  # a module called twice is replayed twice
    # IntSoftmax is replayed as the dataflow's own i-exp and normalisation rows
    softmax = [op.name for op in D.LAYER if op.kernel in ("int_exp", "softmax_normalize")]
    assert [n for n in dispatched if n in softmax] == softmax * LAYERS


# ---------------------------------------------------------------------------------------
# Imports: no cycle, and the layers import only downward
def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def module_level_imports():
    """``{module: {ibert_ref modules it imports at module level}}`` (imports inside functions
    are deferred, and the root package's re-exports are left out: every submodule is under it)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("ibert_ref.")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                if not src.startswith("ibert_ref"):
                    continue
                for alias in node.names:
                    sub = f"{src}.{alias.name}"
                    targets.add(sub if _is_module(sub) else src)
        graph[name] = {t for t in targets if t != "ibert_ref" and t != name}
    return graph


def test_no_import_cycle_in_ibert_ref():
    graph = module_level_imports()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def _closure(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_layers_import_only_downward():
    """kernels -> dataflow -> model -> tools -> CLI: the dataflow imports no model or tool, the
    model no tool (calibration, vectors, oracle, hardware reports, commands)."""
    graph = module_level_imports()
    tools = ("ibert_ref.calibrat", "ibert_ref.vectors", "ibert_ref.oracle", "ibert_ref.commands", "ibert_ref.cli",
             "ibert_ref.strategies", "ibert_ref.heads", "ibert_ref.integer_heads", "ibert_ref.sweep",
             "ibert_ref.widths", "ibert_ref.convert")
    below_dataflow = _closure(graph, "ibert_ref.dataflow")
    assert not {m for m in below_dataflow if m.startswith(tools + ("ibert_ref.model", "ibert_ref.compile"))}
    assert not {m for m in _closure(graph, "ibert_ref.model") if m.startswith(tools)}


# ---------------------------------------------------------------------------------------
# Op names: written in dataflow.py and at most one other module of ibert_ref/
def _distinctive_names():
    """The op names a reader would grep for: every op's module leaf that is not a plain word
    (``pre_intermediate_act``, ``ln_input_act``, ``softmax.act``, ...), and the dead QuantActs'."""
    names = set()
    for op in D.EMBEDDINGS + D.LAYER:
        parts = op.name.split(".")
        names.add(".".join(parts[-2:]) if parts[-1] == "act" else parts[-1])
    names |= {n.split(".")[-1] for n in list(D.DEAD_EMBEDDINGS_QUANT_ACTS) + list(D.DEAD_LAYER_QUANT_ACTS)}
    return sorted(n for n in names if "_" in n or "." in n)


def test_each_op_name_is_written_in_at_most_two_modules():
    import re

    texts = {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    assert "softmax.act" in _distinctive_names() and "pre_intermediate_act" in _distinctive_names()
    over = {}
    for name in _distinctive_names():
        pattern = re.compile(r"(?<!\w)" + re.escape(name) + r"(?!\w)")
        modules = sorted(m for m, text in texts.items() if pattern.search(text))
        if len(modules) > 2 or (modules and "dataflow.py" not in modules):
            over[name] = modules
    assert not over, over


# ---------------------------------------------------------------------------------------
# The reference is plain: kernels without dispatch, intops without floats or threads
def _source_tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / module).read_text(encoding="utf-8"))


def test_reference_kernels_contain_no_dispatch():
    """kernels.py reads like the paper's boxes: no decorator on a kernel, no call of a datapath
    hook that swaps the kernel (``dataflow.kernel`` is the one place that consults
    ``replacement_kernel``)."""
    tree = _source_tree("kernels.py")
    kernels = [f for f in tree.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")]
    assert {"requantize", "quant_linear", "int_exp", "softmax_normalize", "int_gelu", "int_layernorm"} <= {
        f.name for f in kernels}
    assert not [f.name for f in kernels if f.decorator_list]
    hooks = {"replacement_kernel", "compiled_kernel", "variant_kernel", "row_runner"}
    assert not {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} & hooks

    def consults_the_hook(path):  # calls x.replacement_kernel(...), other than super()'s in an override
        return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "replacement_kernel"
                   and not (isinstance(n.func.value, ast.Call) and getattr(n.func.value.func, "id", "") == "super")
                   for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))

    consulted = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if consults_the_hook(p))
    assert consulted == ["dataflow.py"]


def test_intops_is_integer_only_and_single_threaded():
    """The reference primitives use no float type and start no thread (the float-proven fast
    routes live in backends/fast_intops.py)."""
    tree = _source_tree("intops.py")
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"float16", "float32", "float64", "float_", "ldexp", "sqrt", "rint", "floor"}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"annotations", "__future__", "numpy"}, imported


def test_reference_datapath_takes_no_fast_route():
    """ExactDatapath's methods call only the reference primitives of intops (no fast_intops, no
    float GEMM): the fast routes are FastExactDatapath's, in backends/."""
    tree = _source_tree("datapath.py")
    exact = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "ExactDatapath")
    called = {n.attr for n in ast.walk(exact) if isinstance(n, ast.Attribute)}
    assert {"mul_shift_round", "isqrt_floor", "matmul_exact_reference"} <= called
    assert not called & {"mul_shift_round_fast", "isqrt_floor_fast", "matmul_exact", "float32", "float64"}
