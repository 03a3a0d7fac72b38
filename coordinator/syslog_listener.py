"""The syslog listener: TCP and UDP on the same HOST:PORT (``serve --syslog``), feeding
``Service.ingest`` with what ``coordinator.syslog`` parses.

TCP framing (RFC 6587) is detected per frame, the way rsyslog does it: a frame that starts with a
digit is octet-counted (``<MSG-LEN> SP <MSG>``); anything else runs to the next LF, CRLF or NUL
(non-transparent framing; NUL because Python's ``SysLogHandler`` ends its TCP messages with one and no
newline).  CR, LF and NUL between frames are skipped.  A frame that cannot be delimited — an
octet count that is not digits followed by a space, a count over ``MAX_FRAME_BYTES``, a
newline-framed message longer than that — is a framing error: the frames before it are ingested,
then that connection (only) is closed, since nothing after it can be trusted to start at a frame
boundary.  A connection closed mid-way through an octet-counted frame loses that partial frame
(counted); a last newline-framed message without its newline is kept.

UDP: one datagram is one message, no trailing newline needed.

Batching: every frame already received when the connection (or the UDP socket) is read is parsed and
ingested in one ``Service.ingest`` call; while that call waits for the durable commit, more data
queues, so batches grow with the load.  Nothing is acknowledged on the wire (syslog has no acks);
over TCP the sender is slowed by not reading while a batch is stored (TCP flow control), and a
retryable ``Overloaded`` / ``ShardUnavailable`` is retried with the same idempotency key, so a batch
is neither lost nor stored twice while the daemon runs; on a graceful stop, what had been received is
stored before the connections close.  UDP senders cannot be slowed: datagrams beyond
``MAX_UDP_PENDING`` waiting records are dropped and counted.

Every frame or record not stored is counted in ``shardlog_syslog_frames_rejected_total{transport,
reason}`` (reasons: ``framing``, ``truncated``, ``record``, ``overflow``, ``unavailable``) and logged
through a throttled logger.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import uuid
from typing import Any

from coordinator.service import Service
from coordinator.syslog import parse_syslog
from storage.errors import BadRequest, ShardlogError

log = logging.getLogger("shardlog.syslog")

#: Largest frame accepted (the octet count, or a newline-framed message).  A count above this is
#: taken as garbage rather than a message: the record limit (limits.max_message_bytes, 256 KiB by
#: default) is far below it, so a real message this large would be rejected anyway.
MAX_FRAME_BYTES = 1024 * 1024
#: Bytes read from a TCP connection at once: everything buffered, up to a frame's worth.
READ_BYTES = MAX_FRAME_BYTES
#: Records received over UDP and waiting to be stored; beyond it datagrams are dropped (counted).
MAX_UDP_PENDING = 50_000
#: Kernel receive buffer asked for the UDP socket, so a burst survives while a batch is committed
#: (the kernel caps it at net.core.rmem_max).
UDP_RCVBUF_BYTES = 4 * 1024 * 1024
#: How long ``close()`` lets connections finish the batch they are storing.
CLOSE_TIMEOUT_S = 10.0
#: At most one warning per reason in this interval; the rest are counted in the next one.
LOG_EVERY_S = 10.0
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0

_DELIMITER_RE = re.compile(rb"[\n\x00]")
#: an octet count of up to 7 digits can be at most 9,999,999 bytes; more digits are garbage at once
_MAX_COUNT_DIGITS = len(str(MAX_FRAME_BYTES))
_BETWEEN_FRAMES = frozenset(b"\r\n\x00")


class FramingError(ShardlogError):
    code = "bad_frame"


class TcpFramer:
    """Splits one TCP byte stream into syslog frames (pure: bytes in, frames out).

    ``feed`` returns the complete frames so far; when the stream turns out malformed it returns the
    frames before the bad one and sets ``error`` (later feeds return nothing).  ``finish`` is called
    at end of stream and returns a last unterminated newline-framed message.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.error: FramingError | None = None
        #: why ``error`` happened, as a bounded metric label
        self.error_reason = ""
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos, size = 0, len(buffer)
        while pos < size:
            first = buffer[pos]
            if first in _BETWEEN_FRAMES:
                pos += 1
                continue
            if 48 <= first <= 57:  # a digit: octet counting
                end, digits_end = pos + 1, min(size, pos + _MAX_COUNT_DIGITS + 1)
                while end < digits_end and 48 <= buffer[end] <= 57:
                    end += 1
                if end - pos > _MAX_COUNT_DIGITS:
                    self._fail("framing", f"octet count {bytes(buffer[pos:end])!r}... has more than "
                               f"{_MAX_COUNT_DIGITS} digits; the largest frame is {self.max_frame_bytes} bytes")
                    break
                if end == size:
                    break  # the count continues in the next read
                if buffer[end] != 0x20:
                    self._fail("framing", f"frame starts with {bytes(buffer[pos:end + 1])!r}: a frame that starts with "
                               "a digit must be an octet count and a space (RFC 6587 octet counting); send "
                               "'<LEN> <PRI>...' or start the message with '<PRI>'")
                    break
                count = int(buffer[pos:end])
                if count > self.max_frame_bytes:
                    self._fail("framing", f"octet count {count} is over the frame limit of {self.max_frame_bytes} "
                               "bytes (syslog_listener.MAX_FRAME_BYTES)")
                    break
                stop = end + 1 + count
                if stop > size:
                    break  # the frame is not complete yet
                if count:
                    frames.append(bytes(buffer[end + 1:stop]))
                pos = stop
            else:  # non-transparent framing: up to the next LF or NUL
                delimiter = _DELIMITER_RE.search(buffer, pos)
                if delimiter is None:
                    if size - pos > self.max_frame_bytes:
                        self._fail("framing", f"a newline-framed message is over {self.max_frame_bytes} bytes "
                                   "without a newline (syslog_listener.MAX_FRAME_BYTES)")
                    break
                end = delimiter.start()
                if end > pos and buffer[end - 1] == 0x0D:  # CRLF ends a line as LF does
                    end -= 1
                frames.append(bytes(buffer[pos:end]))
                pos = delimiter.end()
        del buffer[:pos]
        return frames

    def finish(self) -> list[bytes]:
        """End of stream: a last newline-framed message is complete; a partial octet-counted one is
        not (``error`` is set)."""
        if self.error is not None:
            return []
        rest = bytes(self._buffer).lstrip(b"\r\n\x00")
        self._buffer.clear()
        if not rest:
            return []
        if 48 <= rest[0] <= 57:
            self._fail("truncated", f"the connection closed inside an octet-counted frame ({len(rest)} bytes "
                       "received of it); that frame is lost")
            return []
        return [rest]

    def _fail(self, reason: str, message: str) -> None:
        self.error = FramingError(message)
        self.error_reason = reason


