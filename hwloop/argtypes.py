"""Command-line values checked once, for every command: an option means the same in all of them.

``harden(parser)`` (called by ``hwloop.cli`` on the whole parser) gives every
option a check by its name: counts (``--repeats``, ``--batch-size``,
``--budget``, ``--epochs``) are at least 1, ``--seed`` and ``--workers`` at
least 0, ``--port`` in 0..65535, durations (``--delay-s``, ``--refuse-s``,
``--time-scale``) and tolerances at least 0, probabilities and ``--ratio``
in [0, 1]; every float option must be finite;
every output option (``--out``, ``--report``, ``--junit``, ``--store``) must
lie in a folder that exists or can be made and is writable.  A bad value is
one line from argparse (``argument --port: ...``) and exit status 2, before
anything is read or written.  A new command gets the same checks by using the
same option names.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["harden", "RULES", "OUTPUTS"]


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be at least {lo:g}, got {v}"


def _within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must lie in [{lo:g}, {hi:g}], got {v}"


#: option -> check of its converted value (None: fine, else what is wrong)
RULES: dict[str, Callable[[Any], str | None]] = {
    "--repeats": _at_least(1), "--batch-size": _at_least(1), "--budget": _at_least(1), "--epochs": _at_least(1),
    "--seed": _at_least(0), "--workers": _at_least(0), "--port": _within(0, 65535),
    "--delay-s": _at_least(0), "--refuse-s": _at_least(0), "--time-scale": _at_least(0), "--sigma": _at_least(0),
    "--clamp": lambda v: None if v > 0 else f"must be greater than 0, got {v}",
    "--ratio": _within(0, 1),
}
#: options naming a file or folder to write
OUTPUTS = ("--out", "--report", "--junit", "--store")


def _rule(option: str) -> Callable[[Any], str | None] | None:
    if option in RULES:
        return RULES[option]
    if option.endswith("-prob"):
        return _within(0, 1)
    if option.startswith("--tol-"):
        return _at_least(0)
    return None


def _checked(convert: Callable[[str], Any] | None, option: str) -> Callable[[str], Any]:
    """The option's own conversion followed by its checks (argparse reports the message)."""
    rule = _rule(option)

    def typed(text: str) -> Any:
        value = convert(text) if convert else text
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        problem = rule(value) if rule and isinstance(value, (int, float)) else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        if option in OUTPUTS:
            from .errors import HwloopError
            from .files import check_output

            try:
                check_output(value)
            except HwloopError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return value

    typed.__name__ = getattr(convert, "__name__", "str")   # argparse names the type in "invalid int value"
    return typed


def harden(parser: argparse.ArgumentParser) -> None:
    """Give every option of ``parser`` and of its subcommands the checks of its name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                harden(sub)
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.nargs == 0:
            continue
        if action.type in (int, float) or _rule(longs[0]) or longs[0] in OUTPUTS:
            action.type = _checked(action.type, longs[0])
