"""Which VISA library a device talks through: ``visa_library`` of a bench file or device.

``"@py"`` (pyvisa-py, the default), ``"@ivi"`` (NI-VISA, Keysight IO Libraries or
another IVI VISA), ``"@sim"`` (pyvisa-sim with hwloop's simulated instruments,
``hwloop/bench/sim/*.yaml``), ``"FILE.yaml@sim"`` (pyvisa-sim with your own
instrument file), or the path of a VISA shared library.  Nothing is
hard-wired: ``resource_manager`` is the one place that opens a VISA library.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HwloopError

#: pyvisa-sim instruments shipped with hwloop (``"@sim"``)
SIM_INSTRUMENTS = Path(__file__).with_name("sim") / "fixed_chip.yaml"


def library_spec(visa_library: str, base: Path | None = None) -> str:
    """The argument for ``pyvisa.ResourceManager``; a relative ``FILE@sim`` is taken from ``base``."""
    if visa_library == "@sim":
        return f"{SIM_INSTRUMENTS}@sim"
    if visa_library.endswith("@sim") and base is not None:
        file = Path(visa_library[:-4])
        if not file.is_absolute() and (base / file).is_file():
            return f"{base / file}@sim"
    return visa_library


def resource_manager(visa_library: str = "@py"):
    """A ``pyvisa.ResourceManager`` for ``visa_library``; HwloopError when it cannot be opened."""
    import pyvisa

    try:
        return pyvisa.ResourceManager(library_spec(visa_library))
    except Exception as e:   # pyvisa raises OSError, ValueError or its own errors for a missing library
        raise HwloopError(f"VISA library {visa_library!r} cannot be opened: {e}") from None
