"""The transport to one instrument of a described bench: its VISA session, messages, error queue, reconnects.

``Link`` sends the messages of an instrument description
(``hwloop.bench.instrument``; it formats nothing itself beyond filling the
description's templates), moves arrays as the dialect says (binary IEEE 488.2
blocks of float32 in the chosen byte order, or ASCII lists), reads and drains
the error queue in the dialect's format, and reconnects with back-off.  On
pyvisa-py's TCP socket session it uses the one documented fast path
(``hwloop.bench.sockio``), so data travels at socket speed and a
measurement's messages can be written from a second thread while replies are
read; on any other VISA resource it uses pyvisa's own calls only.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np

from ..errors import DeviceError, HwloopError
from . import scpi
from .instrument import Description
from .settings import DriverSettings
from .sockio import RawSocket, Timeout


class ScpiError(DeviceError):
    """The controller queued errors after a command: names the command and the errors."""

    def __init__(self, command: str, errors: list[tuple[int, str]]):
        self.command, self.errors = command, errors
        text = "; ".join(f'{c},"{t}"' for c, t in errors) or "no error queued but no answer"
        super().__init__(f"{command}: {text}")


class _Retry(Exception):
    """A transport or data failure worth another try (timeout, lost connection, garbled data)."""


def _answered(e: BaseException) -> bool:
    """It took the connection, then failed or closed it (busy?); refused at the first exchange: nothing listens."""
    refused = isinstance(e, ConnectionRefusedError) or "Connection refused" in str(e)
    return isinstance(e, (_Retry, ScpiError, OSError, Timeout)) and not refused


def _refused(e: BaseException) -> bool:
    """No connection (pyvisa-py raises a plain Exception), or a malformed resource name; not our own errors."""
    return isinstance(e, Exception) and not isinstance(e, DeviceError) and not _answered(e)


#: values per piece of a block read (1 MB): each is checked while the next arrives
_PIECE = 1 << 18
#: error-queue entries read at most when draining (the ANB manual's queue holds 32)
_QUEUE_MAX = 64


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


class Link:
    """A VISA session with one instrument (``role``) of a bench described by ``desc``."""

    def __init__(self, desc: Description, resource: str, settings: DriverSettings, role: str | None = None):
        from .visalib import resource_manager

        self.desc, self.resource, self.settings, self.role = desc, resource, settings, role
        self.timeout_ms = settings.timeout_ms
        self.order = settings.byte_order if desc.section("data").get("byte_order") else "SWAP"
        self._rm = resource_manager(settings.visa_library)
        self._res = self._raw = None
        self.loaded: tuple | None = None       # (shape, weights CRC, activation) on the chip
        self.bias: str | None = None           # CRC of the bias on the chip
        self.verified = False                  # loaded confirmed since the last fault
        self._writer: ThreadPoolExecutor | None = None
        self.users, self.reconnects, self.idn = 0, 0, ""
        self.limits: dict = {}
        self._connect(first=True)

    # -- connection -------------------------------------------------------------
    def _open(self) -> None:
        self._res = self._rm.open_resource(self.resource, read_termination="\n", write_termination="\n",
                                           timeout=self.timeout_ms, open_timeout=self.timeout_ms)
        self._res.chunk_size = 1 << 20
        self._raw = RawSocket.of(self._rm, self._res)      # sets TCP_NODELAY either way
        if not self.settings.raw_socket:                    # pyvisa's own reads and writes, as for any resource
            self._raw = None

    def _connect(self, first: bool = False) -> None:
        """Open the session (again) with the bench's retry policy: a controller that took the connection, then
        failed or closed it, is retried, on opening for up to ``connect_wait_s``; one that refuses it (nothing
        listening) gets the plain retries; a malformed resource name on opening gives up at once."""
        wait_until = time.monotonic() + (self.settings.connect_wait_s if first else 0.0)

        def attempt() -> None:
            try:
                with _no_interrupt():
                    self.close_session()
                    self._open()
                    self._handshake(first)
            except Exception as e:
                if first and _refused(e) and "could not connect" not in str(e):
                    raise self._unreachable(e) from None      # a malformed resource name: retrying will not help
                raise

        def longer(state, wait_s: float) -> bool:
            return _answered(state.outcome.exception()) and time.monotonic() + wait_s <= wait_until

        self.settings.retrying(lambda e: _answered(e) or _refused(e), self._unreachable, longer=longer)(attempt)

    def _unreachable(self, last: BaseException) -> DeviceError:
        return DeviceError(f"cannot reach bench controller {self.resource}: {last}")

    def _handshake(self, first: bool) -> None:
        """Identify (a fresh socket: no stale bytes), reset or clear errors, set the byte order."""
        d = self.desc.data
        idn = self.query(d["identify"])
        if not first and idn != self.idn:
            raise DeviceError(f"{self.resource}: after reconnecting the controller identifies as {idn!r}, "
                              f"not {self.idn!r}")
        self.idn = idn
        if d.get("reset"):
            self.send(d["reset"])
            self.loaded = self.bias = None
        if not d.get("clear"):
            self.drain()                        # what an earlier session left queued
            return
        self.send(d["clear"])
        order = self.desc.section("data").get("byte_order")
        if order:
            self.send(order["command"], order=self.order)
            if self.query(order["query"]) != self.order:
                raise _Retry("byte order not accepted")
        self.check(f"connect ({d['identify']}, {d['clear']}{', ' + self.desc.header(order['command']) if order else ''})")

    def reconnect(self) -> None:
        self.reconnects += 1
        self.verified = False
        self._connect()

    @property
    def can_write_behind(self) -> bool:
        """Whether messages can be sent while replies are read: only on the raw socket (pyvisa's own
        read and write are not made for two threads)."""
        return self._raw is not None

    def write_behind(self, send: Callable[[], None]) -> Future:
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
        if abort and self._raw is not None:
            self._raw.cut()
        try:
            pending.result()
        except BaseException:
            if self._raw is not None:
                self._raw.cut()             # a write that failed half-way: the stream is out of step
            raise

    def close_session(self) -> None:
        if self._res is not None:
            try:
                self._res.close()
            except Exception:
                pass
            self._res = self._raw = None

    # -- messages ---------------------------------------------------------------
    def send(self, template: str, values: np.ndarray | None = None, deadline: bool = True, **fields) -> None:
        """A program message (no reply); ``values`` for a template ending in ``{values}``.

        ``deadline=False`` for a write behind a measurement in flight: the controller reads it
        only once that is done, however long it takes (the reader's timeout watches over it).
        """
        try:
            text = self.desc.head(template, **fields)[1].encode()
        except (KeyError, IndexError, ValueError) as e:
            raise HwloopError(f"{self.resource}: {template}: {e}") from None
        try:
            if values is None:
                self._write(text + b"\n", deadline=deadline)
            elif not self.desc.block:
                self._write(text + self.desc.format_values(values).encode() + b"\n", deadline=deadline)
            else:
                payload = scpi.block_array(values, self.order)
                head = text + scpi.block_header(payload.nbytes)
                if self._raw is not None and payload.nbytes > 65536:
                    self._write(head, memoryview(payload).cast("B"), b"\n", deadline=deadline)   # no copy
                else:
                    self._write(head + payload.tobytes() + b"\n", deadline=deadline)
        except (Timeout, _Retry):
            raise
        except Exception as e:
            raise _Retry(f"{template}: {e}") from None

    def _write(self, *parts, deadline: bool = True) -> None:
        if self._raw is None:
            self._res.write_raw(b"".join(parts))
        else:
            self._raw.write(parts, self._wait_s(self.timeout_ms) if deadline else None)

    def send_queries(self, templates: Sequence[str], deadline: bool = True) -> None:
        """Several queries in one write (each its own message); read their replies in order."""
        data = b"".join(self.desc.head(t)[1].encode() + b"\n" for t in templates)
        try:
            self._write(data, deadline=deadline)
        except Exception as e:
            raise _Retry(f"{', '.join(templates)}: {e}") from None

    def query(self, template: str, parse: Callable = str, timeout_ms: int | None = None, **fields):
        """A query with a text reply, parsed by ``parse``; an empty reply raises ScpiError."""
        self.send(template, **fields)
        value = self.reply(template, parse, timeout_ms)
        if value is None:
            raise ScpiError(template, self.drain())
        return value

    def reply(self, template: str, parse: Callable = str, timeout_ms: int | None = None):
        """Read and parse the reply to ``template`` (sent already); None for the empty reply of a failure."""
        line = self._read_line(template, timeout_ms)
        if line == "":
            return None
        try:
            return parse(line)
        except (ValueError, TypeError):
            raise _Retry(f"{template}: unreadable reply {line[:40]!r}") from None

    def _read_line(self, what: str, timeout_ms: int | None) -> str:
        try:
            if self._raw is not None:
                return self._raw.read_line(self._wait_s(self.timeout_ms if timeout_ms is None else timeout_ms), what)
            if timeout_ms is not None:
                self._res.timeout = timeout_ms
            return self._res.read().strip()
        except (Timeout, _Retry) as e:
            raise _Retry(str(e)) from None
        except Exception as e:
            raise _Retry(f"{what}: {e}") from None
        finally:
            if timeout_ms is not None and self._raw is None and self._res is not None:
                self._res.timeout = self.timeout_ms

    @staticmethod
    def _wait_s(timeout_ms: float | None) -> float | None:
        return None if timeout_ms is None or math.isinf(timeout_ms) else timeout_ms / 1000

    def query_values(self, template: str, n_values: int | None = None, out: np.ndarray | None = None,
                     check=None) -> np.ndarray:
        """A query answered with an array; an empty reply raises ScpiError."""
        self.send(template)
        value = self.values_reply(template, n_values, out, check)
        if value is None:
            raise ScpiError(template, self.drain())
        return value

    def values_reply(self, template: str, n_values: int | None = None, out: np.ndarray | None = None,
                     check=None) -> np.ndarray | None:
        """The array replied to ``template`` (flat float32; in ``out`` when given), checked by ``check``."""
        if self.desc.block:
            return self._block_reply(template, n_values, out, check)
        line = self._read_line(template, None)
        if line == "":
            return None
        try:
            y = self.desc.parse_values(line)
        except ValueError as e:
            raise _Retry(f"{template}: {e}") from None
        want = out.size if out is not None else n_values
        if want is not None and y.size != want:
            raise _Retry(f"{template}: {y.size} values, expected {want}")
        if check is not None:
            check(y)
        if out is None:
            return y
        flat = out.reshape(-1)
        flat[...] = y
        return flat

    def _block_reply(self, template: str, n_values: int | None, out: np.ndarray | None, check) -> np.ndarray | None:
        """A definite-length block: the header, then exactly its byte count (0x0A inside is data).

        The values land in ``out`` (C-contiguous float32) when given, so a measurement is written
        once, straight into the caller's result array; ``check(part)`` runs on each piece as it
        arrives, while the controller is still sending the rest.
        """
        if out is not None:
            n_values = out.size
        try:
            first = self._read_exact(1)
            if first == b"\n":
                return None
            n = self._read_exact(1)
            if first != b"#" or not n.isdigit() or n == b"0":
                raise _Retry(f"{template}: reply is not a definite-length block ({first + n!r})")
            digits = self._read_exact(int(n))
            if not digits.isdigit():
                raise _Retry(f"{template}: bad block header {first + n + digits!r}")
            count = int(digits)
            if (n_values is not None and count != 4 * n_values) or count % 4:
                raise _Retry(f"{template}: block of {count} bytes, expected "
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
            raise _Retry(f"{template}: {e}") from None
        if end != b"\n":
            raise _Retry(f"{template}: block not followed by LF")
        return y

    def _read_exact(self, n: int, into: np.ndarray | None = None) -> bytes | None:
        """Exactly ``n`` reply bytes: off the raw socket, or pyvisa's ``read_bytes`` with the
        termination character off."""
        if self._raw is not None:
            return self._raw.read_exact(n, self._wait_s(self._res.timeout), into)
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

    def drain(self) -> list[tuple[int, str]]:
        """Read the error queue until it reports none."""
        errors, query = [], self.desc.data["errors"]["query"]
        for _ in range(_QUEUE_MAX + 1):
            self.send(query)
            line = self._read_line(query, None)
            try:
                err = self.desc.error(line)
            except (ValueError, TypeError):
                raise _Retry(f"{query}: unreadable reply {line[:40]!r}") from None
            if err is None or err[0] == 0:
                break
            errors.append(err)
        return errors

    def check(self, what: str) -> None:
        """The error query: raise ScpiError naming ``what`` when the controller queued errors."""
        errors = self.drain()
        if errors:
            raise ScpiError(what, errors)

    def close(self, force: bool = False) -> None:
        """One user fewer; the session ends with the last user, or at once with ``force`` (the opener's close:
        a controller serves one client, and siblings nobody closed must not keep it busy)."""
        self.users -= 1
        if self.users <= 0 or force:
            self.close_session()
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None
