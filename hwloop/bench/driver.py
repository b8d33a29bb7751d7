"""``VisaDevice``: runs an analog layer on an ANB-series chip through pyvisa (SCPI.md).

The device: programming, measuring, retries.  The transport is ``link.Link``,
the tiles, chunks and range scaling are ``plan``.

The driver calls commands by name from ``scpi.COMMANDS``; it never formats
SCPI text itself.  A measurement is one round trip, whatever the batch: ``INP``
block, ``SAMP:COUN``, ``INIT``, then ``*OPC?``, ``FETC:SHAP?``, ``FETC?``,
``STAT:QUES:COND?`` and ``SYST:ERR?`` written together, their replies read in
order (after a failure, each command is checked on its own instead).

Exact range mapping (``hwloop.bench.plan``; on by default, ``strict_ranges``
refuses instead): values outside the chip's ranges are divided by a power of
two s (exact in float32) and the chip's outputs multiplied by s on the host.
That is exact for LINear and RELU (act(z/s)*s = act(z)); a SIGMoid/TANH layer
whose weights need it runs LINear on the chip with bias and activation applied
on the host, as tiles do (``host_activation`` asks for that placement always).
The ADC step grows by s; the console says so once, and ``describe()`` records
the placement and every scale used.

Faults (timeouts, dropped connections, garbled blocks, SCPI errors) are
retried with bounded exponential back-off: the link reconnects (a fresh
socket, so a stale reply can never be read as the next answer), re-checks the
programmed layer by checksum, reprograms it if the chip lost it, and re-runs
only the unfinished measurement.  When retries run out: ``DeviceError``.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..devices.base import Device, check_input
from ..errors import DeviceError, HwloopError
from ..layer import AnalogLayer, activate
from . import scpi
from .link import Link, ScpiError, _no_interrupt, _Retry  # noqa: F401 (ScpiError re-exported)
from .plan import HOMOGENEOUS, Tile, chunks_for, input_scale, plan_layer, tiles_for  # noqa: F401 (re-exported)

_SCPI_ACT = {v: scpi.short(k).upper() for k, v in scpi.ACTIVATIONS.items()}


@dataclass
class _Job:
    """One measurement of a run: a tile of the layer on a block of rows and repetitions."""

    tile: tuple               # an entry of VisaDevice._tiles: (Tile, weights, bias, programming key)
    xs: np.ndarray            # the inputs as sent (divided by s_x)
    s_x: float                # the input scale (power of two, 1 when none was needed)
    k: int                    # repetitions
    slot: np.ndarray          # where the results go in the run's output array
    into: np.ndarray | None   # ``slot`` itself when the block can be read straight into it

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.k, len(self.xs), self.tile[1].shape[0]

    @property
    def commands(self) -> tuple:
        """Its program messages as (name, args, block): load the inputs, set the count, start."""
        return ("input", (), self.xs), ("count", (self.k,), None), ("initiate", (), None)


#: the queries that end a measurement, their replies read in this order
_MEASUREMENT_QUERIES = ("opc", "fetch_shape", "fetch", "questionable", "error")


#: round trips (waits for a reply) per measurement (its five queries go out together) and per tile
#: programming (LAY:SHAP, WEIG + *OPC?, WEIG, WEIG:CHEC?, ACT and BIAS each followed by a check)
ROUND_TRIPS_PER_MEASUREMENT = 1
ROUND_TRIPS_PER_PROGRAMMING = 6


# -- the device ----------------------------------------------------------------------
class VisaDevice(Device):
    """A chip on a bench controller, reached through pyvisa; see the module docstring.

    ``retries``: attempts after the first for each measurement and each
    (re)connection; back-off doubles from ``backoff_s`` up to ``max_backoff_s``.
    ``on_clip``: ``"error"`` (default) or ``"warn"`` when the ADC clipped.
    ``raw_socket``: on a pyvisa-py TCP socket, move blocks on the socket itself (about ten times
    pyvisa's read rate) and stream measurements; False: pyvisa's own calls only, as for any
    other VISA resource (USB, GPIB, another backend), which also get that path by themselves.
    ``visa_library``: ``"@py"``, ``"@ivi"``, ``"@sim"``, ``"FILE.yaml@sim"`` or a library path
    (``hwloop.bench.visalib``).
    """

    def __init__(self, resource: str, *, timeout_ms: int = 5000, scale_inputs: bool = True,
                 scale_weights: bool = True, strict_ranges: bool = False, host_activation: bool = False,
                 retries: int = 5, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0, on_clip: str = "error", byte_order: str = "SWAP",
                 max_block_bytes: int = 32 << 20, verify_grid: bool = True, raw_socket: bool = True,
                 visa_library: str = "@py", link: Link | None = None):
        if on_clip not in ("error", "warn"):
            raise HwloopError(f"VisaDevice {resource}: on_clip must be 'error' or 'warn', not {on_clip!r}")
        if byte_order not in ("SWAP", "NORM"):
            raise HwloopError(f"VisaDevice {resource}: byte_order must be 'SWAP' or 'NORM'")
        self.resource = resource
        if strict_ranges:
            scale_inputs = scale_weights = False
        self.options = dict(timeout_ms=timeout_ms, scale_inputs=scale_inputs, scale_weights=scale_weights,
                            strict_ranges=strict_ranges, host_activation=host_activation,
                            retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                            on_clip=on_clip, byte_order=byte_order, max_block_bytes=max_block_bytes,
                            verify_grid=verify_grid, raw_socket=raw_socket, visa_library=visa_library)
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.scale_inputs, self.scale_weights = scale_inputs, scale_weights
        self.host_activation = host_activation
        self.plan = None
        self.input_scales: dict[float, int] = {}   # input scale (power of two, 1: none) -> measurements
        self._noted: set[str] = set()
        self.on_clip, self.max_block_bytes, self.verify_grid = on_clip, max_block_bytes, verify_grid
        self.link = link or Link(resource, timeout_ms=timeout_ms, byte_order=byte_order,
                                 connect_retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                 raw_socket=raw_socket, visa_library=visa_library)
        self.link.users += 1
        self.layer = None
        self.stats = {"measurements": 0, "retries": 0, "reprograms": 0, "clipped": 0,
                      "bytes_sent": 0, "bytes_fetched": 0, "io_s": 0.0, "written_behind": 0}
        self._faults: list[str] = []
        self._scratch = (np.empty(1 << 16, np.float32), np.empty(1 << 16, np.float32))   # for _check_values
        self._interrupted = threading.Event()     # Ctrl-C seen by the runner while run() streams
        self._careful = False                 # after a failure: SYST:ERR? after every command
        self._temperature: float | None = None
        self._closed = False

    def sibling(self) -> "VisaDevice":
        """Another device on the same controller (same connection), e.g. for a second layer."""
        return VisaDevice(self.resource, link=self.link, **self.options)

    remote = True

    @property
    def hardware(self) -> object:
        """The controller's connection: sibling devices on one chip share it."""
        return self.link

    @property
    def limits(self) -> dict:
        return self.link.limits

    def _plan_limits(self) -> dict:
        """The chip's limits for ``plan_layer``: its activations by hwloop name."""
        lim = self.limits
        return {**lim, "activations": {k for k, v in _SCPI_ACT.items() if v in lim["activations"]}}

    def twin(self, profile, name: str = "twin") -> Device:
        """An emulator under ``profile`` that runs every layer with this chip's plan (``hwloop.bench.twin``)."""
        from .twin import PlannedTwin

        return PlannedTwin(profile, self._plan_limits(), scale_weights=self.scale_weights,
                           scale_inputs=self.scale_inputs, host_activation=self.host_activation,
                           max_block_bytes=self.max_block_bytes, name=name)

    # -- programming ----------------------------------------------------------
    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        """Plan tiles and scaling for ``layer``, refuse what the chip cannot do, and load it."""
        plan = plan_layer(layer, self._plan_limits(), scale=self.scale_weights,
                          host_activation=self.host_activation, chip=f"chip {self.resource}")
        for note in plan.notes:           # on the console once, and in describe() (the run's provenance)
            if note not in self._noted:
                self._noted.add(note)
                warnings.warn(note, stacklevel=3)
        self.layer, self.plan = layer, plan
        self._host, self._s_w, self._bias = plan.host, plan.weight_scale, plan.bias
        self._tiles = [(tp.tile, tp.weights, tp.bias,
                        (tp.weights.shape, scpi.weights_checksum(tp.weights), _SCPI_ACT[tp.activation]))
                       for tp in plan.tiles]
        self._retrying(lambda: self._ensure(self._tiles[0]), f"programming layer {layer.name!r}")
        self._temperature = self._retrying(lambda: self.link.query("temperature"), "SYST:TEMP?")

    def _ensure(self, tile, s_x: float = 1.0) -> None:
        """Make sure the chip holds ``tile`` (bias divided by ``s_x``): verify by checksum after a
        fault, reprogram what was lost, and resend the bias alone when only its scale changed."""
        _, wt, bt, key = tile
        bias = bt / np.float32(s_x) if s_x != 1 else bt
        bias_key = scpi.weights_checksum(bias)
        link = self.link
        if link.loaded == key and not link.verified:
            ok = (link.query("shape?") == wt.shape and link.query("checksum") == key[1]
                  and link.query("activation?") == key[2])
            if ok and scpi.weights_checksum(link.query_block("bias?", wt.shape[0])) != link.bias:
                link.bias = None
            link.verified = ok
            if not ok:
                self.stats["reprograms"] += 1
                link.loaded = None
        if link.loaded != key:
            link.loaded, link.bias, link.verified = None, None, False
            link.send("shape", *wt.shape)
            link.check("LAY:SHAP")
            link.send("weights", block=wt)
            link.query("opc", timeout_ms=self._timeout(0.05 + 1e-6 * wt.size))
            link.check("WEIG")
            got = link.query("checksum")
            if got != key[1]:
                raise _Retry(f"WEIG:CHEC? {got} != host CRC-32 {key[1]} of the weights sent")
            link.send("activation", key[2])
            link.check("ACT")
            link.loaded, link.verified = key, True
        if link.bias != bias_key:
            link.send("bias", block=bias)
            link.check("BIAS")
            link.bias = bias_key

    def _timeout(self, seconds: float) -> int:
        """Reply timeout for an overlapped operation of up to ``seconds`` (at the manual's timing)."""
        return int(self.link.timeout_ms + 2000 * seconds)

    # -- running --------------------------------------------------------------
    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)
        r_in, b, n_in = x.shape
        rows = x[0] if r_in == 1 else x.reshape(r_in * b, n_in)
        k = repeats if r_in == 1 else 1
        # host: tiles' partial sums add up in ``out``; else one tile's measurements fill all of it
        out = (np.zeros if self._host else np.empty)((k, len(rows), self.layer.n_out), np.float32)
        lim = self.limits
        jobs = []
        for tile in self._tiles:
            t = tile[0]
            for c in chunks_for(len(rows), k, t.rows.stop - t.rows.start, lim["max_batch"],
                                lim["max_repeats"], self.max_block_bytes):
                rs, ks = c.rows, c.repeats
                xs, s_x = self._scaled_inputs(rows[rs, t.cols])
                slot = out[ks, rs, t.rows]
                jobs.append(_Job(tile, xs, s_x, ks.stop - ks.start, slot,
                                 slot if not self._host and slot.flags.c_contiguous else None))
        done = [0]
        self._interrupted.clear()
        self._retrying(lambda: self._measure_jobs(jobs, done), f"measurement of layer {self.layer.name!r}",
                       progress=lambda: done[0])
        if self._host:
            out += self._bias
            out = activate(self.layer.activation, out)
        return out if r_in == 1 else out.reshape(r_in, b, -1)

    def _scaled_inputs(self, xs: np.ndarray) -> tuple[np.ndarray, float]:
        s = input_scale(xs, self.limits["input_range"], scale=self.scale_inputs,
                        homogeneous=self._host or self.layer.activation in HOMOGENEOUS, layer=self.layer.name,
                        chip=f"chip {self.resource}")
        self.input_scales[s] = self.input_scales.get(s, 0) + 1
        return np.ascontiguousarray(xs if s == 1 else xs / np.float32(s)), s

    def _measure_jobs(self, jobs: list[_Job], done: list[int]) -> None:
        """Measure ``jobs[done[0]:]`` in order, storing each result and advancing ``done[0]``.

        A measurement is INP, SAMP:COUN, INIT, then the queries *OPC?, FETC:SHAP?, FETC?,
        STAT:QUES:COND? and SYST:ERR? written together, their replies read in order: one round
        trip.  Measurements of the same tile are streamed: the next one's messages are written
        (from the link's writer thread) while this one's replies are read, so the controller,
        which handles messages in order, finds its next input waiting as soon as it has sent this
        result; ``INPut`` clears a measurement only after its ``FETCh?`` was answered.  Programming
        a tile waits until nothing is in flight.  After a failure (``_careful``) the first
        measurement is made command by command instead, each followed by ``SYST:ERR?``, so an
        error that persists is reported with the command that caused it.
        """
        with _no_interrupt() as hit:
            interrupted = lambda: bool(hit) or self._interrupted.is_set()   # noqa: E731
            while done[0] < len(jobs) and not interrupted():
                job = jobs[done[0]]
                if self._careful:
                    self._store(job, self._measure_carefully(job))
                    done[0] += 1
                    self._careful = False
                    continue
                self._ensure(job.tile, 1.0 if self._host else job.s_x)
                self._write_measurement(job)
                while job is not None:
                    i = done[0]
                    nxt = jobs[i + 1] if i + 1 < len(jobs) and not interrupted() else None
                    if nxt is not None and not (self.link.can_write_behind and nxt.tile is job.tile
                                                and (self._host or nxt.s_x == job.s_x)):
                        nxt = None                     # a different tile or bias: program first
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
        if self._interrupted.is_set():
            self._interrupted.clear()
            raise KeyboardInterrupt

    def interrupt(self) -> None:
        self._interrupted.set()

    def _write_measurement(self, job: _Job, behind: bool = False) -> None:
        for name, args, block in job.commands:
            self.link.send(name, *args, block=block, deadline=not behind)
        self.link.send_queries(_MEASUREMENT_QUERIES, deadline=not behind)

    def _opc_timeout(self, job: _Job) -> int:
        """``*OPC?`` waits for the whole measurement: 20 us per evaluation at the manual's timing."""
        return self._timeout(20e-6 * job.k * len(job.xs))

    def _read_measurement(self, job: _Job, more_in_flight: bool) -> np.ndarray:
        """The replies of a measurement written by ``_write_measurement``, every one read, in order.

        ``more_in_flight``: the next measurement's replies follow on the stream, so the error queue
        is not drained here (the reconnect before the retry clears it)."""
        link, want = self.link, job.shape
        t0 = time.perf_counter()
        opc = link.reply("opc", self._opc_timeout(job))
        shape = link.reply("fetch_shape")
        y = link.block_reply("fetch", out=job.into if tuple(shape or ()) == want else None,
                             check=self._check_values)
        ques = link.reply("questionable")
        err = link.reply("error")
        if err is None or err[0]:
            errors = [err] + ([] if more_in_flight else link.drain()) if err else []
            raise ScpiError("measurement (INP, SAMP:COUN, INIT, *OPC?, FETC?)", errors)
        if opc is None:
            raise _Retry("*OPC?: empty reply and no error queued")
        return self._accept(job, shape, y, ques, t0)

    def _measure_carefully(self, job: _Job) -> np.ndarray:
        """One measurement with every command checked on its own (after a failure)."""
        link, want = self.link, job.shape
        self._ensure(job.tile, 1.0 if self._host else job.s_x)
        t0 = time.perf_counter()
        for name, args, block in job.commands:
            link.send(name, *args, block=block)
            link.check(scpi.COMMANDS[name].short_header)
        link.query("opc", timeout_ms=self._opc_timeout(job))
        shape = link.query("fetch_shape")
        y = link.query_block("fetch", int(np.prod(want)), job.into, self._check_values) \
            if tuple(shape) == want else None
        return self._accept(job, shape, y, link.query("questionable"), t0)

    def _accept(self, job: _Job, shape, y: np.ndarray | None, ques: int | None, t0: float) -> np.ndarray:
        """Check a measurement's replies, count it, and act on the clip flag."""
        want = job.shape
        if shape is None or tuple(shape) != want:
            raise _Retry(f"FETC:SHAP? {shape} != expected {want}")
        if y is None or y.size != int(np.prod(want)) or ques is None:
            raise _Retry(f"FETC?: {None if y is None else y.size} values, expected {int(np.prod(want))}")
        st = self.stats
        st["measurements"] += 1
        st["bytes_sent"] += job.xs.nbytes
        st["bytes_fetched"] += y.nbytes
        st["io_s"] += time.perf_counter() - t0
        if ques & scpi.QUES_CLIPPED:
            st["clipped"] += 1
            msg = (f"layer {self.layer.name!r}: the chip's ADC clipped at {self.limits['output_range']} "
                   "(STAT:QUES:COND? bit 0)")
            if self.on_clip == "error":
                raise DeviceError(msg + "; scale the layer down, or pass on_clip='warn' to record and go on")
            warnings.warn(msg, stacklevel=4)
        return y.reshape(want)

    def _store(self, job: _Job, y: np.ndarray) -> None:
        """Undo the scaling and put a measurement in its place (tiles' partial sums add up)."""
        scale = np.float32(job.s_x * self._s_w)
        if job.into is not None:
            if scale != 1:
                job.slot *= scale
        elif self._host:
            job.slot += y * scale if scale != 1 else y
        else:
            job.slot[...] = y * scale if scale != 1 else y

    def _check_values(self, y: np.ndarray) -> None:
        """Detect a garbled block: non-finite, outside the ADC range, or off the ADC grid.

        Each cache-sized piece is mapped to ADC codes q = (y - lo) / step in scratch memory;
        the nearest integers must lie in [0, 2^bits - 1] (NaN fails too) and q within 0.05 of them.
        """
        lo, hi = self.limits["output_range"]
        bits = self.limits["output_bits"]
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
                raise _Retry(f"FETC?: values outside the ADC range [{lo:g}, {hi:g}] (garbled block)")
            if self.verify_grid and bits <= 20:
                q -= r
                if float(np.abs(q, out=q).max()) > 0.05:
                    raise _Retry("FETC?: values off the ADC grid (garbled block)")

    def _retrying(self, attempt, what: str, progress=None):
        """Run ``attempt`` until it succeeds; on failure back off, reconnect or resync, try again.

        ``progress()``, when given, counts the work done so far: each step forward between two
        failures earns a fresh set of retries (the budget is per measurement, not per run).
        """
        delay, last, n = self.backoff_s, None, 0
        seen = progress() if progress else None
        while True:
            try:
                out = attempt()
                self._careful = False
                return out
            except (_Retry, ScpiError) as e:
                last = e
                self._careful = True
                self._faults.append(f"{what}: {e}")
            if progress is not None and progress() != seen:
                seen, n, delay = progress(), 0, self.backoff_s
            if n == self.retries:
                break
            n += 1
            self.stats["retries"] += 1
            time.sleep(delay)
            delay = min(2 * delay, self.max_backoff_s)
            try:
                self.link.reconnect(self.retries)
            except DeviceError as e:
                last = e
                break
        raise DeviceError(f"{self.resource}: {what} failed after {self.retries} retries: {last}")

    def temperature(self) -> float:
        """The chip's temperature now (``SYST:TEMP?``), with the usual retries (calibration logs it per block)."""
        return float(self._retrying(lambda: self.link.query("temperature"), "SYST:TEMP?"))

    # -- provenance -----------------------------------------------------------
    def describe(self) -> dict:
        lim = self.limits
        idn = self.link.idn.split(",")
        if self._temperature is None:          # not programmed yet: read it now
            try:
                self._temperature = self.link.query("temperature")
            except (_Retry, ScpiError):
                pass
        d = {"type": "VisaDevice", "resource": self.resource, "idn": self.link.idn,
             "serial": idn[2] if len(idn) > 2 else "", "temperature_c": self._temperature,
             "capacity": {k: lim[k] for k in ("max_inputs", "max_outputs", "max_batch", "max_repeats")},
             "ranges": {"weights": lim["weight_range"], "bias": lim["bias_range"],
                        "inputs": list(lim["input_range"]), "outputs": list(lim["output_range"]),
                        "output_bits": lim["output_bits"], "activations": list(lim["activations"])},
             "byte_order": self.link.order, "options": self.options,
             "stats": dict(self.stats, reconnects=self.link.reconnects)}
        if self.layer is not None:
            d["tiling"] = {"tiles": len(self._tiles),
                           "grid": [math.ceil(self.layer.n_out / lim["max_outputs"]),
                                    math.ceil(self.layer.n_in / lim["max_inputs"])],
                           "host_bias_and_activation": self._host,
                           "chip_activation": self._tiles[0][3][2]}
            d["scaling"] = {"weights": self._s_w, "inputs": "per measurement, power of two" if self.scale_inputs
                            else "off", "input_scales": {f"{k:g}": v for k, v in sorted(self.input_scales.items())}}
            d["placement"] = dict(self.plan.placement, notes=self.plan.notes)
        if self._faults:
            d["faults_survived"] = self._faults[-20:]
        return d

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.link.close()
