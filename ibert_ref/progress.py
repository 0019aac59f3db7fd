"""Progress bars on stderr, drawn by tqdm: ``for b in progress(batches, desc="calibrate"): ...``.

On a terminal the bar is tqdm's, redrawn in place. When the stream is not a terminal (a log file,
CI) no bar is drawn; one line is written when the work starts and one when it ends (count, elapsed
time, rate), so logs stay readable. ``enabled=False`` silences both.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Optional, TextIO

from tqdm import tqdm


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """A bar over ``total`` units of work; ``total=None`` counts without a bar.

    Use as a context manager (or call :meth:`close`), and call :meth:`update` after each unit.
    ``count`` is the number of units done so far, whether or not anything is drawn.
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
        self.interactive = _is_tty(self.stream)
        self.width = width
        self.count = 0
        self.start = time.perf_counter()
        self._bar: Optional[tqdm] = None
        if not self.enabled:
            return
        if self.interactive:
            # width: the bar itself, in characters (tqdm's {bar:N}); the rest of the line is tqdm's
            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=self.stream,
                mininterval=0.1,
                leave=True,
                disable=False,  # explicit: `enabled` decides, whatever TQDM_DISABLE says
                bar_format=f"{{l_bar}}{{bar:{width}}}{{r_bar}}" if total else None,
            )
        else:
            self._write(f"{self.desc}: {self.total if self.total is not None else '?'} {self.unit} ...\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self) -> str:
        """The current status line, as tqdm formats it (ASCII, no ``\\r``)."""
        return tqdm.format_meter(
            self.count,
            self.total,
            time.perf_counter() - self.start,
            prefix=self.desc,
            unit=self.unit,
            ascii=True,
            ncols=None,
            bar_format=f"{{l_bar}}{{bar:{self.width}}}{{r_bar}}" if self.total else None,
        )

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Draw the final state (a last line when not on a terminal); later calls do nothing."""
        if not self.enabled:
            return
        self.enabled = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self._write(self.line() + "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it", **kw):
    """Yield from ``iterable`` while drawing a :class:`Progress` bar (``total`` from ``len()``).

    ``**kw`` goes to :class:`Progress` (``stream``, ``enabled``, ``width``).
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc=desc, unit=unit, **kw) as bar:
        for item in iterable:
            yield item
            bar.update()
