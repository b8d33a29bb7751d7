"""``hwloop check --analytic --compare``: the screen of each pair beside sampling it on the same data."""

from __future__ import annotations

import re

from hwloop.check import Bars, Settings
from hwloop.check.matrix import run_matrix
from hwloop.cli import main as cli_main


def test_compare_prints_both_values_and_the_gap_of_every_pair(demo_onnx, capsys):
    args = ["check", str(demo_onnx), "--profile", "semenova", "--profile", "crossbar", "--data", "digits@300",
            "--max-drop", "0.05", "--max-flip-rate", "0.1", "--analytic", "--compare", "--repeats", "40",
            "--no-cache"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    bars = Bars(max_drop=0.05, max_flip_rate=0.1)
    screens = run_matrix([demo_onnx], ["semenova", "crossbar"], Settings(bars, data="digits@300", analytic=True))
    sampled = run_matrix([demo_onnx], ["semenova", "crossbar"],
                         Settings(bars, data="digits@300", repeats=40, scope="dataset"))
    for a, b in zip(screens, sampled):
        block = out[out.index(f"screen vs sampling: {a.name}, 40 sampled repeats"):]
        for sa, sb in zip(a.bars, b.bars):
            line = re.search(rf"  {sa.name}: screen (\S+), sampled (\S+) ± (\S+) \(s\.e\.\): gap (\S+)", block)
            assert line, block
            got = [float(v) for v in line.groups()]
            assert got[:3] == [round(sa.estimate.value, 4), round(sb.estimate.value, 4), round(sb.estimate.se, 4)]
            assert abs(got[3] - (sa.estimate.value - sb.estimate.value)) <= 5e-5


def test_compare_without_the_screen_is_one_line(demo_onnx, capsys):
    assert cli_main(["check", str(demo_onnx), "--profile", "semenova", "--max-drop", "0.05", "--compare",
                     "--repeats", "4", "--no-cache"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "--compare" in err and "--analytic" in err
