"""Measuring on a described bench: the jobs of a run, streamed or step by step, checked and stored.

A run is a list of ``Job``s (a tile of the layer on a block of rows and
repetitions).  On one instrument whose dialect waits with ``*OPC?`` (ANB), a
measurement is one round trip: inputs, repetitions and trigger, then the
wait, fetch-shape, fetch, clip-flag and error queries written together and
their replies read in order; the next measurement of the same tile is
written from the link's writer thread while this one's replies are read.
A dialect that polls a status query streams the same way, its first poll
written with the measurement: once a poll reads idle, the fetch and error
queries are written, then the next measurement (which the controller, handling
messages in order, reads only after it has answered them) while this one's
result is read and parsed; the messages are the same, in the same order, as
step by step.
Otherwise (a timed wait, several instruments, pyvisa's own calls)
each measurement goes step by step: the setup messages of one instrument in
one write, the triggers in the description's order (each instrument settled
before the next acts), the wait, then the result and the error query
together.  After a failure the first measurement is made command by command,
each checked, so an error that persists names the command that caused it.
"""

from __future__ import annotations

import time
import warnings
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from ..errors import DeviceError, HwloopError
from .link import Link, ScpiError, _no_interrupt, _Retry

AXES = ("repeat", "sample", "neuron")


@dataclass
class Job:
    """One measurement of a run: a tile of the layer on a block of rows and repetitions."""

    tile: int                 # index into the plan's tiles
    n_out: int                # the tile's outputs
    xs: np.ndarray            # the inputs as sent (divided by s_x)
    s_x: float                # the input scale (power of two, 1 when none was needed)
    k: int                    # repetitions
    slot: np.ndarray          # where the results go in the run's output array
    into: np.ndarray | None   # ``slot`` itself when the reply can be read straight into it

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.k, len(self.xs), self.n_out


