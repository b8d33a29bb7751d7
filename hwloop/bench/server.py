"""The simulated bench controller: an ANB-series controller (SCPI.md) behind a real TCP socket.

``ChipState`` is the controller: it executes one program message at a time
and answers queries, exactly as the manual says.  Its analog chip is
``hwloop.devices.Emulator(profile)`` followed by the controller's ADC, plus a
slowly drifting temperature.  ``SimulatedBench`` serves it on a socket (one
connection at a time, state kept across disconnects) and injects faults.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..devices.emulator import Emulator
from ..errors import HwloopError
from ..layer import AnalogLayer
from . import scpi
from .faults import FaultClock, Faults


@dataclass
class ChipSpec:
    """What the controller reports about itself (capacity, ranges) and how fast it is.

    Defaults are the ANB-64R of the manual's example session.  ``time_scale``
    multiplies the manual's worst-case timings (0: instantaneous).
    """

    manufacturer: str = "Lumen Analog Instruments"
    model: str = "ANB-64R"
    serial: str = "SN0042"
    firmware: str = "2.3.1"
    max_inputs: int = 256
    max_outputs: int = 64
    max_batch: int = 4096
    max_repeats: int = 1000
    weight_range: float = 1.0
    bias_range: float = 4.0
    input_range: tuple[float, float] = (-1.0, 1.0)
    output_range: tuple[float, float] = (-16.0, 16.0)
    output_bits: int = 16
    activations: tuple[str, ...] = ("SIGMoid", "TANH", "RELU", "LINear")
    temperature: float = 25.0               # degrees C at start
    temperature_swing: float = 0.3          # amplitude of the slow drift, degrees C
    temperature_period_s: float = 600.0
    temperature_spec: tuple[float, float] = (10.0, 40.0)
    gain_tc: float = 0.0                    # relative gain change per degree C from the start temperature
    time_scale: float = 0.1                 # 1.0 = the manual's worst-case timing
    program_s: float = 50e-3
    program_per_weight_s: float = 1e-6
    eval_s: float = 20e-6

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ChipSpec":
        """A chip description file (safe YAML, keys as the fields above); errors name file and line."""
        from ..yamlio import LineMap, load_yaml_file

        path = Path(path)
        data = load_yaml_file(path, "chip description")
        if data is None:
            data = LineMap()
        if not isinstance(data, LineMap):
            raise HwloopError(f"{path}:1: a chip description is a mapping of settings")
        defaults = cls()
        out = {}
        for k, v in data.items():
            where = f"{path}:{data.line_of(k)}"
            if not hasattr(defaults, k):
                raise HwloopError(f"{where}: unknown key {k!r} (known: {', '.join(f.name for f in fields(cls))})")
            want = getattr(defaults, k)
            v = tuple(v) if isinstance(v, list) else v
            ok = isinstance(v, type(want)) or (isinstance(want, float) and isinstance(v, int))
            if not ok or isinstance(v, bool) or (isinstance(want, tuple) and len(v) != len(want) and k != "activations"):
                raise HwloopError(f"{where}: {k}: expected {type(want).__name__} like {want!r}, got {v!r}")
            out[k] = v
        return cls(**out)

    def matching(self, profile) -> "ChipSpec":
        """This chip with the ADC and array size of ``profile`` where the profile states them."""
        if profile is None:
            return self
        s = profile.defaults
        spec = replace(self)
        if s.adc.range is not None:
            spec.output_range = tuple(float(v) for v in s.adc.range)
        if s.adc.bits is not None:
            spec.output_bits = int(s.adc.bits)
        if s.array.rows is not None:
            spec.max_inputs = int(s.array.rows)
        if s.array.cols is not None:
            spec.max_outputs = int(s.array.cols)
        return spec

    @property
    def limits(self) -> dict:
        return {"max_inputs": self.max_inputs, "max_outputs": self.max_outputs,
                "max_batch": self.max_batch, "max_repeats": self.max_repeats}

    @property
    def output_step(self) -> float:
        lo, hi = self.output_range
        return (hi - lo) / (2 ** self.output_bits - 1)


class CommandError(Exception):
    """A failed program message: the SCPI error code to queue."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class ChipState:
    """The controller's state machine: weights, bias, inputs, measurement, error queue."""

    def __init__(self, spec: ChipSpec, profile=None, seed: int = 0):
        self.spec = spec
        self.profile = profile
        self.seed = seed
        self.rng = np.random.default_rng(seed)     # programming seeds and the thermometer jitter
        self.emulator = Emulator(profile, name=f"{spec.model} {spec.serial}", mismatch_seed=seed)  # fixed silicon
        self.t0 = time.monotonic()
        self.errors: list[tuple[int, str]] = []
        self.esr = 0
        self.compute_s = 0.0              # wall time spent simulating the chip (physics + ADC)
        self.power_on()

    # -- state --------------------------------------------------------------------
    def power_on(self) -> None:
        """Power-on / glitch: everything including the error queue is lost."""
        self.errors.clear()
        self.esr = 0
        self.reset()

    def reset(self) -> None:
        """``*RST``: settings and data cleared; the error queue stays."""
        self.n_out, self.n_in = 1, 1
        self.weights: np.ndarray | None = None
        self.checksum = "00000000"
        self.bias = np.zeros(1, np.float32)
        self.activation = "LIN"
        self.count = 1
        self.order = "NORM"
        self.inputs: np.ndarray | None = None
        self.measurement: np.ndarray | None = None
        self.clipped = False
        self.busy_until = 0.0
        self.busy_kind = 0
        self.programmed = False           # emulator holds the current weights/bias/activation
        self.n_measurements = 0

    def push_error(self, code: int) -> None:
        """Queue an error (FIFO, at most 32; on overflow the newest becomes -350)."""
        if len(self.errors) >= scpi.ERROR_QUEUE_MAX:
            self.errors[-1] = (-350, scpi.ERRORS[-350])
        else:
            self.errors.append((code, scpi.ERRORS.get(code, "Device-specific error")))
        self.esr |= {1: 32, 2: 16, 3: 8, 4: 4}.get(abs(code) // 100, 8)

    def wait_idle(self) -> None:
        delay = self.busy_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.busy_kind = 0

    def temperature(self) -> float:
        """Slow sinusoidal drift around the start temperature, plus a 0.01 C reading jitter."""
        t = time.monotonic() - self.t0
        s = self.spec
        return s.temperature + s.temperature_swing * math.sin(2 * math.pi * t / s.temperature_period_s) \
            + 0.01 * float(self.rng.standard_normal())

    def _start(self, seconds: float, kind: int) -> None:
        self.busy_until = time.monotonic() + seconds * self.spec.time_scale
        self.busy_kind = kind

    def _stale(self) -> None:
        """What every data-changing command does to the last measurement."""
        self.measurement = None
        self.clipped = False

    # -- dispatch -----------------------------------------------------------------
    def execute(self, header: str, text: str, block: bytes | None) -> bytes | np.ndarray | None:
        """Run one message; returns the reply (without LF) for queries, None for commands.

        A block reply is returned as its payload array (``scpi.block_array``) so the server can
        send it without copying.  A failing query queues its error and answers an empty reply.
        """
        well_formed = _header_ok(header)
        cmd = scpi.find_command(header) if well_formed else None
        is_query = header.endswith("?")
        try:
            if not well_formed:
                raise CommandError(-102)
            if cmd is None:
                raise CommandError(-113)
            if cmd.name != "operation" and cmd.name != "abort":
                self.wait_idle()
            args = self._parse_args(cmd, text, block)
            out = getattr(self, "do_" + cmd.name.rstrip("?") + ("_q" if cmd.query else ""))(*args)
        except CommandError as e:
            self.push_error(e.code)
            return b"" if is_query else None
        if cmd.query:
            return out if isinstance(out, np.ndarray) else str(out).encode()
        return None

    def _parse_args(self, cmd: scpi.Command, text: str, block: bytes | None) -> list:
        params = cmd.params
        if params and params[0].kind == "block":
            if block is None:
                raise CommandError(-109 if not text.strip() else -161)
            return [block]
        if block is not None:
            raise CommandError(-102)
        parts = [p for p in text.split(",")] if text.strip() else []
        if len(parts) > len(params):
            raise CommandError(-102)
        if len(parts) < len(params):
            raise CommandError(-109)
        try:
            return [p.parse(t, self.spec.limits) for p, t in zip(params, parts)]
        except scpi.ParamError as e:
            raise CommandError(e.code) from None

    # -- common -------------------------------------------------------------------
    def do_idn_q(self) -> str:
        s = self.spec
        return f"{s.manufacturer},{s.model},{s.serial},{s.firmware}"

    def do_rst(self) -> None:
        self.reset()

    def do_cls(self) -> None:
        self.errors.clear()
        self.esr = 0

    def do_opc_q(self) -> str:
        return "1"

    def do_wai(self) -> None:
        pass

    def do_esr_q(self) -> str:
        v, self.esr = self.esr, 0
        return str(v)

    def do_stb_q(self) -> str:
        return str(scpi.STB_ERROR_QUEUE if self.errors else 0)

    # -- system -------------------------------------------------------------------
    def do_error_q(self) -> str:
        code, text = self.errors.pop(0) if self.errors else (0, scpi.ERRORS[0])
        return f'{code},"{text}"'

    def do_error_count_q(self) -> str:
        return str(len(self.errors))

    def do_capacity_q(self) -> str:
        s = self.spec
        return f"{s.max_inputs},{s.max_outputs},{s.max_batch},{s.max_repeats}"

    def do_temperature_q(self) -> str:
        return f"{self.temperature():.2f}"

    def do_byte_order(self, order: str) -> None:
        self.order = order

    def do_byte_order_q(self) -> str:
        return self.order

    # -- layer --------------------------------------------------------------------
    def do_shape(self, n_out: int, n_in: int) -> None:
        self.n_out, self.n_in = n_out, n_in
        self.weights, self.checksum = None, "00000000"
        self.bias = np.zeros(n_out, np.float32)
        self.inputs = None
        self.programmed = False
        self._stale()

    def do_shape_q(self) -> str:
        return f"{self.n_out},{self.n_in}"

    def _sized(self, block: bytes, n: int) -> np.ndarray:
        if len(block) > 4 * n:
            raise CommandError(-223)
        if len(block) < 4 * n or len(block) % 4:
            raise CommandError(-161)
        return scpi.decode_floats(block, self.order)

    def do_weights(self, block: bytes) -> None:
        w = self._sized(block, self.n_out * self.n_in)
        wmax = self.spec.weight_range
        if not np.all(np.abs(w) <= wmax):          # NaN fails too
            raise CommandError(-222)
        self.weights = w.reshape(self.n_out, self.n_in)
        self.checksum = scpi.weights_checksum(self.weights)
        self.programmed = False
        self._stale()
        self._start(self.spec.program_s + self.spec.program_per_weight_s * w.size, scpi.OPER_PROGRAMMING)

    def do_weights_q(self) -> np.ndarray:
        w = self.weights if self.weights is not None else np.zeros(0, np.float32)
        return scpi.block_array(w, self.order)

    def do_checksum_q(self) -> str:
        return self.checksum

    def do_weight_range_q(self) -> str:
        return f"{self.spec.weight_range:g}"

    def do_bias(self, block: bytes) -> None:
        b = self._sized(block, self.n_out)
        if not np.all(np.abs(b) <= self.spec.bias_range):
            raise CommandError(-222)
        self.bias = b.copy()
        self.programmed = False
        self._stale()

    def do_bias_q(self) -> np.ndarray:
        return scpi.block_array(self.bias, self.order)

    def do_bias_range_q(self) -> str:
        return f"{self.spec.bias_range:g}"

    def do_activation(self, name: str) -> None:
        if name not in {scpi.short(a).upper() for a in self.spec.activations}:
            raise CommandError(-222)
        self.activation = name
        self.programmed = False
        self._stale()

    def do_activation_q(self) -> str:
        return self.activation

    def do_catalog_q(self) -> str:
        return ",".join(scpi.short(a).upper() for a in self.spec.activations)

    # -- measurement --------------------------------------------------------------
    def do_input_range_q(self) -> str:
        lo, hi = self.spec.input_range
        return f"{lo:g},{hi:g}"

    def do_input(self, block: bytes) -> None:
        row = 4 * self.n_in
        if len(block) == 0 or len(block) % row:
            raise CommandError(-161)
        if len(block) // row > self.spec.max_batch:
            raise CommandError(-223)
        x = scpi.decode_floats(block, self.order).reshape(-1, self.n_in)
        lo, hi = self.spec.input_range
        if not (x.min() >= lo and x.max() <= hi):      # NaN fails too
            raise CommandError(-222)
        self.inputs = x
        self._stale()

    def do_count(self, k: int) -> None:
        self.count = k

    def do_count_q(self) -> str:
        return str(self.count)

    def do_initiate(self) -> None:
        if self.weights is None or self.inputs is None or self.inputs.shape[1] != self.n_in:
            raise CommandError(-221)
        self._stale()
        t = time.monotonic()
        if not self.programmed:
            name = {scpi.short(k).upper(): v for k, v in scpi.ACTIVATIONS.items()}[self.activation]
            layer = AnalogLayer(index=0, name=self.spec.model, op="Gemm", weight=self.weights,
                                bias=self.bias, activation=name)
            self.emulator.program(layer, seed=int(self.rng.integers(2 ** 31)))
            self.programmed = True
        self.n_measurements += 1
        y = self.emulator.run(self.inputs[None], repeats=self.count, key=(self.seed, self.n_measurements))
        if not (y.flags.writeable and y.flags.c_contiguous and y.dtype == np.float32):
            y = np.array(y, dtype=np.float32, order="C")
        if self.spec.gain_tc:
            y *= np.float32(1 + self.spec.gain_tc * (self.temperature() - self.spec.temperature))
        self.measurement, self.clipped = self.adc(y)
        self.compute_s += time.monotonic() - t
        busy = self.spec.eval_s * self.count * len(self.inputs)
        self.busy_until = t + busy * self.spec.time_scale
        self.busy_kind = scpi.OPER_MEASURING

    def adc(self, y: np.ndarray) -> tuple[np.ndarray, bool]:
        """Clip to the full scale and round to the ADC grid ``lo + k*step``, in place.

        The grid is ``hwloop.physics.quantize``'s; done here with in-place numpy on cache-sized
        pieces because the controller runs beside its clients and torch's thread pool stalls on
        a busy machine.
        """
        lo, hi = self.spec.output_range
        f_lo, inv, step = np.float32(lo), np.float32(1 / self.spec.output_step), np.float32(self.spec.output_step)
        clipped = False
        flat = y.reshape(-1)
        for i in range(0, flat.size, 1 << 16):
            p = flat[i:i + (1 << 16)]
            clipped = clipped or bool(p.min() < lo or p.max() > hi)
            np.clip(p, lo, hi, out=p)
            p -= f_lo
            p *= inv
            np.rint(p, out=p)
            p *= step
            p += f_lo
            np.clip(p, lo, hi, out=p)
        return y, clipped

    def do_abort(self) -> None:
        if self.busy_kind == scpi.OPER_MEASURING and time.monotonic() < self.busy_until:
            self._stale()
        self.busy_until, self.busy_kind = 0.0, 0

    def do_fetch_q(self) -> np.ndarray:
        if self.measurement is None:
            raise CommandError(-230)
        return scpi.block_array(self.measurement, self.order)

    def do_fetch_shape_q(self) -> str:
        if self.measurement is None:
            raise CommandError(-230)
        return ",".join(str(v) for v in self.measurement.shape)

    def do_output_range_q(self) -> str:
        lo, hi = self.spec.output_range
        return f"{lo:g},{hi:g}"

    def do_output_bits_q(self) -> str:
        return str(self.spec.output_bits)

    def do_operation_q(self) -> str:
        return str(self.busy_kind if time.monotonic() < self.busy_until else 0)

    def do_questionable_q(self) -> str:
        lo, hi = self.spec.temperature_spec
        t = self.temperature()
        return str((scpi.QUES_CLIPPED if self.clipped else 0) | (0 if lo <= t <= hi else scpi.QUES_TEMPERATURE))


def _header_ok(header: str) -> bool:
    """Letters separated by colons (a leading colon allowed), or ``*`` and letters; ``?`` at the end."""
    h = header[:-1] if header.endswith("?") else header
    if h.startswith("*"):
        return len(h) > 1 and h[1:].isalpha()
    words = h.lstrip(":").split(":")
    return all(w.isalpha() for w in words)


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
