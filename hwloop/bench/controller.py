"""The simulated ANB-series controller (SCPI.md): ``ChipState`` executes one program message at a time.

It answers queries and runs commands exactly as the manual says, looked up in
the one command table (``scpi.COMMANDS``, shared with the driver) and
dispatched through ``HANDLERS``, an explicit table from command name to
method (every command of the table has one; checked at import).  Its analog
chip is ``hwloop.devices.Emulator(profile)`` followed by the controller's ADC
(``hwloop.physics.adc_round``), plus a slowly drifting temperature.
``hwloop.bench.server`` serves it on a socket.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..devices.emulator import Emulator
from ..layer import AnalogLayer
from ..physics import adc_round
from . import scpi
from .chipspec import ChipSpec


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
            out = HANDLERS[cmd.name](self, *args)
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
        """Clip to the full scale and round to the ADC grid ``lo + k*step``, in place (``physics.adc_round``)."""
        lo, hi = self.spec.output_range
        return y, adc_round(y, self.spec.output_bits, lo, hi)

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


#: command name (``scpi.COMMANDS``) -> the method that executes it
HANDLERS = {
    "idn": ChipState.do_idn_q,
    "rst": ChipState.do_rst,
    "cls": ChipState.do_cls,
    "opc": ChipState.do_opc_q,
    "wai": ChipState.do_wai,
    "esr": ChipState.do_esr_q,
    "stb": ChipState.do_stb_q,
    "error": ChipState.do_error_q,
    "error_count": ChipState.do_error_count_q,
    "capacity": ChipState.do_capacity_q,
    "temperature": ChipState.do_temperature_q,
    "byte_order": ChipState.do_byte_order,
    "byte_order?": ChipState.do_byte_order_q,
    "shape": ChipState.do_shape,
    "shape?": ChipState.do_shape_q,
    "weights": ChipState.do_weights,
    "weights?": ChipState.do_weights_q,
    "checksum": ChipState.do_checksum_q,
    "weight_range": ChipState.do_weight_range_q,
    "bias": ChipState.do_bias,
    "bias?": ChipState.do_bias_q,
    "bias_range": ChipState.do_bias_range_q,
    "activation": ChipState.do_activation,
    "activation?": ChipState.do_activation_q,
    "catalog": ChipState.do_catalog_q,
    "input_range": ChipState.do_input_range_q,
    "input": ChipState.do_input,
    "count": ChipState.do_count,
    "count?": ChipState.do_count_q,
    "initiate": ChipState.do_initiate,
    "abort": ChipState.do_abort,
    "fetch": ChipState.do_fetch_q,
    "fetch_shape": ChipState.do_fetch_shape_q,
    "output_range": ChipState.do_output_range_q,
    "output_bits": ChipState.do_output_bits_q,
    "operation": ChipState.do_operation_q,
    "questionable": ChipState.do_questionable_q,
}
if set(HANDLERS) != set(scpi.COMMANDS):      # the table and the handlers describe one command set
    raise RuntimeError(f"commands without a handler or handlers without a command: "
                       f"{sorted(set(HANDLERS) ^ set(scpi.COMMANDS))}")
