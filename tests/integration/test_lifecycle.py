"""The daemon's lifecycle with real processes: start, refusal to start, graceful stop under load.

DESIGN §3 and coordinator/daemon.py: one daemon per data dir (a second ``serve`` is refused and
names the running one); the shard count is fixed by the data dir; SIGTERM closes the listeners,
waits for in-flight ingests, stops the shards and exits 0, and every acknowledged record is there
after a restart; the socket is 0600 in a 0700 data dir; configuration problems stop the start
with a message naming them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import urllib.request

import pytest

from shardd import protocol
from tests.helpers import process_gone, wait_for
from tests.daemon import Daemon, Ingester, check_accounting, free_port, processes_mentioning, stored_uids

EXIT_USAGE = 2
EXIT_START_FAILED = 3


def test_a_second_serve_on_the_same_data_dir_is_refused_and_names_the_running_daemon() -> None:
    with Daemon(shards=1, name="first") as first:
        with contextlib.closing(Daemon(first.data_dir, shards=1, name="second")) as second:
            code, log = second.run_to_exit()
        assert code == EXIT_START_FAILED, log
        assert f"pid {first.pid}" in log and str(first.data_dir) in log, log
        assert "already serving" in log, log
        # the refused daemon touched nothing of the running one: same socket, same pid, still serving
        assert first.call("ping")["pid"] == first.pid
        assert first.running()


def test_starting_with_another_shard_count_than_the_data_dir_has_is_refused() -> None:
    with Daemon(shards=2, name="created-with-2") as daemon:
        daemon.call("ingest", {"records": [{"message": "kept across restarts", "timestamp": "2024-01-01T00:00:00Z"}]})
        assert daemon.stop() == 0
        daemon.shards = 3
        code, log = daemon.run_to_exit()
        assert code == EXIT_START_FAILED, log
        assert "created with 2 shards" in log and "--shards 3" in log, log
        assert not processes_mentioning(str(daemon.data_dir)), "a refused start left processes behind"
        # without --shards the data dir's own count is used, and nothing was lost
        daemon.shards = None
        daemon.start()
        assert daemon.call("ping")["shards"] == 2
        assert daemon.call("count", {"q": "kept"})["count"] == 1


def test_after_start_ping_and_ready_answer_and_the_socket_and_data_dir_are_private() -> None:
    port = free_port()
    with Daemon(shards=2, http=f"127.0.0.1:{port}", name="perms") as daemon:
        ping = daemon.call("ping")
        assert ping["pid"] == daemon.pid
        assert ping["shards"] == 2
        assert ping["data_dir"] == str(daemon.data_dir)
        assert ping["http"] == f"127.0.0.1:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=30) as response:
            assert response.status == 200
            assert json.loads(response.read()) == {"ready": True, "shards_up": 2, "shards": 2}
        socket_mode = os.stat(daemon.socket_path).st_mode
        assert stat.S_ISSOCK(socket_mode)
        assert stat.S_IMODE(socket_mode) == 0o600, oct(socket_mode)
        assert stat.S_IMODE(os.stat(daemon.data_dir).st_mode) == 0o700
        for shard_id in range(2):
            assert stat.S_IMODE(os.stat(daemon.data_dir / "shards" / str(shard_id)).st_mode) == 0o700


def test_a_config_problem_stops_the_start_and_names_the_problem() -> None:
    daemon = Daemon(shards=1, http=f"0.0.0.0:{free_port()}", name="open-http")
    with contextlib.closing(daemon):
        code, log = daemon.run_to_exit()
    assert code == EXIT_USAGE, log
    assert "http listens on 0.0.0.0" in log and "no token" in log and "SHARDLOG_TOKEN" in log, log
    assert "Traceback" not in log, log
    assert not os.path.exists(daemon.data_dir), "a daemon refused for its config created the data dir"


def test_a_config_with_several_problems_names_every_problem_at_once() -> None:
    # http on every interface without a token (a validation problem) and an impossible block size
    # (a parse problem): one start must report both, so the user fixes the file in one round
    daemon = Daemon(shards=1, http=f"0.0.0.0:{free_port()}", env={"SHARDLOG_BLOCK_RECORDS": "0"}, name="bad-config")
    with contextlib.closing(daemon):
        code, log = daemon.run_to_exit()
    assert code == EXIT_USAGE, log
    assert "block_records" in log, log
    assert "0.0.0.0" in log and "token" in log, log


def test_an_http_port_in_use_stops_the_start_naming_the_address_and_leaves_nothing_behind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        daemon = Daemon(shards=2, http=f"127.0.0.1:{port}", name="port-taken")
        with contextlib.closing(daemon):
            code, log = daemon.run_to_exit()
            assert code == EXIT_START_FAILED, log
            assert "cannot start" in log and str(port) in log, log
            assert "Traceback" not in log, log
            assert not os.path.exists(daemon.socket_path), "a daemon that failed to start left its socket"
            wait_for(lambda: not processes_mentioning(str(daemon.data_dir)), 15.0,
                     "the shards of a daemon that failed to start to exit")


@pytest.mark.slow
def test_sigterm_under_load_exits_cleanly_and_keeps_every_acknowledged_record() -> None:
    with Daemon(shards=2, name="sigterm") as daemon:
        shard_pids = daemon.shard_pids()
        ingester = Ingester(daemon, batch_records=150, seed=1)
        ingester.start()
        try:
            ingester.wait_acked(6, timeout_s=60.0)
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait_exit(60.0)
        finally:
            ingester.stop()
        assert code == 0, f"exit code {code}"
        # a clean exit stops (and reaps) the shards first: none is left by the time the daemon is gone
        assert [pid for pid in shard_pids if not process_gone(pid)] == []
        assert not processes_mentioning(str(daemon.data_dir))
        # (the log may hold a 'feed_data after feed_eof' traceback here: see
        # test_a_request_running_at_sigterm_is_answered_even_if_the_client_sends_more)
        assert not os.path.exists(daemon.socket_path), "the socket was left behind"
        # the thread saw the daemon go away: its last batch has no acknowledgement
        assert ingester.batches[-1].outcome == "failed", ingester.batches[-1]

        daemon.start()
        check_accounting(ingester.batches, stored_uids(daemon))
        assert daemon.call("count")["count"] >= ingester.acked() * 150


def test_a_graceful_stop_with_a_connected_client_logs_no_traceback() -> None:
    with Daemon(shards=1, name="idle-client") as daemon:
        with daemon.client() as client:
            client.call("ping")  # the connection stays open, idle, while the daemon stops
            assert daemon.stop() == 0
        log = daemon.log_text()
    assert "shardlog stopped" in log, log
    assert "Traceback" not in log and " ERROR " not in log, log


def test_a_request_running_at_sigterm_is_answered_even_if_the_client_sends_more() -> None:
    with Daemon(shards=1, name="pipelined") as daemon:
        with daemon.client() as client:
            cursor = client.call("tail", {})["cursor"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(daemon.socket_path))
            raw.settimeout(30.0)
            # a long poll (nothing new will arrive): it is still running when SIGTERM comes
            raw.sendall(protocol.encode_frame({"id": 1, "op": "tail", "args": {"cursor": cursor, "wait_s": 2.0}}))
            daemon.send_signal(signal.SIGTERM)
            wait_for(lambda: "SIGTERM received" in daemon.log_text(), 30.0, "the daemon to log the SIGTERM")
            # a pipelining client sends its next request before the first is answered
            raw.sendall(protocol.encode_frame({"id": 2, "op": "ping", "args": {}}))
            answer = protocol.read_frame(raw)
        assert daemon.wait_exit(60.0) == 0
        log = daemon.log_text()
    # the running request was answered (the later one may be refused or dropped)
    assert isinstance(answer, dict) and answer.get("id") == 1, (answer, log)
    assert "Traceback" not in log, log
