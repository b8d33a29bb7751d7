"""``DescribedDevice``: one generic driver for any controller dialect described in YAML (``instrument``).

It drives the controller through pyvisa with the description's commands:
identify and reset, program weights (row or column order), bias and
activation, then per measurement write the inputs, set the repetitions,
trigger, wait (poll, ``*OPC?`` or a delay), fetch the ASCII result and reorder
it to (repeat, sample, neuron), and read the error query.  Tiles, chunks,
exact range scaling and the placement of bias and activation come from the
same plan as the ANB driver (``hwloop.bench.plan``).  Transport failures,
unreadable replies and queued errors are retried with tenacity: reconnect,
reprogram, and measure only the unfinished chunk again.
"""

from __future__ import annotations

import socket
import time
import warnings
from typing import Sequence

import numpy as np
import tenacity

from ..devices.base import Device, check_input
from ..errors import DeviceError
from ..layer import AnalogLayer
from .instrument import Description, load_description
from .plan import LayerPlan, Tile, TilePlan, plan_layer, run_planned
from .visalib import resource_manager


class _Retry(Exception):
    """A failure worth another try: the link, an unreadable reply, or an error the controller queued."""


class DescribedDevice(Device):
    """A chip on a controller whose dialect ``description`` names (a shipped name or a YAML file)."""

    remote = True

    def __init__(self, description: str, resource: str | None = None, *, resources: dict | None = None,
                 visa_library: str = "@py", timeout_ms: int = 5000, retries: int = 5, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0, strict_ranges: bool = False, host_activation: bool = False):
        self.desc: Description = load_description(description)
        roles = self.desc.instruments
        self.resources = dict(resources or {}) if resource is None else {roles[0]: resource}
        if sorted(self.resources) != sorted(roles):
            raise DeviceError(f"{self.desc.name}: give one VISA resource per instrument ({', '.join(roles)})"
                              + ("" if len(roles) > 1 else " as resource:"))
        self.resource, self.timeout_ms = ", ".join(self.resources.values()), timeout_ms
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.strict, self.host_activation = strict_ranges, host_activation
        self._rm = resource_manager(visa_library)
        self._res: dict = {}
        self.layer = self.plan = None
        self.reconnects, self.retried, self._loaded = 0, 0, None
        self.input_scales: dict[float, int] = {}
        self._call(self._connect, "connecting")
        self.limits = self._limits()

    @staticmethod
    def check_options(description: str = "", **_) -> dict[str, str]:
        """Bench-file hook: a description that does not load is reported at its key when the file is read."""
        from ..errors import HwloopError

        try:
            load_description(description)
        except HwloopError as e:
            return {"description": str(e)}
        return {}

    # -- the link -----------------------------------------------------------------------
    def _connect(self) -> None:
        for res in self._res.values():
            try:
                res.close()
            except Exception:
                pass
        self._res = {role: self._open(r) for role, r in self.resources.items()}
        self.idn = "; ".join(self.ask(self.desc.data["identify"], role=role) for role in self._res)
        if self.desc.data.get("reset"):
            self.send(self.desc.data["reset"])
        for role in self._res:
            for _ in range(64):                              # clear what an earlier session left queued
                if self.desc.error(self.ask(self.desc.data["errors"]["query"], role=role)) is None:
                    break
        self._loaded = None

    def _open(self, resource: str):
        res = self._rm.open_resource(resource, read_termination="\n", write_termination="\n",
                                     timeout=self.timeout_ms)
        res.chunk_size = 1 << 20                 # ASCII replies run to megabytes: read them in large pieces
        session = getattr(self._rm.visalib, "sessions", {}).get(res.session)
        if hasattr(session, "max_recv_size"):     # pyvisa-py's socket reads 4 kB per recv() by default
            session.max_recv_size = 1 << 20
        sock = getattr(session, "interface", None)
        if isinstance(sock, socket.socket):       # small messages back to back: no Nagle + delayed ACK waits
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return res

    def send(self, template: str, **fields) -> None:
        """A program message to its instrument (a template without ``role>`` goes to every instrument)."""
        role, text = self.desc.message(template, **fields)
        for r in [role] if role else list(self._res):
            self._res[r].write(text)

    def ask(self, template: str, role: str | None = None, **fields) -> str:
        """A query to its instrument (``role``, or the first one when the template names none)."""
        named, text = self.desc.message(template, **fields)
        return self._res[named or role or next(iter(self._res))].query(text).strip()

    def _settled(self, role: str | None) -> None:
        """One round trip to ``role`` (its error query): its earlier messages have been handled."""
        err = self.desc.error(self.ask(self.desc.data["errors"]["query"], role=role))
        if err is not None:
            raise _Retry(f"trigger: controller error ({role}) {err[0]}, {err[1]!r}")

    def check(self, what: str) -> None:
        """Read every instrument's error query; a queued error raises (and is retried)."""
        for role in self._res:
            err = self.desc.error(self.ask(self.desc.data["errors"]["query"], role=role))
            if err is not None:
                where = f" ({role})" if len(self._res) > 1 else ""
                raise _Retry(f"{what}: controller error{where} {err[0]}, {err[1]!r}")

    def _call(self, fn, what: str):
        """``fn()`` with retries: back off, reconnect, try again; DeviceError when they run out."""
        def again(state: tenacity.RetryCallState) -> None:
            self.retried += 1
            try:
                self._connect()
                self.reconnects += 1
            except Exception:
                pass                                         # the next attempt fails and is counted

        try:
            for attempt in tenacity.Retrying(
                    stop=tenacity.stop_after_attempt(self.retries + 1), reraise=True,
                    wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
                    retry=tenacity.retry_if_not_exception_type((DeviceError, KeyboardInterrupt)),
                    before_sleep=again):
                with attempt:
                    try:
                        return fn()
                    except (DeviceError, KeyboardInterrupt, _Retry):
                        raise
                    except Exception as e:      # pyvisa I/O errors, closed sockets, unreadable replies
                        raise _Retry(f"{what}: {type(e).__name__}: {e}") from None
        except _Retry as e:
            raise DeviceError(f"{self.desc.name} at {self.resource}: {e} (after {self.retries} retries)") from None

    def _limits(self) -> dict:
        lim = self.desc.limits()
        query = self.desc.section("capacity").get("query")
        if query:
            values = self._call(lambda: self.desc.parse_values(self.ask(query)), query)
            lim.update(zip(("max_inputs", "max_outputs", "max_batch", "max_repeats"), (int(v) for v in values)))
        return lim

    # -- programming ----------------------------------------------------------------------
    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        fixed = self.desc.section("program").get("fixed")
        if fixed:
            self.plan = self._fixed_plan(layer, fixed)
        else:
            self.plan = plan_layer(layer, self.limits, scale=not self.strict, host_activation=self.host_activation,
                                   chip=f"{self.desc.name} at {self.resource}")
        for note in self.plan.notes:
            warnings.warn(note, stacklevel=3)
        self.layer = layer
        self._call(lambda: self._load(0, 1.0), f"programming layer {layer.name!r}")

    def _fixed_plan(self, layer: AnalogLayer, query: str) -> LayerPlan:
        """Weights set in the hardware: the layer must have them; bias and activation run on the host."""
        lim = self.limits
        w = self._call(lambda: self.desc.parse_values(self.ask(query)), query)
        if w.size != lim["max_outputs"] * lim["max_inputs"] or layer.weight.shape != \
                (lim["max_outputs"], lim["max_inputs"]) or not np.allclose(
                    layer.weight, w.reshape(layer.weight.shape), atol=1e-6):
            raise DeviceError(f"layer {layer.name!r} ({layer.n_out}x{layer.n_in}) does not have the weights fixed "
                              f"in {self.desc.name} at {self.resource} ({lim['max_outputs']}x{lim['max_inputs']}, "
                              f"{self.desc.role(query)[1]})")
        tile = TilePlan(Tile(slice(0, layer.n_out), slice(0, layer.n_in)), w.reshape(layer.weight.shape),
                        np.zeros(layer.n_out, np.float32), "linear")
        return LayerPlan([tile], 1.0, True, "weights fixed in the hardware", np.asarray(layer.bias, np.float32),
                         layer.activation, [])

    def _load(self, tile: int, s_x: float) -> None:
        """Make the controller hold ``tile`` with its bias divided by ``s_x``."""
        if self._loaded == (tile, s_x) or self.desc.section("program").get("fixed"):
            return
        tp, prog, d = self.plan.tiles[tile], self.desc.section("program"), self.desc
        w = tp.weights if prog["weights"].get("order", "row") == "row" else tp.weights.T
        if prog.get("shape"):
            self.send(prog["shape"], n_out=tp.weights.shape[0], n_in=tp.weights.shape[1])
        self.send(prog["weights"]["command"], values=w)
        self.send(prog["bias"], values=tp.bias / np.float32(s_x))
        self.send(prog["activation"], name=d.data["activations"][tp.activation])
        self.check("programming")
        self._loaded = (tile, s_x)

    # -- measuring ------------------------------------------------------------------------
    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)

        def measure(t: int, c: int, xs: np.ndarray, s_x: float, k: int) -> np.ndarray:
            self.input_scales[s_x] = self.input_scales.get(s_x, 0) + 1
            return self._call(lambda: self._measure(t, 1.0 if self.plan.host else s_x, xs, k),
                              f"measurement of layer {self.layer.name!r}")

        return run_planned(self.plan, self.layer, x, repeats, self.limits, measure, scale=not self.strict,
                           max_block_bytes=1 << 30, chip=f"{self.desc.name} at {self.resource}")

    def _measure(self, tile: int, s_x: float, xs: np.ndarray, k: int) -> np.ndarray:
        """One measurement: (k, len(xs), n_out) as the controller returned it, reordered.

        Messages to one instrument travel in one write; the result and the error query are
        asked together and read in order (one round trip)."""
        d, meas = self.desc, self.desc.section("measure")
        self._load(tile, s_x)
        triggers = meas["trigger"] if isinstance(meas["trigger"], list) else [meas["trigger"]]
        wait = meas["wait"].get("poll") or meas["wait"].get("opc")
        after = [d.role(t)[0] for t in triggers[1:]] + [d.role(wait)[0] if wait else "the delay"]
        setup = [(meas["inputs"], {"values": xs})] + ([(meas["repeats"], {"k": k})] if meas.get("repeats") else [])
        for i, (trigger, next_role) in enumerate(zip(triggers, after)):   # in the order the description gives
            role = d.role(trigger)[0]
            self.send_all(setup + [(trigger, {})] if i == 0 else [(trigger, {})])
            if next_role != role:
                self._settled(role)         # another instrument is next: this one must have acted first
        self._wait(meas["wait"], k * len(xs))
        raw = self._fetch_and_check(meas["fetch"]["query"])
        order = meas["fetch"].get("order", ["repeat", "sample", "neuron"])
        sizes = {"repeat": k, "sample": len(xs), "neuron": self.plan.tiles[tile].weights.shape[0]}
        if raw.size != k * len(xs) * sizes["neuron"]:
            raise _Retry(f"{meas['fetch']['query']}: {raw.size} values, expected {k * len(xs) * sizes['neuron']}")
        y = raw.reshape([sizes[a] for a in order])
        return np.ascontiguousarray(y.transpose([order.index(a) for a in ("repeat", "sample", "neuron")]))

    def send_all(self, messages: list[tuple[str, dict]]) -> None:
        """Program messages in order, those in a row for one instrument in one write."""
        runs: list[tuple[str | None, list[str]]] = []
        for template, fields in messages:
            role, text = self.desc.message(template, **fields)
            if runs and runs[-1][0] == role:
                runs[-1][1].append(text)
            else:
                runs.append((role, [text]))
        for role, texts in runs:
            for r in [role] if role else list(self._res):
                self._res[r].write("\n".join(texts))

    def _fetch_and_check(self, fetch: str) -> np.ndarray:
        """The result and its instrument's error query in one write; then every other instrument's errors."""
        named, text = self.desc.message(fetch)
        role = named or next(iter(self._res))
        res, errors = self._res[role], self.desc.data["errors"]["query"]
        res.write(text + "\n" + self.desc.message(errors)[1])
        reply = res.read()
        err = self.desc.error(res.read().strip())       # read before parsing: no reply left unread
        if err is not None:
            raise _Retry(f"measurement: controller error ({role}) {err[0]}, {err[1]!r}")
        raw = self.desc.parse_values(reply)
        for other in self._res:
            if other != role:
                self._settled(other)
        return raw

    def _wait(self, wait: dict, evaluations: int) -> None:
        if "delay_s" in wait:
            time.sleep(wait["delay_s"])
        elif "opc" in wait:
            self.ask(wait["opc"])
        else:
            deadline = time.monotonic() + self.timeout_ms / 1000 + 20e-6 * evaluations
            while self.ask(wait["poll"]) != wait.get("until", "0"):
                if time.monotonic() > deadline:
                    raise _Retry(f"{wait['poll']}: still busy after {self.timeout_ms} ms")
                time.sleep(wait.get("interval_s", 0.001))

    def describe(self) -> dict:
        d = {"type": "DescribedDevice", "dialect": self.desc.name, "description": str(self.desc.path),
             "resource": self.resource, "idn": self.idn, "reconnects": self.reconnects, "retries": self.retried,
             "scaling": {"input_scales": {f"{s:g}": n for s, n in sorted(self.input_scales.items())}}}
        if self.plan is not None:
            d["placement"] = dict(self.plan.placement, notes=self.plan.notes)
        return d

    def close(self) -> None:
        for res in self._res.values():
            res.close()
        self._res = {}
