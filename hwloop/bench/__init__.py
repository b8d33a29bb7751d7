"""The lab bench: ANB-series chips over VISA, a simulated controller, bench files (../shared/bench/SCPI.md).

- ``scpi``: the command set, declared once (driver and simulator both read it)
- ``VisaDevice`` (``driver``): a ``Device`` that runs a layer on a chip through pyvisa; its transport
  (``link``) and the tile/chunk/range-scaling plan it shares with the twin (``plan``, ``twin``)
- ``SimulatedBench`` / ``ChipSpec`` (``server``): the simulated controller; ``Faults`` (``faults``)
- ``load_bench`` / ``Bench`` / ``open_device`` (``benchfile``): which device runs which layer; plug-ins
  (``plugins``: ``type: module:Class`` or an entry point of group ``hwloop.devices``); the VISA
  library (``visalib``); a fixed-weight chip for pyvisa-sim (``fixedchip``, ``sim/``)
- declarative instruments: a dialect or a source/measure bench in YAML (``instrument``,
  ``instruments/``), one generic driver (``described``) and one simulated controller (``described_server``)

The names are imported on first use (the server and the bench files pull in
the emulator, and with it torch), so ``hwloop.bench.faults`` alone stays cheap.
"""

from ..lazy import lazy_attributes

__all__ = ["VisaDevice", "ScpiError", "SimulatedBench", "ChipSpec", "Faults", "load_bench", "Bench", "open_device",
           "layer_devices"]

__getattr__, __dir__ = lazy_attributes(__name__, globals(), {
    "Bench": "benchfile", "load_bench": "benchfile", "open_device": "benchfile", "layer_devices": "benchfile", "ScpiError": "driver", "VisaDevice": "driver",
    "Faults": "faults", "ChipSpec": "server", "SimulatedBench": "server"})
