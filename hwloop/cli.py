"""The ``hwloop`` command: one subcommand per file in ``hwloop/commands``.

Each command module has ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``; this file only dispatches.  A command module's
docstring is its ``--help`` description (paragraphs kept as written), so it
is user text; command modules import their heavy dependencies inside
``main`` so that building the parser (``hwloop --help``) stays fast.  A
``HwloopError`` becomes one line on stderr and exit status 2, with no
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import textwrap
from pathlib import Path

from .errors import HwloopError

DESCRIPTION = """\
hwloop: run neural networks on analog accelerator chips, real or emulated,
and measure what their noise does to every layer."""

EPILOG = """\
flow: import an ONNX model (export, inspect) -> run its analog layers on emulated
or real devices (run, check, bench, calibrate, validate) -> record every layer's
outputs in a run store -> analyse the noise (analyze, predict, walk).
Try `hwloop demo` for the whole flow; `hwloop COMMAND --help` for each command."""

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
    "finetune": "finetune",
    "mitigate": "mitigate",
    "profile": "profile",
}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``hwloop run: error: argument --port: ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hwloop", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        p = sub.add_parser(name, help=mod.HELP, description=help_text(mod.__doc__ or mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    from .argtypes import harden

    harden(parser)      # every option's value checked by its name, the same in every command
    return parser


def help_text(doc: str, width: int = 79) -> str:
    """A docstring as ``--help`` shows it (with ``RawDescriptionHelpFormatter``).

    reST double backquotes are dropped; prose paragraphs are re-wrapped to
    ``width``; paragraphs with indented, numbered or bulleted lines (usage
    examples, lists) are kept as written.
    """
    paragraphs = []
    for para in textwrap.dedent(doc.strip("\n")).strip().replace("``", "").split("\n\n"):
        lines = para.splitlines()
        if any(re.match(r"\s|\d+\.\s|[-*]\s", line) for line in lines):
            paragraphs.append(para)
        else:
            paragraphs.append(textwrap.fill(" ".join(l.strip() for l in lines), width,
                                            break_long_words=False, break_on_hyphens=False))
    return "\n\n".join(paragraphs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    shown = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(args.command, shown)
    try:
        return int(args._main(args) or 0)
    except HwloopError as e:
        print(f"hwloop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwloop {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown


def _one_line_warning(command: str, default):
    """hwloop's own warnings (a driver's range scaling, an ADC that clipped) as one line on stderr, like
    its errors; other packages' warnings keep Python's format (file, line and source)."""
    def format_warning(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, UserWarning) and "hwloop" in Path(filename).parts:
            return f"hwloop {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return format_warning


if __name__ == "__main__":
    sys.exit(main())
