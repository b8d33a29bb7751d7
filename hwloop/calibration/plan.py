"""The measurement plan: which probes to send to a chip, designed from what the chip reports.

A plan is a pure function of the chip's capacity and ranges, a budget (total
number of analog evaluations) and a seed, so a resumed calibration rebuilds
exactly the plan it was interrupted in.  Every probe uses one fixed weight
pattern per activation (programmed once, so static programming errors stay put):
the first half of the inputs weighted ``+w``, the second half ``-w``, the
inputs set to ``mid + d/2`` and ``mid - d/2``, which gives every neuron the
same pre-activation ``a = w * n_half * d`` of either sign within any input
range.  Probes:

- ``level``: ``ACT LIN``, every block holds all levels (one input sample
  each), stepped so the signal sweeps 70% of the ADC range (zero included when
  reachable); many repetitions separate additive from multiplicative noise
  (variance against mean^2) and common-mode from independent noise (covariance
  across neurons) and give gain/offset; the blocks, spread over the
  calibration, are the reference points of the drift fit (against time and
  temperature);
- ``norm``: pre-activation 0 with one value on every input, at full-scale and
  half-scale weights: weight read noise (variance ~ ||x||^2) and whether it
  scales with the weights' full scale;
- ``act``: every other activation of ``ACT:CAT?``, the pre-activation swept
  into saturation (or to the top level for unbounded ones), to identify
  the transfer function (which, slope, saturation).

The seed keys the draws of an emulated chip (``Device.program(seed=)``); the
plan itself does not depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from typing import TYPE_CHECKING

from ..errors import HwloopError

if TYPE_CHECKING:        # hwloop.layer imports torch; the CLI's parser reads DEFAULT_BUDGET from here
    from ..layer import AnalogLayer

#: default total number of analog evaluations (repeat x sample) of a calibration
DEFAULT_BUDGET = 200_000
#: shares of the budget: noise/gain/drift levels, activation sweeps, input-norm (read noise) probes
SHARE_LEVEL, SHARE_ACT, SHARE_NORM = 0.75, 0.15, 0.10
#: most floats fetched in one block (keeps each stored block, and each transfer, modest)
MAX_BLOCK_VALUES = 2_000_000


@dataclass(frozen=True)
class ChipInfo:
    """What a chip says about itself (``*IDN?``, ``SYST:CAP?`` and the range queries)."""

    idn: str
    max_inputs: int
    max_outputs: int
    max_batch: int
    max_repeats: int
    input_range: tuple[float, float]
    weight_max: float
    bias_max: float
    output_range: tuple[float, float]
    output_bits: int
    activations: tuple[str, ...]      # hwloop names ("linear", "sigmoid", ...)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChipInfo":
        d = dict(d)
        for k in ("input_range", "output_range", "activations"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class Probe:
    """One measurement block: ``samples`` inputs (one per level), each evaluated ``repeats`` times."""

    index: int
    kind: str                 # "level" | "act" | "norm"
    activation: str
    levels: tuple[float, ...]  # nominal pre-activation of every neuron, one per sample
    repeats: int
    commons: tuple[float, ...] = ()   # "norm": the value on every input, one per sample (pre-activation 0)
    weight: float = 0.0               # |w| of this probe's pattern (0: the plan's)

    @property
    def samples(self) -> tuple:
        """What tells this probe's samples apart: their levels, or for "norm" their common inputs."""
        return self.commons or self.levels

    @property
    def evaluations(self) -> int:
        return len(self.levels) * self.repeats

    @property
    def layer_key(self) -> tuple[str, float]:
        """Probes with the same key share one programming of the chip."""
        return self.activation, self.weight


