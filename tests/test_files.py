"""Shared chores: atomic writes (hwloop.files), YAML with line numbers (hwloop.yamlio), a cheap CLI parser."""

import os
import subprocess
import sys

import pytest

from hwloop.errors import HwloopError
from hwloop.files import atomic_dir, atomic_path
from hwloop.yamlio import LineMap, line_of, load_yaml


def test_atomic_path_renames_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "report.html"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            tmp.write_text("new")
            assert not target.exists()
    finally:
        os.umask(old)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert list(target.parent.iterdir()) == [target]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "profile.yaml"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir(tmp_path):
    target = tmp_path / "run.zarr"
    with atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(FileExistsError):
        with atomic_dir(target, overwrite=False) as tmp:
            tmp.mkdir()
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            tmp.mkdir()
            raise ValueError
    assert (target / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]
    with atomic_dir(target) as tmp:
        tmp.mkdir()
    assert not (target / "a").exists()


def test_yaml_with_line_numbers():
    data = load_yaml("a: 1e-3\nb:\n  c: [1, {d: 2}]\ndate: 2026-01-31\n", "f.yaml")
    assert isinstance(data, LineMap) and data["a"] == 1e-3 and data["date"] == "2026-01-31"
    assert line_of(data, ["b", "c", 1, "d"]) == 3 and data.line_of("b") == 2 and data.line_of("zz") == 1
    with pytest.raises(HwloopError, match=r"f.yaml:2: duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n", "f.yaml")
    with pytest.raises(HwloopError, match=r"f.yaml:2: not valid YAML"):
        load_yaml("a: [1\n", "f.yaml")
    with pytest.raises(HwloopError):
        load_yaml("!!python/object:os.system {}\n", "f.yaml")


def test_cli_parser_imports_no_torch():
    code = ("import sys; from hwloop.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'zarr', 'xarray', 'onnx', 'hwloop.devices.emulator') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
