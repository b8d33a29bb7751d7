"""``DriverSettings``: the options of the bench driver, in one place (bench files, ``VisaDevice(...)``).

A bench file's device may set any of these keys; ``DriverSettings.build``
refuses an unknown key or a wrong type with one line naming it.
``DriverSettings.retrying`` is the bench's one retry policy (tenacity), built
from these options: the driver's measurements and the link's connections
back off and give up the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import tenacity

from ..errors import HwloopError


@dataclass(frozen=True)
class DriverSettings:
    """How the driver talks to a controller and maps layers onto its chip (docs/own-chip.md).

    ``retries``: attempts after the first for each measurement and each (re)connection; back-off
    doubles from ``backoff_s`` up to ``max_backoff_s``.  ``on_clip``: ``"error"`` or ``"warn"``
    when the ADC clipped.  ``raw_socket``: on a pyvisa-py TCP socket, move data on the socket
    itself (about ten times pyvisa's read rate) and stream measurements; False: pyvisa's own calls
    only.  ``visa_library``: ``"@py"``, ``"@ivi"``, ``"@sim"``, ``"FILE.yaml@sim"`` or a path.
    ``byte_order``: of binary blocks, where the dialect lets the host choose (``SWAP`` little-endian).
    ``strict_ranges`` refuses what does not fit instead of scaling it (it turns both scalings off).
    ``connect_wait_s``: how long opening a device keeps retrying a controller that takes the connection
    and closes it (one still finishing its previous client's work), beyond the ``retries``; a refused
    connection (nothing listening) gets the ``retries`` only.
    """

    timeout_ms: int = 5000
    scale_inputs: bool = True
    scale_weights: bool = True
    strict_ranges: bool = False
    host_activation: bool = False
    retries: int = 5
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    connect_wait_s: float = 10.0
    on_clip: str = "error"
    byte_order: str = "SWAP"
    max_block_bytes: int = 32 << 20
    verify_grid: bool = True
    raw_socket: bool = True
    visa_library: str = "@py"

    def __post_init__(self):
        if self.on_clip not in ("error", "warn"):
            raise HwloopError(f"on_clip must be 'error' or 'warn', not {self.on_clip!r}")
        if self.byte_order not in ("SWAP", "NORM"):
            raise HwloopError(f"byte_order must be 'SWAP' or 'NORM', not {self.byte_order!r}")
        if self.strict_ranges and (self.scale_inputs or self.scale_weights):
            object.__setattr__(self, "scale_inputs", False)
            object.__setattr__(self, "scale_weights", False)

    @classmethod
    def build(cls, where: str, options: dict) -> "DriverSettings":
        """Settings from keyword options; HwloopError ``WHERE: KEY: problem`` for an unknown one."""
        known = {f.name for f in fields(cls)}
        for key in options:
            if key not in known:
                raise HwloopError(f"{where}: unknown option {key!r} (known: {', '.join(sorted(known))})")
        try:
            return replace(cls(), **options)
        except HwloopError as e:
            raise HwloopError(f"{where}: {e}") from None

    def retrying(self, retry: Callable[[BaseException], bool], failed: Callable[[BaseException], BaseException], *,
                 count: Callable[["tenacity.RetryCallState"], int] | None = None,
                 longer: Callable[["tenacity.RetryCallState", float], bool] | None = None,
                 before_sleep: Callable[["tenacity.RetryCallState"], None] | None = None) -> "tenacity.Retrying":
        """The retry policy (tenacity): retry what ``retry(exception)`` accepts (anything else propagates
        as raised); before the next try wait ``backoff_s * 2**n``, at most ``max_backoff_s``, where ``n``
        is ``count(state)`` (default: the failures so far, minus one); stop once ``n`` reaches ``retries``
        unless ``longer(state, wait_s)`` says go on; then raise ``failed(last exception)``."""
        import tenacity

        def fresh(state: tenacity.RetryCallState) -> int:
            return count(state) if count is not None else state.attempt_number - 1

        def wait(state: tenacity.RetryCallState) -> float:
            return min(self.backoff_s * 2 ** fresh(state), self.max_backoff_s)

        def stop(state: tenacity.RetryCallState) -> bool:
            return fresh(state) >= self.retries and not (longer is not None and longer(state, wait(state)))

        def give_up(state: tenacity.RetryCallState):
            raise failed(state.outcome.exception())

        return tenacity.Retrying(retry=tenacity.retry_if_exception(retry), stop=stop, wait=wait,
                                 before_sleep=before_sleep, retry_error_callback=give_up)

    def options(self) -> dict:
        """As keyword options (provenance, and a sibling device on the same connection)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: every option with its default (bench files check types against these)
DEFAULTS = DriverSettings().options()
