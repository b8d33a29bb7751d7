"""Devices run analog layers: the emulator (physics from a profile) or a chip over VISA."""

from .base import Device
from .emulator import Emulator

__all__ = ["Device", "Emulator"]
