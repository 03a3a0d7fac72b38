"""Supervising the shard processes: start, watch, restart, stop.

Each shard is a fresh interpreter (``python -m shardd``), never a fork of this process (which has an
event loop and sockets).  A shard is routed to only after it answers ``ping``.  When one exits it is
restarted with capped exponential backoff (reset after it stayed up a while); when it exits with
``EXIT_BOOT_FAILURE`` its store cannot be opened and restarting will not help, so the supervisor stops
trying and reports it.  Stop order: ask each shard to shut down (it finishes queued commits), wait
up to the grace period, SIGTERM, wait, SIGKILL, reap.

Locking rule: every field of ``ShardSlot`` is touched only from the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from coordinator.datadir import DataDir
from shardd.client import AsyncClient
from storage.errors import ShardlogError, ShardUnavailable

log = logging.getLogger("shardlog.supervisor")

#: shardd.server.EXIT_BOOT_FAILURE (not imported: that module loads the storage engine)
EXIT_BOOT_FAILURE = 78
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
#: a shard that stayed up this long is healthy again: its next crash restarts quickly
HEALTHY_AFTER_S = 30.0
PING_TIMEOUT_S = 5.0


@dataclass
class ShardSlot:
    shard_id: int
    store_dir: Path
    socket_path: Path
    process: asyncio.subprocess.Process | None = None
    client: AsyncClient | None = None
    up: bool = False
    restarts: int = 0
    boot_failed: bool = False
    last_exit: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, datadir: DataDir, *, block_records: int, seal_after_s: float, max_store_bytes: int,
                 log_level: str = "INFO", on_change: Callable[[ShardSlot], None] | None = None) -> None:
        self.datadir = datadir
        self.slots = [ShardSlot(i, datadir.shard_dir(i), datadir.shard_socket(i)) for i in range(datadir.shards)]
        self._args = ["--block-records", str(block_records), "--seal-after-s", str(seal_after_s),
                      "--max-store-bytes", str(max_store_bytes), "--log-level", log_level]
        self._on_change = on_change
        #: awaited with a new shard connection after ping and before the shard is routed to
        self.prepare: Callable[[AsyncClient], Awaitable[None]] | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    # --- start -----------------------------------------------------------------------------------

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start every shard and wait until all answer ping; raise if one cannot boot."""
        self._tasks = [asyncio.create_task(self._run_slot(slot), name=f"shard-{slot.shard_id}")
                       for slot in self.slots]
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            while not slot.ready.is_set():
                if slot.boot_failed:
                    raise ShardlogError(f"shard {slot.shard_id} cannot open its store {slot.store_dir} (exit code "
                                        f"{slot.last_exit}); see the shard's error above")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ShardUnavailable(f"shard {slot.shard_id} did not answer ping within {timeout_s:.0f} s")
                try:
                    await asyncio.wait_for(slot.ready.wait(), min(remaining, 0.2))
                except asyncio.TimeoutError:
                    pass

    def _command(self, slot: ShardSlot) -> list[str]:
        return [sys.executable, "-m", "shardd", "--shard-id", str(slot.shard_id), "--data-dir", str(slot.store_dir),
                "--socket", str(slot.socket_path), "--parent-pid", str(os.getpid()), *self._args]

    def _env(self) -> dict[str, str]:
        # the shards import our packages the way this process did, installed or from a checkout
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    async def _run_slot(self, slot: ShardSlot) -> None:
        backoff = BACKOFF_START_S
        while not self._stopping:
            started = time.monotonic()
            try:
                slot.process = await asyncio.create_subprocess_exec(
                    *self._command(slot), stdin=asyncio.subprocess.DEVNULL, env=self._env())
            except OSError as exc:
                log.error("shard %d: cannot start: %s", slot.shard_id, exc)
                slot.boot_failed = True
                return
            connect = asyncio.create_task(self._connect(slot))
            code = await slot.process.wait()
            connect.cancel()
            await asyncio.gather(connect, return_exceptions=True)
            self._mark_down(slot)
            slot.last_exit = code
            if self._stopping:
                return
            if code == EXIT_BOOT_FAILURE:
                slot.boot_failed = True
                log.error("shard %d exited with the boot-failure code %d; not restarting it (fix the store at %s "
                          "and restart shardlog)", slot.shard_id, code, slot.store_dir)
                return
            if time.monotonic() - started > HEALTHY_AFTER_S:
                backoff = BACKOFF_START_S
            slot.restarts += 1
            log.warning("shard %d exited with code %s; restarting in %.1f s (restart #%d)", slot.shard_id, code,
                        backoff, slot.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _connect(self, slot: ShardSlot) -> None:
        """Wait for the shard's socket, ping it, then mark it up."""
        delay = 0.01
        while True:
            try:
                client = await AsyncClient.connect(str(slot.socket_path))
                await client.call("ping", {}, timeout_s=PING_TIMEOUT_S)
                if self.prepare is not None:
                    # e.g. the alert rules: a shard counts them before it gets any record
                    await self.prepare(client)
            except (ShardlogError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            slot.client = client
            slot.up = True
            slot.ready.set()
            log.info("shard %d up (pid %s)", slot.shard_id, slot.process.pid if slot.process else "?")
            if self._on_change:
                self._on_change(slot)
            return

    def _mark_down(self, slot: ShardSlot) -> None:
        slot.up = False
        slot.ready.clear()
        if slot.client is not None:
            client, slot.client = slot.client, None
            asyncio.ensure_future(client.close())
        if self._on_change:
            self._on_change(slot)

    # --- use ------------------------------------------------------------------------------------

    async def client(self, shard_id: int, wait_s: float = 5.0) -> AsyncClient:
        """The shard's client; waits up to ``wait_s`` for a restarting shard."""
        slot = self.slots[shard_id]
        if not slot.up or slot.client is None or slot.client.closed:
            if slot.boot_failed:
                raise ShardUnavailable(f"shard {shard_id} cannot open its store {slot.store_dir}; fix it and restart "
                                       "shardlog")
            try:
                await asyncio.wait_for(slot.ready.wait(), wait_s)
            except asyncio.TimeoutError:
                raise ShardUnavailable(f"shard {shard_id} is restarting and did not come back within {wait_s:.0f} s; "
                                       "retry shortly", retry_after_s=1) from None
            if slot.client is None:
                raise ShardUnavailable(f"shard {shard_id} is not connected; retry shortly", retry_after_s=1)
        return slot.client

    def all_up(self) -> bool:
        return all(slot.up for slot in self.slots)

    # --- stop -----------------------------------------------------------------------------------

    async def stop(self, graceful_s: float = 15.0) -> None:
        self._stopping = True
        for slot in self.slots:
            if slot.client is not None and not slot.client.closed:
                try:
                    await slot.client.call("shutdown", {}, timeout_s=2.0)
                except ShardlogError:
                    pass
        procs = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=graceful_s)
            for proc in procs:
                if proc.returncode is None:
                    log.warning("shard pid %d did not stop in %.0f s; sending SIGTERM", proc.pid, graceful_s)
                    proc.send_signal(signal.SIGTERM)
            if pending:
                done, pending = await asyncio.wait(pending, timeout=5.0)
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                if pending:
                    await asyncio.wait(pending, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self.slots:
            if slot.client is not None:
                await slot.client.close()
                slot.client = None
