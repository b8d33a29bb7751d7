"""A driver's warning on the command line is one line, like an error: ``hwloop run: warning: ...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

pytest_plugins = ["tests.bench_fixtures"]


def test_range_scaling_is_announced_in_one_line(make_bench, demo_onnx, tmp_path):
    bench = make_bench()                       # the default ANB-64R takes weights up to 1; the demo's reach ~2
    bf = tmp_path / "bench.yaml"
    bf.write_text(f'devices:\n  chip: {{resource: "{bench.resource}"}}\ndefault: chip\n')
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "hwloop", "run", str(demo_onnx), "--bench", str(bf),
                           "--data", "digits@20", "--repeats", "1", "--out", str(tmp_path / "r.zarr")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "scaled exactly" in ln or "warnings.warn" in ln]
    assert lines and all(ln.startswith("hwloop run: warning: layer ") for ln in lines), proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn(" not in proc.stderr
