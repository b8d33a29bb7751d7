"""``VisaDevice``: runs an analog layer on an ANB-series chip through pyvisa (SCPI.md).

The driver calls commands by name from ``scpi.COMMANDS``; it never formats
SCPI text itself.  A measurement is one round trip, whatever the batch: ``INP``
block, ``SAMP:COUN``, ``INIT``, then ``*OPC?``, ``FETC:SHAP?``, ``FETC?``,
``STAT:QUES:COND?`` and ``SYST:ERR?`` written together, their replies read in
order (after a failure, each command is checked on its own instead).

Exact scaling (off by default, ``scale_inputs`` / ``scale_weights``): values
outside the chip's ranges are divided by a power of two s (exact in float32)
and the chip's outputs multiplied by s on the host.  That is exact for LINear
and RELU (act(z/s)*s = act(z)); a SIGMoid/TANH layer that needs it runs LINear
on the chip with bias and activation applied on the host, as tiles do.  The
ADC step grows by s; ``describe()`` records every scale used.

Faults (timeouts, dropped connections, garbled blocks, SCPI errors) are
retried with bounded exponential back-off: the link reconnects (a fresh
socket, so a stale reply can never be read as the next answer), re-checks the
programmed layer by checksum, reprograms it if the chip lost it, and re-runs
only the unfinished measurement.  When retries run out: ``DeviceError``.
"""

from __future__ import annotations

import math
import select
import signal
import socket
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..devices.base import Device, check_input
from ..errors import DeviceError, HwloopError
from ..layer import AnalogLayer, activate
from . import scpi

#: activations unchanged by a positive scale: act(z / s) * s == act(z)
_HOMOGENEOUS = ("linear", "relu")
_SCPI_ACT = {v: scpi.short(k).upper() for k, v in scpi.ACTIVATIONS.items()}


class ScpiError(DeviceError):
    """The controller queued errors after a command: names the command and the SCPI errors."""

    def __init__(self, command: str, errors: list[tuple[int, str]]):
        self.command, self.errors = command, errors
        text = "; ".join(f'{c},"{t}"' for c, t in errors) or "no error queued but no answer"
        super().__init__(f"{command}: {text}")


class _Retry(Exception):
    """A transport or data failure worth another try (timeout, lost connection, garbled block)."""


# -- the plan for one layer: tiles and chunks (shared with Bench.plan) ------------------
@dataclass(frozen=True)
class Tile:
    """A part of the weight matrix that fits the array."""

    rows: slice     # output neurons
    cols: slice     # inputs


def tiles_for(n_out: int, n_in: int, max_outputs: int, max_inputs: int) -> list[Tile]:
    """Split an (n_out, n_in) layer into array-sized tiles, row blocks outer."""
    return [Tile(slice(o, min(o + max_outputs, n_out)), slice(i, min(i + max_inputs, n_in)))
            for o in range(0, n_out, max_outputs) for i in range(0, n_in, max_inputs)]


