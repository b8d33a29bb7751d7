"""The lab bench: ANB-series chips over VISA, a simulated controller, bench files (../shared/bench/SCPI.md).

- ``scpi``: the command set, declared once (driver and simulator both read it)
- ``VisaDevice`` (``driver``): a ``Device`` that runs a layer on a chip through pyvisa
- ``SimulatedBench`` / ``ChipSpec`` (``server``): the simulated controller; ``Faults`` (``faults``)
- ``load_bench`` / ``Bench`` (``benchfile``): which device runs which layer
"""

from .benchfile import Bench, load_bench
from .driver import ScpiError, VisaDevice
from .faults import Faults
from .server import ChipSpec, SimulatedBench

__all__ = ["VisaDevice", "ScpiError", "SimulatedBench", "ChipSpec", "Faults", "load_bench", "Bench"]
