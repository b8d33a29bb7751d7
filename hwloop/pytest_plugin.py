"""pytest plugin: lets users gate their own test suites on "does my model survive this chip?".

Installed with hwloop (entry point ``pytest11``), it provides the fixture
``hwloop_check``::

    def test_model_survives_the_chip(hwloop_check):
        hwloop_check("model.onnx", profile="semenova", data="digits", repeats=10, min_accuracy=0.9)

It runs ``hwloop.check.check_model``; a mean accuracy below ``min_accuracy``
fails the test with the summary (mean, spread, noisiest layer).  Relative
paths are tried from the working directory, then from the test file's folder.
The result is returned, and its figures are recorded as JUnit properties.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _resolve(p, here: Path):
    if isinstance(p, (str, Path)) and not Path(p).exists() and (here / p).exists():
        return here / p
    return p


@pytest.fixture
def hwloop_check(request, record_property):
    """Call as ``hwloop_check(model, profile=..., data=..., repeats=..., min_accuracy=..., seed=0)``."""
    from hwloop.check import check_model

    here = request.path.parent

    def check(model, *, profile, data="digits", repeats=10, min_accuracy, seed=0, batch_size=None):
        result = check_model(_resolve(model, here), profile=_resolve(profile, here), data=data, repeats=repeats,
                             min_accuracy=min_accuracy, seed=seed, batch_size=batch_size)
        record_property("hwloop_accuracy_mean", f"{result.mean:.6f}")
        record_property("hwloop_accuracy_std", f"{result.std:.6f}")
        if result.noisiest is not None:
            record_property("hwloop_noisiest_layer", result.noisiest.name)
        if not result.passed:
            pytest.fail(result.summary(), pytrace=False)
        return result

    return check
