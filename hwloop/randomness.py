"""Keyed randomness, and where the torch work runs.

Why a module of its own: "same seed, same numbers" rests on three rules kept
here in one place: every draw comes from a generator made from an explicit key
(``generator(key)`` per batch, ``static_rng(*key)`` for draws made once at
programming), normals are filled in chunks whose boundaries do not depend on
the thread count, and a GPU (``compute_device``) gets its own generator on its
own device.  ``hwloop.physics`` uses these; its names stay importable there.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from .errors import HwloopError




def _tensor(a: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """A torch view of ``a`` (a copy only when ``a`` is read-only or not contiguous), on ``device`` if given."""
    t = torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))
    return t if device is None or device.type == "cpu" else t.to(device)


def _host(t: torch.Tensor) -> np.ndarray:
    """A result back as a numpy array on the host (no copy on the CPU)."""
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


def compute_device(name: str | torch.device | None) -> torch.device | None:
    """Where the torch work of an emulator runs: None (the CPU, the default) or a usable torch device.

    A device torch cannot use here (``cuda`` without a GPU or without a CUDA build of torch) is one
    HwloopError line."""
    if name is None:
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise HwloopError(f"device {name!r}: not a torch device name; use cpu or cuda[:N]") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise HwloopError(f"device {name!r}: only cpu and cuda[:N] are supported")
    if not torch.cuda.is_available():
        raise HwloopError(f"device {name!r}: no CUDA GPU is usable here (torch {torch.__version__}, "
                          f"torch.cuda.is_available() is False); run without --device or with --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HwloopError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def _entropy(key: Sequence[int]) -> list[int]:
    return [int(k) % (1 << 64) for k in key]


def generator(key: Sequence[int], device: torch.device | None = None) -> torch.Generator:
    """A torch generator for one batch (on ``device``, default the CPU): the same key gives the same
    draws on the same kind of device (a GPU's generator is another algorithm than the CPU's)."""
    state = np.random.SeedSequence(_entropy(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device or "cpu").manual_seed(int(state))


#: normals are drawn in chunks of this many elements, each from its own generator seeded by the
#: batch's generator, and filled in parallel: torch's CPU normal_ is serial, and it dominated the
#: emulator's time.  Chunk boundaries are fixed, so the numbers do not depend on the thread count.
_CHUNK = 1 << 20
_pool: tuple[int, ThreadPoolExecutor] | None = None


def normal(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Standard normal float32 draws of ``shape`` on ``gen``'s device, a pure function of ``gen``'s state."""
    if gen.device.type != "cpu":     # a GPU's generator fills any size in parallel itself
        return torch.empty(shape, dtype=torch.float32, device=gen.device).normal_(generator=gen)
    out = torch.empty(shape, dtype=torch.float32)
    flat = out.view(-1)
    k = -(-flat.numel() // _CHUNK)
    if k <= 1:
        return flat.normal_(generator=gen).view(shape)
    seeds = torch.randint(0, 2 ** 62, (k,), generator=gen).tolist()

    def fill(i: int) -> None:
        flat[i * _CHUNK:(i + 1) * _CHUNK].normal_(generator=torch.Generator().manual_seed(seeds[i]))

    list(_executor().map(fill, range(k)))
    return out


def _executor() -> ThreadPoolExecutor:
    """One worker per torch thread; a forked child gets its own pool (threads do not survive a fork)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()),
                                                 thread_name_prefix="hwloop-rng"))
    return _pool[1]


def static_rng(*key: int) -> np.random.Generator:
    """A numpy generator for static draws (programming noise, gain/offset spread)."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(key)))
