"""Tests of the shard process (shardd.server) as a real ``python -m shardd`` subprocess.

Every operation over the wire against a plain oracle (filters sent with ``storage.querywire.to_wire``),
shutdown and restart on the same data dir, the boot-failure exit code 78 (data dir is a file,
foreign or newer manifest, store locked by a live Store in this process), exit when the parent
process is gone, and hostile frames on raw sockets: each gets an error answer or a closed
connection, and afterwards a fresh client still pings and reads the data acknowledged before.
The shard's stderr is printed when a test fails (tests.helpers.ShardProcess).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest

from shardd.client import AsyncClient, Client
from shardd.protocol import HEADER, MAGIC, VERSION, encode_frame, read_frame
from storage import layout
from storage import query as q
from storage import querytext
from storage import querywire
from storage.aggregate import AggSpec, finalize, from_wire
from storage.errors import BadRequest, FormatMismatch
from storage.store import Store, StoreConfig
from tests.helpers import (
    REPO_ROOT,
    S_NS,
    T0_NS,
    QueryGen,
    RecordGen,
    ShardProcess,
    close_store,
    process_gone,
    shard_command,
    shard_env,
    short_tmpdir,
    wait_for,
)

EXIT_BOOT_FAILURE = 78
#: small blocks so a few records cross seal boundaries; sealing by age only when asked (flush)
QUIET_ARGS = ("--block-records", "16", "--seal-after-s", "3600")


def _key(record: dict[str, Any]) -> tuple[int, int]:
    return record["ts_ns"], record["id"]


def _all_ids(client: Client) -> list[int]:
    answer = client.call("query", {"filter": ["all"], "sort": "asc", "limit": 100_000})
    ids = [row["id"] for row in answer["rows"]]
    assert len(ids) == len(set(ids)) == answer["total"], "a record came back twice"
    return sorted(ids)


# --- every operation over the wire -------------------------------------------------------------------


def test_operations_over_the_wire_then_shutdown_and_restart() -> None:
    rng = random.Random(20)
    gen = RecordGen(rng)
    old = RecordGen(rng, ts_base_ns=T0_NS - 100 * 3_600 * S_NS, first_id=100_000).records(40)
    records = gen.records(150)
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, shard_id=3, extra_args=QUIET_ARGS) as shard:
        client = shard.client()
        ping = client.call("ping")
        assert (ping["shard_id"], ping["pid"]) == (3, shard.pid)

        # the old records first, sealed into blocks of their own, for retention below
        assert client.call("ingest", {"records": old}) == {"accepted": 40, "duplicate": False}
        assert client.call("flush") == {}
        for start in range(0, len(records), 30):
            batch = records[start:start + 30]
            args = {"records": batch, "idempotency_key": f"b{start}"}
            assert client.call("ingest", args) == {"accepted": len(batch), "duplicate": False}
        assert client.call("ingest", {"records": records[:30], "idempotency_key": "b0"}) == {
            "accepted": 30, "duplicate": True}
        everything = old + records

        queries = QueryGen(rng, known_ids=[r["id"] for r in records])
        for node in [q.MatchAll(), *(queries.node() for _ in range(8)),
                     querytext.parse_query("level:>=WARN OR tag:prod", now_ns=T0_NS).filter]:
            wire = querywire.to_wire(node)
            expected = sorted((r for r in everything if q.matches(node, r)), key=_key)
            where = f"filter={wire!r}"
            for sort in ("asc", "desc"):
                ordered = expected if sort == "asc" else expected[::-1]
                answer = client.call("query", {"filter": wire, "sort": sort, "offset": 3, "limit": 20})
                assert answer["rows"] == ordered[3:23], f"{sort}: {where}"
                assert answer["total"] == len(expected), where
                # the second page by cursor continues where the first ended
                first = client.call("query", {"filter": wire, "sort": sort, "limit": 10})["rows"]
                if first:
                    after = [first[-1]["ts_ns"], first[-1]["id"]]
                    rest = client.call("query", {"filter": wire, "sort": sort, "limit": 10, "after": after})
                    assert [r["id"] for r in rest["rows"]] == [r["id"] for r in ordered[10:20]], where
            assert client.call("count", {"filter": wire}) == {"count": len(expected)}, where
            spec = AggSpec(group_by="level", top=(("tags", 2),), interval_ns=600 * S_NS)
            result = finalize(from_wire(client.call("aggregate", {"filter": wire, "spec": spec.to_wire()})), spec)
            assert result["total"] == len(expected), where
            assert result["group_by"] == dict(Counter(r["level"] for r in expected)), where
            tag_counts = Counter(t for r in expected for t in r["tags"])
            assert [n for _, n in result["top"]["tags"]] == sorted(tag_counts.values(), reverse=True)[:2], where
            assert all(tag_counts[v] == n for v, n in result["top"]["tags"]), where
            buckets = Counter(r["ts_ns"] // (600 * S_NS) * 600 * S_NS for r in expected)
            assert result["time_histogram"] == sorted([b, n] for b, n in buckets.items()), where

        stats = client.call("stats")
        assert (stats["shard_id"], stats["records"]) == (3, len(everything))
        assert stats["by_level"] == dict(Counter(r["level"] for r in everything))
        assert client.call("flush") == {}
        assert client.call("stats")["unsealed_records"] == 0

        assert client.call("retention", {"cutoff_ns": T0_NS - 3_600 * S_NS}) == {
            "dropped_blocks": 3, "dropped_records": 40}  # 40 old records in blocks of 16
        assert _all_ids(client) == sorted(r["id"] for r in records)

        assert client.call("shutdown") == {}
        assert shard.wait_exit(30) == 0
        assert not shard.socket_path.exists(), "a clean shutdown removes the socket"

        shard.start()  # same data dir: everything acknowledged and kept is there
        with shard.client() as again:
            assert _all_ids(again) == sorted(r["id"] for r in records)
            assert again.call("count", {"filter": ["all"]}) == {"count": len(records)}
            assert again.call("ingest", {"records": records[:30], "idempotency_key": "b0"})["duplicate"] is True


def test_pipelined_ingest_on_one_connection_is_all_acknowledged() -> None:
    """Many concurrent requests on one AsyncClient connection; the shard commits them in groups."""
    records = RecordGen(random.Random(21)).records(400)

    async def scenario(path: Path) -> list[Any]:
        async with await AsyncClient.connect(path) as client:
            calls = [client.call("ingest", {"records": records[i:i + 10], "idempotency_key": f"p{i // 20}"},
                                 timeout_s=60) for i in range(0, len(records), 10)]
            return await asyncio.gather(*calls)

    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=QUIET_ARGS) as shard:
        answers = asyncio.run(scenario(shard.socket_path))
        # keys p0, p1, ... each cover two batches of 10: the first of each pair is stored, the second
        # (same key) is a duplicate that stores nothing
        assert sorted(a["duplicate"] for a in answers) == [False] * 20 + [True] * 20
        stored = _all_ids(shard.client())
        assert len(stored) == 200
        for i in range(0, len(records), 20):
            pair = ({r["id"] for r in records[i:i + 10]}, {r["id"] for r in records[i + 10:i + 20]})
            assert sum(ids <= set(stored) for ids in pair) == 1, f"key p{i // 20}: exactly one batch stored"


def test_ingest_lines_parses_and_normalizes_here_and_survives_a_restart() -> None:
    """JSON lines the coordinator routed unparsed: stored with id = id_base + line number, bad lines
    answered by number, the records handed back when asked (for tail followers), a retried key stored
    once, bad arguments a BadRequest; after kill -9 the WAL replays exactly the stored records."""
    lines = [json.dumps({"timestamp": "2024-01-01T10:00:0%dZ" % i, "level": "warn", "message": f"line {i}",
                         "source": "api", "tags": ["x"] * 3}).encode() for i in range(4)]
    lines[2] = b"{broken"
    args = {"lines": lines, "numbers": [5, 6, 7, 8], "id_base": 1000, "now_ns": time.time_ns(),
            "limits": {"max_tags": 8}, "idempotency_key": "lines-1", "return_records": True}
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=QUIET_ARGS) as shard:
        client = shard.client()
        answer = client.call("ingest_lines", args)
        assert (answer["accepted"], answer["duplicate"]) == (3, False)
        assert [r["line"] for r in answer["rejected"]] == [7] and "not valid JSON" in answer["rejected"][0]["reason"]
        assert [r["id"] for r in answer["records"]] == [1005, 1006, 1008]
        assert all(r["tags"] == ["x"] and r["level"] == "WARN" for r in answer["records"])
        assert client.call("ingest_lines", args)["duplicate"] is True
        # the limits travel with the request
        three_tags = json.dumps({"message": "tagged", "tags": ["a", "b", "c"]}).encode()
        strict = client.call("ingest_lines", {"lines": [three_tags], "numbers": [1], "id_base": 2000,
                                              "now_ns": time.time_ns(), "limits": {"max_tags": 2}})
        assert strict["accepted"] == 0 and "max_tags" in strict["rejected"][0]["reason"], strict
        assert client.call("ingest_lines", {"lines": [three_tags], "numbers": [1], "id_base": 2000,
                                            "now_ns": time.time_ns(), "limits": {"max_tags": 3}})["accepted"] == 1
        for bad, words in ((dict(args, numbers=[1, 2]), "4 lines but 2"), (dict(args, numbers="x"), "numbers"),
                           (dict(args, limits={"max_tagz": 1}), "max_tagz"), (dict(args, id_base="1"), "id_base")):
            with pytest.raises(BadRequest, match=words):
                client.call("ingest_lines", bad)
        stored = _all_ids(client)
        assert stored == [1005, 1006, 1008, 2001]
        shard.kill()
        shard.start()
        with shard.client() as again:
            assert _all_ids(again) == stored
            rows = again.call("query", {"filter": querywire.to_wire(querytext.parse_query(
                "source:api", now_ns=T0_NS).filter), "sort": "asc", "limit": 10})["rows"]
            assert rows == answer["records"]


def test_shutdown_right_after_a_big_ingest_exits_0() -> None:
    """Regression: Store.close() used to stop the writer before the sealer, and a sealer with a full
    block to store then waited forever for the stopped writer, so this shard never exited."""
    records = RecordGen(random.Random(22)).records(5_000)
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=QUIET_ARGS) as shard:
        assert shard.call("ingest", {"records": records}, timeout_s=60)["accepted"] == 5_000
        assert shard.call("shutdown") == {}
        assert shard.wait_exit(10) == 0


def test_packed_ingest_survives_kill_9_and_wal_replay() -> None:
    """``records_packed`` (the coordinator's form) is written to the WAL as received: after a kill -9
    before any seal, the replayed records are exactly the ones sent."""
    records = RecordGen(random.Random(25)).records(50)
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=("--block-records", "1000",
                                                                             "--seal-after-s", "3600")) as shard:
        args = {"records_packed": msgpack.packb(records, use_bin_type=True), "idempotency_key": "p"}
        assert shard.call("ingest", args) == {"accepted": 50, "duplicate": False}
        assert shard.call("stats")["unsealed_records"] == 50
        shard.kill()
        shard.start()
        with shard.client() as client:
            rows = client.call("query", {"filter": ["all"], "sort": "asc", "limit": 1000})["rows"]
            assert rows == sorted(records, key=_key)
            assert client.call("ingest", args)["duplicate"] is True
            assert client.call("flush") == {}
            assert client.call("query", {"filter": ["all"], "sort": "asc", "limit": 1000})["rows"] == rows


def test_record_with_a_nested_metadata_value_cannot_stop_sealing() -> None:
    good = RecordGen(random.Random(24)).records(40)
    poison = dict(good[0], id=10**9, metadata={"k": [1, 2]})
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=QUIET_ARGS) as shard:
        with shard.client() as client:
            try:
                client.call("ingest", {"records": [poison]})
            except BadRequest:
                pass  # refused at the door: the right answer
            assert client.call("ingest", {"records": good})["accepted"] == 40
            assert client.call("flush") == {}
            stats = client.call("stats")
            assert stats["unsealed_records"] == 0 and stats["blocks"] >= 1, stats


# --- boot failures exit 78 ---------------------------------------------------------------------------


def _boot_failure(tmp: Path, data_dir: Path) -> str:
    shard = ShardProcess(data_dir, tmp, wait_ready=False)
    try:
        shard.start()
        code = shard.wait_exit(30)
        assert code == EXIT_BOOT_FAILURE, f"exit code {code}; stderr:\n{shard.stderr_text()}"
        assert not shard.socket_path.exists(), "a shard that cannot boot must not serve"
        return shard.stderr_text()
    finally:
        shard.kill()


def test_data_dir_that_is_a_file_exits_78() -> None:
    with short_tmpdir() as tmp:
        (tmp / "data").write_text("not a directory")
        assert "cannot open store" in _boot_failure(tmp, tmp / "data")


@pytest.mark.parametrize("manifest, words", [
    ({"format": "someone-else", "format_version": 1}, "does not describe a shardlog store"),
    ({"format": layout.FORMAT_NAME, "format_version": layout.FORMAT_VERSION + 1}, "upgrade shardlog"),
])
def test_foreign_or_newer_manifest_exits_78(manifest: dict[str, Any], words: str) -> None:
    with short_tmpdir() as tmp:
        (tmp / "data").mkdir(mode=0o700)
        (tmp / "data" / layout.MANIFEST_NAME).write_text(json.dumps(manifest))
        assert words in _boot_failure(tmp, tmp / "data")
        with pytest.raises(FormatMismatch):  # the same refusal in-process, and nothing was overwritten
            Store(tmp / "data")
        assert json.loads((tmp / "data" / layout.MANIFEST_NAME).read_text()) == manifest


def test_store_locked_by_a_live_store_exits_78() -> None:
    with short_tmpdir() as tmp:
        store = Store(tmp / "data", StoreConfig(seal_after_s=3_600.0))
        try:
            assert "in use by another shardlog process" in _boot_failure(tmp, tmp / "data")
        finally:
            close_store(store)


# --- the parent -------------------------------------------------------------------------------------

_INTERMEDIATE = """
import os, subprocess, sys
cmd = sys.argv[1:] + ["--parent-pid", str(os.getpid())]
child = subprocess.Popen(cmd, stderr=open(os.environ["SHARD_STDERR"], "ab"))
print(child.pid, flush=True)
child.wait()
"""


def test_shard_exits_when_its_parent_is_killed() -> None:
    with short_tmpdir() as tmp:
        socket_path = tmp / "s.sock"
        stderr_path = tmp / "shard.stderr"
        cmd = shard_command(tmp / "data", socket_path, extra_args=QUIET_ARGS)
        env = dict(shard_env(), SHARD_STDERR=str(stderr_path))
        parent = subprocess.Popen([sys.executable, "-c", _INTERMEDIATE, *cmd], cwd=REPO_ROOT, env=env,
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        shard_pid = None
        try:
            assert parent.stdout is not None
            shard_pid = int(parent.stdout.readline())

            def answers_ping() -> bool:
                try:
                    with Client(socket_path, timeout_s=5) as client:
                        return client.call("ping")["pid"] == shard_pid
                except Exception:
                    return False

            wait_for(answers_ping, 30, "the shard to answer ping")
            parent.send_signal(signal.SIGKILL)
            parent.wait(30)
            try:
                wait_for(lambda: process_gone(shard_pid), 20, f"shard pid {shard_pid} to exit after its parent died")
            except AssertionError:
                print(stderr_path.read_text(errors="replace"), file=sys.stderr)
                raise
            assert not socket_path.exists(), "the shard shut down cleanly (it removes its socket)"
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait(30)
            if parent.stdout is not None:
                parent.stdout.close()
            if shard_pid is not None and not process_gone(shard_pid):
                os.kill(shard_pid, signal.SIGKILL)


def test_shard_whose_parent_is_already_gone_does_not_serve() -> None:
    """``--parent-pid`` naming a process that is not our parent means the parent died before we
    started: the shard exits at once (0) instead of serving nobody."""
    with short_tmpdir() as tmp:
        not_parent = subprocess.Popen([sys.executable, "-c", "pass"])
        not_parent.wait(30)
        shard = ShardProcess(tmp / "data", tmp, wait_ready=False,
                             extra_args=(*QUIET_ARGS, "--parent-pid", str(not_parent.pid)))
        try:
            shard.start()
            assert shard.wait_exit(30) == 0
            assert not shard.socket_path.exists()
        finally:
            shard.kill()


# --- hostile frames ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ShardProcess, list[dict[str, Any]]]]:
    """One shard for every hostile-frame case, holding acknowledged records that must survive all."""
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=QUIET_ARGS) as shard:
        records = RecordGen(random.Random(23)).records(40)
        assert shard.call("ingest", {"records": records, "idempotency_key": "before"})["accepted"] == 40
        yield shard, records


def _frame(body: bytes, *, magic: bytes = MAGIC, version: int = VERSION, flags: int = 0,
           length: int | None = None) -> bytes:
    return HEADER.pack(magic, version, flags, len(body) if length is None else length) + body


def _request(obj: Any) -> bytes:
    return _frame(msgpack.packb(obj, use_bin_type=True))


ARRAY_2_31 = b"\xdd" + struct.pack(">I", 2**31) + b"\xc0" * 4  # array32 claiming 2**31 items
MAP_2_31 = b"\xdf" + struct.pack(">I", 2**31) + b"\xc0" * 4
STR_4G = b"\xdb" + struct.pack(">I", 2**32 - 1) + b"abc"  # str32 claiming 4 GiB
DEEP = b"\x91" * 100_000 + b"\xc0"  # 100,000 nested one-item arrays
DEEP_FILTER: list[Any] = ["all"]
for _ in range(300):  # the wire decoder allows 100 levels (storage.query.MAX_DEPTH)
    DEEP_FILTER = ["not", DEEP_FILTER]
RECORD = {"id": 1, "ts_ns": 1, "level": "INFO", "message": "m", "source": "s", "tags": [], "metadata": {},
          "thread_id": None, "request_id": None, "user_id": None}

# (name, bytes to send, half-close after sending?, id the answer must carry or None for "id 0 or closed")
HOSTILE: list[tuple[str, bytes, bool, int | None]] = [
    ("truncated header", b"SL\x01", True, None),
    ("truncated body", _frame(b"\x83\xa2id\x01", length=50), True, None),
    ("oversized length", _frame(b"", length=2**32 - 1), False, None),
    ("length over the frame limit", _frame(b"", length=64 * 1024 * 1024 + 1), False, None),
    ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, None),
    ("random bytes", bytes(random.Random(1).randrange(256) for _ in range(300)), False, None),
    ("wrong version", _frame(msgpack.packb({"id": 1, "op": "ping", "args": {}}), version=9), False, None),
    ("flags set", _frame(msgpack.packb({"id": 1, "op": "ping", "args": {}}), flags=1), False, None),
    ("empty body", _frame(b""), False, None),
    ("body not a map", _request([1, 2, 3]), False, None),
    ("invalid msgpack", _frame(b"\xc1\xc1\xc1"), False, None),
    ("array claiming 2**31 items", _frame(ARRAY_2_31), False, None),
    ("map claiming 2**31 pairs", _frame(MAP_2_31), False, None),
    ("str claiming 4 GiB", _frame(STR_4G), False, None),
    ("deep nesting", _frame(DEEP), False, None),
    ("int map keys", _frame(msgpack.packb({1: 2})), False, None),
    ("op not a string", _request({"id": 5, "op": 7, "args": {}}), False, 5),
    ("args not a map", _request({"id": 6, "op": "ping", "args": [1]}), False, 6),
    ("id not an int", _request({"id": "x", "op": "ping", "args": {}}), False, None),
    ("ext type", _frame(msgpack.packb({"id": 7, "op": "ping", "args": msgpack.ExtType(5, b"x")})), False, 7),
    ("unknown op", _request({"id": 8, "op": "drop_everything", "args": {}}), False, 8),
    ("op too long", _request({"id": 9, "op": "x" * 10_000, "args": {}}), False, 9),
    ("ingest records not a list", _request({"id": 10, "op": "ingest", "args": {"records": {"a": 1}}}), False, 10),
    ("ingest malformed record", _request({"id": 11, "op": "ingest", "args": {
        "records": [RECORD, dict(RECORD, id=2, ts_ns="soon")]}}), False, 11),
    ("ingest key not a string", _request({"id": 12, "op": "ingest", "args": {"records": [RECORD],
                                                                              "idempotency_key": 5}}), False, 12),
    ("query filter malformed", _request({"id": 13, "op": "query", "args": {"filter": ["bogus", 1]}}), False, 13),
    ("query negative limit", _request({"id": 14, "op": "query", "args": {"limit": -1}}), False, 14),
    ("query bad cursor", _request({"id": 15, "op": "query", "args": {"after": "x"}}), False, 15),
    ("query bad sort", _request({"id": 16, "op": "query", "args": {"sort": "sideways"}}), False, 16),
    ("deep filter", _request({"id": 17, "op": "count", "args": {"filter": DEEP_FILTER}}), False, 17),
    ("aggregate spec not a map", _request({"id": 18, "op": "aggregate", "args": {"spec": "x"}}), False, 18),
    ("aggregate top N huge", _request({"id": 19, "op": "aggregate", "args": {"spec": {"top": [["tags", 10**9]]}}}),
     False, 19),
    ("records_packed not bytes", _request({"id": 21, "op": "ingest", "args": {"records_packed": "x"}}), False, 21),
    ("records_packed garbage", _request({"id": 22, "op": "ingest", "args": {"records_packed": b"\xc1\x00"}}),
     False, 22),
    ("records_packed claiming 2**31 items", _request({"id": 23, "op": "ingest", "args": {
        "records_packed": ARRAY_2_31}}), False, 23),
    ("records_packed not a list", _request({"id": 24, "op": "ingest", "args": {
        "records_packed": msgpack.packb({"id": 1})}}), False, 24),
    ("records_packed malformed record", _request({"id": 25, "op": "ingest", "args": {
        "records_packed": msgpack.packb([RECORD, dict(RECORD, id=2, tags="x")])}}), False, 25),
    ("retention cutoff a string", _request({"id": 20, "op": "retention", "args": {"cutoff_ns": "x"}}), False, 20),
]


def _exchange(path: Path, data: bytes, half_close: bool) -> tuple[list[dict[str, Any]], bool, socket.socket]:
    """Send ``data`` on a raw connection; collect answers until EOF or a 5 s quiet period.
    Returns (answers, closed by the server?, the socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server may close before taking all of it: that is an allowed answer
    if half_close:
        sock.shutdown(socket.SHUT_WR)
    answers: list[dict[str, Any]] = []
    closed = False
    try:
        while True:
            sock.settimeout(5 if answers else 10)
            frame = read_frame(sock)
            if frame is None:
                closed = True
                break
            answers.append(frame)
            if frame.get("id") != 0:
                break  # an answer for our request id: the connection stays usable
    except TimeoutError:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    return answers, closed, sock


def _assert_still_serving(shard: ShardProcess, records: list[dict[str, Any]]) -> None:
    with Client(shard.socket_path, timeout_s=30) as client:
        assert client.call("ping")["pid"] == shard.pid
        assert _all_ids(client) == sorted(r["id"] for r in records), "acknowledged data changed"
        assert client.call("count", {"filter": ["all"]}) == {"count": len(records)}


@pytest.mark.parametrize("name, data, half_close, answer_id", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_frame_gets_an_error_or_a_close(served: tuple[ShardProcess, list[dict[str, Any]]], name: str,
                                                data: bytes, half_close: bool, answer_id: int | None) -> None:
    shard, records = served
    answers, closed, sock = _exchange(shard.socket_path, data, half_close)
    try:
        for answer in answers:
            assert set(answer) == {"id", "error"}, f"{name}: a hostile frame got {answer!r:.300}"
            assert answer["error"]["code"] in ("bad_request", "bad_query"), f"{name}: {answer!r:.300}"
            assert isinstance(answer["error"]["message"], str) and answer["error"]["message"], name
        if answer_id is None:
            # unreadable: answered under id 0 (best effort), and the connection is closed
            assert all(a["id"] == 0 for a in answers), f"{name}: {answers!r:.300}"
            assert closed, f"{name}: the server kept a desynchronized connection open"
        else:
            # readable with an id: answered under that id, and the same connection keeps working
            assert [a["id"] for a in answers] == [answer_id], f"{name}: {answers!r:.300} closed={closed}"
            sock.settimeout(30)
            sock.sendall(encode_frame({"id": 1000, "op": "ping", "args": {}}))
            pong = read_frame(sock)
            assert pong is not None and pong["id"] == 1000 and pong["ok"]["pid"] == shard.pid, f"{name}: {pong!r}"
    finally:
        sock.close()
    assert shard.proc is not None and shard.proc.poll() is None, f"{name}: the shard died"
    _assert_still_serving(shard, records)


def test_client_sees_hostile_answers_as_errors(served: tuple[ShardProcess, list[dict[str, Any]]]) -> None:
    """Through the real Client: a bad request is a BadRequest naming the record and field."""
    shard, records = served
    with Client(shard.socket_path, timeout_s=30) as client:
        with pytest.raises(BadRequest, match=r"record 1 field 'ts_ns'"):
            client.call("ingest", {"records": [RECORD, dict(RECORD, id=2, ts_ns="soon")]})
        with pytest.raises(BadRequest, match="unknown operation"):
            client.call("drop_everything")
        assert client.call("ping")["pid"] == shard.pid  # same client, same connection
    _assert_still_serving(shard, records)


def test_many_hostile_connections_at_once(served: tuple[ShardProcess, list[dict[str, Any]]]) -> None:
    shard, records = served
    socks = []
    try:
        for i in range(30):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(shard.socket_path))
            sock.sendall(_frame(b"", length=2**31) if i % 2 else b"SL")  # rejected / left hanging mid-header
            socks.append(sock)
        _assert_still_serving(shard, records)
    finally:
        for sock in socks:
            sock.close()
    _assert_still_serving(shard, records)
