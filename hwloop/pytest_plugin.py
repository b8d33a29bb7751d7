"""pytest plugin: lets users gate their own test suites on "does my model survive this chip?".

(Filled in by the CI-gate work: a fixture that runs ``hwloop check`` from Python.)
"""
