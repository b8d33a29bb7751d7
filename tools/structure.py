"""Structure figures: modules over 400 lines, functions over 60 lines, functions with over 8 parameters.

Issue 18's limits, measured the same way every time so a note can quote them
and CI or a developer can gate on them (exit status 1 when a limit is broken).
Lines are physical lines (``wc -l``); a function's length runs from its ``def``
(decorators included) to its last line; parameters exclude ``self``/``cls``
and count ``*args``/``**kwargs`` as one each.

    python tools/structure.py                    # hwloop/ ; exit 1 if a limit is broken
    python tools/structure.py hwloop tests tools # more trees
    python tools/structure.py --json             # machine output
    python tools/structure.py --map              # module map: each module's docstring's first line, by stage
    python tools/structure.py --map --write docs/design.md   # ... put into docs/design.md's map block
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8


@dataclass(frozen=True)
class Offence:
    kind: str  # "module-lines", "function-lines" or "parameters"
    path: str
    name: str  # module path or qualified function name
    line: int
    value: int
    limit: int


def python_files(roots: list[Path]) -> list[Path]:
    """Every .py file under ``roots`` (a root may be a single file), sorted, caches skipped."""
    files: set[Path] = set()
    for root in roots:
        found = [root] if root.is_file() else root.rglob("*.py")
        files.update(p for p in found if "__pycache__" not in p.parts and not any(
            part.startswith(".") for part in p.parts if part not in (".", "..")))
    return sorted(files)


def parameter_count(args: ast.arguments) -> int:
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (args.vararg is not None) + (args.kwarg is not None)


def functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def check_file(path: Path, shown: str) -> list[Offence]:
    source = path.read_text(encoding="utf-8")
    offences = []
    n_lines = len(source.splitlines())
    if n_lines > MAX_MODULE_LINES:
        offences.append(Offence("module-lines", shown, shown, 1, n_lines, MAX_MODULE_LINES))
    try:
        tree = ast.parse(source, filename=shown)
    except SyntaxError as exc:
        raise SystemExit(f"{shown}:{exc.lineno}: cannot parse: {exc.msg}") from None
    for name, node in functions(tree):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        length = node.end_lineno - first + 1
        if length > MAX_FUNCTION_LINES:
            offences.append(Offence("function-lines", shown, name, node.lineno, length, MAX_FUNCTION_LINES))
        n_params = parameter_count(node.args)
        if n_params > MAX_PARAMETERS:
            offences.append(Offence("parameters", shown, name, node.lineno, n_params, MAX_PARAMETERS))
    return offences


def measure(roots: list[Path], base: Path) -> tuple[list[Path], list[Offence]]:
    files = python_files(roots)
    offences = []
    for path in files:
        try:
            shown = str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            shown = str(path)
        offences.extend(check_file(path, shown))
    return files, offences


KINDS = {
    "module-lines": f"modules over {MAX_MODULE_LINES} lines",
    "function-lines": f"functions over {MAX_FUNCTION_LINES} lines",
    "parameters": f"functions with more than {MAX_PARAMETERS} parameters",
}


def report(files: list[Path], offences: list[Offence], worst: int) -> str:
    lines = [f"{len(files)} files read"]
    for kind, title in KINDS.items():
        these = sorted((o for o in offences if o.kind == kind), key=lambda o: (-o.value, o.path, o.line))
        lines.append(f"{title}: {len(these)}")
        for o in these[:worst]:
            where = o.path if kind == "module-lines" else f"{o.path}:{o.line} {o.name}"
            lines.append(f"  {o.value:5d}  {where}")
        if len(these) > worst:
            lines.append(f"  (+{len(these) - worst} more)")
    return "\n".join(lines)


#: the stages of the flow (docs/design.md), each with the module prefixes it holds; the longest prefix wins
STAGES = (
    ("import", "ONNX in: analog layers and glue; data sets; device profiles",
     ("hwloop.graph", "hwloop.layer", "hwloop.activations", "hwloop.recurrent", "hwloop.lowering",
      "hwloop.data", "hwloop.inputs", "hwloop.profiles", "hwloop.yamlio", "exporters")),
    ("execute", "layers on devices: emulator, chips on the bench, the runner, Dask",
     ("hwloop.runner", "hwloop.pipeline", "hwloop.forward", "hwloop.feeds", "hwloop.run_devices",
      "hwloop.distributed", "hwloop.cluster", "hwloop.devices", "hwloop.physics", "hwloop.randomness",
      "hwloop.bench")),
    ("record", "crash-safe stores and their metadata",
     ("hwloop.store", "hwloop.resumable", "hwloop.result", "hwloop.files", "hwloop.cf", "hwloop.provenance")),
    ("analyse", "statistics, prediction, figures and pages",
     ("hwloop.analysis", "hwloop.report", "hwloop.plotting", "hwloop.numbers")),
    ("calibrate", "a chip measured into a profile", ("hwloop.calibration",)),
    ("walk", "Walking Noise: per-site robustness", ("hwloop.walking",)),
    ("check", "the CI gate", ("hwloop.check", "hwloop.pytest_plugin")),
    ("finetune", "hardware-in-the-loop training", ("hwloop.finetune",)),
    ("mitigate", "model transforms against noise", ("hwloop.mitigate",)),
    ("command line and plumbing", "the CLI and what every part shares",
     ("hwloop", "hwloop.cli", "hwloop.commands", "hwloop.argtypes", "hwloop.errors", "hwloop.lazy",
      "hwloop.progress")),
)
MAP_BEGIN = "<!-- module-map: made by `python tools/structure.py --map --write docs/design.md`; edit docstrings -->"
MAP_END = "<!-- /module-map -->"


def first_docstring_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"


def modules(packages: list[Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages``."""
    found = {}
    for package in packages:
        for path in python_files([package]):
            rel = path.resolve().relative_to(package.resolve().parent).with_suffix("")
            if rel.name != "__main__":
                found[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return found


def stage_of(name: str) -> str:
    best = max(((len(p), stage) for stage, _, prefixes in STAGES for p in prefixes
                if name == p or name.startswith(p + ".")), default=(0, "unsorted"))
    return best[1]


def module_map(packages: list[Path]) -> str:
    """Markdown: one line per module (name, first line of its docstring), grouped by stage of the flow."""
    found = modules(packages)
    lines = [MAP_BEGIN]
    titles = [(stage, why) for stage, why, _ in STAGES] + [("unsorted", "add these to STAGES in tools/structure.py")]
    for stage, why in titles:
        names = sorted((n for n in found if stage_of(n) == stage), key=lambda n: (not n.startswith("hwloop"), n))
        if names:
            lines += ["", f"### {stage}: {why}"]
            lines += [f"- `{n}`: {first_docstring_line(found[n])}" for n in names]
    return "\n".join(lines + [MAP_END])


def write_map(text: str, doc: Path) -> None:
    """Replace the module-map block of ``doc`` (between its markers) with ``text``."""
    old = doc.read_text(encoding="utf-8")
    start, end = old.find(MAP_BEGIN), old.find(MAP_END)
    if start < 0 or end < start:
        raise SystemExit(f"{doc}: no module-map block (lines {MAP_BEGIN!r} ... {MAP_END!r})")
    doc.write_text(old[:start] + text + old[end + len(MAP_END):], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, help="folders or files (default: hwloop/ of this checkout)")
    parser.add_argument("--json", action="store_true", help="print the offences as JSON")
    parser.add_argument("--worst", type=int, default=10, help="offenders listed per kind (default 10)")
    parser.add_argument("--map", action="store_true", help="print the module map (markdown) of hwloop/ and exporters/")
    parser.add_argument("--write", type=Path, metavar="DOC", help="with --map: replace the map block in DOC")
    args = parser.parse_args(argv)
    if args.map:
        text = module_map(args.roots or [here / "hwloop", here / "exporters"])
        write_map(text, args.write) if args.write else print(text)
        return 0
    roots = args.roots or [here / "hwloop"]
    base = Path.cwd()
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        print(f"structure: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    files, offences = measure(roots, base)
    if args.json:
        counts = {kind: sum(o.kind == kind for o in offences) for kind in KINDS}
        print(json.dumps({"files": len(files), "counts": counts,
                          "offences": [asdict(o) for o in offences]}, indent=1))
    else:
        print(report(files, offences, args.worst))
    return 1 if offences else 0


if __name__ == "__main__":
    sys.exit(main())
