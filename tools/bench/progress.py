"""A small text progress bar on stderr: phase, done/total, rate, ETA.

On a terminal it redraws one line in place; otherwise (a log file, CI) it prints a line
every 10% so the log stays short.
"""

import asyncio
import contextlib
import math
import sys
import time
from types import TracebackType
from typing import Self, TextIO

WIDTH = 24
REDRAW_SECONDS = 0.25


def status(prefix: str, message: str, *, quiet: bool = False) -> None:
    """A timestamped status line on stderr (none with ``quiet``)."""
    if not quiet:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Progress:
    """``async with Progress("saga", 200) as bar: ... bar.advance()``."""

    def __init__(
        self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None
    ):
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.enabled = enabled
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._started = time.perf_counter()
        self._last_decile = 0
        self._last_printed = -1
        self._drawn_width = 0
        self._task: asyncio.Task[None] | None = None

    def advance(self, count: int = 1) -> None:
        self.done += count

    async def __aenter__(self) -> Self:
        self._started = time.perf_counter()
        if self.enabled:
            self._task = asyncio.create_task(self._redraw_forever())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.enabled:
            self._draw(final=True)

    def line(self) -> str:
        """The bar as text, e.g. ``saga  [#####...]  120/200  21.3/s  ETA 0:04``."""
        elapsed = time.perf_counter() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        fraction = self.done / self.total if self.total else 1.0
        filled = min(WIDTH, int(WIDTH * fraction))
        bar = "#" * filled + "." * (WIDTH - filled)
        if self.done >= self.total:
            eta = f"in {elapsed:.1f}s"
        elif rate > 0:
            left = math.ceil((self.total - self.done) / rate)
            eta = f"ETA {left // 60}:{left % 60:02d}"
        else:
            eta = "ETA ?"
        return f"{self.label:<18} [{bar}] {self.done:>6}/{self.total:<6} {rate:7.1f}/s  {eta}"

    def _draw(self, *, final: bool = False) -> None:
        if self._tty:
            # Padded to the longest line so far: a shorter one must not leave a tail behind.
            text = self.line()
            self._drawn_width = max(self._drawn_width, len(text))
            self._stream.write("\r" + text.ljust(self._drawn_width) + ("\n" if final else ""))
            self._stream.flush()
            return
        # A line at each new tenth done, and a last one unless that was it already.
        decile = 10 * self.done // self.total if self.total else 10
        if (final and self.done != self._last_printed) or (decile > max(self._last_decile, 0)):
            self._last_decile, self._last_printed = decile, self.done
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    async def _redraw_forever(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(REDRAW_SECONDS)
