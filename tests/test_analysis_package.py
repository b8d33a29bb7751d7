"""``hwloop.analysis.propagate`` names its module, not a function the package re-exports over it."""

import importlib
from types import ModuleType

import hwloop.analysis as analysis


def test_the_propagate_module_is_reachable_under_its_own_name():
    module = importlib.import_module("hwloop.analysis.propagate")
    assert isinstance(analysis.propagate, ModuleType) and analysis.propagate is module
    assert "propagate" not in analysis.__all__
    from hwloop.analysis.predict import propagate
    assert module.propagate is propagate and callable(propagate)
