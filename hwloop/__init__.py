"""hwloop: hardware-in-the-loop emulation of analog neural-network accelerators.

The flow is one-way: ``graph`` (import ONNX) -> ``runner`` (execute on
``devices``) -> ``store`` (record) -> ``analysis`` (analyse) -> ``report``.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP workers that spin-wait between parallel regions (libgomp's default) steal the cores they
# share with other processes -- bench controllers, a second user -- and each region then waits for a
# descheduled worker: the emulator ran 4-5x slower with 2 threads than with 1 on a busy 2-core
# machine, and no slower with passive waiting on an idle one.  Read once, when torch loads OpenMP,
# so it only applies when hwloop is imported first (the CLI); OMP_WAIT_POLICY=ACTIVE overrides it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
