"""Progress without a terminal: plain lines with done/total and a rate (no carriage returns), in real commands."""

from __future__ import annotations

import io
import re

import pytest

from hwloop.cli import main
from hwloop.progress import Progress, step

pytest_plugins = ["tests.bench_fixtures"]

LINE = re.compile(r"^(hwloop \w+): (\d+)/(\d+) (\w+) \([\d.]+%\), [\d.e+-]+ \w+/s, ")


@pytest.fixture(autouse=True)
def every_update(monkeypatch):
    monkeypatch.setenv("HWLOOP_PROGRESS_EVERY", "0")   # a line per update, so short runs show them


def progress_lines(err: str, desc: str) -> list[tuple[int, int]]:
    assert "\r" not in err, "carriage returns in a log without a terminal"
    hits = [LINE.match(l) for l in err.splitlines()]
    return [(int(m[2]), int(m[3])) for m in hits if m and m[1] == desc]


def test_plain_lines_without_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setenv("HWLOOP_PROGRESS_EVERY", "3600")
    with Progress(10, "hwloop x", unit="batch", stream=buf) as bar:
        for _ in range(10):
            bar.update()
    assert buf.getvalue().count("\n") == 1 and "10/10 batch (100.0%)" in buf.getvalue()   # only the final line
    buf = io.StringIO()
    with step("slow thing", stream=buf, after=0.0):
        import time
        time.sleep(0.2)
    assert buf.getvalue().splitlines()[0] == "slow thing ..." and "slow thing: done in" in buf.getvalue()
    buf = io.StringIO()
    with pytest.raises(ValueError), step("fails at once", stream=buf, after=5.0):
        raise ValueError
    assert buf.getvalue() == ""          # an error stays one line: the step never spoke


def test_run_and_predict_report_progress(demo_onnx, tmp_path, capsys, monkeypatch):
    assert main(["run", str(demo_onnx), "--data", "digits@60", "--repeats", "2", "--batch-size", "20",
                 "--profile", "semenova", "--out", str(tmp_path / "r.zarr")]) == 0
    lines = progress_lines(capsys.readouterr().err, "hwloop run")
    assert lines[-1] == (3, 3) and len(lines) >= 3
    import hwloop.progress as progress

    # the step speaks after 1 s; on this small input it may be quicker, so make it speak at once
    monkeypatch.setattr(progress, "step", lambda what, stream=None, after=1.0: step(what, stream, after=0.0))
    assert main(["predict", str(demo_onnx), "--profile", "semenova", "--data", "digits@60"]) == 0
    err = capsys.readouterr().err
    assert "hwloop predict: propagating the noise covariance through 3 analog layers for 60 samples" in err
    assert "done in" in err


def test_walk_reports_progress(demo_onnx, tmp_path, capsys):
    assert main(["walk", str(demo_onnx), "--sigmas", "0.1,1", "--data", "digits@40", "--sites", "1,2",
                 "--out", str(tmp_path / "s.zarr")]) == 0
    lines = progress_lines(capsys.readouterr().err, "hwloop walk")
    assert lines and lines[-1] == (4, 4)


def test_calibrate_reports_progress(make_bench, tmp_path, capsys):
    bench = make_bench("semenova", seed=1, max_inputs=16, max_outputs=8)
    assert main(["calibrate", "--resource", bench.resource, "--out", str(tmp_path / "c.yaml"),
                 "--budget", "20000"]) == 0
    lines = progress_lines(capsys.readouterr().err, "hwloop calibrate")
    assert lines and lines[-1][0] == lines[-1][1] and len(lines) >= 3