class Measuring:
    """The measuring half of ``DescribedDevice`` (``hwloop.bench.driver``)."""

    links: dict[str, Link]

    # -- what the description says --------------------------------------------------
    @property
    def _meas(self) -> dict:
        return self.desc.section("measure")

    def _triggers(self) -> list[str]:
        t = self._meas["trigger"]
        return t if isinstance(t, list) else [t]

    def _link_of(self, template: str) -> Link:
        return self.links[self.desc.role(template)[0] or self.main_role]

    @property
    def streams(self) -> bool:
        """One round trip per measurement, the next written while this one is read (see the module docstring)."""
        wait = self._meas["wait"]
        return len(self.links) == 1 and ("opc" in wait or "poll" in wait) and self.link.can_write_behind

    def _setup(self, job: Job) -> list[tuple[str, dict]]:
        m = self._meas
        return [(m["inputs"], {"values": job.xs})] + ([(m["repeats"], {"k": job.k})] if m.get("repeats") else [])

    def _end_queries(self) -> list[str]:
        """The queries that end a streamed measurement, their replies read in this order (a polled
        wait: written once a poll reads idle)."""
        m = self._meas
        return [*[q for q in (m["wait"].get("opc"), m["fetch"].get("shape"), m["fetch"]["query"],
                              (m.get("clip") or {}).get("query")) if q], self.desc.data["errors"]["query"]]

    def _measurement_name(self) -> str:
        m = self._meas
        words = [t for t, _ in [(m["inputs"], 0), (m.get("repeats"), 0)] if t] + self._triggers()
        words += [m["wait"].get("opc") or m["wait"].get("poll") or "", m["fetch"]["query"]]
        return "measurement (" + ", ".join(self.desc.header(w) for w in words if w) + ")"

    # -- the run --------------------------------------------------------------------
    def _measure_jobs(self, jobs: list[Job], done: list[int]) -> None:
        """Measure ``jobs[done[0]:]`` in order, storing each result and advancing ``done[0]``."""
        with _no_interrupt() as hit:
            interrupted = lambda: bool(hit) or self._interrupted.is_set()   # noqa: E731
            while done[0] < len(jobs) and not interrupted():
                job = jobs[done[0]]
                if self._careful or not self.streams:
                    self._store(job, self._measure_stepwise(job, careful=self._careful))
                    done[0] += 1
                    self._careful = False
                    continue
                self._stream(jobs, done, interrupted)
        if self._interrupted.is_set():
            self._interrupted.clear()
            raise KeyboardInterrupt

    def _stream(self, jobs: list[Job], done: list[int], interrupted) -> None:
        """Measurements of one tile (and input scale) back to back: each next one written while this one is read."""
        job = jobs[done[0]]
        self._ensure(job.tile, job.s_x)
        self._write_measurement(job)
        while job is not None:
            i = done[0]
            nxt = jobs[i + 1] if i + 1 < len(jobs) and not interrupted() else None
            if nxt is not None and not (nxt.tile == job.tile and (self.plan.host or nxt.s_x == job.s_x)):
                nxt = None                     # a different tile or bias: program first
            if "poll" in self._meas["wait"]:
                self._poll(self.link, job)     # the first poll went with the measurement
                self.link.send_queries(self._end_queries())
            pending = None
            if nxt is not None:
                pending = self.link.write_behind(lambda j=nxt: self._write_measurement(j, behind=True))
                self.stats["written_behind"] += 1
            try:
                self._store(job, self._read_measurement(job, more_in_flight=pending is not None))
            except BaseException:
                if pending is not None:       # its replies must never be read as others'
                    with suppress(Exception):
                        self.link.end_write(pending, abort=True)
                raise
            done[0] = i + 1
            if pending is not None:
                try:
                    self.link.end_write(pending, abort=False)
                except (_Retry, HwloopError):
                    raise
                except Exception as e:
                    raise _Retry(f"writing the next measurement: {e}") from None
            job = nxt

    def _write_measurement(self, job: Job, behind: bool = False) -> None:
        for template, fields in self._setup(job) + [(t, {}) for t in self._triggers()]:
            self.link.send(template, deadline=not behind, **fields)
        polled = self._meas["wait"].get("poll")
        self.link.send_queries([polled] if polled else self._end_queries(), deadline=not behind)

    def _opc_timeout(self, job: Job) -> int:
        """The wait covers the whole measurement: 20 us per evaluation at the ANB manual's timing."""
        return self._timeout(20e-6 * job.k * len(job.xs))

    def _read_measurement(self, job: Job, more_in_flight: bool) -> np.ndarray:
        """The replies of a measurement written by ``_write_measurement``, every one read, in order.

        ``more_in_flight``: the next measurement's replies follow on the stream, so the error queue
        is not drained here (the reconnect before the retry clears it)."""
        link, m, t0 = self.link, self._meas, time.perf_counter()
        opc = link.reply(m["wait"]["opc"], str, self._opc_timeout(job)) if "opc" in m["wait"] else "idle"
        shape = link.reply(m["fetch"]["shape"], self._ints) if m["fetch"].get("shape") else job.shape
        y = self._fetch_reply(link, job, ok=tuple(shape or ()) == job.shape)
        clip = link.reply(m["clip"]["query"], int) if m.get("clip") else 0
        err = self._error_reply(link)
        if err is None or err[0]:
            errors = [err] + ([] if more_in_flight else link.drain()) if err else []
            raise ScpiError(self._measurement_name(), errors)
        if opc is None:
            raise _Retry(f"{m['wait']['opc']}: empty reply and no error queued")
        return self._accept(job, shape, y, clip, t0)

    def _fetch_reply(self, link: Link, job: Job, ok: bool) -> np.ndarray | None:
        """The fetched values in (repeat, sample, neuron); ``ok`` False (the controller reported another
        shape): read whatever came, unchecked, so the stream stays in step (``_accept`` refuses it)."""
        order = self._meas["fetch"].get("order", list(AXES))
        straight = list(order) == list(AXES)
        if not ok:
            return link.values_reply(self._meas["fetch"]["query"])
        y = link.values_reply(self._meas["fetch"]["query"], int(np.prod(job.shape)),
                              job.into if straight else None, self._check_values)
        if y is None or straight:
            return y
        sizes = dict(zip(AXES, job.shape))
        y = y.reshape([sizes[a] for a in order])
        return np.ascontiguousarray(y.transpose([order.index(a) for a in AXES]))

    def _error_reply(self, link: Link) -> tuple[int, str] | None:
        """The reply to the error query (sent already): (0, "") for none, None for an empty line."""
        query = self.desc.data["errors"]["query"]
        line = link.reply(query)
        if line is None:
            return None
        try:
            return self.desc.error(line) or (0, "")
        except ValueError:
            raise _Retry(f"{query}: unreadable reply {line[:40]!r}") from None

    def _measure_stepwise(self, job: Job, careful: bool = False) -> np.ndarray:
        """One measurement, step by step (see the module docstring); ``careful``: after a failure, each
        setup message and trigger is followed by its instrument's error query."""
        d, m, t0 = self.desc, self._meas, time.perf_counter()
        self._ensure(job.tile, job.s_x)
        wait = m["wait"].get("poll") or m["wait"].get("opc")
        triggers = self._triggers()
        after = [d.role(t)[0] for t in triggers[1:]] + [d.role(wait)[0] if wait else "the delay"]
        for i, (trigger, next_role) in enumerate(zip(triggers, after)):   # in the order the description gives
            for template, fields in (self._setup(job) if i == 0 else []):
                link = self._link_of(template)
                link.send(template, **fields)
                if careful:
                    link.check(d.header(template))
            link = self._link_of(trigger)
            link.send(trigger)
            if careful or next_role != d.role(trigger)[0]:
                self._settled(link)         # another instrument is next: this one must have acted first
        self._wait(m["wait"], job)
        link = self._link_of(m["fetch"]["query"])
        link.send_queries([m["fetch"]["query"], d.data["errors"]["query"]])   # one round trip
        y = self._fetch_reply(link, job, ok=True)
        err = self._error_reply(link)
        if err is None or err[0]:
            where = f" ({link.role})" if len(self.links) > 1 else ""
            raise _Retry(f"measurement: controller error{where} {err[0] if err else '(empty reply)'}, "
                         f"{err[1] if err else ''!r}")
        for other in self.links.values():
            if other is not link:
                self._settled(other)
        clip = self._link_of(m["clip"]["query"]).query(m["clip"]["query"], int) if m.get("clip") else 0
        return self._accept(job, job.shape, y, clip, t0)

    def _settled(self, link: Link, what: str = "trigger") -> None:
        """The error query of ``link``: its earlier messages have been handled, and none failed."""
        errors = link.drain()
        if errors:
            where = f" ({link.role})" if len(self.links) > 1 else ""
            raise _Retry(f"{what}: controller error{where} {errors[0][0]}, {errors[0][1]!r}")

    def _wait(self, wait: dict, job: Job) -> None:
        if "delay_s" in wait:
            time.sleep(wait["delay_s"])
        elif "opc" in wait:
            self._link_of(wait["opc"]).query(wait["opc"], str, self._opc_timeout(job))
        else:
            link = self._link_of(wait["poll"])
            link.send_queries([wait["poll"]])
            self._poll(link, job)

    def _poll(self, link: Link, job: Job) -> None:
        """Read the status query's reply (sent already) and poll again until it reads idle."""
        wait = self._meas["wait"]
        deadline = time.monotonic() + self._opc_timeout(job) / 1000
        while (state := link.reply(wait["poll"])) != wait.get("until", "0"):
            if state is None:
                raise ScpiError(wait["poll"], link.drain())
            if time.monotonic() > deadline:
                raise _Retry(f"{wait['poll']}: still busy after {self._opc_timeout(job)} ms")
            time.sleep(wait.get("interval_s", 0.001))
            link.send_queries([wait["poll"]])

    # -- results --------------------------------------------------------------------
    def _accept(self, job: Job, shape, y: np.ndarray | None, clip: int | None, t0: float) -> np.ndarray:
        """Check a measurement's replies, count it, and act on the clip flag."""
        want = job.shape
        if shape is None or tuple(shape) != want:
            raise _Retry(f"{self._meas['fetch'].get('shape')} {shape} != expected {want}")
        if y is None or y.size != int(np.prod(want)) or clip is None:
            raise _Retry(f"{self._meas['fetch']['query']}: {None if y is None else y.size} values, "
                         f"expected {int(np.prod(want))}")
        st = self.stats
        st["measurements"] += 1
        st["bytes_sent"] += job.xs.nbytes
        st["bytes_fetched"] += y.nbytes
        st["io_s"] += time.perf_counter() - t0
        if clip & (self._meas.get("clip") or {}).get("mask", 1):
            st["clipped"] += 1
            msg = (f"layer {self.layer.name!r}: the chip's ADC clipped at {self.limits['output_range']} "
                   f"({self._meas['clip']['query']} bit 0)")
            if self.settings.on_clip == "error":
                raise DeviceError(msg + "; scale the layer down, or pass on_clip='warn' to record and go on")
            warnings.warn(msg, stacklevel=5)
        return y.reshape(want)

    def _store(self, job: Job, y: np.ndarray) -> None:
        """Undo the scaling and put a measurement in its place (tiles' partial sums add up)."""
        scale = np.float32(job.s_x * self.plan.weight_scale)
        if job.into is not None and np.shares_memory(y, job.into):
            if scale != 1:
                job.slot *= scale
        elif self.plan.host:
            job.slot += y * scale if scale != 1 else y
        else:
            job.slot[...] = y * scale if scale != 1 else y

    def _check_values(self, y: np.ndarray) -> None:
        """Detect a garbled reply: non-finite, outside the ADC range, or off the ADC grid.

        Each cache-sized piece is mapped to ADC codes q = (y - lo) / step in scratch memory;
        the nearest integers must lie in [0, 2^bits - 1] (NaN fails too) and q within 0.05 of them.
        """
        lo, hi = self.limits["output_range"]
        bits = self.limits["output_bits"]
        if not bits:
            if not np.all(np.isfinite(y)) or y.min(initial=lo) < lo or y.max(initial=hi) > hi:
                raise _Retry("values outside the ADC range (garbled reply)")
            return
        top = 2 ** bits - 1
        inv = np.float32(top / (hi - lo))
        shift = np.float32(-lo) * inv
        q_buf, r_buf = self._scratch
        for i in range(0, y.size, q_buf.size):
            p = y[i:i + q_buf.size]
            with np.errstate(over="ignore", invalid="ignore"):   # garbage may overflow: it fails below
                q = np.multiply(p, inv, out=q_buf[:p.size])
                q += shift
                r = np.rint(q, out=r_buf[:p.size])
            if not (r.min() >= 0 and r.max() <= top):
                raise _Retry(f"{self._meas['fetch']['query']}: values outside the ADC range [{lo:g}, {hi:g}] "
                             "(garbled reply)")
            if self.settings.verify_grid and bits <= 20:
                q -= r
                if float(np.abs(q, out=q).max()) > 0.05:
                    raise _Retry(f"{self._meas['fetch']['query']}: values off the ADC grid (garbled reply)")
