"""Errors a user can act on.

Anything raised as ``HwloopError`` is printed by the CLI as one line
(no traceback) and ends the process with exit status 2.  Raise it for bad
input (files, data specs, profiles, bench files) with a message that names
the thing (file, line, node, key) and what is wrong with it.
"""


class HwloopError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class DeviceError(HwloopError):
    """A device (emulator or instrument) refused or failed an operation."""
