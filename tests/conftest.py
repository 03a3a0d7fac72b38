"""Shared fixtures: one real shardlog daemon (coordinator + 2 shards) per xdist worker.

The ``daemon`` fixture is a ``tests.daemon.Daemon`` on a short data dir under /tmp; tests share it,
so each test isolates its data (e.g. with a unique ``source``).  When a test that used it fails,
the tail of the daemon's log is attached to the report ("daemon log" section).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon import Daemon


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    with Daemon(shards=2, name="shared") as process:
        yield process


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "daemon" in getattr(item, "fixturenames", ()):
        process = getattr(item, "funcargs", {}).get("daemon")
        if isinstance(process, Daemon):
            report.sections.append(("daemon log", process.log_tail()))
    return report
