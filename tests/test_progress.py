"""ibert_ref.progress: tqdm on a terminal, a start and an end line in a log, nothing when disabled.

No assertion depends on timing: rates and elapsed times are whatever they are.
"""

from __future__ import annotations

import io

import pytest

from ibert_ref import progress as progress_mod
from ibert_ref.progress import Progress, progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def _lines(text):
    return [line for line in text.splitlines() if line]


def test_disabled_writes_nothing_and_still_counts():
    for stream in (io.StringIO(), FakeTerminal()):
        with Progress(4, desc="calibrate", unit="batch", stream=stream, enabled=False) as bar:
            for _ in range(4):
                bar.update()
        assert bar.count == 4
        assert stream.getvalue() == ""
        assert list(progress(range(3), desc="x", stream=stream, enabled=False)) == [0, 1, 2]
        assert stream.getvalue() == ""


def test_not_a_terminal_writes_one_line_at_start_and_one_at_the_end():
    stream = io.StringIO()
    with Progress(3, desc="range search (search)", unit="op", stream=stream) as bar:
        assert _lines(stream.getvalue()) == ["range search (search): 3 op ..."]
        for _ in range(3):
            bar.update()
        assert len(_lines(stream.getvalue())) == 1  # updates draw nothing in a log
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    start, end = _lines(text)
    assert end.startswith("range search (search): 100%")
    assert "3/3" in end and "op/s" in end


def test_terminal_draws_a_tqdm_bar_in_place():
    stream = FakeTerminal()
    with Progress(5, desc="batch 1 seq 8", unit="fwd", stream=stream) as bar:
        bar.update(2)
        bar.update(3)
    text = stream.getvalue()
    assert text.startswith("\rbatch 1 seq 8:   0%")  # tqdm draws the empty bar at once
    assert text.endswith("\n")  # leave=True: the final bar stays on screen
    final = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert final.startswith("batch 1 seq 8: 100%|")
    assert "5/5" in final and "fwd/s" in final
    assert bar.count == 5


def test_width_is_the_bar_width():
    stream = FakeTerminal()
    with Progress(2, desc="w", stream=stream, width=10) as bar:
        bar.update(2)
    final = stream.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert final.split("|")[1] == "#" * 10  # ASCII on a stream without a UTF-8 encoding


def test_unknown_total_counts_without_a_bar():
    for stream in (io.StringIO(), FakeTerminal()):
        items = list(progress((i for i in range(4)), desc="stream", unit="batch", stream=stream))
        assert items == [0, 1, 2, 3]
        text = stream.getvalue()
        final = text.rstrip("\n").rsplit("\r", 1)[-1].splitlines()[-1]
        assert final.startswith("stream: 4batch")
        assert "%" not in final


def test_progress_yields_every_item_and_takes_total_from_len():
    stream = io.StringIO()
    data = ["a", "b", "c"]
    assert list(progress(data, desc="d", stream=stream)) == data
    assert _lines(stream.getvalue())[0] == "d: 3 it ..."
    assert "3/3" in _lines(stream.getvalue())[-1]

    stream = io.StringIO()
    assert list(progress(iter(data), total=3, desc="d", stream=stream)) == data
    assert "3/3" in _lines(stream.getvalue())[-1]


def test_close_is_idempotent_and_runs_on_an_exception():
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(10, desc="boom", stream=stream) as bar:
            bar.update()
            raise RuntimeError("stop")
    bar.close()
    lines = _lines(stream.getvalue())
    assert len(lines) == 2 and "1/10" in lines[1]

    stream = FakeTerminal()
    bar = Progress(2, desc="t", stream=stream)
    bar.update(2)
    bar.close()
    drawn = stream.getvalue()
    bar.close()
    bar.update()  # after close: counted, not drawn
    assert stream.getvalue() == drawn and bar.count == 3


def test_default_stream_is_stderr_and_a_closed_or_odd_stream_is_not_a_terminal(capsys):
    with Progress(1, desc="to-stderr") as bar:
        bar.update()
    captured = capsys.readouterr()
    assert captured.out == "" and "to-stderr" in captured.err

    class NoIsatty:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

    odd = NoIsatty()
    with Progress(1, desc="odd", stream=odd) as bar:
        bar.update()
    assert not bar.interactive and "".join(odd.parts).count("\n") == 2


def test_line_is_tqdm_format():
    bar = Progress(4, desc="x", unit="op", stream=io.StringIO(), enabled=False)
    bar.update(2)
    line = bar.line()
    assert line.startswith("x:  50%|") and "2/4" in line and "op/s" in line


def test_it_is_tqdm():
    assert progress_mod.tqdm.__module__.startswith("tqdm")
