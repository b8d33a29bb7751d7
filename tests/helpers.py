"""Helpers shared by the test files (plain functions; fixtures live in conftest.py and bench_fixtures.py).

Import with ``from helpers import ...`` (pytest puts tests/ on the path, as for ``conftest``).
Hand-built ONNX graphs use ``exporters.handbuilt.write_onnx``; reference dense chains
``hwloop.analysis.networks.dense_onnx``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hwloop.profiles import Profile, parse_profile

ROOT = Path(__file__).resolve().parents[1]


def profile(**noise: float) -> Profile:
    """A hand-written profile with only these noise keys (``profile(D_A=1e-3)``); no keys: an ideal device."""
    body = "".join(f"\n  {k}: {v}" for k, v in noise.items()) or " {}"
    return parse_profile(f"version: 1\nprovenance: {{source: assumption}}\nnoise:{body}\n", "test.yaml")


def hwloop(*args: object, cwd: Path | str = ROOT, timeout: float = 300,
           env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m hwloop ARGS`` in a real subprocess; text stdout/stderr captured.

    ``env`` is laid over this process's environment; a value ``None`` removes that variable.
    """
    full = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run([sys.executable, "-m", "hwloop", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=full)
