"""Crashes with real processes, checked Jepsen-style (DESIGN §3, §10).

A client thread (``Ingester``) ingests numbered batches, keyed and unkeyed, over the daemon's socket
and records which were acknowledged, while the test kill -9s a shard or the coordinator.  Afterwards
every stored record is read back by its ``metadata.uid``: every acknowledged record is present
exactly once, and nothing that was never sent appears.  Keyed batches whose outcome was unknown are
retried with the same key (as DESIGN §3 tells clients to), so they must end up stored exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import pytest

from storage.errors import ShardlogError
from tests.helpers import process_gone, wait_for
from tests.daemon import (Daemon, Ingester, check_accounting, processes_mentioning, stored_uids,
                                      wait_gone)

pytestmark = pytest.mark.slow

EXIT_START_FAILED = 3
#: small blocks sealed soon: seals run all the time, so a kill often lands in the middle of one
BUSY_SEALER = {"SHARDLOG_BLOCK_RECORDS": "100", "SHARDLOG_SEAL_AFTER": "0.05s", "SHARDLOG_PARSE_IN": "shards"}


def restarted(daemon: Daemon, shard_id: int, old_pid: int) -> dict[str, Any] | None:
    """The shard's stats entry once it is up again in a new process after a restart."""
    try:
        entry = daemon.stats()["shards"][shard_id]
    except ShardlogError:
        return None
    if entry["up"] and entry["restarts"] >= 1 and entry["pid"] not in (None, old_pid):
        return entry
    return None


def test_kill_9_of_shards_during_ingest_restarts_them_and_keeps_every_acknowledged_record_once() -> None:
    with Daemon(shards=2, env=BUSY_SEALER, name="shard-kill") as daemon:
        ingester = Ingester(daemon, batch_records=120, seed=3)
        ingester.start()
        try:
            for shard_id in (1, 0):
                old_pid = daemon.shard_pids()[shard_id]
                ingester.wait_acked(ingester.acked() + 4, timeout_s=60.0)
                os.kill(old_pid, signal.SIGKILL)
                entry = wait_for(lambda: restarted(daemon, shard_id, old_pid), 60.0,
                                 f"shard {shard_id} to be restarted after kill -9 of pid {old_pid}")
                assert process_gone(old_pid)
                # ingest keeps flowing through the restarted shard
                ingester.wait_acked(ingester.acked() + 4, timeout_s=60.0)
                assert daemon.stats()["shards"][shard_id]["pid"] == entry["pid"]
        finally:
            ingester.stop()
        stats = daemon.stats()
        assert [s["restarts"] for s in stats["shards"]] == [1, 1], stats["shards"]
        # the coordinator resends a dead shard's part after its restart, so the client saw no error
        assert [b.error for b in ingester.batches if b.outcome != "acked" or b.error] == []
        check_accounting(ingester.batches, stored_uids(daemon))
        assert all(s["records"] > 0 for s in stats["shards"])


def test_kill_9_of_the_coordinator_under_load_stops_its_shards_and_loses_nothing_acknowledged() -> None:
    with Daemon(shards=2, env=BUSY_SEALER, name="coordinator-kill") as daemon:
        # the client keeps retrying while the daemon is down: keyed batches with the same key
        ingester = Ingester(daemon, batch_records=300, stop_on_unreachable=False, seed=4)
        ingester.start()
        try:
            for _ in range(2):
                shard_pids = daemon.shard_pids()
                ingester.wait_acked(ingester.acked() + 4, timeout_s=60.0)
                daemon.kill()
                # shards exit when their parent dies (no orphans holding the stores' locks)
                wait_gone(shard_pids, 15.0, "the shards of a kill -9'd coordinator")
                acked_before_restart = ingester.acked()
                daemon.start()
                ingester.wait_acked(acked_before_restart + 4, timeout_s=60.0)
        finally:
            ingester.stop()
        check_accounting(ingester.batches, stored_uids(daemon))
        # the client did see the outages (so the crashes really cut into the load) ...
        assert sum(1 for b in ingester.batches if b.attempts > 1) >= 2, [(b.batch_id, b.error) for b in ingester.batches]
        # ... and a keyed batch cut off by a crash was retried with its key until acknowledged
        keyed = [b for b in ingester.batches if b.key is not None]
        assert all(b.outcome == "acked" for b in keyed[:-1]), \
            [(b.batch_id, b.error) for b in keyed if b.outcome != "acked"]


def test_a_shard_whose_store_cannot_open_makes_serve_fail_with_a_clear_message() -> None:
    daemon = Daemon(shards=2, name="boot-failure")
    with contextlib.closing(daemon):
        daemon.start()
        assert daemon.stop() == 0
        shard_dir = daemon.data_dir / "shards" / "1"
        for child in shard_dir.iterdir():
            child.unlink()
        shard_dir.rmdir()
        shard_dir.write_text("not a directory\n")
        started = time.monotonic()
        code, log = daemon.run_to_exit(timeout_s=60.0)
        assert code == EXIT_START_FAILED, log
        assert "shard 1 cannot open its store" in log and str(shard_dir) in log, log
        # the boot-failure exit code stops the supervisor: no restart loop
        assert "restarting in" not in log, log
        # the healthy shard was stopped too: nothing of this data dir keeps running
        wait_gone(processes_mentioning(str(daemon.data_dir)), 15.0, "the processes of a daemon that failed to start")
        assert time.monotonic() - started < 60.0