@dataclass
class Plan:
    """The probes of a calibration and the fixed weight pattern they share."""

    chip: ChipInfo
    n_in: int
    n_out: int
    weight: float             # |w| of the +w/-w pattern
    budget: int
    seed: int
    probes: list[Probe] = field(default_factory=list)
    #: 0: the designed plan; k > 0: the k-th extension of a calibration to a stated precision
    stage: int = 0
    #: an extension's level blocks (levels of one block, with repeats); () for a designed plan
    design: tuple[float, ...] = ()

    def key(self, probe: Probe) -> tuple[int, ...]:
        """The randomness key of a probe's block (an extension's differ from the designed plan's)."""
        return (self.seed, probe.index) if not self.stage else (self.seed, probe.index, self.stage)

    @property
    def n_half(self) -> int:
        return max(1, self.n_in // 2)

    def layer(self, activation: str, weight: float = 0.0) -> AnalogLayer:
        """The probe layer: first half of the inputs weighted +w, second half -w, no bias."""
        wv = weight or self.weight
        w = np.full((self.n_out, self.n_in), wv, np.float32)
        if self.n_in > 1:
            w[:, self.n_half:] = -wv
        from ..layer import AnalogLayer

        return AnalogLayer(index=0, name=f"calibration-{activation}", op="Gemm", weight=w,
                           bias=np.zeros(self.n_out, np.float32), activation=activation)

    def probe_layer(self, probe: Probe) -> AnalogLayer:
        return self.layer(probe.activation, probe.weight)

    def inputs(self, levels, commons=()) -> np.ndarray:
        """Inputs (1, B, n_in) that give pre-activation ``levels`` (B,) on every neuron.

        With ``commons`` (the "norm" probes), every input of sample b is commons[b]: the +w and -w
        halves cancel (pre-activation 0) while the input norm grows, which shows weight read noise.
        """
        lo, hi = self.chip.input_range
        if len(commons):
            x = np.repeat(np.asarray(commons, np.float64)[:, None], self.n_in, axis=1)
            return np.clip(x, lo, hi).astype(np.float32)[None]
        mid = 0.5 * (lo + hi) if self.n_in > 1 else 0.0
        d = np.asarray(levels, np.float64) / (self.weight * self.n_half)
        x = np.empty((len(d), self.n_in), np.float64)
        if self.n_in > 1:
            x[:, : self.n_half] = (mid + d / 2)[:, None]
            x[:, self.n_half:] = (mid - d / 2)[:, None]
        else:
            x[:, 0] = d
        return np.clip(x, lo, hi).astype(np.float32)[None]

    def input_norm2(self, probe: Probe) -> np.ndarray:
        """||x||^2 of each sample of ``probe`` (weight read noise grows with it)."""
        x = self.inputs(probe.levels, probe.commons)[0].astype(np.float64)
        return np.sum(x * x, axis=1)

    def summary(self) -> dict:
        """The plan in a few numbers, for the profile's provenance."""
        kinds: dict[str, int] = {}
        for p in self.probes:
            kinds[p.kind] = kinds.get(p.kind, 0) + p.evaluations
        return {"budget": self.budget, "seed": self.seed, "n_in": self.n_in, "n_out": self.n_out,
                "weight": self.weight, "probes": len(self.probes), "evaluations": kinds,
                "level_values": sorted({v for p in self.probes if p.kind == "level" for v in p.levels}),
                "norm_inputs": sorted({c for p in self.probes if p.kind == "norm" for c in p.commons}),
                "activations": sorted({p.activation for p in self.probes})}


def _check_chip(chip: ChipInfo, budget: int) -> None:
    """Refuse a budget too small or too large for memory, and a chip whose ranges leave nothing to measure."""
    if budget < 1000:
        raise HwloopError(f"calibration budget {budget}: too small (at least 1000 evaluations)")
    from ..inputs import require_memory   # the fits hold every measured value: refuse what cannot fit

    require_memory(8.0 * budget * max(1, chip.max_outputs), f"a calibration of {budget} evaluations",
                   "lower --budget")
    lo_in, hi_in = chip.input_range
    lo_out, hi_out = chip.output_range
    if not (hi_in > lo_in and hi_out > lo_out and chip.weight_max > 0):
        raise HwloopError(f"chip {chip.idn!r}: unusable ranges (input {chip.input_range}, "
                          f"output {chip.output_range}, weights +-{chip.weight_max})")
    if "linear" not in chip.activations:
        raise HwloopError(f"chip {chip.idn!r}: ACT:CAT? lists no LINear transfer function; the calibration "
                          "measures gains and noise in linear mode")


def _signal_levels(chip: ChipInfo, n_in: int, weight: float, n_levels: int) -> tuple[np.ndarray, float, float]:
    """The linear-mode levels (70% of the ADC range, as far as the inputs reach; 0 among them when
    the range spans it), the highest of them before rounding, and the largest pre-activation the inputs reach."""
    lo_in, hi_in = chip.input_range
    lo_out, hi_out = chip.output_range
    n_half = max(1, n_in // 2)
    span_in = (hi_in - lo_in) if n_in > 1 else max(abs(lo_in), abs(hi_in))
    span_out = hi_out - lo_out
    # Signal levels for LIN: 70% of the ADC range, so gain/offset spread and noise stay off the rails.
    lev_lo, lev_hi = lo_out + 0.15 * span_out, hi_out - 0.15 * span_out
    reach = weight * n_half * span_in if n_in > 1 else weight * span_in
    lev_lo, lev_hi = max(lev_lo, -reach), min(lev_hi, reach)
    if n_in == 1 and lo_in >= 0:
        lev_lo = max(lev_lo, weight * lo_in)
    if lev_hi <= lev_lo:
        raise HwloopError(f"chip {chip.idn!r}: inputs cannot reach the output range")
    levels = np.round(np.linspace(lev_lo, lev_hi, n_levels), 9)
    if lev_lo < 0 < lev_hi:  # the zero point measures offsets directly
        levels[np.argmin(np.abs(levels))] = 0.0
    return levels, lev_hi, reach


def design_plan(chip: ChipInfo, budget: int = DEFAULT_BUDGET, seed: int = 0,
                n_levels: int = 9, n_act_levels: int = 17) -> Plan:
    """Design the probes for ``chip`` within ``budget`` evaluations (see the module doc)."""
    _check_chip(chip, budget)
    n_in = chip.max_inputs - (chip.max_inputs % 2) if chip.max_inputs > 1 else 1
    n_out = chip.max_outputs
    lo_in, hi_in = chip.input_range
    act_reach = 8.0  # pre-activation for the transfer sweeps: deep into saturation of a unit-slope sigmoid/tanh
    # Full-scale weights: they sit exactly on any programming grid, make a static programming error the
    # smallest share of each neuron's sum, and need the smallest inputs for a given signal, which keeps
    # weight read noise (variance ~ ||x||^2) small in the level probes.
    weight = chip.weight_max
    levels, lev_hi, reach = _signal_levels(chip, n_in, weight, n_levels)
    probes: list[Probe] = []

    def add(kind, act, lv, n_eval, commons=(), w=0.0):
        """Split ``n_eval`` evaluations of the levels ``lv`` into blocks the chip accepts."""
        per = max(2, int(n_eval // len(lv)))
        per_block = max(2, min(chip.max_repeats, MAX_BLOCK_VALUES // max(1, len(lv) * n_out), per))
        while per > 0:
            k = min(per_block, per)
            if k >= 2:
                probes.append(Probe(len(probes), kind, act, tuple(float(v) for v in lv), int(k),
                                    tuple(float(c) for c in commons), float(w)))
            per -= k

    # Input-norm probes: pre-activation 0 (the +w and -w halves cancel) with the same value c on every
    # input, at half and at full-scale weights: read noise grows as c^2 and tells by its ratio whether
    # it scales with the programmed weights' full scale.  The full-scale ones share the level probes'
    # programming (same weights), so they come right before them.
    if n_in > 1:
        commons = tuple(np.round(np.linspace(lo_in, hi_in, 5), 9))
        for w in (weight / 2, weight):
            add("norm", "linear", (0.0,) * len(commons), int(budget * SHARE_NORM) // 2, commons, w)
    # Every level block holds all levels (one sample each): drift then shifts all levels alike (it cannot
    # alias into the level dependence), and every block is its own reference point for the drift fit.
    add("level", "linear", levels, int(budget * SHARE_LEVEL), w=weight)
    others = [a for a in chip.activations if a != "linear"]
    for act in others:
        a_max = min(reach, act_reach if act != "relu" else lev_hi)
        act_levels = np.round(np.linspace(-a_max, a_max, n_act_levels), 9)
        add("act", act, act_levels, int(budget * SHARE_ACT) // len(others), w=weight)
    return Plan(chip, n_in, n_out, float(weight), int(budget), int(seed), probes)



def extension_plan(base: Plan, stage: int, levels: tuple[float, ...], evaluations: int) -> Plan:
    """A sequential extension of ``base``: level blocks (``ACT LIN``, ``base``'s pattern) holding ``levels``.

    ``levels`` may repeat a value to weight it; blocks are split as the chip
    accepts them.  A pure function of its arguments, so a store rebuilds it.
    """
    chip, n_out = base.chip, base.n_out
    levels = tuple(float(v) for v in levels)
    per = max(2, int(evaluations // len(levels)))
    per_block = max(2, min(chip.max_repeats, MAX_BLOCK_VALUES // max(1, len(levels) * n_out), per))
    probes: list[Probe] = []
    while per >= 2:
        k = min(per_block, per)
        probes.append(Probe(len(probes), "level", "linear", levels, int(k), (), float(base.weight)))
        per -= k
    return Plan(chip, base.n_in, n_out, base.weight, int(evaluations), base.seed, probes, stage, levels)


def plan_from_attrs(p: dict) -> Plan:
    """The plan a calibration store was made for, from its recorded attributes (``plan_attrs``)."""
    chip = ChipInfo.from_dict(p["chip"])
    if not p.get("stage"):
        return design_plan(chip, p["budget"], p["seed"])
    # an extension needs only the pattern (array size, weight), which does not depend on the budget
    return extension_plan(design_plan(chip, DEFAULT_BUDGET, p["seed"]), int(p["stage"]), tuple(p["design"]),
                          int(p["budget"]))


def plan_attrs(plan: Plan) -> dict:
    """What a store records to rebuild ``plan`` (``plan_from_attrs``)."""
    out = {"chip": plan.chip.to_dict(), "budget": plan.budget, "seed": plan.seed}
    if plan.stage:
        out.update(stage=plan.stage, design=list(plan.design))
    return out
