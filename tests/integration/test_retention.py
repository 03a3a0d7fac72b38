"""Retention through the daemon: whole expired blocks disappear on every shard, recent logs stay."""

from __future__ import annotations

import time

from tests.daemon import Daemon

DAY_NS = 86_400 * 10**9


def _wait_for(predicate, timeout_s: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_retention_drops_expired_logs_and_keeps_recent_ones() -> None:
    now_ns = time.time_ns()
    old = [{"timestamp": now_ns - 3 * DAY_NS + i, "message": f"old event {i}", "source": "s"} for i in range(600)]
    # "new" records sit a day ahead (within the 2-day future limit) so a 5 s retention never reaches
    # them during the test; a 5 s retention runs its pass every 0.5 s
    new = [{"timestamp": now_ns + DAY_NS + i, "message": f"new event {i}", "source": "s"} for i in range(400)]
    with Daemon(shards=2, config={"retention": "5s", "seal_after": "0.2s"}, name="retention") as daemon:
        with daemon.logs_on_failure():
            result = daemon.call("ingest", {"records": old + new})
            assert result == {"accepted": 1000, "rejected": []}
            # the old records are sealed into blocks within ~0.2 s and dropped by the next pass
            _wait_for(lambda: daemon.call("count", {"q": "old"})["count"] == 0, 30.0, "old logs to expire")
            assert daemon.call("count", {"q": "new"})["count"] == 400
            assert daemon.call("count", {})["count"] == 400
