"""Crash tests: ``kill -9`` a real shard process during ingest, restart it, and check the history
Jepsen-style (DESIGN §3 "ingest ack = durable", §10).

Two writer threads send batches of random sizes with unique record ids (half of the batches carry
an idempotency key; half are sent as one packed msgpack blob, as the coordinator does) and log every batch as sent before the call and as acknowledged after it.
After a random number of acknowledgements the shard is SIGKILLed mid-stream (while other batches
are in flight, blocks are being sealed and aged tails flushed), restarted on the same data dir, and:

* every acknowledged batch is present, each record exactly once, with the content that was sent;
* no record id is present twice, and nothing is present that was never sent;
* a batch is all or nothing (one write transaction per request);
* every unacknowledged keyed batch is retried with its key: the answer says ``duplicate`` exactly
  when the batch had survived the crash, and afterwards each keyed batch is present exactly once;
  an acknowledged keyed batch retried is a duplicate and changes nothing.

The history accumulates over several kill rounds on one data dir.  The seed is printed and is in
every assertion message; ``SHARDLOG_TEST_SEED=N`` replays one.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from shardd.client import Client
from storage.errors import ShardlogError
from tests.helpers import RecordGen, ShardProcess, seeds_to_run, short_tmpdir, wait_for

SEEDS = seeds_to_run([101, 202, 303])
ROUNDS = 4
WRITERS = 2
#: small blocks and a short seal age: kills land during sealing as well as during ingest commits
SHARD_ARGS = ("--block-records", "64", "--seal-after-s", "0.2")


@dataclass
class Batch:
    number: int
    records: list[dict[str, Any]]
    key: str | None
    acked: bool = False

    @property
    def ids(self) -> set[int]:
        return {r["id"] for r in self.records}


@dataclass
class History:
    """Every batch ever sent, across rounds.  ``lock`` guards ``batches`` (two writer threads)."""

    batches: list[Batch] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_count(self) -> int:
        with self.lock:
            return sum(b.acked for b in self.batches)


def _writer(shard: ShardProcess, history: History, rng: random.Random, gen: RecordGen, stop: threading.Event,
            errors: list[BaseException]) -> None:
    """Send batches until the connection fails (the kill) or ``stop`` is set."""
    client = Client(shard.socket_path, timeout_s=30)
    try:
        while not stop.is_set():
            size = rng.choice((1, 5, 20, 63, 64, 65, 150))
            with history.lock:
                batch = Batch(len(history.batches), gen.records(size), None)
                if rng.random() < 0.5:
                    batch.key = f"batch-{batch.number}"
                history.batches.append(batch)  # logged as sent before the call
            # half the batches arrive as the coordinator sends them: one msgpack blob the WAL keeps as is
            args = _ingest_args(batch, packed=rng.random() < 0.5)
            try:
                answer = client.call("ingest", args)
            except ShardlogError:
                return  # the shard is gone: this batch is unacknowledged
            if answer != {"accepted": size, "duplicate": False}:
                raise AssertionError(f"batch {batch.number}: unexpected answer {answer!r}")
            with history.lock:
                batch.acked = True
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)
    finally:
        client.close()


def _ingest_args(batch: Batch, *, packed: bool) -> dict[str, Any]:
    args: dict[str, Any] = (
        {"records_packed": msgpack.packb(batch.records, use_bin_type=True)} if packed else {"records": batch.records})
    if batch.key is not None:
        args["idempotency_key"] = batch.key
    return args


def _read_all(client: Client) -> dict[int, dict[str, Any]]:
    """Every stored record by id, read with cursor pages; fails on an id seen twice."""
    out: dict[int, dict[str, Any]] = {}
    after = None
    while True:
        args: dict[str, Any] = {"filter": ["all"], "sort": "asc", "limit": 2_000, "want_total": False}
        if after is not None:
            args["after"] = after
        rows = client.call("query", args)["rows"]
        for row in rows:
            if row["id"] in out:
                raise AssertionError(f"record id {row['id']} is stored twice")
            out[row["id"]] = row
        if len(rows) < 2_000:
            return out
        after = [rows[-1]["ts_ns"], rows[-1]["id"]]


def _check(history: History, stored: dict[int, dict[str, Any]], where: str) -> dict[int, bool]:
    """Jepsen-style checks of the stored records against the history; returns batch -> present."""
    sent = {r["id"]: r for b in history.batches for r in b.records}
    unexpected = set(stored) - set(sent)
    assert not unexpected, f"{where}: {len(unexpected)} ids never sent are stored, e.g. {sorted(unexpected)[:5]}"
    present: dict[int, bool] = {}
    for batch in history.batches:
        found = batch.ids & set(stored)
        assert found in (set(), batch.ids), (
            f"{where}: batch {batch.number} is partly stored ({len(found)} of {len(batch.ids)} records)")
        present[batch.number] = bool(found)
        if batch.acked:
            assert found, f"{where}: acknowledged batch {batch.number} (key {batch.key}) is missing"
    for rid, row in stored.items():
        assert row == sent[rid], f"{where}: record {rid} differs from what was sent"
    return present


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_during_ingest_keeps_every_acknowledged_batch_once(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    history = History()
    with short_tmpdir() as tmp, ShardProcess(tmp / "data", tmp, extra_args=SHARD_ARGS) as shard:
        for round_no in range(ROUNDS):
            where = f"seed={seed} round={round_no}"
            stop = threading.Event()
            errors: list[BaseException] = []
            writers = [threading.Thread(target=_writer, name=f"writer-{w}",
                                        args=(shard, history, random.Random(rng.random()),
                                              RecordGen(random.Random(rng.random()),
                                                        first_id=(round_no * WRITERS + w + 1) * 10**7),
                                              stop, errors))
                       for w in range(WRITERS)]
            already = history.acked_count()
            first_of_round = len(history.batches)
            kill_after = already + rng.randint(3, 40)
            for thread in writers:
                thread.start()
            try:
                wait_for(lambda: history.acked_count() >= kill_after or errors or
                         not any(t.is_alive() for t in writers), 60, f"{kill_after} acknowledged batches ({where})")
                shard.kill()  # SIGKILL while the writers keep sending
            finally:
                stop.set()
                for thread in writers:
                    thread.join(60)
            assert not errors, f"{where}: {errors!r}"
            assert not any(t.is_alive() for t in writers), f"{where}: a writer hung"

            shard.start()  # same data dir: WAL replay
            with shard.client() as client:
                stored = _read_all(client)
                present = _check(history, stored, f"{where} after restart")
                assert client.call("count", {"filter": ["all"]}) == {"count": len(stored)}, where

                unacked = [b for b in history.batches[first_of_round:] if not b.acked]
                survived = sum(present[b.number] for b in unacked)
                # retry every unacknowledged keyed batch; the answer tells whether it had survived
                for batch in history.batches:
                    if batch.key is not None and not batch.acked:
                        answer = client.call("ingest", _ingest_args(batch, packed=rng.random() < 0.5))
                        assert answer == {"accepted": len(batch.records), "duplicate": present[batch.number]}, (
                            f"{where}: retry of batch {batch.number} answered {answer!r}")
                        batch.acked = True  # acknowledged now
                acked_keyed = [b for b in history.batches if b.key is not None]
                if acked_keyed:
                    again = rng.choice(acked_keyed)
                    assert client.call("ingest", _ingest_args(again, packed=False))["duplicate"] is True, (
                        f"{where}: retried acknowledged batch {again.number}")

                stored = _read_all(client)
                present = _check(history, stored, f"{where} after retries")
                assert all(present[b.number] for b in history.batches if b.key is not None), where
                print(f"{where}: {len(history.batches)} batches sent, {len(unacked)} unacknowledged at the kill "
                      f"({survived} of them stored anyway), {len(stored)} records stored")

        # a graceful stop keeps everything too
        with shard.client() as client:
            before = _read_all(client)
            assert client.call("shutdown") == {}
        assert shard.wait_exit(30) == 0
        shard.start()
        with shard.client() as client:
            assert _read_all(client) == before, f"seed={seed}: records changed across a clean restart"