def chunks_for(rows: int, k: int, n_out: int, max_batch: int, max_repeats: int,
               max_block_bytes: int) -> list[tuple[slice, slice]]:
    """(row slice, repetition slice) of each measurement: within max_batch, max_repeats and block size."""
    k_step = min(k, max_repeats)
    b_step = max(1, min(max_batch, max_block_bytes // (4 * k_step * max(n_out, 1))))
    return [(slice(b, min(b + b_step, rows)), slice(r, min(r + k_step, k)))
            for b in range(0, rows, b_step) for r in range(0, k, k_step)]


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


#: values per piece of a block read (1 MB): each is checked while the next arrives
_PIECE = 1 << 18

#: round trips (waits for a reply) per measurement (its five queries go out together) and per tile
#: programming (LAY:SHAP, WEIG + *OPC?, WEIG, WEIG:CHEC?, ACT and BIAS each followed by a check)
ROUND_TRIPS_PER_MEASUREMENT = 1
ROUND_TRIPS_PER_PROGRAMMING = 6


def _pow2_at_least(x: float) -> float:
    """Smallest power of two >= x (>= 1): dividing by it is exact in float32."""
    return 1.0 if x <= 1.0 else float(2.0 ** math.ceil(math.log2(x)))


@contextmanager
def _no_interrupt():
    """Defer Ctrl-C until the transfers inside have finished, so no reply is left half-read.

    Yields a list that is non-empty once Ctrl-C was pressed, so a long stream can stop early.
    """
    hit: list[int] = []
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield hit
        return
    old = signal.signal(signal.SIGINT, lambda *a: hit.append(1))
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt


# -- the link: one connection to one controller, shared by the layers that use it ----------
class Link:
    """A VISA session with one bench controller: message I/O, error checks, reconnects."""

    def __init__(self, resource: str, *, timeout_ms: int, byte_order: str = "SWAP",
                 connect_retries: int = 5, backoff_s: float = 0.05, max_backoff_s: float = 2.0,
                 raw_socket: bool = True):
        import pyvisa

        self.resource = resource
        self.timeout_ms = timeout_ms
        self.raw_socket = raw_socket
        self.order = byte_order
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._rm = pyvisa.ResourceManager("@py")
        self._res = None
        self._sock = None
        self._session = None
        self.loaded: tuple | None = None       # (shape, weights CRC, activation) on the chip
        self.bias: str | None = None           # CRC of the bias on the chip
        self.verified = False                  # loaded confirmed since the last fault
        self._writer: ThreadPoolExecutor | None = None
        self.users = 0
        self.reconnects = 0
        self.idn = ""
        self.limits: dict = {}
        self._connect(connect_retries, first=True)

    # -- connection -------------------------------------------------------------
    def _open(self) -> None:
        self._res = self._rm.open_resource(self.resource, read_termination="\n", write_termination="\n",
                                           timeout=self.timeout_ms, open_timeout=self.timeout_ms)
        # Small program messages back to back must not wait for Nagle + delayed ACK (~40 ms each).
        # pyvisa-py cannot set VI_ATTR_TCPIP_NODELAY (UnknownAttribute), so set it on its socket.
        # Its writes go out in 4 kB pieces with a select() each; large blocks go to the socket directly.
        # Its reads take 4 kB per recv() (max_recv_size) and copy each byte about five times, so
        # block payloads are read straight off its socket, after what it has buffered (_read_exact).
        session = getattr(self._rm.visalib, "sessions", {}).get(self._res.session)
        sock = getattr(session, "interface", None)
        self._sock = sock if isinstance(sock, socket.socket) else None
        self._session = session if isinstance(getattr(session, "_pending_buffer", None), bytearray) else None
        if self._sock is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(session, "max_recv_size"):
                session.max_recv_size = 1 << 20
        if not self.raw_socket:             # pyvisa's own reads and writes, as for any other resource
            self._sock = self._session = None
        self._res.chunk_size = 1 << 20

    def _connect(self, retries: int, first: bool = False) -> None:
        delay, last = self.backoff_s, None
        for attempt in range(retries + 1):
            try:
                with _no_interrupt():
                    self.close_session()
                    self._open()
                    self._handshake(first)
                return
            except (_Retry, ScpiError, OSError) as e:
                last = e
            except DeviceError:
                raise
            except Exception as e:  # pyvisa-py raises a plain Exception when it cannot connect
                last = e
                if first and "could not connect" not in str(e):
                    break                          # a malformed resource name: retrying will not help
            if attempt < retries:
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff_s)
        raise DeviceError(f"cannot reach bench controller {self.resource}: {last}")

    def _handshake(self, first: bool) -> None:
        """Identify (a fresh socket: no stale bytes), set the byte order, clear errors."""
        idn = self.query("idn")
        if not first and idn != self.idn:
            raise DeviceError(f"{self.resource}: after reconnecting the controller identifies as {idn!r}, "
                              f"not {self.idn!r}")
        self.idn = idn
        self.send("cls")
        self.send("byte_order", self.order)
        if first:
            cap = self.query("capacity")
            if len(cap) != 4:
                raise DeviceError(f"{self.resource}: SYST:CAP? answered {cap!r}")
            self.limits = dict(zip(("max_inputs", "max_outputs", "max_batch", "max_repeats"), cap))
            self.limits.update(
                weight_range=self.query("weight_range"), bias_range=self.query("bias_range"),
                input_range=self.query("input_range"), output_range=self.query("output_range"),
                output_bits=self.query("output_bits"),
                activations=tuple(a.upper() for a in self.query("catalog")))
        if self.query("byte_order?") != self.order:
            raise _Retry("byte order not accepted")
        self.check("connect (*IDN?, *CLS, FORM:BORD)")

    def reconnect(self, retries: int) -> None:
        self.reconnects += 1
        self.verified = False
        self._connect(retries)

    @property
    def can_write_behind(self) -> bool:
        """Whether messages can be sent while replies are read: only on pyvisa-py's socket, which
        this class drives itself (pyvisa's own read and write are not made for two threads)."""
        return self._sock is not None

    def write_behind(self, send) -> Future:
        """Run ``send()`` (program messages) in the link's writer thread, while this one reads replies.

        Two threads, because both directions carry large blocks: written from here, a block could
        fill the socket buffers while the controller, which handles messages in order, is still
        sending the previous reply, and neither side would read.  Settle with ``end_write``.
        """
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="hwloop-visa-write")
        return self._writer.submit(send)

    def end_write(self, pending: Future, abort: bool) -> None:
        """Wait for a write from ``write_behind``; raises what the write raised.

        ``abort``: its replies will not be read, so cut the connection first: a writer blocked on
        a full socket wakes up, and the next exchange fails and reconnects instead of reading them.
        """
        if abort:
            self._cut()
        try:
            pending.result()
        except BaseException:
            self._cut()                     # a write that failed half-way: the stream is out of step
            raise

    def _cut(self) -> None:
        if self._sock is not None:
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def close_session(self) -> None:
        if self._res is not None:
            try:
                self._res.close()
            except Exception:
                pass
            self._res = None

    # -- messages ---------------------------------------------------------------
    def send(self, name: str, *args, block: np.ndarray | None = None, deadline: bool = True) -> None:
        """A program message (no reply); ``block`` for commands that carry an array.

        ``deadline=False`` for a write behind a measurement in flight: the controller reads it
        only once that is done, however long it takes (the reader's timeout watches over it).
        """
        cmd = scpi.COMMANDS[name]
        try:
            text = cmd.message(args if block is None else args + (None,), self.limits).encode()
        except scpi.ParamError as e:
            raise HwloopError(f"{self.resource}: {cmd.short_header}: {e}") from None
        try:
            if block is None:
                self._write(text + b"\n", deadline=deadline)
                return
            payload = scpi.block_array(block, self.order)
            head = text + b" " + scpi.block_header(payload.nbytes)
            if self._sock is not None and payload.nbytes > 65536:
                self._write(head, memoryview(payload).cast("B"), b"\n", deadline=deadline)   # no copy
            else:
                self._write(head + payload.tobytes() + b"\n", deadline=deadline)
        except Exception as e:
            raise _Retry(f"{cmd.short_header}: {e}") from None

    def _write(self, *parts, deadline: bool = True) -> None:
        """Send bytes: on pyvisa-py's socket directly when reachable, else through pyvisa.

        On the socket with a deadline (the timeout plus 100 ms per MB), so a controller that stops
        reading ends in a retry, not a hang.
        """
        if self._sock is None:
            self._res.write_raw(b"".join(parts))
            return
        wait_s = self._wait_s(self.timeout_ms) if deadline else None
        if wait_s is not None:
            wait_s += sum(memoryview(p).nbytes for p in parts) / 10e6
        self._sock.settimeout(wait_s)
        try:
            for part in parts:
                self._sock.sendall(part)
        finally:
            self._sock.settimeout(None)

    def send_queries(self, names: Sequence[str], deadline: bool = True) -> None:
        """Several queries in one write (each its own message); read their replies in order."""
        data = b"".join(scpi.COMMANDS[n].message((), self.limits).encode() + b"\n" for n in names)
        try:
            self._write(data, deadline=deadline)
        except Exception as e:
            raise _Retry(f"{', '.join(scpi.COMMANDS[n].short_header for n in names)}: {e}") from None

    def query(self, name: str, *args, timeout_ms: int | None = None):
        """A query with a text reply, parsed by the table; an empty reply raises ScpiError."""
        self.send(name, *args)
        value = self.reply(name, timeout_ms)
        if value is None:
            raise ScpiError(scpi.COMMANDS[name].short_header, self.drain())
        return value

    def reply(self, name: str, timeout_ms: int | None = None):
        """Read and parse the reply to query ``name`` (sent already); None for the empty reply of a failure."""
        cmd = scpi.COMMANDS[name]
        line = self._read_line(cmd, timeout_ms)
        if line == "":
            return None
        try:
            return cmd.parse(line)
        except (ValueError, TypeError):
            raise _Retry(f"{cmd.short_header}: unreadable reply {line[:40]!r}") from None

    def _read_line(self, cmd: scpi.Command, timeout_ms: int | None) -> str:
        """One LF-terminated reply line (stripped); straight off the socket when it is reachable."""
        if self._sock is not None and self._session is not None:
            pending = self._session._pending_buffer
            wait_s = self._wait_s(self.timeout_ms if timeout_ms is None else timeout_ms)
            start = 0
            while (lf := pending.find(b"\n", start)) < 0:
                start = len(pending)
                self._recv_some(pending, wait_s, f"{cmd.short_header}: reply line")
            line = bytes(pending[:lf])
            del pending[:lf + 1]
            return line.decode("ascii", "replace").strip()
        try:
            if timeout_ms is not None:
                self._res.timeout = timeout_ms
            return self._res.read().strip()
        except Exception as e:
            raise _Retry(f"{cmd.short_header}: {e}") from None
        finally:
            if timeout_ms is not None and self._res is not None:
                self._res.timeout = self.timeout_ms

    @staticmethod
    def _wait_s(timeout_ms: float | None) -> float | None:
        return None if timeout_ms is None or math.isinf(timeout_ms) else timeout_ms / 1000

    def _recv_some(self, into: bytearray, wait_s: float | None, what: str) -> None:
        """Append what the socket has (waiting up to ``wait_s``) to ``into``; _Retry on timeout or close."""
        if not select.select([self._sock], [], [], wait_s)[0]:
            raise _Retry(f"{what}: timeout after {wait_s} s")
        try:
            data = self._sock.recv(1 << 16)
        except OSError as e:
            raise _Retry(f"{what}: {e}") from None
        if not data:
            raise _Retry(f"{what}: connection closed")
        into += data

    def query_block(self, name: str, n_values: int | None = None, out: np.ndarray | None = None,
                    check=None) -> np.ndarray:
        """A query answered with a definite-length block; an empty reply raises ScpiError."""
        self.send(name)
        value = self.block_reply(name, n_values, out, check)
        if value is None:
            raise ScpiError(scpi.COMMANDS[name].short_header, self.drain())
        return value

    def block_reply(self, name: str, n_values: int | None = None, out: np.ndarray | None = None,
                    check=None) -> np.ndarray | None:
        """Read a definite-length block: the header, then exactly its byte count (0x0A inside is data).

        The values land in ``out`` (C-contiguous float32, flat view returned) when given, so a
        measurement is written once, straight into the caller's result array.  ``check(part)``
        runs on each piece as it arrives, while the controller is still sending the rest.
        """
        cmd = scpi.COMMANDS[name]
        if out is not None:
            n_values = out.size
        try:
            first = self._read_exact(1)
            if first == b"\n":
                return None
            n = self._read_exact(1)
            if first != b"#" or not n.isdigit() or n == b"0":
                raise _Retry(f"{cmd.short_header}: reply is not a definite-length block ({first + n!r})")
            digits = self._read_exact(int(n))
            if not digits.isdigit():
                raise _Retry(f"{cmd.short_header}: bad block header {first + n + digits!r}")
            count = int(digits)
            if (n_values is not None and count != 4 * n_values) or count % 4:
                raise _Retry(f"{cmd.short_header}: block of {count} bytes, expected "
                             f"{'a multiple of 4' if n_values is None else 4 * n_values}")
            y = np.empty(count // 4, np.float32) if out is None else out.reshape(-1)
            swap = scpi.block_dtype(self.order) != y.dtype
            for i in range(0, y.size, _PIECE):
                part = y[i:i + _PIECE]
                self._read_exact(part.nbytes, into=part)
                if swap:
                    part.byteswap(inplace=True)       # the payload's bytes are in the other order
                if check is not None:
                    check(part)
            end = self._read_exact(1)
        except _Retry:
            raise
        except Exception as e:
            raise _Retry(f"{cmd.short_header}: {e}") from None
        if end != b"\n":
            raise _Retry(f"{cmd.short_header}: block not followed by LF")
        return y

    def _read_exact(self, n: int, into: np.ndarray | None = None) -> bytes | None:
        """Exactly ``n`` reply bytes, LF included as data: into ``into``'s memory when given.

        With a pyvisa-py socket session: what it has read ahead, then ``recv_into`` on its
        socket (no copies); a timeout or a closed peer raises, and the caller reconnects.
        Otherwise: pyvisa's ``read_bytes`` with the termination character off.
        """
        if self._sock is None or self._session is None:
            res = self._res
            res.read_termination = None
            try:
                data = res.read_bytes(n) if n else b""
            finally:
                res.read_termination = "\n"
            if into is None:
                return data
            memoryview(into).cast("B")[:] = data
            return None
        buf = bytearray(n) if into is None else into
        view = memoryview(buf).cast("B")
        pending = self._session._pending_buffer
        have = min(n, len(pending))
        view[:have] = pending[:have]
        del pending[:have]
        wait_s = self._wait_s(self._res.timeout)
        while have < n:
            if not select.select([self._sock], [], [], wait_s)[0]:
                raise _Retry(f"timeout after {wait_s} s with {have} of {n} bytes read")
            got = self._sock.recv_into(view[have:])
            if not got:
                raise _Retry(f"connection closed with {have} of {n} bytes read")
            have += got
        return bytes(buf) if into is None else None

    def drain(self) -> list[tuple[int, str]]:
        """Read the error queue until ``0,"No error"``."""
        errors = []
        for _ in range(scpi.ERROR_QUEUE_MAX + 1):
            self.send("error")
            line = self._read_line(scpi.COMMANDS["error"], None)
            try:
                code, text = scpi.COMMANDS["error"].parse(line)
            except (ValueError, TypeError):
                raise _Retry(f"SYST:ERR?: unreadable reply {line[:40]!r}") from None
            if code == 0:
                break
            errors.append((code, text))
        return errors

    def check(self, what: str) -> None:
        """``SYST:ERR?``: raise ScpiError naming ``what`` when the controller queued errors."""
        errors = self.drain()
        if errors:
            raise ScpiError(what, errors)

    def close(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.close_session()
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None


# -- the device ----------------------------------------------------------------------
class VisaDevice(Device):
    """A chip on a bench controller, reached through pyvisa; see the module docstring.

    ``retries``: attempts after the first for each measurement and each
    (re)connection; back-off doubles from ``backoff_s`` up to ``max_backoff_s``.
    ``on_clip``: ``"error"`` (default) or ``"warn"`` when the ADC clipped.
    ``raw_socket``: on a pyvisa-py TCP socket, move blocks on the socket itself (about ten times
    pyvisa's read rate) and stream measurements; False: pyvisa's own calls only, as for any
    other VISA resource (USB, GPIB, another backend), which also get that path by themselves.
    """

    def __init__(self, resource: str, *, timeout_ms: int = 5000, scale_inputs: bool = False,
                 scale_weights: bool = False, retries: int = 5, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0, on_clip: str = "error", byte_order: str = "SWAP",
                 max_block_bytes: int = 32 << 20, verify_grid: bool = True, raw_socket: bool = True,
                 link: Link | None = None):
        if on_clip not in ("error", "warn"):
            raise HwloopError(f"VisaDevice {resource}: on_clip must be 'error' or 'warn', not {on_clip!r}")
        if byte_order not in ("SWAP", "NORM"):
            raise HwloopError(f"VisaDevice {resource}: byte_order must be 'SWAP' or 'NORM'")
        self.resource = resource
        self.options = dict(timeout_ms=timeout_ms, scale_inputs=scale_inputs, scale_weights=scale_weights,
                            retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                            on_clip=on_clip, byte_order=byte_order, max_block_bytes=max_block_bytes,
                            verify_grid=verify_grid, raw_socket=raw_socket)
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.scale_inputs, self.scale_weights = scale_inputs, scale_weights
        self.on_clip, self.max_block_bytes, self.verify_grid = on_clip, max_block_bytes, verify_grid
        self.link = link or Link(resource, timeout_ms=timeout_ms, byte_order=byte_order,
                                 connect_retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                 raw_socket=raw_socket)
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

    # -- programming ----------------------------------------------------------
    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        """Plan tiles and scaling for ``layer``, refuse what the chip cannot do, and load it."""
        lim = self.limits
        act = layer.activation
        tiles = tiles_for(layer.n_out, layer.n_in, lim["max_outputs"], lim["max_inputs"])
        w = np.ascontiguousarray(layer.weight, dtype=np.float32)
        b = np.ascontiguousarray(layer.bias, dtype=np.float32)
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise HwloopError(f"layer {layer.name!r}: weights or bias contain NaN or infinity")
        wmax, bmax = lim["weight_range"], lim["bias_range"]
        s_w = _pow2_at_least(float(np.abs(w).max(initial=0)) / wmax)
        if layer.groups > 1:
            raise HwloopError(f"layer {layer.name!r}: a grouped convolution ({layer.groups} groups); the bench "
                              "driver programs one dense array per layer: run this layer on an emulator")
        host = len(tiles) > 1 or _SCPI_ACT.get(act) not in lim["activations"]
        if not host and s_w > 1 and act not in _HOMOGENEOUS:
            host = True
        if not host and self.scale_inputs and act not in _HOMOGENEOUS:
            host = True
        if not host:
            s_w = max(s_w, _pow2_at_least(float(np.abs(b).max(initial=0)) / bmax))
        if s_w > 1 and not self.scale_weights:
            what = "weights" if np.abs(w).max() > wmax else "bias"
            top = float(np.abs(w if what == "weights" else b).max())
            raise HwloopError(
                f"layer {layer.name!r}: {what} reach {top:.4g} but chip {self.resource} accepts "
                f"[-{wmax:g}, {wmax if what == 'weights' else bmax:g}] ({'WEIG' if what == 'weights' else 'BIAS'}:RANG?); "
                "pass scale_weights=True for exact power-of-two scaling")
        self.layer = layer
        self._host = host
        self._s_w = s_w
        self._tiles = []
        for t in tiles:
            wt = np.ascontiguousarray(w[t.rows, t.cols] / np.float32(s_w))
            bt = np.zeros(wt.shape[0], np.float32) if host else b[t.rows] / np.float32(s_w)
            key = (wt.shape, scpi.weights_checksum(wt), "LIN" if host else _SCPI_ACT[act])
            self._tiles.append((t, wt, bt, key))
        self._bias = b
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
            for rs, ks in chunks_for(len(rows), k, t.rows.stop - t.rows.start, lim["max_batch"],
                                     lim["max_repeats"], self.max_block_bytes):
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
            out = activate(self.layer.activation, out, self.layer.act_params)
        return out if r_in == 1 else out.reshape(r_in, b, -1)

    def _scaled_inputs(self, xs: np.ndarray) -> tuple[np.ndarray, float]:
        lo, hi = self.limits["input_range"]
        x_min, x_max = float(xs.min(initial=0)), float(xs.max(initial=0))
        if lo <= x_min and x_max <= hi:
            return np.ascontiguousarray(xs), 1.0
        need = max(x_max / hi if x_max > hi else 1.0, x_min / lo if (x_min < lo and lo < 0) else 1.0)
        if not self.scale_inputs or (x_min < lo and lo >= 0) or not np.isfinite(need):
            raise HwloopError(
                f"layer {self.layer.name!r}: inputs span [{x_min:.4g}, {x_max:.4g}] but chip {self.resource} "
                f"accepts [{lo:g}, {hi:g}] (INP:RANG?)"
                + ("; pass scale_inputs=True for exact power-of-two scaling" if lo < 0 or x_min >= lo else ""))
        s = _pow2_at_least(need)
        return np.ascontiguousarray(xs / np.float32(s)), s

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
                            else "off"}
        if self._faults:
            d["faults_survived"] = self._faults[-20:]
        return d

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.link.close()
