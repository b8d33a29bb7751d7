"""The ``hwloop`` command: one subcommand per file in ``hwloop/commands``.

Each command module has ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``; this file only dispatches.  A ``HwloopError`` becomes
one line on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import HwloopError

#: subcommand -> module under hwloop.commands (kept in the order of the flow)
COMMANDS = {
    "demo": "demo",
    "export": "export",
    "inspect": "inspect",
    "run": "run",
    "check": "check",
    "analyze": "analyze",
    "predict": "predict",
    "bench": "bench",
    "calibrate": "calibrate",
    "validate": "validate",
    "walk": "walk",
    "profile": "profile",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwloop", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hwloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"hwloop.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"hwloop.commands.{module}":
                continue  # command not part of this build
            raise
        p = sub.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except HwloopError as e:
        print(f"hwloop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwloop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
