"""The lab bench: ANB-series chips over VISA, a simulated controller, bench files (SCPI.md)."""

from .driver import ScpiError, VisaDevice
from .faults import Faults
from .server import ChipSpec, SimulatedBench

__all__ = ["VisaDevice", "ScpiError", "SimulatedBench", "ChipSpec", "Faults", "load_bench", "Bench"]


def __getattr__(name):
    if name in ("load_bench", "Bench"):
        from . import benchfile
        return getattr(benchfile, name)
    raise AttributeError(name)
