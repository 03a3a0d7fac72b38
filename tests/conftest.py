"""Shared fixtures: a real shardlog daemon (coordinator + shards) for CLI, API and integration tests.

``daemon`` (session scope, one per xdist worker) runs ``python -m cli.main serve --data-dir D
--shards 2 --http ""`` on a short directory under /tmp, waits for ``ping`` to report every shard up
(with a deadline, failing with the daemon's log), and stops it at the end: SIGTERM, a grace period,
then SIGKILL.  Tests share it, so each test isolates its data, e.g. with a unique ``source``.

When a test that used the daemon fails, the tail of the daemon's log is attached to the failure
report ("daemon log" section).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardd.protocol import Client
from storage.errors import ShardlogError

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Starting a coordinator and two shards takes ~1 s here; the margin covers a loaded 2-core machine.
DAEMON_READY_TIMEOUT_S = 45.0
#: The daemon's graceful stop seals and syncs every shard.
DAEMON_STOP_TIMEOUT_S = 20.0
#: Lines of the daemon log attached to a failing test's report.
LOG_TAIL_LINES = 60


class DaemonProcess:
    """One real daemon on a private data dir.  ``start()`` returns once every shard answers."""

    def __init__(self, root: Path, *, shards: int = 2) -> None:
        self.root = root
        self.data_dir = root / "d"
        self.log_path = root / "daemon.log"
        self.shards = shards
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        from coordinator.config import socket_path_for

        return socket_path_for(self.data_dir)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH"))))
        # The daemon's own settings come from the flags below, never from the developer's shell.
        for key in list(env):
            if key.startswith("SHARDLOG_"):
                del env[key]
        return env

    def start(self) -> "DaemonProcess":
        command = [sys.executable, "-m", "cli.main", "serve", "--data-dir", str(self.data_dir),
                   "--shards", str(self.shards), "--http", ""]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log_file, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = DAEMON_READY_TIMEOUT_S) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        last: str = "no answer yet"
        poll_s = 0.02
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"the daemon exited with code {code} before it was ready; its log:\n"
                                     f"{self.log_tail()}")
            try:
                with Client(self.socket_path, timeout_s=5.0) as client:
                    answer = client.call("ping")
                if isinstance(answer, dict) and answer.get("ready", True):
                    return answer
                last = f"ping answered {answer!r}"
            except ShardlogError as exc:
                last = exc.message
            if time.monotonic() >= deadline:
                raise AssertionError(f"the daemon was not ready within {timeout_s:g} s (last: {last}); its log:\n"
                                     f"{self.log_tail()}")
            time.sleep(poll_s)  # polling a condition with a deadline
            poll_s = min(poll_s * 1.5, 0.2)

    def client(self, timeout_s: float = 30.0) -> Client:
        return Client(self.socket_path, timeout_s=timeout_s)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        with self.client() as client:
            return client.call(op, args or {})

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL; the exit code (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DAEMON_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(DAEMON_STOP_TIMEOUT_S)
        return self.proc.returncode


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="sld", dir="/tmp"))
    process = DaemonProcess(root)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "daemon" in getattr(item, "fixturenames", ()):
        funcargs = getattr(item, "funcargs", {})
        process = funcargs.get("daemon")
        if isinstance(process, DaemonProcess):
            report.sections.append(("daemon log", process.log_tail()))
    return report
