"""Words that say exactly what they mean: the check summary's spread, and run's slow start on a terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwloop.check import check_model
from hwloop.numbers import pm
from hwloop.progress import importing

ROOT = Path(__file__).resolve().parents[1]


def test_check_summary_names_its_spread_exactly(demo_onnx):
    r = check_model(demo_onnx, profile=ROOT / "device_profiles" / "semenova.yaml", data="digits@100", repeats=4,
                    seed=0, min_accuracy=0.1)
    text = r.summary()
    n = r.accuracy.size
    sem = float(np.std(r.accuracy, ddof=1) / np.sqrt(n))
    assert f"accuracy mean {r.mean:.4f} ± {sem:.4f} (standard error of the mean over {n} repeats)" in text
    assert f"standard deviation between repeats {float(np.std(r.accuracy, ddof=1)):.4f} (ddof 1)" in text
    assert " std " not in text and ", std" not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_importing_speaks_only_on_a_terminal_and_only_when_there_is_a_wait():
    out = _Terminal()
    with importing("hwloop run", ("hwloop_never_loaded",), stream=out):
        pass
    assert out.getvalue().startswith("hwloop run: importing hwloop_never_loaded ... done in ")
    assert out.getvalue().count("\n") == 1
    quiet = _Terminal()
    with importing("hwloop run", ("sys",), stream=quiet):     # already loaded: no wait, nothing said
        pass
    log = io.StringIO()                                         # not a terminal: nothing before an error line
    with importing("hwloop run", ("hwloop_never_loaded",), stream=log):
        pass
    assert quiet.getvalue() == "" and log.getvalue() == ""
    failed = _Terminal()
    with pytest.raises(ValueError), importing("hwloop run", ("hwloop_never_loaded",), stream=failed):
        raise ValueError("x")
    assert failed.getvalue() == "hwloop run: importing hwloop_never_loaded ...\n"   # the error gets its own line


def _on_a_terminal(argv: list[str]) -> str:
    """Everything a real ``hwloop`` process writes to a pseudo-terminal (stdout and stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hwloop", *argv], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:           # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.slow
def test_run_says_first_that_it_is_importing(tmp_path, mlp_onnx):
    text = _on_a_terminal(["run", str(mlp_onnx), "--data", "digits@20", "--out", str(tmp_path / "r.zarr")])
    first = text.splitlines()[0]
    assert first.startswith("hwloop run: importing torch, onnxruntime ... done in ") and first.endswith(" s"), text
    assert text.index("done in") < text.index("accuracy") and text.count("importing") == 1
    assert (tmp_path / "r.zarr").is_dir()


def test_one_repeat_says_there_is_no_standard_error():
    assert pm([0.5]) == "accuracy 0.5000 (one repeat, so no standard error)"
    assert pm([0.5, 0.7]) == "accuracy 0.6000 ± 0.1000 (mean ± standard error over 2 repeats)"


def test_walk_midpoints_say_what_sigma_is_and_what_the_brackets_are(tmp_path, demo_onnx):
    from hwloop.walking.plots import midpoint_lines, write_sweep_report
    from hwloop.walking.sweep import SweepSettings, open_sweep, run_sweep

    out = run_sweep(SweepSettings(sigmas=(0.1, 10.0), data="digits@40", repeats=2, sites=(1,)), tmp_path / "s.zarr",
                    demo_onnx)
    head = midpoint_lines(open_sweep(out))[0]
    assert "[95% bootstrap interval over repeats]" in head
    assert "sigma: standard deviation s of additive noise x + N(0, s^2) [output units]" in head
    page = write_sweep_report(out, tmp_path / "s.html").read_text()
    assert "midpoint σ [output units] [95% interval]" in page and "inf means" in page


def test_walk_plan_says_when_the_draws_cannot_tell_the_schemes_apart():
    from hwloop.walking.planner import PlanResult, plan_lines

    def lines(uniform, best):
        res = [PlanResult("uniform", np.array([2, 2]), np.array(uniform)),
               PlanResult("inv_mu", np.array([1, 3]), np.array(best))]
        return plan_lines(res, 4, 0.5, len(uniform))

    one = lines([0.80], [0.85])
    assert one[2].split()[2] == "n/a" and "from one noise draw, so untested" in one[-1]
    close = lines([0.80, 0.82, 0.81], [0.81, 0.83, 0.82])         # +0.01, combined s.e. 0.008
    assert "not distinguishable from uniform" in close[-1]
    clear = lines([0.80, 0.81, 0.80], [0.90, 0.91, 0.90])         # +0.10, combined s.e. 0.005
    assert clear[-1].startswith("recommended: inv_mu (highest mean accuracy, +0.1000 against uniform;")
