"""Devices run analog layers: the emulator (physics from a profile) or a chip over VISA.

``Emulator`` is imported on first use: it pulls in the physics, and with it torch.
"""

from ..lazy import lazy_attributes
from .base import Device

__all__ = ["Device", "Emulator"]

__getattr__, __dir__ = lazy_attributes(__name__, globals(), {"Emulator": "emulator"})
