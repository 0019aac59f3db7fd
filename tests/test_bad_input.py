"""Bad input gets a clear error, never a silent wrong number or an unrelated traceback.

Covers model inputs (dtype, shape, rank, ids, lengths, masks), checkpoints (truncated or
malformed safetensors, missing / extra keys, NaN / inf, zero or inverted ranges, broken
configs), unknown datapaths, and two fuzzers: random byte corruption of a small safetensors
file (the loader must raise CheckpointError / CompileError or load exactly the tensors that
were written), and the CLI argument parser (``ibert_ref.cli.main`` returns 0 or 2 or exits
through argparse, never with a traceback).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibert_ref import cli
from ibert_ref import strategies as S
from ibert_ref.compile import CompileError
from ibert_ref.data import default_model_path
from ibert_ref.loading import Checkpoint, CheckpointError, load_checkpoint
from ibert_ref.model import IBertModel

from cli_helpers import run_cli

TINY = {
    "model_type": "ibert", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
    "intermediate_size": 16, "vocab_size": 20, "max_position_embeddings": 12, "type_vocab_size": 1,
    "pad_token_id": 1, "quant_mode": True, "hidden_act": "gelu", "force_dequant": "none",
}
IDS = np.array([[0, 5, 6, 2]], dtype=np.int64)


def scaled(fraction: float, minimum: int = 5):
    return settings(max_examples=max(minimum, int(settings().max_examples * fraction)))


@pytest.fixture(scope="module")
def ckpt():
    return S.make_numpy_checkpoint(TINY, seed=0)


@pytest.fixture(scope="module")
def model(ckpt):
    return IBertModel.from_checkpoint(ckpt)


def edited(ckpt, *, set_tensors=None, drop=(), config=None, drop_config=()):
    """A copy of ``ckpt`` with tensors replaced / removed and config fields changed."""
    tensors = {k: v for k, v in ckpt.tensors.items() if k not in drop}
    tensors.update(set_tensors or {})
    cfg = {k: v for k, v in ckpt.config.items() if k not in drop_config}
    cfg.update(config or {})
    return Checkpoint(config=cfg, tensors=tensors, source="edited-test-checkpoint")


# ---------------------------------------------------------------------------------------
# Model inputs
BAD_INPUTS = [
    # (case, call kwargs, exception, message fragment)
    ("float ids", dict(input_ids=IDS.astype(np.float32)), TypeError, "integer"),
    ("string ids", dict(input_ids=np.array([["a", "b"]])), TypeError, "integer"),
    ("bool ids", dict(input_ids=IDS.astype(bool)), TypeError, "bool"),
    ("ragged ids", dict(input_ids=[[0, 5, 2], [0, 2]]), ValueError, "ragged"),
    ("rank-3 ids", dict(input_ids=IDS[None]), ValueError, "(batch, seq)"),
    ("scalar id", dict(input_ids=np.int64(5)), ValueError, "(batch, seq)"),
    ("negative id", dict(input_ids=np.array([[0, -1, 2]])), ValueError, "outside the vocabulary"),
    ("id = vocab", dict(input_ids=np.array([[0, 20, 2]])), ValueError, "outside the vocabulary"),
    ("id above int64", dict(input_ids=np.array([[2**63]], dtype=np.uint64)), ValueError, "contains 9223372036854775808"),
    ("sequence too long", dict(input_ids=np.full((1, 11), 5)), ValueError, "too long"),
    ("empty batch", dict(input_ids=np.zeros((0, 4), np.int64)), ValueError, "empty"),
    ("empty sequence", dict(input_ids=np.zeros((2, 0), np.int64)), ValueError, "empty"),
    ("empty list", dict(input_ids=[]), ValueError, "empty"),
    ("no ids", dict(input_ids=None), ValueError, "input_ids"),
    ("mask wrong shape", dict(input_ids=IDS, attention_mask=np.ones((1, 3), np.int64)), ValueError, "shape"),
    ("mask wrong rank", dict(input_ids=IDS, attention_mask=np.ones((1, 1, 4), np.int64)), ValueError, "shape"),
    ("float mask", dict(input_ids=IDS, attention_mask=np.ones((1, 4), np.float32)), TypeError, "attention_mask"),
    ("mask value 2", dict(input_ids=IDS, attention_mask=np.full((1, 4), 2)), ValueError, "0 and 1"),
    ("all-masked row", dict(input_ids=IDS, attention_mask=np.zeros((1, 4), np.int64)), ValueError, "masks every"),
    ("token type >= type vocab", dict(input_ids=IDS, token_type_ids=np.ones((1, 4), np.int64)), ValueError, "token_type_ids"),
    ("token types wrong shape", dict(input_ids=IDS, token_type_ids=np.zeros((1, 5), np.int64)), ValueError, "shape"),
    ("negative position", dict(input_ids=IDS, position_ids=np.array([[-1, 2, 3, 4]])), ValueError, "position_ids"),
    ("position >= max", dict(input_ids=IDS, position_ids=np.array([[2, 3, 4, 12]])), ValueError, "max_position_embeddings"),
]


@pytest.mark.parametrize("case,kwargs,exc,fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_model_input_raises_a_clear_error(model, case, kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        model(**kwargs)
    assert fragment in str(info.value), str(info.value)


def test_bool_attention_mask_and_list_inputs_are_accepted(model):
    """Not errors: a bool mask and nested Python lists mean the same as int64 arrays."""
    a = model(IDS, np.ones((1, 4), np.int64)).last_hidden_state_int
    b = model(IDS.tolist(), np.ones((1, 4), bool)).last_hidden_state_int
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["nope", "", "EXACT"])
def test_unknown_datapath_names_the_known_ones(ckpt, name):
    with pytest.raises(ValueError, match="unknown datapath .*expected one of"):
        IBertModel.from_checkpoint(ckpt, datapath=name)


def test_gemm_option_is_checked(ckpt):
    with pytest.raises(ValueError, match="unknown gemm backend"):
        IBertModel.from_checkpoint(ckpt, datapath="transformers", gemm="cuda")
    with pytest.raises(ValueError, match="gemm applies to datapath='transformers'"):
        IBertModel.from_checkpoint(ckpt, datapath="exact", gemm="torch")


# ---------------------------------------------------------------------------------------
# Checkpoint contents
Q = "encoder.layer.0.attention.self.query.weight"
ACT = "encoder.layer.0.pre_output_act"
LN = "encoder.layer.0.output.LayerNorm"

BAD_CHECKPOINTS = [
    ("missing weight", dict(drop=[Q]), CheckpointError, Q),
    ("missing x_min", dict(drop=[ACT + ".x_min"]), CheckpointError, ACT + ".x_min"),
    ("wrong shape", dict(set_tensors={Q: np.ones((8, 9), np.float32)}), CheckpointError, "expected (8, 8)"),
    ("NaN weight", dict(set_tensors={Q: np.full((8, 8), np.nan, np.float32)}), CheckpointError, "non-finite"),
    ("inf bias", dict(set_tensors={Q.replace("weight", "bias"): np.full(8, np.inf, np.float32)}), CheckpointError,
     "non-finite"),
    ("integer weight", dict(set_tensors={Q: np.ones((8, 8), np.int32)}), CheckpointError, "float"),
    ("inf range", dict(set_tensors={ACT + ".x_max": np.array([np.inf], np.float32)}), CheckpointError, "non-finite"),
    ("inverted range", dict(set_tensors={ACT + ".x_min": np.array([9.0], np.float32)}), CompileError, "x_min"),
    ("zero range", dict(set_tensors={ACT + ".x_min": np.zeros(1, np.float32), ACT + ".x_max": np.zeros(1, np.float32)}),
     CompileError, "uncalibrated"),
    ("uncalibrated ±1e-5", dict(set_tensors={ACT + ".x_min": np.array([-1e-5], np.float32),
                                             ACT + ".x_max": np.array([1e-5], np.float32)}), CompileError, "uncalibrated"),
    ("negative shift", dict(set_tensors={LN + ".shift": np.array([-1.0], np.float32)}), CompileError, "shift"),
    ("fractional shift", dict(set_tensors={LN + ".shift": np.array([2.5], np.float32)}), CompileError, "shift"),
    ("huge shift", dict(set_tensors={LN + ".shift": np.array([1e9], np.float32)}), CompileError, "shift"),
    ("degenerate query/key ranges", dict(set_tensors={
        f"encoder.layer.0.attention.self.{n}_activation.x_{e}": np.array([sign * 2e-5], np.float32)
        for n in ("query", "key") for e, sign in (("min", -1), ("max", 1))}), CompileError, "degenerate"),
    ("zero gamma", dict(set_tensors={LN + ".weight": np.zeros(8, np.float32)}), CompileError, "zero"),
    ("extra layer", dict(set_tensors={"encoder.layer.1.attention.self.query.weight": np.ones((8, 8), np.float32)}),
     CheckpointError, "num_hidden_layers"),
    ("unknown tensor in the encoder", dict(set_tensors={"encoder.layer.0.attention.self.querry.weight":
                                                        np.ones((8, 8), np.float32)}), CheckpointError, "querry"),
    ("config without hidden_size", dict(drop_config=["hidden_size"]), CompileError, "hidden_size"),
    ("config hidden_size as text", dict(config={"hidden_size": "8"}), CompileError, "hidden_size"),
    ("config with 0 heads", dict(config={"num_attention_heads": 0}), CompileError, "num_attention_heads"),
    ("config with -1 layers", dict(config={"num_hidden_layers": -1}), CompileError, "num_hidden_layers"),
    ("config with more layers than weights", dict(config={"num_hidden_layers": 2}), CheckpointError, "encoder.layer.1"),
    ("config heads not dividing hidden", dict(config={"num_attention_heads": 3}), CompileError, "multiple"),
    ("config hidden_act relu", dict(config={"hidden_act": "relu"}), CompileError, "gelu"),
    ("config vocab mismatch", dict(config={"vocab_size": 10}), CheckpointError, "expected (10, 8)"),
    ("config pad id None", dict(config={"pad_token_id": None}), CompileError, "pad_token_id"),
]


@pytest.mark.parametrize("case,edit,exc,fragment", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoint_raises_a_clear_error(ckpt, case, edit, exc, fragment):
    with pytest.raises(exc) as info:
        IBertModel.from_checkpoint(edited(ckpt, **edit))
    assert fragment in str(info.value), str(info.value)


def test_task_head_tensors_and_unused_quantizer_buffers_are_not_extra_keys(ckpt):
    """Extra keys that are not errors: a classification head, transformers' cached integer
    weights and scaling factors, the unused ``embeddings_act2``."""
    extra = {
        "classifier.dense.weight": np.ones((8, 8), np.float32),
        "embeddings.word_embeddings.weight_integer": np.ones((20, 8), np.float32),
        "encoder.layer.0.attention.self.query.fc_scaling_factor": np.ones(8, np.float32),
        "embeddings.embeddings_act2.x_min": np.array([-1e-5], np.float32),
        "encoder.layer.0.output.LayerNorm.activation.act_scaling_factor": np.zeros(1, np.float32),
    }
    a = IBertModel.from_checkpoint(ckpt)(IDS).last_hidden_state_int
    b = IBertModel.from_checkpoint(edited(ckpt, set_tensors=extra))(IDS).last_hidden_state_int
    assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------
# Files on disk
@pytest.fixture(scope="module")
def folder(ckpt, tmp_path_factory):
    return S.save_checkpoint(ckpt, tmp_path_factory.mktemp("tiny"))


def copy_with(folder: Path, dest: Path, weights: bytes | None = None, config: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(config if config is not None else (folder / "config.json").read_text())
    (dest / "model.safetensors").write_bytes(
        weights if weights is not None else (folder / "model.safetensors").read_bytes()
    )
    return dest


def header_length(blob: bytes) -> int:
    return struct.unpack("<Q", blob[:8])[0]


@pytest.mark.parametrize("keep", [0, 4, 8, 20, "header-1", "data/2", "all-1"])
def test_truncated_safetensors_raise_checkpoint_error(folder, tmp_path, keep):
    blob = (folder / "model.safetensors").read_bytes()
    n = header_length(blob)
    cut = {"header-1": 8 + n - 1, "data/2": 8 + n + (len(blob) - 8 - n) // 2, "all-1": len(blob) - 1}.get(keep, keep)
    dest = copy_with(folder, tmp_path / "cut", weights=blob[:cut])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(dest)


@pytest.mark.parametrize(
    "weights",
    [b"", b"not a safetensors file at all", struct.pack("<Q", 2**62) + b"{}", struct.pack("<Q", 2) + b"[]",
     struct.pack("<Q", 7) + b"{\"a\": 1}"],
    ids=["empty", "text", "huge header length", "header not an object", "tensor entry not an object"],
)
def test_malformed_safetensors_raise_checkpoint_error(folder, tmp_path, weights):
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(copy_with(folder, tmp_path / "bad", weights=weights))


@pytest.mark.parametrize("config", ["", "{", "[]", "{\"hidden_size\": 8,}", "\xff"], ids=["empty", "open", "list",
                                                                                              "trailing comma", "binary"])
def test_malformed_config_json_raises_checkpoint_error(folder, tmp_path, config):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(copy_with(folder, tmp_path / "cfg", config=config))


def test_a_saved_random_checkpoint_reloads_bit_for_bit(ckpt, folder):
    loaded = load_checkpoint(folder)
    assert loaded.config == ckpt.config
    assert loaded.tensors.keys() == ckpt.tensors.keys()
    assert all(np.array_equal(loaded.tensors[k], v) for k, v in ckpt.tensors.items())


# ---------------------------------------------------------------------------------------
# Fuzz: random corruption of a small safetensors file
def corruptions(size: int, header_end: int):
    """Edits of a file of ``size`` bytes whose header ends at ``header_end``: xor a byte,
    truncate, insert or delete bytes. Positions favour the length prefix and the JSON header."""
    pos = st.one_of(st.integers(0, header_end - 1), st.integers(0, 7), st.integers(0, size - 1))
    return st.lists(
        st.one_of(
            st.tuples(st.just("xor"), pos, st.integers(1, 255)),
            st.tuples(st.just("truncate"), pos, st.just(0)),
            st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=8)),
            st.tuples(st.just("delete"), pos, st.integers(1, 16)),
        ),
        min_size=1,
        max_size=3,
    )


def corrupt(blob: bytes, edits) -> bytes:
    b = bytearray(blob)
    for kind, at, arg in edits:
        at = min(at, max(len(b) - 1, 0))
        if kind == "xor" and b:
            b[at] ^= arg
        elif kind == "truncate":
            del b[at:]
        elif kind == "insert":
            b[at:at] = arg
        elif kind == "delete":
            del b[at : at + arg]
    return bytes(b)


def signature(tensors: dict) -> dict:
    return {k: (str(v.dtype), v.shape) for k, v in tensors.items()}


@scaled(1.0)
@given(data=st.data())
def test_corrupted_safetensors_give_checkpoint_error_or_the_exact_tensor_layout(folder, ckpt, data):
    """Every corruption either raises CheckpointError / CompileError (clear, naming the file or
    tensor) or — when only tensor *values* changed, which safetensors has no checksum to detect —
    loads exactly the written keys, dtypes and shapes. Never another exception."""
    blob = (folder / "model.safetensors").read_bytes()
    edits = data.draw(corruptions(len(blob), 8 + header_length(blob)))
    bad = corrupt(blob, edits)
    with tempfile.TemporaryDirectory() as tmp:
        dest = copy_with(folder, Path(tmp), weights=bad)
        try:
            loaded = load_checkpoint(dest)
            model = IBertModel.from_checkpoint(loaded)
        except (CheckpointError, CompileError) as exc:
            assert str(exc)
            return
    assert signature(loaded.tensors) == signature(ckpt.tensors)
    out = model(IDS, return_trace=True)  # a checkpoint that loads must run
    assert out.last_hidden_state_int.shape == (1, 4, 8)
    assert all(np.issubdtype(v.dtype, np.integer) for v in out.trace.values())


# ---------------------------------------------------------------------------------------
# Fuzz: the command line
WORDS = st.sampled_from(
    ["--model", "--datapath", "--gemm", "--layers", "--values", "--revision", "--cache-dir", "--local-files-only",
     "--help", "--version", "-h", "--", "-", "exact", "transformers", "numpy", "torch", "0", "1", "-1", "0,1", ",",
     "99", "abc", "Paris", "/nonexistent/model", ".", "", "x" * 300, "--values=3", "--layers=0", "--datapath=nope"]
)
TOKENS = st.one_of(WORDS, st.text(max_size=12))

#: Options and values of every subcommand, files in the fuzz folder (see ``fuzz_folder``), hardware
#: profile options, output paths, and text that is not valid UTF-8 (lone surrogates: how Python
#: hands undecodable argv bytes to the program) or has control characters.
ALL_WORDS = st.sampled_from(
    ["--model", "--datapath", "--gemm", "--layers", "--values", "--revision", "--cache-dir", "--local-files-only",
     "--profile-option", "acc_bits=24", "acc_bits=abc", "acc_bits=99", "foo=1", "k_step=none", "k_step=0",
     "overflow=saturate", "overflow=raise", "gelu=int32", "requant=arm", "probs=u8-sat", "=", "acc_bits",
     "--datapath=arm", "--datapath=generic", "tensor-core", "arm", "generic",
     "--text", "--ids", "0 5 2", "0 99999999999999999999 2", "0,x", "--input-ids", "ids.json", "ids.txt",
     "floats.json", "short-mask.json", "deep.json", "missing.json", "a-file",
     "--out", "out", "out/sub", "a-file", "a-file/sub", "full", "model", "model/sub", "--overwrite", ".",
     "--texts", "t.txt", "bad-utf8.txt", "--max-length", "--batch-size", "--momentum", "--range", "--percentile",
     "--calib-datapath", "--search-target", "--continue", "--no-progress", "--strict-widths", "--no-param-hex",
     "--flagged", "--markdown", "emb", "mse", "minmax", "search", "ema", "2", "0", "-1", "1e309", "nan", "0.5",
     "--help", "--", "-", "", "99", "abc", "caf\udce9", "\ud800", "\x00", "Paris"]
)
SURROGATE_TEXT = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
ALL_TOKENS = st.one_of(ALL_WORDS, st.text(max_size=12), SURROGATE_TEXT,
                       st.builds(lambda a, b: a + b, st.text(max_size=4), SURROGATE_TEXT))
RUNNABLE = ["run", "widths", "vectors", "calibrate", "convert"]  # bench times, verify needs the oracle


def fuzz_folder(root: Path) -> Path:
    """A working folder with the files the fuzzed arguments name."""
    (root / "t.txt").write_text("hello world\nIntegers all the way down.\n")
    (root / "bad-utf8.txt").write_bytes(b"fine\ncaf\xe9\n")
    (root / "ids.json").write_text(json.dumps({"input_ids": [[0, 5, 6, 2]], "attention_mask": [[1, 1, 1, 1]]}))
    (root / "ids.txt").write_text("0 5 6 2\n0 7 2\n")
    (root / "floats.json").write_text(json.dumps({"input_ids": [[0, 31.9, 414.7, 2]]}))
    (root / "short-mask.json").write_text(json.dumps({"input_ids": [[0, 5, 2]], "attention_mask": [[1, 0]]}))
    (root / "deep.json").write_text("[" * 50000 + "]" * 50000)
    (root / "a-file").write_text("x")
    (root / "full").mkdir()
    (root / "full" / "old.hex").write_text("00\n")
    shutil.copytree(default_model_path(), root / "model")
    return root


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in sorted(root.rglob("*"))}


@scaled(1.0)
@given(st.lists(ALL_TOKENS, max_size=6), st.sampled_from(cli.command_names() + ["", "nope"]))
def test_cli_parser_accepts_or_exits_2_for_any_arguments(tokens, command):
    """Every subcommand's parser, every option and value: parse, or exit 0 (--help / --version)
    or 2 (usage error)."""
    argv = ([command] if command else []) + tokens
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2)


def check_cli_run(cwd: Path, argv) -> None:
    """``cli.main(argv)`` in ``cwd``, offline: 0, or 2 with one ``ibert-ref CMD: error:`` line and
    nothing written; never a traceback."""
    before = listing(cwd)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            mp.delenv("IBERT_REF_DEBUG", raising=False)
            code, _, err = run_cli(argv)
    finally:
        os.chdir(old)
    code = code if isinstance(code, int) else 2  # a SystemExit without an int code: Python exits nonzero
    assert code in (0, 2) or (code == 3 and "overflow" in err), (argv, code, err)  # 3: overflow='raise' in run
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        assert "error" in err, (argv, err)
        assert listing(cwd) == before, argv  # a failed run writes nothing
    assert not [p for p in cwd.rglob("*") if ".ibert-ref-tmp-" in p.name or ".ibert-ref-old-" in p.name]


@scaled(0.4)
@given(st.lists(TOKENS, max_size=5), st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=2))
def test_cli_run_returns_0_or_2_for_any_arguments(tmp_path_factory, tokens, texts):
    """``ibert-ref run`` with fuzzed options and texts, offline, in an empty folder: returns 0
    (ran) or 2 (clear error on stderr), or argparse exits 0/2; never a traceback, and nothing
    is written to the working directory."""
    cwd = tmp_path_factory.mktemp("cli")
    check_cli_run(cwd, ["run", *texts, *tokens])
    assert list(cwd.iterdir()) == []


@scaled(0.5)
@given(st.sampled_from(RUNNABLE), st.lists(ALL_TOKENS, max_size=7))
def test_every_command_returns_0_or_2_for_any_arguments(tmp_path_factory, command, tokens):
    """run / widths / vectors / calibrate / convert with fuzzed options, profile options, input
    files, output paths and non-UTF-8 text, in a folder holding those files (the bundled model
    copied in as ``model``): 0 or one clear error line, never a traceback; a failed run leaves
    the folder as it was and no temporary folder anywhere."""
    check_cli_run(fuzz_folder(tmp_path_factory.mktemp("cli-all")), [command, *tokens])


@scaled(0.3)
@given(st.sampled_from(RUNNABLE), st.lists(ALL_TOKENS, max_size=4))
def test_commands_with_their_required_options_and_fuzzed_rest(tmp_path_factory, command, tokens):
    """As above, with each command's required options present, so the fuzzed options reach the
    command itself (loading, input files, output folder) rather than argparse."""
    required = {
        "run": ["hello"],
        "widths": [],
        "vectors": ["--out", "out"],
        "calibrate": ["--texts", "t.txt", "--out", "out", "--no-progress"],
        "convert": ["--model", "model", "--out", "out", "--no-progress"],
    }[command]
    check_cli_run(fuzz_folder(tmp_path_factory.mktemp("cli-req")), [command, *required, *tokens])
