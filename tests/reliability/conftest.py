"""The reliability suite: Warmi's services as OS processes under faults.

Each fault runs as its own test; its verdict line (counts only, never survivor
data) is printed at the end of the run, even with ``-q``, so that CI's output
says what was lost or doubled under which fault.
"""
from __future__ import annotations

import pytest

from tests.reliability import summary
from tests.reliability.plan import Plan

def pytest_generate_tests(metafunc) -> None:
    plan = Plan.for_config(metafunc.config)
    if "fault" in metafunc.fixturenames:
        # "database", not the root conftest's "backend": that fixture has params of its own
        metafunc.parametrize("fault,database", plan.matrix(), ids=[f"{f}-{b}" for f, b in plan.matrix()])
    if "repetition" in metafunc.fixturenames:
        metafunc.parametrize("repetition", range(1, plan.repetitions + 1), ids=lambda n: f"run{n}")


def pytest_collection_modifyitems(config, items) -> None:
    plan = Plan.for_config(config)
    for item in items:
        if item.nodeid.startswith("tests/reliability/") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(plan.test_timeout))


def pytest_terminal_summary(terminalreporter) -> None:
    if not summary.LINES:
        return
    terminalreporter.write_sep("=", "Warmi under faults")
    for line in summary.LINES:
        terminalreporter.write_line(line)


@pytest.fixture
def plan(request) -> Plan:
    return Plan.for_config(request.config)
