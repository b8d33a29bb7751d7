"""hwloop: hardware-in-the-loop emulation of analog neural-network accelerators.

The flow is one-way: ``graph`` (import ONNX) -> ``runner`` (execute on
``devices``) -> ``store`` (record) -> ``analysis`` (analyse) -> ``report``.
"""

__version__ = "0.1.0"
