"""The conformance kit inside a learner's own pytest suite: the `minitx_check` fixture.

Enable it in a conftest.py with `pytest_plugins = ["minitx.conformance.pytest_plugin"]` (or `pytest -p
minitx.conformance.pytest_plugin`), then:

    def test_my_adapters(minitx_check):
        minitx_check("adapters.py")                # or a module; only=[...], seed=..., examples=...

The fixture runs `minitx.conformance.check` and fails the test with the whole report (one line per adapter)
unless every adapter the file provides passes. pytest itself is only needed when pytest loads this module.
"""

from __future__ import annotations

from minitx.conformance.runner import check


def _run_check(module, **options):
    report = check(module, **options)
    report.assert_ok()
    return report


def pytest_configure(config):
    """Register the fixture through an object, so this module needs no import of pytest at import time."""
    import pytest

    class ConformanceFixtures:
        @pytest.fixture
        def minitx_check(self):
            """Call it with a module or the path of an adapters file; it asserts that every adapter passes."""
            return _run_check

    config.pluginmanager.register(ConformanceFixtures(), "minitx-conformance-fixtures")
