"""Faults the simulated bench controller can inject, so tests can prove the driver survives them.

Each fault fires once at the N-th command counted since the server started
(``*_after``) and/or at random with a per-command probability (``*_prob``),
drawn from the server's own seeded generator.  A fault that needs an
opportunity (a reply to delay, a block to corrupt) fires at the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Faults:
    drop_after: int | None = _f(None, "close the connection after the N-th command")
    drop_prob: float = _f(0.0, "probability of closing the connection after a command")
    delay_after: int | None = _f(None, "delay the reply to the first query from the N-th command on by --delay-s")
    delay_prob: float = _f(0.0, "probability of delaying a query's reply by --delay-s")
    delay_s: float = _f(2.0, "how long a delayed reply waits (then it is sent anyway: a stale reply)")
    corrupt_after: int | None = _f(None, "corrupt the first block reply from the N-th command on")
    corrupt_prob: float = _f(0.0, "probability of corrupting a block reply")
    corrupt_mode: str = _f("bytes", "bytes (random bytes inside the payload), nan (non-finite values), "
                                    "short (a block 4 bytes shorter than the data)")
    error_after: int | None = _f(None, "push an error into the queue after the N-th command")
    error_prob: float = _f(0.0, "probability of pushing an error into the queue after a command")
    error_code: int = _f(-221, "the SCPI error code pushed")
    glitch_after: int | None = _f(None, "power glitch after the N-th command: the controller resets as on power-up")
    glitch_prob: float = _f(0.0, "probability of a power glitch after a command")
    refuse_s: float = _f(0.0, "after each dropped connection, refuse new connections for this many seconds")

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= v <= 1.0:
                raise ValueError(f"fault {f.name}={v}: a probability must lie in [0, 1]")
            if f.name.endswith("_after") and v is not None and v < 1:
                raise ValueError(f"fault {f.name}={v}: must be a command count >= 1")
            if f.name.endswith("_s") and not 0.0 <= v < float("inf"):
                raise ValueError(f"fault {f.name}={v}: a duration must be a finite number of seconds >= 0")
        if self.corrupt_mode not in ("bytes", "nan", "short"):
            raise ValueError(f"fault corrupt_mode={self.corrupt_mode!r}: one of bytes, nan, short")

    def active(self) -> dict:
        """The faults that are switched on (for logs and provenance)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) not in (None, 0.0, f.default)}


class FaultClock:
    """Decides, command by command, which faults fire; all randomness from ``rng``."""

    KINDS = ("drop", "delay", "corrupt", "error", "glitch")

    def __init__(self, faults: Faults, rng):
        self.faults = faults
        self.rng = rng
        self.count = 0
        self.pending = {k: False for k in self.KINDS}
        self.fired = {k: 0 for k in self.KINDS}

    def tick(self) -> None:
        """One more command received: arm the faults due now."""
        self.count += 1
        for k in self.KINDS:
            after = getattr(self.faults, f"{k}_after")
            prob = getattr(self.faults, f"{k}_prob")
            if after == self.count or (prob > 0 and self.rng.random() < prob):
                self.pending[k] = True

    def take(self, kind: str) -> bool:
        """Consume an armed fault of this kind (True when it fires now)."""
        if self.pending[kind]:
            self.pending[kind] = False
            self.fired[kind] += 1
            return True
        return False
