"""The simulated bench controller: an ANB-series controller (SCPI.md) behind a real TCP socket.

``ChipState`` (``hwloop.bench.controller``) is the controller: it executes one
program message at a time and answers queries, exactly as the manual says.
``SimulatedBench`` serves it on a socket (one connection at a time, state kept
across disconnects), reading messages with bounded buffers (``_Reader``), and
injects faults (``hwloop.bench.faults``).  ``ChipSpec`` (``chipspec``) is
what the controller reports about itself.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import HwloopError
from . import scpi
from .chipspec import ChipSpec
from .controller import ChipState, CommandError  # noqa: F401 (re-exported)
from .faults import FaultClock, Faults


class _Closed(Exception):
    """The peer went away (or a fault dropped the connection)."""


class _Reader:
    """Splits the byte stream into messages; a block's byte count, not LF, delimits it.

    Bounded against abusive clients: a block longer than ``max_block`` (the chip's capacity) is
    refused at once with -223 and its bytes discarded as they arrive, never stored; a line
    longer than ``max_line`` is refused with -223 and discarded likewise; bytes are scanned for
    LF and ``#`` once; a client silent for ``timeout`` seconds in the middle of a message loses
    the connection (between messages it may stay idle).
    """

    def __init__(self, conn: socket.socket, max_block: int = 1 << 30, max_line: int = 1 << 16,
                 timeout: float | None = None):
        self.conn = conn
        self.buf = bytearray()
        self.scanned = 0                 # buf[:scanned] holds no LF and no '#'
        self.skip = 0                    # bytes of a refused block still to discard
        self.max_block, self.max_line, self.timeout = max_block, max_line, timeout

    def _recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; the idle timeout applies once a message has started."""
        self.conn.settimeout(self.timeout if (self.buf or self.skip) else None)
        data = self.conn.recv(n)
        if not data:
            raise _Closed()
        return data

    def _fill(self) -> None:
        # small reads: a block's payload should reach _take_block's recv_into, not three copies here
        self.buf += self._recv(1 << 14)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.scanned = 0
        return out

    def _take_block(self, n: int) -> bytearray:
        """``n`` payload bytes, received straight into their own buffer (no re-copying of large blocks)."""
        out = bytearray(n)
        have = min(n, len(self.buf))
        with memoryview(self.buf) as buffered:       # released before the buffer shrinks
            out[:have] = buffered[:have]
        del self.buf[:have]
        self.scanned = 0
        view = memoryview(out)
        while have < n:
            self.conn.settimeout(self.timeout)
            got = self.conn.recv_into(view[have:], min(n - have, 1 << 22))
            if not got:
                raise _Closed()
            have += got
        return out

    def _discard(self) -> None:
        """Drop the rest of a refused block as it arrives (without storing it)."""
        while self.skip:
            if not self.buf:
                self.buf += self._recv(min(self.skip, 1 << 16))
            n = min(self.skip, len(self.buf))
            del self.buf[:n]
            self.skip -= n
        self.scanned = 0

    def _skip_line(self) -> None:
        while True:
            lf = self.buf.find(b"\n")
            if lf >= 0:
                del self.buf[: lf + 1]
                self.scanned = 0
                return
            self.buf.clear()                 # a long line is dropped as it arrives, never stored whole
            self.buf += self._recv(1 << 14)

    def message(self) -> tuple[str, str, bytes | None, int]:
        """Next message as (header, text parameters, block or None, SCPI error code or 0)."""
        self._discard()
        while True:
            lf, sharp = self.buf.find(b"\n", self.scanned), self.buf.find(b"#", self.scanned)
            if lf >= 0 and (sharp < 0 or lf < sharp):
                line = self._take(lf + 1)[:-1].rstrip(b"\r").decode("ascii", "replace")
                header, _, text = line.strip().partition(" ")
                if not header:
                    continue
                return header, text, None, 0
            if sharp >= 0:
                break
            self.scanned = len(self.buf)
            if self.scanned > self.max_line:
                header = bytes(self.buf[:scpi.MAX_HEADER]).decode("ascii", "replace").split(" ")[0]
                self._skip_line()
                return header, "", None, -223
            self._fill()
        head = self._take(sharp).decode("ascii", "replace").strip()
        header, _, text = head.partition(" ")
        self._take(1)  # '#'
        n = self._take(1)
        if not n.isdigit() or n == b"0":
            self._skip_line()
            return header, text, None, -161
        digits = self._take(int(n))
        if not digits.isdigit():
            self._skip_line()
            return header, text, None, -161
        if int(digits) > self.max_block:     # refused before a byte of it is stored
            self.skip = int(digits)
            return header, text, None, -223
        data = self._take_block(int(digits))
        end = self._take(1)
        if end == b"\r":
            end = self._take(1)
        if end != b"\n":
            self._skip_line()
            return header, text, None, -161
        return header, text, data, 0


class SimulatedBench:
    """A simulated bench controller served on ``host:port`` from a thread.

    ``with SimulatedBench(profile, seed=1) as bench: bench.resource`` gives the
    VISA resource name.  ``port=0`` picks a free port.
    """

    def __init__(self, profile=None, port: int = 0, host: str = "127.0.0.1", *,
                 faults: Faults | None = None, spec: ChipSpec | None = None, seed: int = 0,
                 message_timeout_s: float = 10.0):
        if not 0 <= int(port) <= 65535:
            raise HwloopError(f"bench serve: port {port} outside 0..65535")
        if not message_timeout_s > 0:
            raise HwloopError(f"bench serve: message timeout {message_timeout_s} s must be > 0")
        self.message_timeout_s = float(message_timeout_s)
        if isinstance(profile, (str, Path)):
            from ..profiles import load_profile
            profile = load_profile(profile)
        self.spec = (spec or ChipSpec()).matching(profile)
        self.chip = ChipState(self.spec, profile, seed)
        self.faults = faults or Faults()
        self.clock = FaultClock(self.faults, np.random.default_rng([seed, 1]))
        self.host, self.port = host, port
        self.connections = 0               # accepted and served
        self.refused = 0                   # accepted and closed at once
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._refuse_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler: threading.Thread | None = None

    @property
    def resource(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def start(self) -> "SimulatedBench":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except (OSError, OverflowError) as e:
            s.close()
            raise HwloopError(f"bench serve: cannot listen on {self.host}:{self.port}: {e}") from None
        s.listen(4)
        s.settimeout(0.05)
        self._sock = s
        self.port = s.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, name=f"bench:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._sock:
            self._sock.close()
            self._sock = None
        conn = self._conn
        if conn is not None:
            _shutdown(conn)
        if self._handler:
            self._handler.join(5)

    def wait_disconnected(self, timeout: float = 5.0) -> bool:
        """Wait until the current client (if any) is gone, so a new connection will be served."""
        h = self._handler
        if h is not None:
            h.join(timeout)
        return h is None or not h.is_alive()

    def serve_forever(self) -> None:
        """Serve until interrupted (the CLI)."""
        try:
            while self._thread and self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> "SimulatedBench":
        return self.start() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- connections --------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            busy = self._handler is not None and self._handler.is_alive()
            if busy or time.monotonic() < self._refuse_until:
                self.refused += 1
                _shutdown(conn)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            handler.start()                   # started before it is seen: wait_disconnected may join it
            self._handler = handler
            self.connections += 1             # counted once wait_disconnected can see it

    def _serve(self, conn: socket.socket) -> None:
        s = self.spec    # the largest block the chip can take: a weight matrix or a batch of inputs
        reader = _Reader(conn, max_block=4 * max(s.max_inputs * s.max_outputs, s.max_batch * s.max_inputs,
                                                 s.max_outputs),
                         timeout=self.message_timeout_s)
        try:
            while not self._stop.is_set():
                header, text, block, code = reader.message()
                with self._lock:
                    self.clock.tick()
                    if code:
                        self.chip.push_error(code)
                        reply = b"" if header.endswith("?") else None
                    else:
                        reply = self.chip.execute(header, text, block)
                    if reply is not None:
                        self._reply(conn, reply)
                    self._after_message()
        except (_Closed, OSError):
            pass
        finally:
            _shutdown(conn)
            self._conn = None

    def _reply(self, conn: socket.socket, reply: bytes | np.ndarray) -> None:
        if isinstance(reply, np.ndarray):
            if self.clock.take("corrupt"):
                reply = self._corrupt(scpi.block_header(reply.nbytes) + reply.tobytes())
            else:
                if self.clock.take("delay"):
                    time.sleep(self.faults.delay_s)
                conn.sendall(scpi.block_header(reply.nbytes))
                conn.sendall(memoryview(reply).cast("B"))
                conn.sendall(b"\n")
                return
        if self.clock.take("delay"):
            time.sleep(self.faults.delay_s)
        conn.sendall(reply + b"\n")

    def _after_message(self) -> None:
        if self.clock.take("error"):
            self.chip.push_error(self.faults.error_code)
        if self.clock.take("glitch"):
            self.chip.power_on()
        if self.clock.take("drop"):
            self._refuse_until = time.monotonic() + self.faults.refuse_s
            raise _Closed()

    def _corrupt(self, reply: bytes) -> bytes:
        n = int(reply[1:2])
        start = 2 + n
        data = bytearray(reply[start:])
        if self.faults.corrupt_mode == "short":
            return scpi.block_header(len(data) - 4) + bytes(data[:-4])
        if len(data) >= 16:
            at = 4 * int(self.clock.rng.integers(0, len(data) // 4 - 3))
            if self.faults.corrupt_mode == "nan":
                data[at:at + 16] = np.full(4, np.nan, np.float32).tobytes()
            else:
                data[at:at + 16] = self.clock.rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        return reply[:start] + bytes(data)


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
