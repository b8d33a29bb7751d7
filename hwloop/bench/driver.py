"""The one bench driver: ``DescribedDevice`` runs an analog layer on any controller an instrument
description names (``hwloop.bench.instrument``), through pyvisa; ``VisaDevice`` is the ANB dialect's.

The ANB dialect (../shared/bench/SCPI.md) is itself a description,
``instruments/anb.yaml``, so the ANB chips, a second dialect (``acme-nc``,
ASCII) and a source/measure bench (``awg-digitizer``) run through this one
class.  Its jobs: connect (one ``link.Link`` per instrument), read the
capacity and ranges (fixed in the description or queried), program a layer
(tiles, chunks and exact range scaling from ``plan``; checked by CRC-32 where
the dialect offers it), retry.  Measuring is ``measure.Measuring``.

Exact range mapping (``hwloop.bench.plan``; on by default, ``strict_ranges``
refuses instead): values outside the chip's ranges are divided by a power of
two s (exact in float32) and the chip's outputs multiplied by s on the host;
a SIGMoid/TANH layer whose weights need it runs LINear on the chip with bias
and activation applied on the host.  The console says so once, and
``describe()`` records the placement and every scale used.

Faults (timeouts, dropped connections, garbled replies, queued errors) are
retried with bounded exponential back-off: the link reconnects (a fresh
socket, so a stale reply can never be read as the next answer), re-checks the
programmed layer by checksum where it can (else reprograms it), and re-runs
only the unfinished measurement.  When retries run out: ``DeviceError``.
"""

from __future__ import annotations

import threading
import warnings
from typing import Sequence

import numpy as np

from ..devices.base import Device, check_input
from ..errors import DeviceError, HwloopError
from ..layer import AnalogLayer, activate
from . import scpi
from .instrument import Description, load_description
from .link import Link, ScpiError, _Retry  # noqa: F401 (ScpiError re-exported)
from .measure import Job, Measuring
from .plan import HOMOGENEOUS, LayerPlan, Tile, TilePlan, chunks_for, input_scale, plan_layer, tiles_for  # noqa: F401
from .settings import DriverSettings

#: round trips (waits for a reply) per ANB measurement (its queries go out together) and per tile
#: programming (LAY:SHAP, WEIG + *OPC?, WEIG, WEIG:CHEC?, ACT and BIAS each followed by a check)
ROUND_TRIPS_PER_MEASUREMENT = 1
ROUND_TRIPS_PER_PROGRAMMING = 6
_CAPACITY = ("max_inputs", "max_outputs", "max_batch", "max_repeats")
_RANGES = {"weights": "weight_range", "bias": "bias_range", "inputs": "input_range", "outputs": "output_range",
           "output_bits": "output_bits"}


