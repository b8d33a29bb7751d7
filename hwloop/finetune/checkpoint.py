"""Crash-safe training checkpoints: plain arrays in one ``.npz``, replaced atomically after every step.

No pickles: parameters, Adam's moments and step counts, and the per-step
history are arrays; the run's settings are a JSON string, compared on resume
so a checkpoint is only continued by the run that wrote it.  Batch order and
noise are keyed by the step number, so nothing else is needed to continue
exactly where the run stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import HwloopError
from ..files import atomic_path


def save(path: Path, step: int, params: list[torch.Tensor], opt: torch.optim.Optimizer,
         history: dict[str, list[float]], config: dict) -> None:
    """Write the state after ``step`` finished steps."""
    arrays: dict[str, np.ndarray] = {"step": np.array(step, np.int64),
                                     "config": np.array(json.dumps(config, sort_keys=True))}
    for i, p in enumerate(params):
        arrays[f"param_{i}"] = p.detach().numpy()
        st = opt.state.get(p)
        if st:
            arrays[f"adam_step_{i}"] = np.array(float(st["step"]), np.float64)
            arrays[f"adam_m_{i}"] = st["exp_avg"].numpy()
            arrays[f"adam_v_{i}"] = st["exp_avg_sq"].numpy()
    for k, v in history.items():
        arrays[f"history_{k}"] = np.asarray(v, np.float64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load(path: Path, params: list[torch.Tensor], opt: torch.optim.Optimizer, config: dict) -> tuple[int, dict]:
    """Restore parameters and optimizer state in place; returns (finished steps, history)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise HwloopError(f"{path}: not a readable finetune checkpoint ({e})") from None
    saved = json.loads(str(data["config"]))
    want = json.loads(json.dumps(config, sort_keys=True))
    diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    if diff:
        what = ", ".join(f"{k}: {saved.get(k)!r} there, {want.get(k)!r} now" for k in diff)
        raise HwloopError(f"{path}: checkpoint of a different run ({what})")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.from_numpy(data[f"param_{i}"]))
            if f"adam_m_{i}" in data:
                opt.state[p] = {"step": torch.tensor(float(data[f"adam_step_{i}"])),
                                "exp_avg": torch.from_numpy(data[f"adam_m_{i}"].copy()),
                                "exp_avg_sq": torch.from_numpy(data[f"adam_v_{i}"].copy())}
    history = {k[len("history_"):]: data[k].tolist() for k in data if k.startswith("history_")}
    return int(data["step"]), history
