"""A simulated controller for any described dialect (``hwloop.bench.instrument``), on a real TCP socket.

It reads the same description as the driver: every command template becomes
a parser, every reply is formatted as the description says, errors are
queued and read back in the dialect's own format.  The chip's physics come
from a device profile through the emulator (ideal without one), and its ADC
from the description's ranges.  State survives a dropped connection, as on
a real controller.  A source/measure bench is several instruments sharing one
chip: ``controller.instrument("measure")`` serves the commands of that role
(prefixed ``measure>`` in the description); triggers must arrive in the
description's order, and weights may be fixed in the hardware
(``fixed_weights``).  Faults for tests: ``drop_after`` (close the connection
after that many messages), ``error_after`` (queue a spurious error),
``garble_after`` (garbage in a reply) and ``delay_after`` (a reply late by
``delay_s``), each once.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..devices.emulator import Emulator
from ..layer import AnalogLayer
from ..physics import quantize
from .instrument import Description, load_description


@dataclass
class DialectFaults:
    """Each fires once, at the first message (or reply) after that many messages."""

    drop_after: int | None = None           # close the connection instead of handling the message
    error_after: int | None = None          # queue a spurious error
    garble_after: int | None = None         # answer the next query with garbage
    delay_after: int | None = None          # answer the next query ``delay_s`` late
    delay_s: float = 3.0


class _State:
    """What the chip and its instruments hold: the layer, the inputs, the last result, trigger progress.

    Instruments of one bench (a source and a measure instrument) share it; each keeps its own errors.
    """

    def __init__(self):
        self.shape = (1, 1)
        self.weights = self.bias = self.inputs = self.result = None
        self.activation, self.repeats, self.busy_polls, self.armed = "linear", 1, 0, 0


class _Chip:
    """The chip behind a bench's instruments (shared by them), with weights fixed in hardware or not."""

    def __init__(self, fixed: np.ndarray | None):
        self.fixed = None if fixed is None else np.asarray(fixed, np.float32)
        self.measurements = 0
        self.reset()

    def reset(self) -> None:
        """Power-on state: nothing loaded (weights fixed in hardware stay)."""
        self.state = _State()
        if self.fixed is not None:
            self.state.shape, self.state.weights = self.fixed.shape, self.fixed


def _adc_words(desc: Description) -> np.ndarray | None:
    """Every ADC level as the dialect writes it, by code: a result is formatted by looking its codes up
    (a controller formats in firmware; ``%`` formatting in Python costs ~150 ns a value).  None without bits."""
    bits, (lo, hi) = desc.limits()["output_bits"], desc.limits()["output_range"]
    if not bits or bits > 20:
        return None
    levels = (np.arange(2 ** bits, dtype=np.float64) * ((hi - lo) / (2 ** bits - 1)) + lo).astype(np.float32)
    quantize(levels, bits, lo, hi)
    return np.array(desc.format_values(levels).split(desc.separator), dtype=object)


