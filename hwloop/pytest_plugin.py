"""pytest plugin: lets users gate their own test suites on "does my model survive this chip?".

Installed with hwloop (entry point ``pytest11``).  A marker::

    @pytest.mark.hwloop(model="model.onnx", profile="crossbar", max_drop=0.02)
    def test_survives_the_chip():
        pass

runs ``hwloop check`` before the test body and fails the test (accuracy,
bound, bar and profile in the message) unless every bar passes; the keyword
arguments are those of ``hwloop.check.check_model`` (``profile`` may be a
list).  The fixture ``hwloop_check(model, profile=..., min_accuracy=..., ...)``
does the same from inside a test and returns the result.  Relative paths are
tried from the working directory, then from the test file's folder.

Options: ``--hwloop-profile P`` (repeatable; replaces the profiles of every
marker and fixture call, e.g. for a CI matrix), ``--hwloop-repeats N`` (the
most repeats, and the number of a fixed ``repeats=``), ``--hwloop-skip``
(skip marked tests).  ini settings: ``hwloop_profile``, ``hwloop_data``,
``hwloop_repeats``, ``hwloop_confidence``, ``hwloop_cache`` (a result cache
folder), ``hwloop_undecided`` (fail or skip).

The figures go to the report without warnings under every junit family: as
test-case properties (``item.user_properties``) for xunit1/legacy, as suite
properties named ``hwloop[TEST ID].KEY`` for xunit2 (which has no test-case
properties) through pytest's public ``record_testsuite_property`` fixture,
and always as a report section ``hwloop`` (shown with -rA and on failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

#: a marked test's ``record_testsuite_property`` (put there by the autouse fixture below)
_SUITE_PROPERTY = pytest.StashKey[Callable[[str, object], None]]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("hwloop", "hwloop CI gate")
    group.addoption("--hwloop-profile", action="append", default=None, metavar="PROFILE",
                    help="check hwloop markers and fixture calls under this profile (repeatable; replaces theirs)")
    group.addoption("--hwloop-repeats", type=int, default=None, metavar="N", help="most repeats per check")
    group.addoption("--hwloop-skip", action="store_true", help="skip the tests marked hwloop")
    parser.addini("hwloop_profile", "default profile(s) of hwloop markers (comma list)", default="")
    parser.addini("hwloop_data", "default data spec of hwloop checks", default="digits")
    parser.addini("hwloop_repeats", "default most repeats of hwloop checks", default="100")
    parser.addini("hwloop_confidence", "confidence of hwloop decisions", default="0.95")
    parser.addini("hwloop_cache", "folder for cached hwloop results (empty: no cache)", default="")
    parser.addini("hwloop_undecided", "what an undecided check does to its test: fail or skip", default="fail")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "hwloop(model, profile=None, max_drop=None, min_accuracy=None, ...): "
                                       "fail the test unless the model passes hwloop check under the profile(s)")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("hwloop_skip"):
        skip = pytest.mark.skip(reason="hwloop checks skipped (--hwloop-skip)")
        for item in items:
            if item.get_closest_marker("hwloop") is not None:
                item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item) -> None:
    marker = item.get_closest_marker("hwloop")
    if marker is None:
        return
    kwargs = dict(marker.kwargs)
    if marker.args:
        kwargs.setdefault("model", marker.args[0])
    if "model" not in kwargs:
        pytest.fail("hwloop marker: give model=PATH", pytrace=False)
    _gate(item, **kwargs)


@pytest.fixture(autouse=True)
def _hwloop_suite_property(request):
    """Hands a marked test pytest's ``record_testsuite_property`` (for the xunit2 figures)."""
    if request.node.get_closest_marker("hwloop") is not None:
        request.node.stash[_SUITE_PROPERTY] = request.getfixturevalue("record_testsuite_property")


@pytest.fixture
def hwloop_check(request, record_testsuite_property):
    """Call as ``hwloop_check(model, profile=..., min_accuracy=..., max_drop=..., ...)``; returns the result
    (a list of results when several profiles are checked)."""
    def check(model, **kwargs):
        request.node.stash[_SUITE_PROPERTY] = record_testsuite_property
        results = _gate(request.node, model=model, **kwargs)
        return results[0] if len(results) == 1 else results

    return check


def _gate(item, *, model, profile=None, **kwargs):
    """Run the check(s) for ``item``, attach the figures, fail or skip it unless every check passes."""
    from hwloop.check.matrix import Settings, run_matrix
    from hwloop.errors import HwloopError

    config, here = item.config, Path(str(item.path)).parent
    option = [p for v in config.getoption("hwloop_profile") or [] for p in _as_list(v)]
    profiles = option or _as_list(profile) or _as_list(config.getini("hwloop_profile"))
    if not profiles:
        pytest.fail("hwloop: no profile (give profile=..., --hwloop-profile or ini hwloop_profile)", pytrace=False)
    kwargs.setdefault("data", config.getini("hwloop_data"))
    repeats = config.getoption("hwloop_repeats")
    if repeats is not None:        # the command line wins, over a fixed number of repeats too
        kwargs["max_repeats"] = repeats
        if kwargs.get("repeats") is not None:
            kwargs["repeats"] = repeats
    kwargs.setdefault("max_repeats", int(config.getini("hwloop_repeats")))
    kwargs.setdefault("confidence", float(config.getini("hwloop_confidence")))
    cache = config.getini("hwloop_cache") or None
    error = None
    try:
        settings = Settings.of(**kwargs)
        results = run_matrix([_resolve(model, here)], [_resolve(p, here) for p in profiles], settings,
                             cache=Path(config.rootpath, cache) if cache else None)
    except HwloopError as e:
        error = f"hwloop: {e}"
    if error:   # outside the except block: one line, no chained exception
        pytest.fail(error, pytrace=False)
    _attach(item, results)
    bad = [r for r in results if r.decision != "pass"]
    if bad:
        text = "\n\n".join(r.summary() for r in bad)
        if all(r.decision == "undecided" for r in bad) and config.getini("hwloop_undecided") == "skip":
            pytest.skip(text)
        pytest.fail(text, pytrace=False)
    return results


def _attach(item, results) -> None:
    from hwloop.check.outputs import _properties

    item.add_report_section("call", "hwloop", "\n\n".join(r.summary() for r in results))
    per_case = item.config.getini("junit_family") in ("xunit1", "legacy")
    suite = item.stash.get(_SUITE_PROPERTY, None)
    for r in results:
        prefix = "hwloop" if len(results) == 1 else f"hwloop[{r.profile}]"
        for key, value in _properties(r):
            if per_case:
                item.user_properties.append((f"{prefix}_{key}", value))
            elif suite is not None:
                suite(f"{prefix}[{item.nodeid}].{key}", str(value))


def _as_list(v) -> list:
    if v is None or v == "":
        return []
    if isinstance(v, (list, tuple)):
        return list(v)
    return [p.strip() for p in str(v).split(",") if p.strip()] if isinstance(v, str) else [v]


def _resolve(p, here: Path):
    if isinstance(p, (str, Path)) and not Path(p).exists() and (here / p).exists():
        return here / p
    return p
