"""Progress for every long step, through one helper, fit for a terminal and for a CI log.

On a terminal: a tqdm bar (left on screen when done).  Without one (a log
file, a CI job): a plain line every few seconds, ``hwloop run: 12/135 batch
(8.9%), 3.2 batch/s, 4 s elapsed, ~38 s left``, and one when it ends, instead
of tqdm's hundreds of carriage-return updates.  Slow starts (imports, exports,
propagations) announce themselves with ``step("loading the model")``, and a command's first import
of torch/onnxruntime with ``importing("hwloop run")``.

Everything goes to stderr, so a command's stdout stays its result.  The
interval of the plain lines is ``HWLOOP_PROGRESS_EVERY`` seconds (default 5).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO


def _every() -> float:
    try:
        return max(0.0, float(os.environ.get("HWLOOP_PROGRESS_EVERY", "5")))
    except ValueError:
        return 5.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts ``done`` out of ``total`` units; shows a bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 enabled: bool = True, stream: TextIO | None = None):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=True)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.set(self.done + n)

    def set(self, done: int, total: int | None = None) -> None:
        """``done`` units done so far (out of ``total``, when it is known only now)."""
        if total is not None:
            self.total = total
        step, self.done = done - self.done, done
        if not self.enabled:
            return
        if self._bar is not None:
            if total is not None:
                self._bar.total = total
            self._bar.update(step)
            return
        now = time.monotonic()
        if now - self._last >= _every():
            self._last = now
            self._line()

    def close(self, quiet: bool = False) -> None:
        """The last line (or the bar's final state); ``quiet``: none (after an error, so it stays one line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif not quiet and self.done > self._initial:
            self._line(final=True)
        self.enabled = False

    def _line(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self._start
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}" + (f"/{self.total} {self.unit}" if self.total else f" {self.unit}")
        if self.total:
            text += f" ({100 * self.done / self.total:.1f}%)"
        text += f", {rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed"
        if not final and self.total and rate > 0:
            text += f", ~{_duration((self.total - self.done) / rate)} left"
        print(text + (" - done" if final else ""), file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(quiet=exc_type is not None)

    def callback(self) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` function for the APIs that report that way."""
        return lambda done, total: self.set(done, total)


@contextmanager
def step(what: str, stream: TextIO | None = None, after: float = 1.0) -> Iterator[None]:
    """Say what a slow step is doing once it has taken ``after`` seconds, and how long it took in the end.

    A step that ends sooner (or fails at once on bad input) prints nothing, so an error stays one line.
    """
    stream = stream or sys.stderr
    start = time.monotonic()
    said = threading.Event()

    def announce() -> None:
        said.set()
        print(f"{what} ...", file=stream, flush=True)

    timer = threading.Timer(after, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if said.is_set():
        print(f"{what}: done in {_duration(time.monotonic() - start)}", file=stream, flush=True)


#: the libraries whose first import makes a command wait seconds before it can say anything
HEAVY = ("torch", "onnxruntime")


@contextmanager
def importing(who: str, modules: tuple[str, ...] = HEAVY, stream: TextIO | None = None) -> Iterator[None]:
    """On a terminal, say at once that ``who`` is importing the ``modules`` not yet loaded, and end the
    line with the time it took: ``hwloop run: importing torch, onnxruntime ... done in 3.1 s``.

    Silent when they are all loaded already (no wait to announce), and without a terminal: in a log the
    line would come before any bad-input error, which must stay one line.
    """
    stream = stream or sys.stderr
    todo = [m for m in modules if m not in sys.modules]
    if not todo or not _is_terminal(stream):
        yield
        return
    start = time.monotonic()
    print(f"{who}: importing {', '.join(todo)} ...", end="", file=stream, flush=True)
    ok = False
    try:
        yield
        ok = True
    finally:
        tail = f" done in {_duration(time.monotonic() - start)}" if ok else ""
        print(tail, file=stream, flush=True)


def announce_imports(who: str, *modules: str) -> None:
    """Import ``modules`` (e.g. ``hwloop.runner``) under ``importing(who)``: the slow start of a command."""
    import importlib

    with importing(who):
        for m in modules:
            importlib.import_module(m)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{s // 60} min {s % 60:02d} s"