class DescribedDevice(Measuring, Device):
    """A chip on the controller(s) ``description`` names (a shipped name or a YAML file); see the module docstring.

    ``resource``: the VISA resource of a one-instrument bench; ``resources``: {role: resource} for
    several (a source and a measure instrument).  ``options``: ``DriverSettings`` keywords.
    ``link`` / ``links``: connections to share (``sibling()``).
    """

    remote = True

    def __init__(self, description: str | Description, resource: str | None = None, *,
                 resources: dict | None = None, link: Link | None = None, links: dict | None = None, **options):
        self.desc = description if isinstance(description, Description) else load_description(description)
        roles = self.desc.instruments
        self.resources = dict(resources or {}) if resource is None else {roles[0]: resource}
        if sorted(self.resources) != sorted(roles):
            raise DeviceError(f"{self.desc.name}: give one VISA resource per instrument ({', '.join(roles)})"
                              + ("" if len(roles) > 1 else " as resource:"))
        self.resource = ", ".join(self.resources.values())
        self.settings = DriverSettings.build(f"{type(self).__name__} {self.resource}", options)
        self.main_role = roles[0]
        if links is not None:                    # a sibling: the same connections
            self.links = dict(links)
        elif link is not None:
            self.links = {self.main_role: link}
        else:
            self.links = {role: Link(self.desc, r, self.settings, role) for role, r in self.resources.items()}
        for lk in self.links.values():
            lk.users += 1
        self._owns = links is None and link is None     # it opened the connections: closing it releases them
        self.layer = self.plan = None
        self._tiles: list[tuple] = []
        self.input_scales: dict[float, int] = {}   # input scale (power of two, 1: none) -> measurements
        self._noted: set[str] = set()
        self.stats = {"measurements": 0, "retries": 0, "reprograms": 0, "clipped": 0,
                      "bytes_sent": 0, "bytes_fetched": 0, "io_s": 0.0, "written_behind": 0}
        self._faults: list[str] = []
        self._scratch = (np.empty(1 << 16, np.float32), np.empty(1 << 16, np.float32))   # for _check_values
        self._interrupted = threading.Event()     # Ctrl-C seen by the runner while run() streams
        self._careful = False                     # after a failure: checked command by command
        self._temperature: float | None = None
        self._closed = False
        if not self.link.limits:
            self.link.limits = self._retrying(self._read_limits, "reading capacity and ranges")

    @staticmethod
    def check_options(description: str = "", **options) -> dict[str, str]:
        """Bench-file hook: a description that does not load, or an unknown option, is reported at its key."""
        try:
            load_description(description)
        except HwloopError as e:
            return {"description": str(e)}
        unknown = [k for k in options if k not in DriverSettings().options() and k not in ("resource", "resources")]
        return {k: f"unknown option (known: resource, resources, {', '.join(DriverSettings().options())})"
                for k in unknown}

    def sibling(self) -> "DescribedDevice":
        """Another device on the same controller(s) (the same connections), e.g. for a second layer."""
        return self._again(self.link)

    def _again(self, link: Link | None) -> "DescribedDevice":
        return DescribedDevice(self.desc, resources=self.resources, links=self.links, **self.settings.options())

    @property
    def link(self) -> Link:
        """The link of the (first) instrument."""
        return self.links[self.main_role]

    @property
    def reconnects(self) -> int:
        return sum(lk.reconnects for lk in self.links.values())

    @property
    def retried(self) -> int:
        return self.stats["retries"]

    @property
    def hardware(self) -> object:
        """The controller's connection: sibling devices on one chip share it."""
        return self.link

    @property
    def limits(self) -> dict:
        return self.link.limits

    def _read_limits(self) -> dict:
        """Capacity, ranges and activations: fixed in the description, or queried."""
        d, lim = self.desc, self.desc.limits()
        cap = d.section("capacity").get("query")
        if cap:
            values = self._link_of(cap).query(cap, d.numbers)
            if len(values) != 4:
                raise DeviceError(f"{self.resource}: {cap} answered {values!r}")
            lim.update(zip(_CAPACITY, (int(v) for v in values)))
        for key, query in ((d.data["ranges"].get("query")) or {}).items():
            v = self._link_of(query).query(query, d.numbers)
            lim[_RANGES[key]] = int(v[0]) if key == "output_bits" else tuple(v) if len(v) > 1 else v[0]
        chip = {c.upper(): c for c in d.data["activations"].values()}
        if d.data.get("catalog"):
            offered = {a.strip().upper() for a in self._link_of(d.data["catalog"]).query(d.data["catalog"]).split(",")}
            chip = {k: v for k, v in chip.items() if k in offered}
        lim["activations"] = tuple(chip)               # as the controller names them (``ACT:CAT?``)
        return lim

    def _plan_limits(self) -> dict:
        """The chip's limits for ``plan_layer``: its activations by hwloop name."""
        names = {c.upper(): h for h, c in self.desc.data["activations"].items()}
        return {**self.limits, "activations": {names[a] for a in self.limits["activations"]}}

    def twin(self, profile, name: str = "twin") -> Device:
        """An emulator under ``profile`` that runs every layer with this chip's plan (``hwloop.bench.twin``)."""
        from .twin import PlannedTwin

        s = self.settings
        return PlannedTwin(profile, self._plan_limits(), scale_weights=s.scale_weights, scale_inputs=s.scale_inputs,
                           host_activation=s.host_activation, max_block_bytes=s.max_block_bytes, name=name)

    # -- programming ----------------------------------------------------------
    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        """Plan tiles and scaling for ``layer``, refuse what the chip cannot do, and load it."""
        if layer.groups > 1:
            raise HwloopError(f"layer {layer.name!r}: a grouped convolution ({layer.groups} groups); the bench "
                              "driver programs one dense array per layer: run this layer on an emulator")
        fixed = self.desc.section("program").get("fixed")
        plan = self._fixed_plan(layer, fixed) if fixed else plan_layer(
            layer, self._plan_limits(), scale=self.settings.scale_weights, host_activation=self.settings.host_activation,
            chip=f"{'chip' if self.desc.name == 'anb' else self.desc.name + ' at'} {self.resource}")
        for note in plan.notes:           # on the console once, and in describe() (the run's provenance)
            if note not in self._noted:
                self._noted.add(note)
                warnings.warn(note, stacklevel=3)
        self.layer, self.plan = layer, plan
        order = self.desc.section("program").get("weights", {}).get("order", "row")
        self._tiles = [(w := tp.weights if order == "row" else np.ascontiguousarray(tp.weights.T),
                        (tp.weights.shape, scpi.weights_checksum(w), self.desc.data["activations"][tp.activation]))
                       for tp in plan.tiles]
        self._retrying(lambda: self._ensure(0), f"programming layer {layer.name!r}")
        if self.desc.data.get("temperature"):
            self._temperature = self._retrying(lambda: self._ask_temperature(), "temperature")

    def _fixed_plan(self, layer: AnalogLayer, query: str) -> LayerPlan:
        """Weights set in the hardware: the layer must have them; bias and activation run on the host."""
        lim = self.limits
        w = self._retrying(lambda: self._link_of(query).query_values(query), query)
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

    def _ensure(self, tile: int, s_x: float = 1.0) -> None:
        """Make sure the chip holds ``tile`` (bias divided by ``s_x``): verify by checksum after a
        fault, reprogram what was lost, and resend the bias alone when only its scale changed."""
        prog = self.desc.section("program")
        if prog.get("fixed"):
            return
        tp, (sent, key), link = self.plan.tiles[tile], self._tiles[tile], self.link
        bias = tp.bias / np.float32(s_x) if s_x != 1 and not self.plan.host else tp.bias
        bias_key = scpi.weights_checksum(bias)
        if link.loaded == key and not link.verified:
            self._verify(key, tp.weights.shape[0])
        if link.loaded != key:
            self._load_weights(sent, key)
        if link.bias != bias_key:
            link.send(prog["bias"], values=bias)
            link.check(self.desc.header(prog["bias"]) if prog.get("check") == "each" else "programming (" + ", ".join(
                self.desc.header(prog[k] if k != "weights" else prog[k]["command"])
                for k in ("shape", "weights", "activation", "bias") if prog.get(k)) + ")")
            link.bias = bias_key

    def _verify(self, key: tuple, n_out: int) -> None:
        """After a fault: does the chip still hold ``key``?  Without read-back queries it is reprogrammed."""
        link, prog = self.link, self.desc.section("program")
        verify, checksum = prog.get("verify") or {}, prog["weights"].get("checksum")
        ok = bool(verify.get("shape") and verify.get("activation") and checksum) and \
            link.query(verify["shape"], lambda t: tuple(int(v) for v in self.desc.numbers(t))) == key[0] and \
            link.query(checksum) == key[1] and link.query(verify["activation"]).upper() == key[2].upper()
        if ok and (not verify.get("bias") or
                   scpi.weights_checksum(link.query_values(verify["bias"], n_out)) != link.bias):
            link.bias = None
        link.verified = ok
        if not ok:
            self.stats["reprograms"] += 1
            link.loaded = None

    def _load_weights(self, sent: np.ndarray, key: tuple) -> None:
        """Shape, weights (waiting and checking the CRC where the dialect can) and activation.  With
        ``program: {check: each}`` each step is followed by the error query, else the bias's check ends it."""
        link, prog = self.link, self.desc.section("program")
        w, each = prog["weights"], prog.get("check", "end") == "each"
        link.loaded, link.bias, link.verified = None, None, False
        steps = [(prog.get("shape"), {"n_out": key[0][0], "n_in": key[0][1]}), (w["command"], {"values": sent}),
                 (prog["activation"], {"name": key[2]})]
        for template, fields in steps:
            if not template:
                continue
            link.send(template, **fields)
            if template != w["command"]:
                if each:
                    link.check(self.desc.header(template))
                continue
            if w.get("opc"):                    # programming is overlapped: wait for it
                link.query(w["opc"], timeout_ms=self._timeout(0.05 + 1e-6 * sent.size))
            if each:
                link.check(self.desc.header(template))
            if w.get("checksum") and (got := link.query(w["checksum"])) != key[1]:
                raise _Retry(f"{w['checksum']} {got} != host CRC-32 {key[1]} of the weights sent")
        link.loaded, link.verified = key, True

    def send(self, template: str, **fields) -> None:
        """A program message of the description to its instrument (every instrument when it names none)."""
        role = self.desc.role(template)[0]
        for lk in [self.links[role]] if role else list(self.links.values()):
            lk.send(template, **fields)

    def ask(self, template: str, role: str | None = None, **fields) -> str:
        """A query of the description (to ``role``, or its own, or the first instrument); "" for an empty reply."""
        lk = self.links[self.desc.role(template)[0] or role or self.main_role]
        lk.send(template, **fields)
        return lk.reply(template) or ""

    def _timeout(self, seconds: float) -> int:
        """Reply timeout for an overlapped operation of up to ``seconds`` (at the manual's timing)."""
        return int(self.link.timeout_ms + 2000 * seconds)

    # -- running --------------------------------------------------------------
    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)
        r_in, b, n_in = x.shape
        rows = x[0] if r_in == 1 else x.reshape(r_in * b, n_in)
        k = repeats if r_in == 1 else 1
        host = self.plan.host             # host: tiles' partial sums add up in ``out``; else one tile fills it
        out = (np.zeros if host else np.empty)((k, len(rows), self.layer.n_out), np.float32)
        lim, jobs = self.limits, []
        for t, tp in enumerate(self.plan.tiles):
            for c in chunks_for(len(rows), k, tp.weights.shape[0], lim["max_batch"], lim["max_repeats"],
                                self.settings.max_block_bytes):
                xs, s_x = self._scaled_inputs(rows[c.rows, tp.tile.cols])
                slot = out[c.repeats, c.rows, tp.tile.rows]
                jobs.append(Job(t, tp.weights.shape[0], xs, s_x, c.repeats.stop - c.repeats.start, slot,
                                slot if not host and slot.flags.c_contiguous else None))
        done = [0]
        self._interrupted.clear()
        self._retrying(lambda: self._measure_jobs(jobs, done), f"measurement of layer {self.layer.name!r}",
                       progress=lambda: done[0])
        if host:
            out += self.plan.bias
            out = activate(self.layer.activation, out, self.layer.act_params)
        return out if r_in == 1 else out.reshape(r_in, b, -1)

    def _scaled_inputs(self, xs: np.ndarray) -> tuple[np.ndarray, float]:
        s = input_scale(xs, self.limits["input_range"], scale=self.settings.scale_inputs,
                        homogeneous=self.plan.host or self.layer.activation in HOMOGENEOUS, layer=self.layer.name,
                        chip=f"chip {self.resource}")
        self.input_scales[s] = self.input_scales.get(s, 0) + 1
        return np.ascontiguousarray(xs if s == 1 else xs / np.float32(s)), s

    def interrupt(self) -> None:
        self._interrupted.set()

    def _retrying(self, attempt, what: str, progress=None):
        """Run ``attempt`` until it succeeds; on failure back off (exponentially), reconnect, try again
        (``DriverSettings.retrying``).  ``progress()``, when given, counts the work done so far: each step
        forward between two failures earns a fresh set of retries and a fresh back-off (the budget is per
        measurement, not per run)."""
        s = self.settings
        name = self.resource if self.desc.name == "anb" else f"{self.desc.name} at {self.resource}"
        since = {"seen": progress() if progress else None, "attempt": 1}

        def fresh(state) -> int:      # failures since the last step forward, minus one
            if progress is not None and progress() != since["seen"]:
                since["seen"], since["attempt"] = progress(), state.attempt_number
            return state.attempt_number - since["attempt"]

        def tried():
            try:
                out = attempt()
            except (_Retry, ScpiError) as e:
                self._careful = True
                self._faults.append(f"{what}: {e}")
                raise
            self._careful = False
            return out

        def failed(last: BaseException) -> DeviceError:
            return DeviceError(f"{name}: {what} failed after {s.retries} retries: {last}")

        def reconnect(state) -> None:
            self.stats["retries"] += 1
            try:
                for lk in self.links.values():
                    lk.reconnect()
            except DeviceError as e:
                raise failed(e) from None

        return s.retrying(lambda e: isinstance(e, (_Retry, ScpiError)), failed, count=fresh,
                          before_sleep=reconnect)(tried)

    def _ask_temperature(self) -> float:
        t = self.desc.data["temperature"]
        return float(self._link_of(t).query(t))

    def temperature(self) -> float:
        """The chip's temperature now, with the usual retries (calibration logs it per block)."""
        return float(self._retrying(self._ask_temperature, "temperature"))

    @staticmethod
    def _ints(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split(","))

    # -- provenance -----------------------------------------------------------
    def describe(self) -> dict:
        from .describe import describe_device

        return describe_device(self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for lk in self.links.values():     # the opener's close ends the session even if siblings remain
                lk.close(force=self._owns)


class VisaDevice(DescribedDevice):
    """A chip on an ANB-series controller: ``DescribedDevice("anb", resource, **options)``."""

    def __init__(self, resource: str, *, link: Link | None = None, **options):
        super().__init__("anb", resource, link=link, **options)

    def _again(self, link: Link | None) -> "VisaDevice":
        return VisaDevice(self.resource, link=link, **self.settings.options())

    @property
    def options(self) -> dict:
        return self.settings.options()
