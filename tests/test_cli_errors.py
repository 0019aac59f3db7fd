"""``ibert-ref`` never shows a traceback: every case of issue 12 section 5 (and the ``--input-ids``
file checks of section 4) exits with one clear line naming the option or file.

Exit codes: 0 ran, 2 error (argparse usage errors too), 130 interrupted (Ctrl-C), 141 stdout closed
(``| head``). ``IBERT_REF_DEBUG=1`` re-raises instead, for developers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ibert_ref import cli
from ibert_ref.commands import _args, _inputs
from ibert_ref.commands._args import ArgError
from ibert_ref.commands._inputs import hub_preflight, read_ids_file, read_text_lines

from cli_helpers import run_cli

TEXT = "The capital of France is Paris."


def one_error_line(err: str, command: str) -> str:
    """The last stderr line, which must be ``ibert-ref CMD: error: ...``; no traceback anywhere."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"ibert-ref {command}: error: "), err
    return line


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


# ---------------------------------------------------------------------------------------
# Issue 12 section 5, case by case: (argv, fragments the error line must contain)
CASES = [
    (["run", "hi", "--datapath", "generic", "--profile-option", "foo=1"],
     ["--profile-option", "unknown profile option 'foo'", "acc_bits", "overflow", "requant"]),
    (["run", "hi", "--datapath", "generic", "--profile-option", "acc_bits=abc"],
     ["--profile-option", "acc_bits=abc", "integer from 2 to 64"]),
    (["run", "hi", "--datapath", "generic", "--profile-option", "overflow=maybe"],
     ["--profile-option", "overflow must be one of", "saturate"]),
    (["run", "hi", "--datapath", "generic", "--profile-option", "acc_bits"], ["--profile-option", "KEY=VALUE"]),
    (["run", "hi", "--profile-option", "acc_bits=24"], ["--profile-option applies to the hardware profiles"]),
    (["run", "caf\udce9"], ["argument text", "not valid UTF-8", "0xe9"]),
    (["run", "lone \ud800 surrogate"], ["argument text", "not valid UTF-8", "U+D800"]),
    (["widths", "--ids", "0 1180591620717411303424 2"], ["--ids", "1180591620717411303424", "outside the vocabulary"]),
    (["widths", "--ids", "0 -5 2"], ["--ids", "-5", "outside the vocabulary"]),
    (["widths", "--ids", "0 x 2"], ["--ids", "'x' is not an integer"]),
    (["widths", "--ids", "0 5 2", "--text", "hi"], ["--text", "not allowed with argument --ids"]),
    (["widths"], ["one of the arguments --text --ids is required"]),
    (["widths", "--text", "hi", "--layers", "7"], ["--layers", "4 encoder layer(s)", "no layer 7"]),
    (["run", "hi", "--layers", "x"], ["argument --layers", "'x' is not a layer number"]),
    (["run", "hi", "--layers", "9"], ["--layers", "4 encoder layer(s)", "no layer 9"]),
    (["run", "hi", "--values", "abc"], ["argument --values", "'abc' is not an integer"]),
    (["run", "hi", "--model", ""], ["argument --model", "empty model name"]),
    (["run", ""], ["argument text", "empty text"]),
    (["run", "   "], ["argument text", "empty text"]),
    (["calibrate", "--texts", "t.txt", "--out", "o", "--max-length", "0"], ["argument --max-length", "0 is out of range"]),
    (["calibrate", "--texts", "t.txt", "--out", "o", "--max-length", "100000"], ["--max-length 100000", "at most 128"]),
    (["calibrate", "--texts", "t.txt", "--out", "o", "--momentum", "2"], ["argument --momentum", "out of range", "-1"]),
    (["calibrate", "--texts", "t.txt", "--out", "o", "--momentum", "nan"], ["argument --momentum"]),
    (["calibrate", "--texts", "t.txt", "--out", "o", "--batch-size", "0"], ["argument --batch-size"]),
    (["calibrate", "--texts", "t.txt", "--out", "o", "--percentile", "0"], ["argument --percentile"]),
    (["calibrate", "--texts", "missing.txt", "--out", "o"], ["--texts missing.txt", "No such file"]),
    (["calibrate", "--texts", "bad-utf8.txt", "--out", "o"], ["--texts bad-utf8.txt", "line 2 is not UTF-8", "0xe9"]),
    (["calibrate", "--texts", "t.txt", "--out", "a-file"], ["--out 'a-file' exists and is not a folder"]),
    (["calibrate", "--texts", "t.txt", "--out", "a-file/sub"], ["'a-file' is not a folder"]),
    (["vectors", "--text", "hi", "--out", "a-file"], ["--out 'a-file' exists and is not a folder"]),
    (["vectors", "--text", "hi", "--out", ""], ["argument --out", "empty folder name"]),
    (["vectors", "--text", "hi", "--out", "full"], ["--out 'full' is not empty", "--overwrite"]),
    (["vectors", "--text", "hi", "--out", "o", "--datapath", "transformers"], ["integer datapath"]),
    (["convert", "--model", "", "--out", "o"], ["argument --model", "empty model name"]),
    (["bench", "--shapes", "0x0"], ["argument --shapes", "at least 1"]),
    (["bench", "--shapes", "8by128"], ["argument --shapes", "BATCHxSEQ"]),
    (["bench", "--systems", "exact,gpu"], ["argument --systems", "gpu"]),
    (["bench", "--model", "nowhere"], ["--model 'nowhere'", "not a folder"]),
    (["bench", "--model", "a-file"], ["--model 'a-file'", "not a folder"]),
    (["bench", "--model", "empty-dir"], ["no config.json"]),
    (["bench", "--repeats", "0"], ["argument --repeats"]),
    (["run", "hi", "--model", "nowhere/at/all"], ["does not exist"]),
    (["verify", "--text", "hi", "--json", "full"], ["--json 'full' is a folder"]),
    (["verify", "--text", "hi", "--json", "a-file/report.json"], ["--json 'a-file/report.json'", "not an existing folder"]),
    (["verify", "--input-ids", "floats.json"], ["--input-ids floats.json", "input_ids[0][1] is 31.9"]),
    (["verify", "--input-ids", "missing.json"], ["--input-ids missing.json", "no such file"]),
    (["verify", "--text", "hi", "--input-ids", "floats.json"], ["not allowed with argument"]),
    (["vectors", "--input-ids", "floats.json", "--out", "o"], ["--input-ids floats.json", "must be integers"]),
]


