"""Shared test helpers: seeded record and query generators, a real shard process, waiting with deadlines.

Owns three things the storage and shard tests share:

* ``RecordGen`` makes records in the stored shape (``storage.record.FIELDS`` plus ``id``) that stress
  the engine: out-of-order and tied timestamps, unicode, empty strings, template tokens repeated
  across records (posting lists) next to per-record unique tokens (bloom filters), terms too long
  for an LMDB key (stored hashed), tags, metadata of str / int / bool values, None ids, and
  optionally timestamps at the ends of the int64 range.  ``QueryGen`` builds random filter trees over the same
  vocabulary, directly as AST nodes and as query text for ``parse_query``.  Both draw only from the
  ``random.Random`` they are given, so a seed reproduces a failure.
* ``ShardProcess`` runs ``python -m shardd`` as a real subprocess on a short socket path, waits for
  ``ping`` with a deadline, keeps the shard's stderr in a file (printed when a test fails inside the
  context) and kills the process at the end whatever happened.
* ``wait_for`` polls a condition until a deadline (tests never sleep a fixed time), and
  ``close_store`` closes a ``Store`` with a deadline so an engine hang fails a test instead of
  hanging the whole run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from shardd.client import Client
from storage import query as q
from storage.levels import LEVELS, SEVERITY

REPO_ROOT = Path(__file__).resolve().parent.parent
S_NS = 1_000_000_000
#: 2024-01-01T00:00:00Z
T0_NS = 1_704_067_200 * S_NS

T = TypeVar("T")

# --- seeds ---------------------------------------------------------------------------------------


def seeds_to_run(default: list[int]) -> list[int]:
    """The seeds a property test runs: ``SHARDLOG_TEST_SEED=123`` replays one failing seed."""
    override = os.environ.get("SHARDLOG_TEST_SEED")
    if override:
        return [int(part) for part in override.split(",")]
    return default


# --- waiting -------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.01) -> T:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what`` at the
    deadline.  The poll interval grows so a slow machine is not flooded with checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
        poll_s = min(poll_s * 1.5, 0.2)


def run_with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``fn`` in a daemon thread; AssertionError if it has not returned by the deadline (the
    thread is abandoned: a hung engine call must fail its test, not hang the run)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"deadline:{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {timeout_s:g} s (hung)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def close_store(store: Any, *, timeout_s: float = 20.0) -> None:
    """Close a Store, failing (not hanging) if close() does not return."""
    run_with_deadline(store.close, timeout_s, f"Store.close() of {store.path}")


@contextlib.contextmanager
def short_tmpdir(prefix: str = "sl") -> Iterator[Path]:
    """A fresh directory directly under /tmp, short enough for unix socket paths (~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- records -------------------------------------------------------------------------------------

#: Terms longer than an LMDB key allows are stored hashed (storage.layout.MAX_TERM_BYTES = 480):
#: two long tokens that differ only after the hashed prefix, and two such metadata values.
LONG_WORDS = ("x" * 500 + "alpha", "x" * 500 + "beta")
LONG_VALUES = ("z" * 600, "z" * 599 + "y")
#: Message template words: each appears in many records, so blocks keep posting lists for them.
TEMPLATE_WORDS = ("connection", "refused", "timeout", "user", "login", "failed", "disk", "full",
                  "café", "naïve", "ошибка", "東京", "straße", "retry", "42", "ok", *LONG_WORDS)
#: Words that appear in no generated message (absent tokens, prefixes and phrases).
ABSENT_WORDS = ("zebra", "quokka", "ünseen", "9999999")
SOURCES = ("api", "db", "auth", "", "wörker")
TAGS = ("prod", "eu", "ünï", "canary", "x")
HOSTS = ("web-1", "web-2", "db-1", "")
UNKNOWN_LEVEL = "AUDIT"  # kept upper-cased with the INFO score (20)
ALL_LEVELS = (*LEVELS, UNKNOWN_LEVEL)
THREADS = ("t1", "t2", "main")
USERS = ("u1", "u2", "ü3")


class RecordGen:
    """Seeded records in the stored shape.  ``ts_base_ns``/``ts_spread_ns`` bound the timestamps;
    ids are unique and increasing in generation order (timestamps are not)."""

    def __init__(self, rng: random.Random, *, ts_base_ns: int = T0_NS, ts_spread_ns: int = 3_600 * S_NS,
                 first_id: int = 1, extreme_ts_rate: float = 0.0) -> None:
        self.rng = rng
        self.extreme_ts_rate = extreme_ts_rate
        self.ts_base_ns = ts_base_ns
        self.ts_spread_ns = ts_spread_ns
        self.next_id = first_id
        # a few shared timestamps make (ts, id) ties that only the id breaks
        self._shared_ts = [ts_base_ns + rng.randrange(ts_spread_ns) for _ in range(4)]

    def message(self, rid: int) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return ""
        words = [rng.choice(TEMPLATE_WORDS) for _ in range(rng.randint(1, 6))]
        if roll < 0.6:
            # a token unique to this record: a one-row term, found only through the bloom filter
            words.insert(rng.randrange(len(words) + 1), f"id{rid}q{rng.randrange(10**6)}")
        if rng.random() < 0.3:
            words = [w.upper() if rng.random() < 0.5 else w.title() for w in words]
        separators = (" ", " ", ", ", "-", ": ", "_", " / ")
        out = words[0]
        for word in words[1:]:
            out += rng.choice(separators) + word
        if rng.random() < 0.2:
            out += rng.choice(("!", "?", " …", " ✓", "\n\tat frame"))
        return out

    def timestamp(self) -> int:
        rng = self.rng
        if rng.random() < 0.1:
            return rng.choice(self._shared_ts)
        if rng.random() < self.extreme_ts_rate:
            # the ends of the int64 range and the epoch: blocks that span centuries
            return rng.choice((-(2**63), 2**63 - 1, -1, 0, 1))
        return self.ts_base_ns + rng.randrange(self.ts_spread_ns)

    def metadata(self, rid: int) -> dict[str, Any]:
        rng = self.rng
        meta: dict[str, Any] = {}
        if rng.random() < 0.7:
            meta["host"] = rng.choice(HOSTS)
        if rng.random() < 0.5:
            meta["code"] = rng.choice((200, 404, 500, 0, -1))
        if rng.random() < 0.4:
            meta["ok"] = rng.random() < 0.5
        if rng.random() < 0.3:
            meta["seq"] = rid  # unique: a one-row metadata term
        if rng.random() < 0.1:
            meta["ключ"] = rng.choice(("значение", ""))
        if rng.random() < 0.1:
            meta["trace"] = rng.choice(LONG_VALUES)
        return meta

    def record(self) -> dict[str, Any]:
        rng = self.rng
        rid = self.next_id
        self.next_id += 1
        return {
            "id": rid,
            "ts_ns": self.timestamp(),
            "level": rng.choice(ALL_LEVELS),
            "message": self.message(rid),
            "source": rng.choice(SOURCES),
            "tags": rng.sample(TAGS, rng.choice((0, 0, 1, 1, 2, 3))),
            "metadata": self.metadata(rid),
            "thread_id": rng.choice((None, None, *THREADS)),
            "request_id": rng.choice((None, f"req-{rid}", "req-shared")),
            "user_id": rng.choice((None, *USERS)),
        }

    def records(self, n: int) -> list[dict[str, Any]]:
        return [self.record() for _ in range(n)]


def make_record(rid: int, ts_ns: int, message: str = "hello world", **fields: Any) -> dict[str, Any]:
    """One record in the stored shape with plain defaults, for hand-written tests."""
    record: dict[str, Any] = {"id": rid, "ts_ns": ts_ns, "level": "INFO", "message": message, "source": "app",
                              "tags": [], "metadata": {}, "thread_id": None, "request_id": None, "user_id": None}
    record.update(fields)
    return record


# --- queries -------------------------------------------------------------------------------------


class QueryGen:
    """Random filter trees over RecordGen's vocabulary.  Time bounds fall inside (and around) the
    records' time span so range filters cut through blocks."""

    def __init__(self, rng: random.Random, *, ts_base_ns: int = T0_NS, ts_spread_ns: int = 3_600 * S_NS,
                 known_ids: list[int] | None = None) -> None:
        self.rng = rng
        self.ts_base_ns = ts_base_ns
        self.ts_spread_ns = ts_spread_ns
        self.known_ids = known_ids or [1]

    def token(self) -> str:
        rng = self.rng
        if rng.random() < 0.2:
            return rng.choice(ABSENT_WORDS)
        return q.tokenize(rng.choice(TEMPLATE_WORDS))[0]

    def time_point(self) -> int:
        return self.ts_base_ns + self.rng.randrange(-self.ts_spread_ns // 10, self.ts_spread_ns * 11 // 10)

    def leaf(self) -> q.Node:
        rng = self.rng
        kind = rng.randrange(13)
        if kind == 0:
            return q.Token(self.token())
        if kind == 1:
            return q.Phrase(tuple(self.token() for _ in range(rng.randint(2, 3))))
        if kind == 2:
            word = self.token()
            return q.Prefix(word[: rng.randint(1, len(word))])
        if kind == 3:
            return q.Field("level", rng.choice(ALL_LEVELS))
        if kind == 4:
            return q.Field("source", rng.choice(SOURCES))
        if kind == 5:
            return q.Field("tag", rng.choice(TAGS + ("absent-tag",)))
        if kind == 6:
            name, values = rng.choice((("meta.host", HOSTS), ("meta.code", ("200", "404", "500", "0", "-1")),
                                       ("meta.ok", ("true", "false")), ("meta.ключ", ("значение", "")),
                                       ("meta.seq", tuple(str(i) for i in self.known_ids[:50])),
                                       ("meta.trace", LONG_VALUES), ("meta.nokey", ("x",))))
            return q.Field(name, rng.choice(values))
        if kind == 7:
            name, values = rng.choice((("thread_id", THREADS), ("user_id", USERS),
                                       ("request_id", ("req-shared", f"req-{rng.choice(self.known_ids)}"))))
            return q.Field(name, rng.choice(values))
        if kind == 8:
            return q.MinSeverity(rng.choice(sorted(set(SEVERITY.values()))) + rng.choice((0, 0, 5)))
        if kind == 9:
            low, high = sorted((self.time_point(), self.time_point()))
            # sometimes open on one side; sometimes empty (low == high)
            return q.TimeRange(None if rng.random() < 0.2 else low, None if rng.random() < 0.2 else high)
        if kind == 10:
            word = rng.choice(TEMPLATE_WORDS + ABSENT_WORDS)
            start = rng.randrange(len(word))
            text = word[start:start + rng.randint(1, 4)]
            return q.Substring(text.upper() if rng.random() < 0.3 else text)
        if kind == 11:
            return q.Regex(rng.choice((r"fail(ed)?\b", r"^[A-Z]", r"\d{2}", r"(?i)CAF", r"id\d+q", "ошибка|東京",
                                       r"\n")))
        return q.MatchAll()

    def node(self, depth: int = 0) -> q.Node:
        rng = self.rng
        if depth >= 3 or rng.random() < 0.45:
            return self.leaf()
        kind = rng.randrange(3)
        if kind == 0:
            return q.And(tuple(self.node(depth + 1) for _ in range(rng.randint(1, 3))))
        if kind == 1:
            return q.Or(tuple(self.node(depth + 1) for _ in range(rng.randint(1, 3))))
        return q.Not(self.node(depth + 1))

    def text(self) -> str:
        """A query string in the DESIGN §7 language (parsed by the test with ``parse_query``)."""
        rng = self.rng
        terms = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(9)
            if kind == 0:
                term = self.token()
            elif kind == 1:
                term = '"' + " ".join(self.token() for _ in range(2)) + '"'
            elif kind == 2:
                term = self.token()[:2] + "*"
            elif kind == 3:
                term = f"level:{rng.choice(('ERROR', 'warn', 'info', 'AUDIT'))}"
            elif kind == 4:
                term = f"level:>={rng.choice(('WARN', 'DEBUG', 'FATAL'))}"
            elif kind == 5:
                term = rng.choice(("source:db", "source:wörker", "tag:prod", "tag:ünï", "host:web-1",
                                   "meta.code:500", "ok:true", "user_id:u1", "thread_id:main"))
            elif kind == 6:
                term = rng.choice(('~"fail"', "message:*ed*", '~"(?i)^conn"'))
            elif kind == 7:
                term = f"({self.token()} OR {self.token()})"
            else:
                term = "-" + self.token()
            terms.append(term)
        return " ".join(terms)


# --- the shard process ---------------------------------------------------------------------------


def shard_command(data_dir: Path | str, socket_path: Path | str, *, shard_id: int = 0,
                  parent_pid: int | None = None, extra_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "shardd", "--shard-id", str(shard_id), "--data-dir", str(data_dir),
           "--socket", str(socket_path), "--log-level", "WARNING"]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    return cmd + list(extra_args)


def shard_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ShardProcess:
    """A real ``python -m shardd`` child.  Use as a context manager::

        with ShardProcess(data_dir, workdir) as shard:
            shard.client().call("ping")

    ``start`` waits for ``ping`` (``ready_timeout_s``); on any exception inside the ``with`` block
    the shard's stderr is printed (pytest shows it with the failure); the process is always
    SIGKILLed and reaped at exit.  ``kill()`` / ``start()`` restart it on the same data dir.
    """

    def __init__(self, data_dir: Path, workdir: Path, *, shard_id: int = 0, extra_args: tuple[str, ...] = (),
                 ready_timeout_s: float = 30.0, wait_ready: bool = True) -> None:
        self.data_dir = data_dir
        self.workdir = workdir
        self.socket_path = workdir / f"s{shard_id}.sock"
        self.shard_id = shard_id
        self.extra_args = extra_args
        self.ready_timeout_s = ready_timeout_s
        self.wait_ready = wait_ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._clients: list[Client] = []

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"shard{self.shard_id}.stderr"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "ShardProcess":
        self.starts += 1
        with open(self.stderr_path, "ab") as stderr:
            stderr.write(f"--- start #{self.starts} ---\n".encode())
            stderr.flush()
            self.proc = subprocess.Popen(shard_command(self.data_dir, self.socket_path, shard_id=self.shard_id,
                                                       extra_args=self.extra_args),
                                         cwd=REPO_ROOT, env=shard_env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        if self.wait_ready:
            self.await_ping()
        return self

    def await_ping(self) -> dict[str, Any]:
        """Ping until the shard answers; fail with its stderr if it exits or the deadline passes."""
        deadline = time.monotonic() + self.ready_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"shard exited with code {code} before answering ping; stderr:\n"
                                     f"{self.stderr_text()}")
            if self.socket_path.exists():
                try:
                    with Client(self.socket_path, timeout_s=5.0) as client:
                        answer = client.call("ping")
                    if isinstance(answer, dict) and answer.get("pid") == self.proc.pid:
                        return answer
                except Exception as exc:  # not up yet: connection refused, or socket of an old run
                    last_error = exc
            time.sleep(0.02)
        raise AssertionError(f"shard did not answer ping within {self.ready_timeout_s:g} s "
                             f"(last error: {last_error}); stderr:\n{self.stderr_text()}")

    def client(self, timeout_s: float = 30.0) -> Client:
        client = Client(self.socket_path, timeout_s=timeout_s)
        self._clients.append(client)
        return client

    def call(self, op: str, args: dict[str, Any] | None = None, timeout_s: float = 30.0) -> Any:
        with Client(self.socket_path, timeout_s=timeout_s) as client:
            return client.call(op, args)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"shard pid {self.proc.pid} did not exit within {timeout_s:g} s; stderr:\n"
                                 f"{self.stderr_text()}") from None

    def kill(self) -> None:
        """SIGKILL and reap (a no-op when it already exited)."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def __enter__(self) -> "ShardProcess":
        try:
            return self.start()
        except BaseException:
            self.kill()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            print(f"--- stderr of shard {self.shard_id} ({self.stderr_path}) ---\n{self.stderr_text()}",
                  file=sys.stderr)
        self.kill()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs: absent, or a zombie nobody reaped yet (a reparented
    grandchild is reaped by init, which in a container may never happen)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # the state letter follows the command name, which is in parentheses and may hold spaces
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")
