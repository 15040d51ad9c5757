"""A pytest plugin for GPU sessions: a per-test time limit (`-p gpu_test_timeout --test-timeout S`).

SIGALRM raises TimeoutError inside the test's setup, call or teardown after S seconds, so one slow test (a
compile storm, a hang in Python) fails with a clear message and the next test still runs; the JUnit XML then
records it like any other failure. A hang inside one CUDA call is beyond a signal's reach: the session's
step timeout (benchmarks/gpu_session.py) stops the whole process group then: its SIGTERM is turned into
a KeyboardInterrupt here, so pytest still finishes its reports (the JUnit XML of every test run so far) before
the SIGKILL that follows a few seconds later.
"""

import signal

import pytest


def pytest_addoption(parser):
    parser.addoption("--test-timeout", type=float, default=0.0, help="seconds per test phase (0: no limit)")


def pytest_configure(config):
    def interrupted(signum, frame):
        raise KeyboardInterrupt("SIGTERM: the session's step timeout")
    signal.signal(signal.SIGTERM, interrupted)


def _alarm(item, phase):
    seconds = item.config.getoption("--test-timeout")
    if not seconds or not hasattr(signal, "SIGALRM"):
        return None

    def expired(signum, frame):
        raise TimeoutError(f"{item.nodeid}: {phase} took longer than --test-timeout {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return previous


def _clear(previous):
    if previous is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed(item, phase):
    """The body of each hook wrapper below: the phase runs under its alarm, cleared whatever happens."""
    previous = _alarm(item, phase)
    try:
        yield
    finally:
        _clear(previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _timed(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _timed(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _timed(item, "teardown")
