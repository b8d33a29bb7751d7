"""The pytest plugin in a throw-away user project (pytester): marker, options, ini, fixture, messages, JUnit."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import pytest

@pytest.mark.hwloop(model="model.onnx", profile="semenova", data="digits@150", max_drop=0.2)
def test_survives():
    pass

@pytest.mark.hwloop(model="model.onnx", profile="semenova", data="digits@150", min_accuracy=1.0)
def test_too_strict():
    pass

def test_fixture(hwloop_check):
    r = hwloop_check("model.onnx", profile="semenova", data="digits@150", repeats=3, min_accuracy=0.5)
    assert r.passed and r.repeats == 3
'''


@pytest.fixture
def project(pytester, demo_onnx):
    (pytester.path / "sub").mkdir()
    shutil.copy(demo_onnx, pytester.path / "sub" / "model.onnx")     # found beside the test file
    pytester.makepyfile(**{"sub/test_user": USER_TESTS})
    return pytester


@pytest.mark.parametrize("family", ["xunit2", "xunit1", "legacy"])
def test_marker_and_fixture_pass_and_fail_with_figures_and_no_warnings(project, family):
    project.makeini(f"[pytest]\njunit_family = {family}\n")
    res = project.runpytest("-p", "no:cacheprovider", f"--junitxml={project.path / 'j.xml'}", "-rA")
    res.assert_outcomes(passed=2, failed=1, warnings=0)
    out = res.stdout.str()
    assert "FAIL: " in out and "on profile semenova" in out and "accuracy 0." in out
    assert "(lower bound 0." in out and "bar >= 1.0000: fail" in out
    assert "Traceback" not in out
    assert "Captured hwloop call" in out          # the report section
    root = ET.parse(project.path / "j.xml").getroot()
    if family == "xunit2":
        names = {p.get("name") for p in root.iter("property")}
        assert "hwloop[sub/test_user.py::test_survives].drop_bound" in names
        assert all(c.find("properties") is None for c in root.iter("testcase"))
    else:
        case = next(c for c in root.iter("testcase") if c.get("name") == "test_survives")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["hwloop_decision"] == "pass" and float(props["hwloop_drop_bound"]) <= 0.2


def test_options_override_repeat_and_skip(project):
    res = project.runpytest("-p", "no:cacheprovider", "--hwloop-profile", "crossbar,optical", "--hwloop-repeats", "4",
                            "-k", "survives", "-rA")
    res.assert_outcomes(passed=1)
    for name in ("crossbar", "optical"):
        assert f"on profile {name}, data digits@150, 4 of at most 4 repeats" in res.stdout.str()
    assert project.runpytest("-p", "no:cacheprovider", "--hwloop-skip", "-k", "not fixture").parseoutcomes() \
        == {"skipped": 2, "deselected": 1}
    res = project.runpytest("-p", "no:cacheprovider", "--hwloop-profile", "nosuchprofile", "-k", "survives")
    res.assert_outcomes(failed=1)
    assert [l for l in res.stdout.lines if "nosuchprofile" in l][0].startswith(
        "hwloop: profile 'nosuchprofile': no such file, and no profile of that name"), res.stdout.str()
    assert "Traceback" not in res.stdout.str()


def test_ini_settings_give_profile_data_repeats_and_undecided(pytester, demo_onnx):
    shutil.copy(demo_onnx, pytester.path / "model.onnx")
    pytester.makeini("[pytest]\nhwloop_profile = crossbar\nhwloop_data = digits@100\nhwloop_repeats = 4\n"
                     "hwloop_undecided = skip\n")
    pytester.makepyfile(test_ini='''
import pytest

@pytest.mark.hwloop(model="model.onnx", max_drop=0.5)
def test_easy():
    pass

@pytest.mark.hwloop(model="model.onnx", max_drop=0.01)
def test_undecided_in_4_repeats():
    pass
''')
    res = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    res.assert_outcomes(passed=1, skipped=1, warnings=0)
    assert "UNDECIDED: " in res.stdout.str() and "on profile crossbar, data digits@100, 4 of at most 4" in \
        res.stdout.str()