class DescribedController:
    """``DescribedController(description, profile).start()`` -> serves on ``resource`` until ``stop()``."""

    def __init__(self, description: str | Description, profile=None, *, seed: int = 0,
                 faults: DialectFaults | None = None, idn: str | None = None, role: str | None = None,
                 shared: "DescribedController | None" = None, fixed_weights: np.ndarray | None = None):
        self.desc = description if isinstance(description, Description) else load_description(description)
        self.role = role or self.desc.instruments[0]
        self.profile, self.seed, self.faults = profile, seed, faults or DialectFaults()
        self.idn = idn or f"hwloop sim,{self.desc.name}:{self.role},SIM0001,1.0"
        self.errors: list[tuple[int, str]] = []
        self.count = 0
        self.chip = shared.chip if shared is not None else _Chip(fixed_weights)
        self._table = self._commands()
        self._words = _adc_words(self.desc)
        self._server: socketserver.TCPServer | None = None

    # -- serving ------------------------------------------------------------------------
    def start(self) -> "DescribedController":
        ctl = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                # replies leave at once, as from the ANB simulator (Nagle would hold a short one ~40 ms)
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ctl._serve(self.request, self.rfile)

        socketserver.ThreadingTCPServer.daemon_threads = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)   # a late reply blocks no one
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def instrument(self, role: str) -> "DescribedController":
        """Another instrument of the same bench (``role`` of the description), sharing this one's chip."""
        return DescribedController(self.desc, self.profile, seed=self.seed, role=role, shared=self)

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self._server.server_address[1]}::SOCKET"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, sock: socket.socket, rfile) -> None:
        for raw in rfile:
            self.count += 1
            f = self.faults
            if f.drop_after is not None and self.count >= f.drop_after:
                f.drop_after = None
                return                                       # the connection drops, the state stays
            if f.error_after is not None and self.count >= f.error_after:
                f.error_after = None
                self.errors.append((-300, "Device-specific error"))
            reply = self.handle(raw.decode("ascii", "replace").strip())
            if reply is None:
                continue
            if f.garble_after is not None and self.count >= f.garble_after:
                f.garble_after = None
                reply = "#@!" + reply[: len(reply) // 2]
            if f.delay_after is not None and self.count >= f.delay_after:
                f.delay_after = None
                time.sleep(f.delay_s)
            try:
                sock.sendall(reply.encode() + b"\n")
            except OSError:
                return                                       # the client gave up on this connection

    # -- the command table, from the description -------------------------------------------
    def _commands(self) -> list:
        """(pattern, action, is_query) for every command of the description this instrument serves."""
        d, prog, meas = self.desc, self.desc.section("program"), self.desc.section("measure")
        wait, cap = meas["wait"], d.section("capacity")
        w = prog.get("weights") or {}
        triggers = meas["trigger"] if isinstance(meas["trigger"], list) else [meas["trigger"]]
        table = [(d.data["identify"], lambda m: self.idn), (d.data.get("reset"), lambda m: self._reset()),
                 (cap.get("query"), lambda m: d.separator.join(str(v) for v in self._capacity())),
                 (prog.get("shape"), self._shape), (w.get("command"), self._weights),
                 (prog.get("bias"), self._bias), (prog.get("activation"), self._activation),
                 (prog.get("fixed"), lambda m: d.format_values(self.chip.state.weights)),
                 (meas["inputs"], self._inputs), (meas.get("repeats"), self._repeats),
                 *[(t, lambda m, i=i: self._trigger(i, len(triggers))) for i, t in enumerate(triggers)],
                 (wait.get("poll"), self._poll), (wait.get("opc"), lambda m: "1"),
                 (meas["fetch"]["query"], self._fetch), (d.data["errors"]["query"], self._error)]
        out = []
        for template, fn in table:
            if template:
                role, text = d.role(template)
                if role in (None, self.role):
                    out.append((Description.pattern(text), fn, text.rstrip().endswith("?")))
        return out

    def handle(self, line: str) -> str | None:
        """The reply to one message (None for a command); a failed query answers an empty line."""
        for rx, fn, query in self._table:
            m = rx.match(line)
            if m:
                try:
                    out = fn(m)
                except (ValueError, KeyError) as e:
                    self.errors.append(e.args[0] if isinstance(e.args[0], tuple) else (-102, "Syntax error"))
                    return "" if query else None
                return out if query else None
        self.errors.append((-113, "Undefined header"))
        return "" if line.endswith("?") else None

    def _capacity(self) -> list[int]:
        """What a ``capacity: {query: ...}`` controller reports (its description's numbers, else these)."""
        cap = self.desc.section("capacity")
        return [cap.get(k, v) for k, v in zip(("max_inputs", "max_outputs", "max_batch", "max_repeats"),
                                              (32, 16, 64, 50))]

    def _reset(self) -> None:
        self.chip.reset()

    def _values(self, m, n: int | None = None, top: float | None = None) -> np.ndarray:
        v = self.desc.parse_values(m["values"])
        if n is not None and v.size != n:
            raise ValueError((-161, f"Invalid data: {v.size} values, expected {n}"))
        if top is not None and np.abs(v).max(initial=0) > top:
            raise ValueError((-222, "Data out of range"))
        return v

    def _shape(self, m) -> None:
        n_out, n_in = int(m["n_out"]), int(m["n_in"])
        cap = self._capacity()
        if not (1 <= n_out <= cap[1] and 1 <= n_in <= cap[0]):
            raise ValueError((-222, "Data out of range"))
        self.chip.state = _State()
        self.chip.state.shape = (n_out, n_in)

    def _weights(self, m) -> None:
        n_out, n_in = self.chip.state.shape
        v = self._values(m, n_out * n_in, self.desc.limits()["weight_range"])
        order = self.desc.section("program")["weights"].get("order", "row")
        self.chip.state.weights = v.reshape(n_out, n_in) if order == "row" else v.reshape(n_in, n_out).T.copy()
        self.chip.state.result = None

    def _bias(self, m) -> None:
        self.chip.state.bias = self._values(m, self.chip.state.shape[0], self.desc.limits()["bias_range"])

    def _activation(self, m) -> None:
        names = {v: k for k, v in self.desc.data["activations"].items()}
        if m["name"] not in names:
            raise ValueError((-224, "Illegal parameter value"))
        self.chip.state.activation = names[m["name"]]

    def _inputs(self, m) -> None:
        s, lim = self.chip.state, self.desc.limits()
        v = self._values(m)
        lo, hi = lim["input_range"]
        if v.size == 0 or v.size % s.shape[1] or v.size // s.shape[1] > self._capacity()[2]:
            raise ValueError((-161, "Invalid data: not whole input rows"))
        if v.min() < lo or v.max() > hi:
            raise ValueError((-222, "Data out of range"))
        s.inputs, s.result = v.reshape(-1, s.shape[1]), None

    def _repeats(self, m) -> None:
        k = int(m["k"])
        if not 1 <= k <= self._capacity()[3]:
            raise ValueError((-222, "Data out of range"))
        self.chip.state.repeats = k

    def _trigger(self, i: int, n: int) -> None:
        """Trigger ``i`` of ``n`` (the description's order); the chip measures at the last one."""
        s = self.chip.state
        if s.armed != i:
            s.armed = 0
            raise ValueError((-221, "Settings conflict: trigger out of order"))
        s.armed = i + 1
        if s.armed < n:
            return
        s.armed = 0
        if s.weights is None or s.inputs is None:
            raise ValueError((-221, "Settings conflict"))
        self._measure(s)

    def _measure(self, s: _State) -> None:
        bias = s.bias if s.bias is not None else np.zeros(s.shape[0], np.float32)
        emu = Emulator(self.profile)
        emu.program(AnalogLayer(0, "chip", "Gemm", s.weights, bias, s.activation), seed=self.seed)
        y = emu.run(s.inputs[None], repeats=s.repeats, key=(self.seed, self.chip.measurements))
        self.chip.measurements += 1
        lo, hi = self.desc.limits()["output_range"]
        y = np.ascontiguousarray(y, np.float32)
        quantize(y, self.desc.limits()["output_bits"], lo, hi)            # the ADC: clip, round to its grid
        s.result, s.busy_polls = y, 1                       # (repeat, sample, neuron); busy for one poll

    def _poll(self, m) -> str:
        s = self.chip.state
        if s.busy_polls:
            s.busy_polls -= 1
            return "1"
        return self.desc.section("measure")["wait"].get("until", "0")

    def _fetch(self, m) -> str:
        if self.chip.state.result is None:
            raise ValueError((-230, "Data corrupt or stale"))
        order = self.desc.section("measure")["fetch"].get("order", ["repeat", "sample", "neuron"])
        axes = [("repeat", "sample", "neuron").index(a) for a in order]
        y = self.chip.state.result.transpose(axes)
        if self._words is None:
            return self.desc.format_values(y)
        lo, hi = self.desc.limits()["output_range"]
        codes = np.rint((y.astype(np.float64) - lo) * ((len(self._words) - 1) / (hi - lo))).astype(np.intp)
        return self.desc.separator.join(self._words[codes.reshape(-1)].tolist())

    def _error(self, m) -> str:
        e = self.desc.data["errors"]
        if not self.errors:
            return e["none"]
        code, text = self.errors.pop(0)
        return e["format"].format(code=code, text=text)
