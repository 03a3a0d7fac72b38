"""``shardlog serve``: the daemon's lifecycle.

Start: build the config (flags > env > file), open the data dir (manifest, single-instance lock),
start and ping every shard, then open the listeners: the unix socket (RPC for the CLI and the Python
API, 0600 in a 0700 dir), HTTP (127.0.0.1 by default), and optionally TCP JSON lines and syslog (TCP+UDP).

Stop (SIGTERM / SIGINT; a second one forces exit): the signal handler only sets a flag.  Then, in
order: close the listeners so nothing new arrives; wait for in-flight ingests to be acknowledged
(bounded); ask each shard to shut down (they finish queued commits); remove the socket; release the
lock; exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from coordinator.config import Config, ConfigError, load_config
from coordinator.datadir import DataDir, open_datadir
from coordinator.http import HttpApi
from coordinator.alert_service import AlertService
from coordinator.metrics import Metrics
from coordinator.service import Service
from coordinator.supervisor import Supervisor
from coordinator.textlog import TextParser
from shardd import protocol
from storage.errors import ShardlogError
from storage.gctune import tune_gc

log = logging.getLogger("shardlog.daemon")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 3
RETENTION_EVERY_S = 60.0
DRAIN_TIMEOUT_S = 30.0
#: lines longer than this on the TCP JSON-lines listener close the connection
MAX_TCP_LINE_BYTES = 1024 * 1024
#: a text record's continuation lines (a stack trace) arrive together; after this long without data the
#: connection's open text record is stored
TCP_TEXT_IDLE_FLUSH_S = 1.0


class Daemon:
    def __init__(self, config: Config, datadir: DataDir) -> None:
        self.config = config
        self.datadir = datadir
        self.metrics = Metrics()
        self.supervisor = Supervisor(datadir, block_records=config.block_records, seal_after_s=config.seal_after_s,
                                     max_store_bytes=config.max_store_bytes, log_level=config.log_level)
        http_address = f"{config.http[0]}:{config.http[1]}" if config.http else None
        self.service = Service(config, self.supervisor, self.metrics, data_dir=str(datadir.path),
                               http_address=http_address)
        self.alerts: AlertService | None = None
        self._state: Any = None
        self.stop_requested = asyncio.Event()
        self._servers: list[asyncio.base_events.Server] = []
        self._rpc_connections = protocol.ConnectionSet(self.service.handle_rpc)
        self._http_runner: Any = None
        self._syslog: Any = None  # coordinator.syslog_listener.SyslogListener when --syslog is set
        self._background: list[asyncio.Task] = []
        self._signals = 0

    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: exiting now", signame)
            os._exit(1)
        log.info("%s received: shutting down (send it again to force)", signame)
        self.stop_requested.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        try:
            self._start_alerting()  # before the shards start: each gets the rules before any record
            await self.supervisor.start()
            if self.alerts is not None:
                await self.alerts.rebuild()
                self.alerts.start()
            await self._start_listeners()
        except (ShardlogError, OSError) as exc:
            log.error("cannot start: %s", getattr(exc, "message", exc))
            print(f"shardlog: cannot start: {getattr(exc, 'message', exc)}", file=sys.stderr)
            await self._shutdown()
            return EXIT_START_FAILED
        if self.config.retention_ns:
            self._background.append(asyncio.create_task(self._retention_loop()))
        log.info("shardlog serving %s with %d shards; socket %s%s", self.datadir.path, self.datadir.shards,
                 self.datadir.socket_path, f"; http://{self.config.http[0]}:{self.config.http[1]}"
                 if self.config.http else "")
        print(f"shardlog ready: socket {self.datadir.socket_path}"
              + (f", http://{self.config.http[0]}:{self.config.http[1]}" if self.config.http else ""),
              file=sys.stderr, flush=True)
        await self.stop_requested.wait()
        await self._shutdown()
        return EXIT_OK

    def _start_alerting(self) -> None:
        """Open the state store (rules, their state, alert history), load the config file's rules,
        and hook alerting into ingest and the RPC ops."""
        from coordinator.alerts import AlertEngine, Rule
        from coordinator.notify import build_notifiers
        from storage.state import StateStore

        self._state = StateStore(self.datadir.path / "state")
        engine = AlertEngine(self._state)
        for rule in self.config.alert_rules:
            engine.add_rule(Rule.from_dict(rule), replace=True)
        notifiers = build_notifiers(self.config.notify, self.metrics, http=self.config.http,
                                    data_dir=str(self.datadir.path))
        self.alerts = AlertService(engine, self.supervisor, self.metrics, notifiers)
        self.service.attach_alerts(self.alerts)

    async def _start_listeners(self) -> None:
        # HTTP and TCP first, the unix socket last: once `ping` answers, every listener is up
        if self.config.http:
            from aiohttp import web

            api = HttpApi(self.service, token=self.config.token, max_body_bytes=self.config.max_body_bytes)
            self._http_runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
            await self._http_runner.setup()
            host, port = self.config.http
            await web.TCPSite(self._http_runner, host, port).start()
        if self.config.tcp:
            host, port = self.config.tcp
            self._servers.append(await asyncio.start_server(self._on_tcp, host, port, limit=MAX_TCP_LINE_BYTES))
        if self.config.syslog:
            from coordinator.syslog_listener import SyslogListener

            self._syslog = SyslogListener(self.service, *self.config.syslog)
            await self._syslog.start()
        socket_path = str(self.datadir.socket_path)
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            self._servers.append(await asyncio.start_unix_server(self._rpc_connections, path=socket_path,
                                                                 limit=protocol.MAX_FRAME_BYTES))
        finally:
            os.umask(old_umask)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """JSON lines (or plain text lines) over TCP: whatever has arrived is ingested as one batch.
        Nothing is acknowledged on the wire (as with syslog); bad lines are counted and logged and the
        connection stays open; a line over MAX_TCP_LINE_BYTES closes it.  Text lines go through one
        coordinator.textlog parser per connection: a multi-line record is stored when its next record
        starts, at EOF, or after TCP_TEXT_IDLE_FLUSH_S without data."""
        peer = writer.get_extra_info("peername")
        line_no = 0
        pending = b""
        # one text parser per connection, so a stack trace split across reads stays one record
        parser = TextParser(max_message_bytes=self.config.limits.max_message_bytes)
        try:
            while not self.stop_requested.is_set():
                chunk: bytes | None
                if parser.pending:
                    try:
                        chunk = await asyncio.wait_for(reader.read(1 << 16), TCP_TEXT_IDLE_FLUSH_S)
                    except asyncio.TimeoutError:
                        chunk = None  # the sender went quiet: its open text record is complete
                else:
                    chunk = await reader.read(1 << 16)
                if not chunk:
                    lines = [pending] if chunk == b"" and pending.strip() else []
                    pending = b"" if chunk == b"" else pending
                else:
                    *lines, pending = (pending + chunk).split(b"\n")
                    if len(pending) > MAX_TCP_LINE_BYTES:
                        log.warning("tcp %s: line longer than %d bytes; closing the connection", peer,
                                    MAX_TCP_LINE_BYTES)
                        return
                if lines or (not chunk and parser.pending):
                    result = await self.service.ingest_lines(lines, "auto", first_line=line_no + 1, text_parser=parser,
                                                             flush_text=not chunk)
                    line_no += len(lines)
                    for rejection in result["rejected"][:5]:
                        log.warning("tcp %s: line %d rejected: %s", peer, rejection["line"], rejection["reason"])
                if chunk == b"":
                    return
        except ShardlogError as exc:
            log.warning("tcp %s: %s; closing the connection", peer, exc.message)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _retention_loop(self) -> None:
        # every minute, or more often for short retention periods (a tenth of the period, >= 0.5 s)
        every_s = min(RETENTION_EVERY_S, max(0.5, (self.config.retention_ns or 0) / 1e9 / 10))
        while True:
            cutoff = time.time_ns() - (self.config.retention_ns or 0)
            try:
                dropped = await self.service.retention(cutoff)
                if dropped["dropped_blocks"]:
                    log.info("retention dropped %d blocks (%d logs) older than %s", dropped["dropped_blocks"],
                             dropped["dropped_records"], cutoff)
            except ShardlogError as exc:
                log.warning("retention failed: %s", exc.message)
            await asyncio.sleep(every_s)

    async def _shutdown(self) -> None:
        # 1. stop accepting: close listeners (established connections finish their current request)
        for server in self._servers:
            server.close()
        if self._syslog is not None:
            await self._syslog.close()  # batches being stored finish first (bounded)
        await self._rpc_connections.close()  # running requests are answered first
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        for task in self._background:
            task.cancel()
        # 2. drain: wait for in-flight ingests to be acknowledged by the shards
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.service.intake.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # 3. stop the shards (each finishes its queued commits first), then alerting and its store
        await self.supervisor.stop()
        if self.alerts is not None:
            await self.alerts.stop()
            for notifier in self.alerts.notifiers:
                await notifier.close()
        if self._state is not None:
            self._state.close()
        try:
            os.unlink(self.datadir.socket_path)
        except FileNotFoundError:
            pass
        log.info("shardlog stopped")


def serve_main(flags: dict[str, Any]) -> int:
    """Entry point of ``shardlog serve``; flags with None values were not given."""
    config_file = flags.pop("config", None)
    try:
        config = load_config(config_file=config_file, flags=flags)
    except ConfigError as exc:
        print(f"shardlog: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s coordinator %(levelname)s %(name)s: %(message)s")
    try:
        datadir = open_datadir(config.data_dir, config.shards, config.socket_path)
    except ShardlogError as exc:
        print(f"shardlog: {exc.message}", file=sys.stderr)
        return EXIT_START_FAILED
    except OSError as exc:
        print(f"shardlog: cannot use data dir {config.data_dir}: {exc.strerror}; check the path and permissions",
              file=sys.stderr)
        return EXIT_START_FAILED
    tune_gc()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(Daemon(config, datadir).run())
    finally:
        datadir.release()