class _ThrottledLog:
    """Warnings, at most one per key every LOG_EVERY_S, each naming how many were suppressed."""

    def __init__(self) -> None:
        self._last_s: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        now_s = time.monotonic()
        if now_s - self._last_s.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_s[key] = now_s
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar warnings suppressed in the last {LOG_EVERY_S:.0f} s)"
        log.warning(message, *args)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: SyslogListener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.listener._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("syslog udp: %s", exc)


class SyslogListener:
    """Syslog over TCP and UDP on one address.  ``start()`` binds both (UDP on the port TCP got, so
    port 0 works); ``close()`` stops accepting, closes every connection, and waits (bounded) until
    what had been received — batches being stored, buffered frames, a last unterminated line — is
    stored."""

    def __init__(self, service: Service, host: str, port: int, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self._server: asyncio.base_events.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        #: open TCP connections: handler task -> its writer (close() closes the writers)
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._udp_pending: list[bytes] = []
        self._udp_flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._throttled = _ThrottledLog()
        self._rejected = service.metrics.syslog_rejected

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port, limit=READ_BYTES)
        sockets = self._server.sockets
        if self.port == 0 and sockets:
            self.port = int(sockets[0].getsockname()[1])
        family = sockets[0].family if sockets else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF_BYTES)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            self._server.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=sock)
        self._udp = transport  # type: ignore[assignment]  # create_datagram_endpoint returns the base type
        log.info("syslog listening on %s:%d (tcp and udp)", self.host, self.port)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self._closing = True
        # 1. no new connections or datagrams
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        # 2. close every connection: each handler then stores what it had already received (a batch in
        #    progress, buffered frames, a last unterminated line) and sees the end of the stream (bounded)
        for writer in list(self._connections.values()):
            writer.close()
        waiting: list[asyncio.Task[Any]] = list(self._connections)
        if self._udp_flusher is not None:
            waiting.append(self._udp_flusher)
        if waiting:
            _done, pending = await asyncio.wait(waiting, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._udp_pending:
            self._count("udp", "unavailable", len(self._udp_pending))
            log.warning("syslog udp: %d received messages were not stored: the daemon is stopping",
                        len(self._udp_pending))
            self._udp_pending.clear()

    # --- TCP -------------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._closing:
            writer.close()
            return
        self._connections[task] = writer
        peer = _peer_text(writer.get_extra_info("peername"))
        framer = TcpFramer(self.max_frame_bytes)
        try:
            while True:
                # after close() closed the transport, this returns what was buffered, then b"" (EOF)
                data = await reader.read(READ_BYTES)
                frames = framer.feed(data) if data else framer.finish()
                if frames:
                    await self._store(frames, "tcp", peer)
                if self._closing:
                    writer.close()  # a connection that was storing a batch when close() began: read no more
                if framer.error is not None:
                    self._count("tcp", framer.error_reason)
                    self._throttled.warning("tcp-" + framer.error_reason, "syslog tcp %s: %s; closing this connection",
                                            peer, framer.error.message)
                    return
                if not data:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass  # the peer went away, or close() timed out; stored batches are stored
        finally:
            self._connections.pop(task, None)
            writer.close()

    # --- UDP -------------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        if self._closing:
            return
        if len(self._udp_pending) >= MAX_UDP_PENDING:
            self._count("udp", "overflow")
            self._throttled.warning("udp-overflow", "syslog udp: %d messages are waiting to be stored; the limit "
                                    "is %d (syslog_listener.MAX_UDP_PENDING); dropping datagrams (send over TCP "
                                    "to be slowed down instead)", len(self._udp_pending), MAX_UDP_PENDING)
            return
        if data.strip(b"\r\n\x00"):
            self._udp_pending.append(data)
        if self._udp_pending and self._udp_flusher is None:
            self._udp_flusher = asyncio.create_task(self._flush_udp())

    async def _flush_udp(self) -> None:
        """Store what has arrived, again and again until nothing waits (one batch per round)."""
        try:
            while self._udp_pending:
                frames, self._udp_pending = self._udp_pending, []
                await self._store(frames, "udp", "udp")
        finally:
            self._udp_flusher = None

    # --- storing ---------------------------------------------------------------------------------

    async def _store(self, frames: list[bytes], transport: str, peer: str) -> None:
        now_ns = time.time_ns()
        raws = [parse_syslog(frame, now_ns=now_ns) for frame in frames]
        step = self.service.config.max_batch_records
        for first in range(0, len(raws), step):
            await self._ingest(raws[first:first + step], transport, peer)

    async def _ingest(self, raws: list[dict[str, Any]], transport: str, peer: str) -> None:
        # one key for every attempt: a retry after a shard failure stores nothing twice
        key = f"syslog:{uuid.uuid4().hex}"
        delay_s = _RETRY_MIN_S
        while True:
            try:
                result = await self.service.ingest(raws, idempotency_key=key, json_native=True)
                break
            except BadRequest as exc:  # the batch as a whole; not expected with batches split to the limit
                self._count(transport, "record", len(raws))
                self._throttled.warning(f"{transport}-batch", "syslog %s %s: %d messages rejected: %s", transport,
                                        peer, len(raws), exc.message)
                return
            except ShardlogError as exc:
                if not exc.retryable or self._closing:
                    # not retryable (the store is full, ...) or the daemon is stopping: syslog has no way
                    # to tell the sender, so the batch is counted and logged
                    self._count(transport, "unavailable", len(raws))
                    log.warning("syslog %s %s: %d messages were not stored: %s", transport, peer, len(raws),
                                exc.message)
                    return
                # Overloaded / ShardUnavailable: hold the sender back (over TCP nothing is read meanwhile)
                self._throttled.warning(f"{transport}-retry", "syslog %s %s: %s; retrying (the sender is held "
                                        "back meanwhile)", transport, peer, exc.message)
                wait_s = max(delay_s, float(exc.details.get("retry_after_s") or 0))
                await asyncio.sleep(min(wait_s, _RETRY_MAX_S))
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
        rejected = result["rejected"]
        if rejected:
            self._count(transport, "record", len(rejected))
            self._throttled.warning(f"{transport}-record", "syslog %s %s: %d of %d messages rejected, e.g.: %s",
                                    transport, peer, len(rejected), len(raws), rejected[0]["reason"])

    def _count(self, transport: str, reason: str, n: int = 1) -> None:
        self._rejected.labels(transport, reason).inc(n)


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
