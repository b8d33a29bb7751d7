"""The one fast path past pyvisa: reading and writing a pyvisa-py TCP socket session's socket directly.

Small program messages back to back must not wait for Nagle + delayed ACK
(~40 ms each), and pyvisa-py cannot set VI_ATTR_TCPIP_NODELAY
(UnknownAttribute), so ``RawSocket`` sets it on its socket.  pyvisa-py writes
in 4 kB pieces with a select() each and reads 4 kB per recv(), copying each
byte about five times; so replies are read straight off its socket, after
what the session has already buffered (its ``_pending_buffer``), and large
blocks are written to the socket without copies.  The private attributes
reached are exactly two: the session's ``interface`` (its socket) and
``_pending_buffer``; when either is missing (another pyvisa-py version, another
backend, a USB or GPIB resource), ``RawSocket.of`` returns None and the link
uses pyvisa's own calls.
"""

from __future__ import annotations

import select
import socket
from contextlib import suppress

import numpy as np


class Timeout(Exception):
    """No data in time, or the peer closed: the link retries (reconnecting)."""


class RawSocket:
    """Reads and writes of a pyvisa-py socket session's socket (see the module docstring)."""

    def __init__(self, sock: socket.socket, session):
        self.sock, self.pending = sock, session._pending_buffer
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(session, "max_recv_size"):
            session.max_recv_size = 1 << 20

    @classmethod
    def of(cls, rm, res) -> "RawSocket | None":
        """The fast path for ``res`` when it is a pyvisa-py TCP socket session, else None."""
        session = getattr(rm.visalib, "sessions", {}).get(res.session)
        sock = getattr(session, "interface", None)
        if not isinstance(sock, socket.socket) or not isinstance(getattr(session, "_pending_buffer", None), bytearray):
            return None
        return cls(sock, session)

    def write(self, parts, wait_s: float | None) -> None:
        """Send bytes-like ``parts``; within ``wait_s`` plus 100 ms per MB (None: no deadline)."""
        if wait_s is not None:
            wait_s += sum(memoryview(p).nbytes for p in parts) / 10e6
        self.sock.settimeout(wait_s)
        try:
            for part in parts:
                self.sock.sendall(part)
        finally:
            self.sock.settimeout(None)

    def read_line(self, wait_s: float | None, what: str) -> str:
        """One LF-terminated reply line, stripped."""
        pending, start = self.pending, 0
        while (lf := pending.find(b"\n", start)) < 0:
            start = len(pending)
            self._recv_some(wait_s, what)
        line = bytes(pending[:lf])
        del pending[:lf + 1]
        return line.decode("ascii", "replace").strip()

    def _recv_some(self, wait_s: float | None, what: str) -> None:
        if not select.select([self.sock], [], [], wait_s)[0]:
            raise Timeout(f"{what}: timeout after {wait_s} s")
        try:
            data = self.sock.recv(1 << 16)
        except OSError as e:
            raise Timeout(f"{what}: {e}") from None
        if not data:
            raise Timeout(f"{what}: connection closed")
        self.pending += data

    def read_exact(self, n: int, wait_s: float | None, into: np.ndarray | None = None) -> bytes | None:
        """Exactly ``n`` bytes (LF included as data): into ``into``'s memory when given (no copies)."""
        buf = bytearray(n) if into is None else into
        view = memoryview(buf).cast("B")
        have = min(n, len(self.pending))
        view[:have] = self.pending[:have]
        del self.pending[:have]
        while have < n:
            if not select.select([self.sock], [], [], wait_s)[0]:
                raise Timeout(f"timeout after {wait_s} s with {have} of {n} bytes read")
            got = self.sock.recv_into(view[have:])
            if not got:
                raise Timeout(f"connection closed with {have} of {n} bytes read")
            have += got
        return bytes(buf) if into is None else None

    def cut(self) -> None:
        """Shut the connection down: a writer blocked on a full socket wakes up."""
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
