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


def trained_digits_cnn(folder: Path, pool: str, epochs: int) -> Path:
    """``exporters.models.CNN`` (conv 8, conv 16, ``pool`` pooling) trained on the digits, as ONNX in ``folder``."""
    import torch

    from exporters.models import CNN, seeded
    from exporters.torch_onnx import export_torch
    from exporters.training import train_torch
    from hwloop.data import load_data

    with seeded(2):
        net = CNN((1, 8, 8), channels=(8, 16), pool=pool)
    net = train_torch(net, load_data("digits+train"), epochs=epochs, lr=1e-2, seed=0, batch_size=64,
                      input_shape=(1, 8, 8))
    return export_torch(net, folder / f"cnn_{pool}.onnx", torch.zeros(2, 1, 8, 8), dynamo=False, optimize=False)
