"""tools/structure.py: finds each kind of offence in a tiny tree, exits 1 on any, 0 on a clean tree."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "structure.py"


@pytest.fixture(scope="module")
def structure():
    spec = importlib.util.spec_from_file_location("structure_tool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def write_tree(root: Path) -> Path:
    """pkg/ with one long module, one long method, one function of 9 parameters, and clean code around them."""
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A tiny package."""\n')
    (pkg / "clean.py").write_text(
        '"""Clean: short function, 8 parameters besides self."""\n\n\nclass C:\n'
        "    def ok(self, a, b, c, d, e, f, g, h):\n        return a\n")
    (pkg / "big.py").write_text('"""Over the module limit."""\n' + "X = 1\n" * 400)
    body = "".join(f"        x{i} = {i}\n" for i in range(58))
    (pkg / "long.py").write_text(
        '"""A method of 61 lines (decorator counted), one of 60 lines."""\n\n\nclass K:\n'
        "    @staticmethod\n    def long():\n" + body + "        return 0\n\n"
        "    def limit(self):\n" + body + "        return 0\n")
    (pkg / "many.py").write_text(
        '"""Nine parameters (the *args and **kwargs count one each)."""\n\n\n'
        "def many(a, b, c, d, e, f, g, *args, **kwargs):\n    return a\n")
    return pkg


def test_finds_one_offender_of_each_kind(tmp_path, structure, monkeypatch, capsys):
    pkg = write_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert structure.main(["pkg", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == 5
    assert out["counts"] == {"module-lines": 1, "function-lines": 1, "parameters": 1}
    found = {(o["kind"], o["name"], o["value"]) for o in out["offences"]}
    assert found == {("module-lines", "pkg/big.py", 401), ("function-lines", "K.long", 61),
                     ("parameters", "many", 9)}
    assert structure.main(["pkg"]) == 1
    text = capsys.readouterr().out
    assert "modules over 400 lines: 1" in text and "pkg/long.py:6 K.long" in text
    (pkg / "big.py").unlink(); (pkg / "long.py").unlink(); (pkg / "many.py").unlink()
    assert structure.main(["pkg"]) == 0
    assert "functions over 60 lines: 0" in capsys.readouterr().out


def test_map_and_exit_status_from_the_command_line(tmp_path):
    write_tree(tmp_path)
    mapped = subprocess.run([sys.executable, str(SCRIPT), "--map", "pkg"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert "- `pkg`: A tiny package." in mapped
    assert "- `pkg.many`: Nine parameters (the *args and **kwargs count one each)." in mapped
    gate = subprocess.run([sys.executable, str(SCRIPT), "pkg"], cwd=tmp_path, capture_output=True, text=True)
    assert gate.returncode == 1 and "functions with more than 8 parameters: 1" in gate.stdout
    missing = subprocess.run([sys.executable, str(SCRIPT), "nowhere"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_map_write_replaces_only_its_block(tmp_path, structure):
    write_tree(tmp_path)
    (tmp_path / "pkg" / "sub").mkdir()
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text('"""Sub: a subpackage."""\n')
    doc = tmp_path / "design.md"
    doc.write_text(f"# Design\n\n{structure.MAP_BEGIN}\nstale\n{structure.MAP_END}\n\n## After\n")
    assert structure.main(["--map", "--write", str(doc), str(tmp_path / "pkg")]) == 0
    text = doc.read_text()
    assert text.startswith("# Design\n\n") and text.endswith("\n\n## After\n") and "stale" not in text
    assert "### unsorted: add these to STAGES in tools/structure.py" in text   # pkg is no stage of hwloop's
    assert "- `pkg.sub`: Sub: a subpackage." in text and "- `pkg.big`: Over the module limit." in text


def test_design_md_lists_every_module(structure):
    """docs/design.md's module map names every module of hwloop/ and exporters/ (regenerate it with --map --write)."""
    root = SCRIPT.parents[1]
    doc = (root / "docs" / "design.md").read_text()
    block = doc[doc.index(structure.MAP_BEGIN):doc.index(structure.MAP_END)]
    missing = [n for n in structure.modules([root / "hwloop", root / "exporters"]) if f"- `{n}`:" not in block]
    assert not missing, f"not in docs/design.md's module map (run tools/structure.py --map --write docs/design.md): {missing}"
    assert "### unsorted" not in block
