"""A real shardlog daemon (coordinator + shard processes) for the integration tests.

Owns one thing: running ``python -m cli.main serve`` on a private, short data dir under /tmp and
tearing it down whatever happened.  Guarantees:

* ``start()`` returns only once ``ping`` on the daemon's socket reports every shard up (and the
  HTTP port, when configured, accepts connections), or raises
  ``AssertionError`` (with the daemon's log) when the process exits first or the deadline passes;
* the daemon's stdout and stderr go to ``log_path`` (appended across restarts, each start marked),
  and the log is printed when the ``with`` block (or ``logs_on_failure``) sees an exception, so a
  failing test shows what the daemon said;
* ``stop()`` is SIGTERM, a bounded wait, then SIGKILL and reap; ``close()`` (the ``with`` exit) also
  SIGKILLs any shard process still alive (an orphan must not outlive the test run) and removes the
  temporary directory it created;
* the daemon's settings come from the flags and ``env``/``config`` given here, never from the
  developer's ``SHARDLOG_*`` environment.

One ``Daemon`` object may be started and stopped several times on the same data dir (restarts).

Also here, for the crash and lifecycle tests: ``Ingester``, a client thread that ingests numbered
batches (keyed and unkeyed) and records which were acknowledged; ``stored_uids`` reads every stored
record back; ``check_accounting`` checks Jepsen-style that acknowledged ⊆ stored, nothing is stored
twice and nothing unknown appeared; ``processes_mentioning`` / ``wait_gone`` find and await processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shardd.client import Client
from storage.errors import ShardlogError
from tests.helpers import S_NS, T0_NS, process_gone, wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
#: A coordinator and three shards answer ping in ~0.5 s here; the margin covers a loaded 2-core box
#: running two xdist workers that each start several daemons.
READY_TIMEOUT_S = 60.0
#: A graceful stop waits for in-flight ingests and lets each shard close its store.
STOP_TIMEOUT_S = 30.0
#: Lines of the daemon log printed with a failure.
LOG_TAIL_LINES = 80


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_root(prefix: str = "sli") -> Path:
    """A fresh directory directly under /tmp: data dir sockets must fit in sun_path (~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Daemon:
    """One ``shardlog serve`` process.  Use as a context manager::

        with Daemon(shards=2) as daemon:
            daemon.call("ingest", {"records": [...]})

    ``data_dir`` reuses an existing data dir (the caller owns it); otherwise a temporary root is
    created and removed at ``close()``.  ``shards=None`` omits ``--shards``; ``http=None`` disables
    HTTP (``--http ""``), a ``"host:port"`` string enables it.  ``env`` adds ``SHARDLOG_*``
    variables; ``config`` is written as a TOML file passed with ``--config``.
    """

    def __init__(self, data_dir: Path | None = None, *, shards: int | None = 2, http: str | None = None,
                 env: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None,
                 extra_args: Sequence[str] = (), name: str = "daemon") -> None:
        self._owned_root: Path | None = None
        if data_dir is None:
            self._owned_root = short_root()
            data_dir = self._owned_root / "d"
            self.work_dir = self._owned_root
        else:
            self.work_dir = short_root("slw")
        self.data_dir = data_dir
        self.shards = shards
        self.http = http
        self.extra_env = dict(env or {})
        self.config = dict(config or {})
        self.extra_args = list(extra_args)
        self.name = name
        self.log_path = self.work_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: every shard pid seen through ``stats``, so ``close()`` can reap orphans
        self.seen_shard_pids: set[int] = set()

    # --- paths and logs ---------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        from coordinator.config import socket_path_for

        return socket_path_for(self.data_dir)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise AssertionError(f"{self.name} was never started")
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def print_log(self) -> None:
        print(f"--- last {LOG_TAIL_LINES} lines of {self.name} log ({self.log_path}) ---\n{self.log_tail()}",
              file=sys.stderr)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Print this daemon's log when the block raises (for daemons shared by several tests)."""
        try:
            yield
        except BaseException:
            self.print_log()
            raise

    # --- start ------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cli.main", "serve", "--data-dir", str(self.data_dir),
               "--http", self.http or ""]
        if self.shards is not None:
            cmd += ["--shards", str(self.shards)]
        if self.config:
            cmd += ["--config", str(self._write_config())]
        return cmd + self.extra_args

    def _write_config(self) -> Path:
        path = self.work_dir / f"{self.name}.toml"
        lines = []
        for key, value in self.config.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
        path.write_text("\n".join(lines) + "\n")
        return path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLOG_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))
        env.update(self.extra_env)
        return env

    def spawn(self) -> "Daemon":
        """Start the process without waiting for it to be ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError(f"{self.name} (pid {self.proc.pid}) is already running")
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- start #{self.starts}: {' '.join(self.command())} ---\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log_file, stderr=subprocess.STDOUT)
        return self

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "Daemon":
        self.spawn()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Ping until the daemon says every shard is up; AssertionError with its log otherwise."""
        proc = self.proc
        if proc is None:
            raise AssertionError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        poll_s = 0.02
        while True:
            code = proc.poll()
            if code is not None:
                raise AssertionError(f"{self.name} exited with code {code} before it was ready; its log:\n"
                                     f"{self.log_tail()}")
            try:
                with Client(self.socket_path, timeout_s=5.0) as client:
                    answer = client.call("ping")
                # the pid check skips a stale socket answered by a previous run
                if isinstance(answer, dict) and answer.get("ready") and answer.get("pid") == proc.pid:
                    # the unix socket opens before the HTTP listener, so ping can answer a few ms
                    # before HTTP accepts connections (reported); wait for both
                    if self.http_accepts():
                        return answer
                    last = "ping answered ready, but HTTP does not accept connections yet"
                else:
                    last = f"ping answered {answer!r}"
            except ShardlogError as exc:
                last = exc.message
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} was not ready within {timeout_s:g} s (last: {last}); its log:\n"
                                     f"{self.log_tail()}")
            time.sleep(poll_s)  # polling a condition with a deadline, not a fixed wait
            poll_s = min(poll_s * 1.5, 0.2)

    def http_accepts(self) -> bool:
        """True when HTTP is disabled, or its port accepts a TCP connection."""
        if not self.http:
            return True
        host, _, port = self.http.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5.0):
                return True
        except OSError:
            return False

    def run_to_exit(self, timeout_s: float = READY_TIMEOUT_S) -> tuple[int, str]:
        """Start a daemon that is expected to refuse to start: its exit code and this start's log.
        AssertionError (after killing it) if it is still running at the deadline."""
        before = len(self.log_text())
        self.spawn()
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} was expected to exit but still ran after {timeout_s:g} s; its log:\n"
                                 f"{self.log_tail()}") from None
        return code, self.log_text()[before:]

    # --- use --------------------------------------------------------------------------------------

    def client(self, timeout_s: float = 30.0) -> Client:
        return Client(self.socket_path, timeout_s=timeout_s)

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout_s: float = 60.0) -> Any:
        with Client(self.socket_path, timeout_s=timeout_s) as client:
            return client.call(op, args or {})

    def stats(self) -> dict[str, Any]:
        stats = self.call("stats")
        for shard in stats["shards"]:
            if shard.get("pid"):
                self.seen_shard_pids.add(shard["pid"])
        return stats

    def shard_pids(self) -> list[int]:
        """The shard processes' pids by shard id (from the ``stats`` op)."""
        return [shard["pid"] for shard in self.stats()["shards"]]

    # --- stop -------------------------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, SIGKILL; the exit code (None if never started).
        A daemon that needed SIGKILL returns -9, which a test asserting a clean exit will see."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        return self.proc.returncode

    def send_signal(self, sig: int) -> None:
        if self.proc is None:
            raise AssertionError(f"{self.name} was never started")
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """The exit code; AssertionError (with the log) if the daemon still runs at the deadline."""
        if self.proc is None:
            raise AssertionError(f"{self.name} was never started")
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.proc.pid}) did not exit within {timeout_s:g} s; its log:\n"
                                 f"{self.log_tail()}") from None

    def kill(self) -> int | None:
        """SIGKILL the coordinator (its shards are left to notice) and reap it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        for pid in self.seen_shard_pids:
            # only a shard of ours can still carry a pid we saw: after a coordinator crash it was
            # reparented; a shard bug must fail its test, not leak a process into the next one
            if not process_gone(pid) and _is_our_shard(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._owned_root is not None:
            shutil.rmtree(self._owned_root, ignore_errors=True)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "Daemon":
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.print_log()
        self.close()


def _is_our_shard(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"shardd" in handle.read()
    except OSError:
        return False


def wait_gone(pids: Sequence[int], timeout_s: float, what: str) -> None:
    """Wait until every pid has exited (absent or an unreaped zombie)."""
    wait_for(lambda: all(process_gone(pid) for pid in pids), timeout_s,
             f"{what} (pids {list(pids)}; still running: {[p for p in pids if not process_gone(p)]})")


def wait_shards_up(daemon: Daemon, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Poll ``stats`` until every shard is up; returns the stats."""
    def check() -> dict[str, Any] | None:
        try:
            stats = daemon.stats()
        except ShardlogError:
            return None
        return stats if all(shard["up"] for shard in stats["shards"]) and not stats["partial"] else None

    return wait_for(check, timeout_s, f"every shard of {daemon.name} to be up")


def processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``text`` (e.g. a data dir):
    how a test finds shard processes it has no other handle on."""
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if needle in cmdline and not process_gone(int(entry)):
            found.append(int(entry))
    return found


# --- Jepsen-style accounting ----------------------------------------------------------------------


@dataclass
class Batch:
    batch_id: int
    uids: list[str]
    key: str | None
    #: "acked" (the daemon acknowledged every record), "failed" (an error answer or a dropped
    #: connection: outcome unknown, the records may or may not be stored), or "unsent"
    outcome: str = "unsent"
    #: the last error; kept when a retry is later acknowledged
    error: str = ""
    attempts: int = 0


class Ingester(threading.Thread):
    """A client thread that ingests numbered batches over the daemon's socket (half as records, half
    as JSON lines) and records which were acknowledged.  Every record carries ``metadata.uid`` =
    ``"<batch>:<index>"``.

    Batches alternate between keyed (an idempotency key; retried with the same key after an error,
    as DESIGN §3 tells clients to) and unkeyed (never retried: a blind retry could store twice, so an
    error makes the outcome unknown).  ``stop_on_unreachable``: end at the first connection failure
    (the daemon was stopped or killed); otherwise keep retrying until ``stop()``.
    """

    def __init__(self, daemon: Daemon, *, batch_records: int = 100, stop_on_unreachable: bool = True,
                 call_timeout_s: float = 90.0, seed: int = 0) -> None:
        super().__init__(name=f"ingester:{daemon.name}", daemon=True)
        self.socket_path = daemon.socket_path
        self.batch_records = batch_records
        self.stop_on_unreachable = stop_on_unreachable
        self.call_timeout_s = call_timeout_s
        self.rng = random.Random(seed)
        self.batches: list[Batch] = []
        self._stop_requested = threading.Event()
        self._progress = threading.Condition()
        self.crash: BaseException | None = None

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop_requested.set()
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"{self.name} did not finish its last call within {timeout_s:g} s")
        if self.crash is not None:
            raise AssertionError(f"{self.name} crashed: {self.crash!r}") from self.crash

    def acked(self) -> int:
        return sum(1 for batch in self.batches if batch.outcome == "acked")

    def wait_acked(self, count: int, timeout_s: float) -> None:
        """Wait until at least ``count`` batches in all were acknowledged."""
        wait_for(lambda: self.acked() >= count or not self.is_alive(), timeout_s,
                 f"{count} acknowledged batches (have {self.acked()})")
        if self.acked() < count:
            raise AssertionError(f"{self.name} ended after {self.acked()} acknowledged batches; expected {count}: "
                                 f"{[b.error for b in self.batches if b.error][-3:]}")

    def _records(self, batch_id: int) -> tuple[list[dict[str, Any]], list[str]]:
        records, uids = [], []
        for index in range(self.batch_records):
            uid = f"{batch_id}:{index}"
            uids.append(uid)
            records.append({"timestamp": T0_NS + self.rng.randrange(3_600 * S_NS),
                            "level": self.rng.choice(("INFO", "WARN", "ERROR")),
                            "message": f"load batch {batch_id} record {index} " + self.rng.choice(("ok", "slow", "fail")),
                            "source": self.rng.choice(("api", "db", "auth")), "metadata": {"uid": uid}})
        return records, uids

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by stop()
            self.crash = exc

    def _run(self) -> None:
        client = Client(self.socket_path, timeout_s=self.call_timeout_s)
        try:
            batch_id = 0
            while not self._stop_requested.is_set():
                records, uids = self._records(batch_id)
                key = f"load-{batch_id}" if batch_id % 2 == 0 else None
                batch = Batch(batch_id, uids, key)
                self.batches.append(batch)
                batch_id += 1
                # half the batches as JSON lines: with parse_in = shards those are parsed and
                # written to the WAL as lines by the shards, the others as records from the coordinator
                if batch_id % 4 >= 2:
                    lines = [orjson.dumps(record) for record in records]
                    args: dict[str, Any] = {"lines": lines, "format": "jsonl"}
                    op = "ingest_lines"
                else:
                    args, op = {"records": records}, "ingest"
                if key is not None:
                    args["idempotency_key"] = key
                while True:
                    batch.attempts += 1
                    try:
                        answer = client.call(op, args)
                    except ShardlogError as exc:
                        batch.outcome, batch.error = "failed", f"{type(exc).__name__}: {exc.message}"
                        unreachable = "cannot connect" in exc.message
                        if (unreachable and self.stop_on_unreachable) or self._stop_requested.is_set():
                            return
                        if key is None and not unreachable:
                            break  # unknown outcome; a blind retry could store the batch twice
                        if unreachable:  # no connection: nothing was sent, so even unkeyed may resend
                            time.sleep(0.05)  # a daemon restarting; retry (poll, not a fixed wait)
                        continue
                    if answer.get("accepted") != len(records) or answer.get("rejected"):
                        batch.outcome, batch.error = "failed", f"unexpected answer {answer!r:.200}"
                        raise AssertionError(f"batch {batch.batch_id}: {batch.error}")
                    batch.outcome = "acked"
                    break
        finally:
            client.close()


def stored_uids(daemon: Daemon, page_records: int = 5_000) -> list[str]:
    """``metadata.uid`` of every stored record, walking all pages with the cursor."""
    out: list[str] = []
    cursor = None
    with daemon.client(timeout_s=60.0) as client:
        while True:
            params: dict[str, Any] = {"sort": "asc", "limit": page_records}
            if cursor:
                params["cursor"] = cursor
            answer = client.call("query", params)
            if answer["partial"]:
                raise AssertionError(f"query answered partial: {answer.get('failed_shards')}")
            out.extend(str(log["metadata"].get("uid")) for log in answer["logs"])
            cursor = answer["next_cursor"]
            if cursor is None or not answer["logs"]:
                return out


def check_accounting(batches: Sequence[Batch], stored: Sequence[str]) -> None:
    """Jepsen-style: acknowledged ⊆ stored, every stored record stored once, nothing unknown."""
    counts = Counter(stored)
    duplicated = sorted(uid for uid, n in counts.items() if n > 1)
    sent = {uid for batch in batches for uid in batch.uids}
    unknown = sorted(set(counts) - sent)
    acked = {uid for batch in batches if batch.outcome == "acked" for uid in batch.uids}
    lost = sorted(acked - set(counts), key=lambda uid: tuple(map(int, uid.split(":"))))
    problems = []
    if lost:
        problems.append(f"{len(lost)} acknowledged records are missing, e.g. {lost[:5]}")
    if duplicated:
        problems.append(f"{len(duplicated)} records are stored more than once, e.g. "
                        f"{[(uid, counts[uid]) for uid in duplicated[:5]]}")
    if unknown:
        problems.append(f"{len(unknown)} stored records were never sent, e.g. {unknown[:5]}")
    if problems:
        outcomes = Counter(batch.outcome for batch in batches)
        raise AssertionError("; ".join(problems) + f" (batches: {dict(outcomes)}; errors: "
                             f"{[b.error for b in batches if b.error][:3]})")
