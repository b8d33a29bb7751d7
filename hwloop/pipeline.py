"""A software pipeline of threads: stage s of item i runs while stage s+1 works on item i-1.

Why: when a run's layers sit on remote devices (chips behind a bench
controller), each device would otherwise wait while the others measure.  The
runner gives every analog layer (and the glue after it) a stage and the
recording the last one; this module knows nothing of models, only of items
handed on in order between stages, of errors and of Ctrl-C.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


def run_pipeline(n_items: int, n_stages: int, work: Callable[[int, int], None], overlap: bool,
                 on_interrupt: Callable[[], object] = lambda: None) -> None:
    """Call ``work(stage, item)`` for every stage of every item, an item's stages in order.

    Without ``overlap``: item by item.  With it, a software pipeline: one thread per stage,
    each taking items in order from the stage before (at most one waiting between two stages),
    so the stages work on successive items at once.  When a stage fails, the stages after it
    finish the items they already have and the run stops with its error; Ctrl-C stops every
    stage after its current step, which ``on_interrupt`` can cut short (the devices' ``interrupt``).
    """
    if not overlap:
        for i in range(n_items):
            for s in range(n_stages):
                work(s, i)
        return
    _Pipeline(n_items, n_stages, work).run(on_interrupt)


class _Pipeline:
    """The threads of one overlapped pipeline, the queues between them and their stop signals."""

    def __init__(self, n_items: int, n_stages: int, work: Callable[[int, int], None]):
        self.n_items, self.n_stages, self.work = n_items, n_stages, work
        self.queues = [queue.Queue(maxsize=1) for _ in range(n_stages)]
        self.halted = [threading.Event() for _ in range(n_stages)]     # stage s must not start another item
        self.finished = [threading.Event() for _ in range(n_stages)]
        self.errors: list[tuple[int, BaseException]] = []

    def hand_on(self, s: int, item: int | None) -> bool:
        """Pass ``item`` (None: no more) to stage s; False when stage s was halted meanwhile."""
        while not self.halted[s].is_set():
            try:
                self.queues[s].put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def taken(self, s: int):
        """The items stage s gets, until the stage before says there are no more or s is halted."""
        if s == 0:
            yield from range(self.n_items)
            return
        while not self.halted[s].is_set():
            try:
                item = self.queues[s].get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def stage(self, s: int) -> None:
        last = s + 1 == self.n_stages
        try:
            for i in self.taken(s):
                if self.halted[s].is_set():
                    return
                self.work(s, i)
                if not last and not self.hand_on(s + 1, i):
                    return
        except BaseException as e:      # noqa: B036 -- reported by the caller's thread
            self.errors.append((s, e))
            for t in range(s + 1):
                self.halted[t].set()
        finally:
            if not last:
                self.hand_on(s + 1, None)
            self.finished[s].set()

    def run(self, on_interrupt: Callable[[], object]) -> None:
        # Waiting on events, not Thread.join: a Ctrl-C inside join() makes Python 3.11 think the
        # thread ended (bpo-45274's fix releases its lock), and the run would go on without it.
        for s in range(self.n_stages):
            threading.Thread(target=self.stage, args=(s,), name=f"hwloop-stage-{s}", daemon=True).start()
        interrupted = False
        for ev in self.finished:
            while not ev.is_set():
                try:
                    ev.wait(0.1)              # a timeout: Python runs signal handlers between waits
                except KeyboardInterrupt:     # every stage stops after its current step
                    interrupted = True
                    for h in self.halted:
                        h.set()
                    on_interrupt()
        if interrupted:
            raise KeyboardInterrupt
        if self.errors:
            raise min(self.errors, key=lambda e: e[0])[1]
