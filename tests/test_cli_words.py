"""What the command line says: per-action help of walk, walk plan's table, data errors, noise conventions."""

from __future__ import annotations

import pytest

from hwloop.cli import main


def help_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_each_walk_action_has_its_own_help(capsys):
    walk, report, plan = help_of(capsys, "walk"), help_of(capsys, "walk", "report"), help_of(capsys, "walk", "plan")
    assert len({walk, report, plan}) == 3
    assert report.startswith("usage: hwloop walk report SWEEP.zarr") and "--list-sites" not in report
    assert plan.startswith("usage: hwloop walk plan SWEEP.zarr --budget B --sigma S") and "--budget" in plan
    assert "--list-sites" in walk and "standard deviation" in walk


@pytest.mark.parametrize("command", ["walk", "predict", "profile", "analyze"])
def test_noise_strength_convention_is_stated(capsys, command):
    text = help_of(capsys, command).replace("\n", " ")
    assert "standard deviation" in text and "variance" in text


def test_missing_data_file_says_no_such_file(demo_onnx, tmp_path, capsys):
    assert main(["run", str(demo_onnx), "--data", f"mnist:{tmp_path}/nope.npz", "--out", str(tmp_path / "r.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"hwloop run: error: {tmp_path}/nope.npz: no such file or folder"


def test_walk_plan_prints_a_header_and_a_recommendation(demo_onnx, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert main(["walk", str(demo_onnx), "--sigmas", "0.01,1,100", "--data", "digits@60",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["walk", "plan", str(out), "--budget", "12", "--sigma", "0.5", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("repetition plans: 12 executions over 6 sites, global noise std 0.5")
    assert lines[1].split()[:3] == ["scheme", "accuracy", "±"]
    rows = {l.split()[0]: float(l.split()[1]) for l in lines[2:-1]}
    assert "uniform" in rows and "inv_mu2" in rows
    best = lines[-1].split()[1]
    assert lines[-1].startswith("recommended: ") and rows[best] == max(rows.values())
