"""A tiny progress bar on stderr (no dependency): ``for b in progress(batches, desc="calibrate"): ...``.

Drawn in place with ``\\r`` when the stream is a terminal; when it is not (a log file, CI), one
line is printed at the start and one at the end, so logs stay readable. ``enabled=False``
silences it.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Optional, TextIO


class Progress:
    """``count / total`` with a bar, the rate and the elapsed time.

    Use as a context manager, call :meth:`update` after each unit of work.
    """

    def __init__(
        self,
        total: Optional[int],
        desc: str = "",
        unit: str = "it",
        stream: Optional[TextIO] = None,
        enabled: Optional[bool] = None,
        width: int = 30,
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = True if enabled is None else bool(enabled)
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        if self.enabled and not self.interactive:
            self._write(f"{self.desc}: {self.total if self.total is not None else '?'} {self.unit} ...\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self) -> str:
        """The current status line (without ``\\r``)."""
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            done = int(self.width * min(self.count, self.total) / self.total)
            bar = "#" * done + "." * (self.width - done)
            return f"{self.desc} [{bar}] {self.count}/{self.total} {self.unit} {elapsed:6.1f}s {rate:6.2f} {self.unit}/s"
        return f"{self.desc} {self.count} {self.unit} {elapsed:6.1f}s {rate:6.2f} {self.unit}/s"

    def update(self, n: int = 1) -> None:
        self.count += n
        if not (self.enabled and self.interactive):
            return
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or (self.total is not None and self.count >= self.total):
            self._last_draw = now
            self._write("\r" + self.line())

    def close(self) -> None:
        if not self.enabled:
            return
        if self.interactive:
            self._write("\r" + self.line() + "\n")
        else:
            self._write(self.line() + "\n")
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it", **kw):
    """Yield from ``iterable`` while drawing a :class:`Progress` bar (``total`` from ``len()``)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc=desc, unit=unit, **kw) as bar:
        for item in iterable:
            yield item
            bar.update()
