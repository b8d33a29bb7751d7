"""The transport to an ANB-series bench controller: one VISA session, its messages, error checks, reconnects.

``Link`` sends program messages and reads replies by command name from
``scpi.COMMANDS`` (it never formats SCPI text itself), moves definite-length
blocks, drains the error queue and reconnects with back-off.  One documented
fast path: on pyvisa-py's TCP socket session it reads and writes the socket
itself (``_open`` explains why), so blocks travel at socket speed and a
measurement's messages can be written from a second thread while replies are
read; on any other VISA resource it uses pyvisa's own calls only.
"""

from __future__ import annotations

import math
import select
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Sequence

import numpy as np

from ..errors import DeviceError, HwloopError
from . import scpi


class ScpiError(DeviceError):
    """The controller queued errors after a command: names the command and the SCPI errors."""

    def __init__(self, command: str, errors: list[tuple[int, str]]):
        self.command, self.errors = command, errors
        text = "; ".join(f'{c},"{t}"' for c, t in errors) or "no error queued but no answer"
        super().__init__(f"{command}: {text}")


class _Retry(Exception):
    """A transport or data failure worth another try (timeout, lost connection, garbled block)."""


#: values per piece of a block read (1 MB): each is checked while the next arrives
_PIECE = 1 << 18


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
                 raw_socket: bool = True, visa_library: str = "@py"):
        from .visalib import resource_manager

        self.resource = resource
        self.timeout_ms = timeout_ms
        self.raw_socket = raw_socket
        self.order = byte_order
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._rm = resource_manager(visa_library)
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