@pytest.fixture
def files(in_tmp):
    (in_tmp / "t.txt").write_text("hello world\nIntegers all the way down.\n")
    (in_tmp / "bad-utf8.txt").write_bytes(b"fine\ncaf\xe9\n")
    (in_tmp / "a-file").write_text("x")
    (in_tmp / "full").mkdir()
    (in_tmp / "full" / "old.hex").write_text("00\n")
    (in_tmp / "empty-dir").mkdir()
    (in_tmp / "floats.json").write_text(json.dumps({"input_ids": [[0, 31.9, 414.7, 2]],
                                                    "attention_mask": [[1, 0.7, 1.9]]}))
    return in_tmp


@pytest.mark.parametrize("argv,fragments", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_each_bad_invocation_exits_2_with_one_clear_line(files, argv, fragments):
    before = sorted(p.name for p in files.iterdir())
    code, _, err = run_cli(argv)
    assert code == 2
    line = one_error_line(err, argv[0])
    for fragment in fragments:
        assert fragment in line, line
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written
    assert (files / "full" / "old.hex").read_text() == "00\n"


def test_an_os_error_is_reported_without_errno_text(files, monkeypatch):
    import ibert_ref.commands.run as run_cmd

    def fails(args):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(run_cmd, "run", fails)
    parser_func = cli.build_parser  # the parser binds func at build time: patch through set_defaults

    def build():
        p = parser_func()
        p._subparsers._group_actions[0].choices["run"].set_defaults(func=fails)
        return p

    monkeypatch.setattr(cli, "build_parser", build)
    code, _, err = run_cli(["run", "hi"])
    assert code == 2
    assert one_error_line(err, "run") == "ibert-ref run: error: /some/file: Permission denied"


@pytest.mark.parametrize("exc,fragment,code", [
    (TypeError("unsupported operand"), "TypeError: unsupported operand (unexpected; IBERT_REF_DEBUG=1", 2),
    (RecursionError("maximum recursion depth exceeded"), "RecursionError", 2),
    (KeyError("x_min"), "KeyError: missing key 'x_min'", 2),
    (KeyboardInterrupt(), None, 130),
])
def test_any_exception_from_a_command_is_one_line_and_debug_reraises(monkeypatch, exc, fragment, code):
    def build():
        p = real_build()
        p._subparsers._group_actions[0].choices["run"].set_defaults(func=raiser)
        return p

    def raiser(args):
        raise exc

    real_build = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", build)
    monkeypatch.delenv("IBERT_REF_DEBUG", raising=False)
    got, _, err = run_cli(["run", "hi"])
    assert got == code
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    if fragment is None:
        assert err.strip() == "ibert-ref run: interrupted"
    else:
        assert fragment in one_error_line(err, "run")
    monkeypatch.setenv("IBERT_REF_DEBUG", "1")
    with pytest.raises(type(exc)):
        cli.main(["run", "hi"])


def test_a_closed_stdout_ends_quietly_with_141():
    """``ibert-ref run ... | head -1``: the reader goes away after one line; no traceback, no
    'Exception ignored' message, exit status 141 (128 + SIGPIPE, as a shell reports it)."""
    script = textwrap.dedent("""
        import sys
        import ibert_ref.commands.run as R
        from ibert_ref import cli
        R.format_trace_table = lambda *a, **k: ["x" * 100] * 200000   # far more than a pipe buffer
        sys.exit(cli.main(["run", "hello"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"model:")
    assert proc.returncode == 141, err
    assert err == ""


def test_help_shows_each_default_once():
    """The formatter adds ``(default: X)`` only where the help does not already say it, and never
    ``None`` / ``False``."""
    parser = cli.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            text = (formatter._get_help_string(action) if action.help else "").replace("%(default)s", "X")
            assert len(re.findall(r"\bdefault\b", text)) <= 1, (name, action.dest, text)
            assert "(default: None)" not in text and "(default: False)" not in text, (name, action.dest, text)
        rendered = sub.format_help()
        assert "(default: None)" not in rendered and "(default: False)" not in rendered, name
    model_help = next(a for a in parser._subparsers._group_actions[0].choices["run"]._actions if a.dest == "model")
    assert formatter._get_help_string(model_help).count("(default") == 1


# ---------------------------------------------------------------------------------------
# run: the '!' legend, the summary line, the comparison with the exact datapath
def test_run_explains_the_flag_and_prints_a_summary(monkeypatch):
    import ibert_ref.commands.run as R
    from ibert_ref.model import TraceEntry

    code, out, _ = run_cli(["run", TEXT])
    assert code == 0
    assert re.search(r"^all \d+ ops fit their declared widths", out, re.M)
    trace = {"a": np.array([0, 300]), "b": np.array([1, 2])}
    meta = {"a": TraceEntry(kind="QuantAct", scale=np.ones(1, np.float32), bits=8),
            "b": TraceEntry(kind="QuantAct", scale=np.ones(1, np.float32), bits=8)}
    assert R.wide_ops(trace, meta) == ["a"]
    rows = R.format_trace_table(trace, meta)
    assert rows[1].endswith("!") and not rows[2].endswith("!")
    assert "need > decl" in R.WIDE_FLAG_LEGEND


def test_run_under_a_profile_counts_the_outputs_that_differ_from_exact():
    from ibert_ref import IBertModel, Tokenizer

    code, out, _ = run_cli(["run", TEXT, "--datapath", "arm"])
    assert code == 0
    m = re.search(r"last_hidden_state: (\d+) of (\d+) int8 codes differ", out)
    assert m, out
    enc = Tokenizer.from_pretrained()(TEXT)
    a = IBertModel.from_pretrained(datapath="arm")(enc["input_ids"]).last_hidden_state_int
    b = IBertModel.from_pretrained(datapath="exact")(enc["input_ids"]).last_hidden_state_int
    assert int(m.group(1)) == int(np.count_nonzero(a != b)) and int(m.group(2)) == a.size
    assert re.search(r"trace: \d+ of \d+ entries differ, \d+ of \d+ integers", out)
    # the exact datapath itself prints no comparison; a profile that changes nothing compares equal
    assert "compared with the exact datapath" not in run_cli(["run", TEXT])[1]
    _, out, _ = run_cli(["run", TEXT, "--datapath", "generic", "--profile-option", "acc_bits=64",
                         "--profile-option", "overflow=exact"])
    assert re.search(r"last_hidden_state: 0 of \d+ int8 codes differ", out), out
    assert re.search(r"trace: 0 of \d+ entries differ", out), out


# ---------------------------------------------------------------------------------------
# --input-ids files (issue 12 section 4): the model API's rules
def write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    elif name.endswith(".npy"):
        np.save(p, content, allow_pickle=True)
    elif name.endswith(".npz"):
        np.savez(p, **content)
    else:
        p.write_text(json.dumps(content))
    return p


BAD_ID_FILES = [
    ("floats.json", {"input_ids": [[0, 31.9, 414.7, 2]], "attention_mask": [[1, 1, 1, 1]]}, "input_ids[0][1] is 31.9"),
    ("float-mask.json", {"input_ids": [[0, 31, 414, 2]], "attention_mask": [[1, 0.7, 1, 1]]}, "must be 0 or 1"),
    ("short-mask.json", {"input_ids": [[0, 31, 414, 2]], "attention_mask": [[1, 0, 1]]}, "exactly the ids' shape"),
    ("mask-rows.json", {"input_ids": [[0, 2]], "attention_mask": [[1, 1], [1, 1]]}, "2 row(s), input_ids 1"),
    ("mask-2.json", {"input_ids": [[0, 2]], "attention_mask": [[1, 2]]}, "must be 0 or 1"),
    ("huge-float.json", [[0, 1e300, 2]], "must be integers"),
    ("huge-int.json", [[0, 10**30, 2]], "must be in [0, vocab_size)"),
    ("negative.json", [[0, -3, 2]], "must be in [0, vocab_size)"),
    ("string.json", [["0", "5"]], "must be integers"),
    ("bool.json", [[True, 5]], "must be integers"),
    ("rank3.json", [[[0, 5]]], "must be integers"),
    ("mixed.json", [[0, 5], 7], "expected a list"),
    ("empty.json", [], "non-empty"),
    ("empty-row.json", [[0, 5], []], "input_ids[1] is empty"),
    ("object.json", {"ids": [[0, 5]]}, "unexpected key(s) ['ids']"),
    ("scalar.json", 5, "must be a non-empty list"),
    ("nan.json", "[[0, NaN]]", "NaN is not a token id"),
    ("broken.json", "[[0, 5]", "not valid JSON"),
    ("deep.json", "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("latin1.json", b"[[0, 5]] \xe9", "not UTF-8"),
    ("words.txt", "0 5 abc\n", "line 1: 'abc' is not an integer"),
    ("float.txt", "0 5\n0 5.5 2\n", "line 2: '5.5' is not an integer"),
    ("blank.txt", "\n\n", "no token ids (every line is empty)"),
    ("latin1.txt", b"0 5\n\xe9\n", "line 2 is not UTF-8"),
    ("float.npy", np.array([[0.0, 5.0]]), "dtype float64"),
    ("bool.npy", np.array([[True, False]]), "dtype bool"),
    ("rank3.npy", np.zeros((1, 1, 2), np.int64), "shape (1, 1, 2)"),
    ("empty.npy", np.zeros((1, 0), np.int64), "non-empty"),
    ("uint64.npy", np.array([[2**63]], np.uint64), "contain 9223372036854775808"),
    ("object.npy", np.array([[0, 5]], dtype=object), "cannot read it"),
    ("mask-shape.npz", {"input_ids": np.array([[0, 5, 2]]), "attention_mask": np.array([[1, 1]])}, "must be equal"),
    ("mask-value.npz", {"input_ids": np.array([[0, 5]]), "attention_mask": np.array([[1, 3]])}, "0 or 1"),
    ("mask-float.npz", {"input_ids": np.array([[0, 5]]), "attention_mask": np.array([[1.0, 1.0]])}, "dtype float64"),
    ("no-ids.npz", {"ids": np.array([[0, 5]])}, "no 'input_ids' array"),
]


@pytest.mark.parametrize("name,content,fragment", BAD_ID_FILES, ids=[c[0] for c in BAD_ID_FILES])
def test_bad_input_ids_files_are_refused_naming_the_entry(tmp_path, name, content, fragment):
    path = write(tmp_path, name, content)
    with pytest.raises(ArgError) as info:
        read_ids_file(path)
    assert fragment in str(info.value) and "--input-ids" in str(info.value), str(info.value)


@pytest.mark.parametrize("name,content,fragment", BAD_ID_FILES[:6], ids=[c[0] for c in BAD_ID_FILES[:6]])
def test_vectors_with_a_bad_input_ids_file_exits_2_and_writes_nothing(in_tmp, name, content, fragment):
    write(in_tmp, name, content)
    code, _, err = run_cli(["vectors", "--input-ids", name, "--out", "v"])
    assert code == 2 and fragment in one_error_line(err, "vectors")
    assert not (in_tmp / "v").exists()


def test_good_input_ids_files_agree_across_formats(tmp_path):
    ids = np.array([[0, 5, 6, 2], [0, 7, 2, 1]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    got = [
        read_ids_file(write(tmp_path, "a.json", {"input_ids": ids.tolist(), "attention_mask": mask.tolist()})),
        read_ids_file(write(tmp_path, "b.json", [[0, 5, 6, 2], [0, 7, 2]]), pad_token_id=1),
        read_ids_file(write(tmp_path, "c.txt", "0 5 6 2\n\n0, 7, 2\n"), pad_token_id=1),
        read_ids_file(write(tmp_path, "d.npz", {"input_ids": ids, "attention_mask": mask.astype(bool)})),
        read_ids_file(write(tmp_path, "e.json", {"input_ids": ids.tolist(), "attention_mask": mask.astype(bool).tolist()})),
    ]
    for a, m in got:
        assert a.dtype == np.int64 and m.dtype == np.int64
        assert np.array_equal(a, ids) and np.array_equal(m, mask)
    one, m1 = read_ids_file(write(tmp_path, "f.npy", np.array([0, 5, 2], np.int32)))
    assert one.tolist() == [[0, 5, 2]] and m1.tolist() == [[1, 1, 1]]


def test_text_files_name_the_file_and_line(tmp_path):
    assert read_text_lines(write(tmp_path, "t.txt", " a \n\n b\n")) == ["a", "b"]
    with pytest.raises(ArgError, match="is a folder"):
        read_text_lines(tmp_path)


# ---------------------------------------------------------------------------------------
# A Hub id without network: one check, then the hint, instead of ~24 s of retries
@pytest.fixture
def no_network(monkeypatch, tmp_path):
    import huggingface_hub

    import ibert_ref.loading as L

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") + _inputs.PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(L, "is_offline", lambda: False)
    monkeypatch.setattr(_inputs, "_hub_reachable", lambda timeout=3.0: "huggingface.co:443: Name or service not known")

    def no_download(*a, **k):
        raise AssertionError("hf_hub_download must not be called when the Hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    return monkeypatch


@pytest.mark.parametrize("argv", [
    ["run", "hi", "--model", "someorg/somerepo"],
    ["widths", "--text", "hi", "--model", "someorg/somerepo"],
    ["vectors", "--text", "hi", "--model", "someorg/somerepo", "--out", "v"],
    ["calibrate", "--model", "someorg/somerepo", "--texts", "t.txt", "--out", "c"],
    ["convert", "--model", "someorg/somerepo", "--out", "c"],
])
def test_a_hub_id_without_network_fails_at_once_with_the_hint(no_network, files, argv):
    code, _, err = run_cli(argv)
    assert code == 2
    line = one_error_line(err, argv[0])
    assert "'someorg/somerepo'" in line and "cannot be reached" in line
    assert "HF_HUB_OFFLINE=1" in line and "local folder" in line


def test_a_cached_hub_repo_is_used_from_the_cache_when_the_hub_is_unreachable(no_network, capsys):
    import huggingface_hub

    no_network.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    assert hub_preflight("someorg/somerepo") is True
    assert "using the cached copy" in capsys.readouterr().err
    # local paths, offline mode and local_files_only never probe
    assert hub_preflight(".", local_files_only=False) is False
    assert hub_preflight("someorg/somerepo", local_files_only=True) is True


def test_the_reachability_probe_reports_the_socket_error(monkeypatch):
    import socket

    def refuse(*a, **k):
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert "Connection refused" in _inputs._hub_reachable()


# ---------------------------------------------------------------------------------------
def test_argument_types_name_the_problem():
    with pytest.raises(argparse.ArgumentTypeError, match="valid options: acc_bits"):
        _args.profile_option("foo=1")
    assert _args.profile_option(" k_step = NONE ") == "k_step=none"
    assert _args.profile_option("acc_bits=024") == "acc_bits=24"
    assert _args.layer_list(embeddings=True)("emb, 0,3") == {-1, 0, 3}
    with pytest.raises(argparse.ArgumentTypeError):
        _args.layer_list()("emb")
    assert _args.bounded_float(0.0, 1.0, also=(-1.0,))("-1") == -1.0
    with pytest.raises(argparse.ArgumentTypeError, match="out of range"):
        _args.bounded_float(0.0, 1.0)("inf")
    assert _args.printable("caf\udce9 \ud800") == "caf\\xe9 \\ud800"
