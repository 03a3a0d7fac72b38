"""The shardlog wire protocol: length-prefixed msgpack frames over a stream socket.

This module owns every byte that crosses a shardlog socket: coordinator <-> shard processes, and
CLI / Python API <-> coordinator (the same framing over the daemon's unix socket).  It holds the
framing (``pack`` / ``unpack``, headers, the sync and async frame readers and writers), the
request / response envelopes (``check_request``, ``check_response``, ``ok_response``,
``error_response``) and the server side (``serve_connection``, ``ConnectionSet``).  The clients
(``Client``, ``AsyncClient``) are in ``shardd.client`` and use this module's framing.  It imports
only the standard library, ``msgpack`` and ``storage.errors``, so a user process can speak it
without loading LMDB.

Frame layout (all integers big-endian)::

     0      2        3        4                8
     +------+--------+--------+----------------+---------------------+
     | 'SL' | ver=1  | flags  | length u32 BE  | msgpack body        |
     +------+--------+--------+----------------+---------------------+
       magic  VERSION  0 in v1  body bytes        `length` bytes

Bodies are msgpack maps::

    request   {"id": int, "op": str, "args": map}
    response  {"id": int, "ok": <any>}   or   {"id": int, "error": ShardlogError.to_dict()}

Guarantees:

* Pipelining: many requests may be in flight on one connection; responses carry the request's
  ``id`` and may arrive in any order.  Clients number requests from 1; a response with id 0 is the
  server saying "I could not read one of your frames" just before it closes the connection.
* Every reader takes ``max_bytes`` (default ``MAX_FRAME_BYTES`` = 64 MiB) and refuses a longer
  body from the header alone, before allocating anything.  The body is then decoded with msgpack
  limits derived from its real length (no string, array or map can claim more items than the body
  has bytes, so a 10-byte frame cannot make us allocate a 2**31-slot list), map keys must be
  strings, and ext types (including msgpack timestamps) are refused.
* Any problem with a frame -- bad magic, unknown version or flags, over-long length, EOF inside a
  frame, invalid msgpack, wrong schema -- raises ``storage.errors.BadRequest`` whose message names
  the value and the limit.  A clean EOF *before* a frame starts is not an error: readers return
  ``None``.  Socket errors (``OSError``, timeouts) from the public read/write helpers propagate
  unchanged; the clients (``shardd.client``) turn them into ``ShardUnavailable``.
* Errors cross the wire as ``ShardlogError.to_dict()`` and are rebuilt as the same class, so a
  ``BadQuery`` raised in a shard is a ``BadQuery`` in the CLI.
* Values must be msgpack-native: None, bool, int (-2**63 .. 2**64-1), float, str, bytes, list,
  tuple (arrives as a list) and dict with str keys.  ``pack`` refuses anything else with
  ``BadRequest``; non-str map keys pack but the reader refuses them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from storage.errors import BadRequest, ShardlogError

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER",
    "MAX_FRAME_BYTES",
    "MAX_OP_CHARS",
    "Handler",
    "pack",
    "unpack",
    "encode_frame",
    "parse_header",
    "read_frame",
    "write_frame",
    "read_frame_async",
    "write_frame_async",
    "check_request",
    "check_response",
    "ok_response",
    "error_response",
    "serve_connection",
    "ConnectionSet",
]

logger = logging.getLogger(__name__)

MAGIC = b"SL"
VERSION = 1
#: magic, version, flags, body length.
HEADER = struct.Struct(">2sBBI")
#: Largest body a reader accepts by default.  Large enough for a 10k-row query page or a big
#: ingest batch, small enough that one hostile or buggy peer cannot exhaust memory.
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Version 1 defines no flags; a set bit means a newer peer (e.g. compression) and is refused
#: rather than misread.
_FLAGS_NONE = 0
#: The length field is a u32, whatever max_bytes says.
_U32_MAX = 0xFFFF_FFFF
#: Op names are short identifiers; a longer one is garbage, and it would end up in log lines.
MAX_OP_CHARS = 64
#: How long a closing side waits for the peer to take its last bytes before aborting.
_CLOSE_TIMEOUT_S = 5.0

#: A server-side request handler: ``await handler(op, args)`` returns the result or raises.
Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]

_VALUE_TYPES_HINT = (
    "use only None, bool, int (-2**63 .. 2**64-1), float, str, bytes, list, tuple "
    "and dict with str keys"
)


# --------------------------------------------------------------------------------------------
# Encoding and decoding bodies and headers


class _TruncatedFrame(BadRequest):
    """EOF inside a frame.  Still a ``BadRequest`` for callers of the public readers; the clients
    catch it separately because to them it means "the connection dropped", not "bad data"."""


class _ExtRejected(Exception):
    """Raised from the msgpack ext_hook; turned into BadRequest by ``unpack``."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise _ExtRejected(
        f"msgpack ext type {code} ({len(data)} bytes) is not part of the shardlog protocol; "
        f"{_VALUE_TYPES_HINT}"
    )


def _limit_name(max_bytes: int) -> str:
    return "MAX_FRAME_BYTES" if max_bytes == MAX_FRAME_BYTES else "max_bytes"


def _too_big(size_bytes: int, max_bytes: int) -> BadRequest:
    return BadRequest(
        f"frame of {size_bytes} bytes exceeds the limit of {max_bytes} bytes "
        f"({_limit_name(max_bytes)}); send smaller batches or ask for fewer results per call",
        size_bytes=size_bytes,
        limit_bytes=max_bytes,
    )


def _describe(value: Any) -> str:
    """A short, safe description of a wire value for error messages."""
    return f"{type(value).__name__} {value!r:.80}"


def pack(obj: Any) -> bytes:
    """Encode one body (no header).  ``BadRequest`` if ``obj`` holds a non-msgpack value."""
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # ValueError covers unencodable str (lone surrogates) and too-deep nesting.
        raise BadRequest(f"cannot encode a value for the wire: {exc}; {_VALUE_TYPES_HINT}") from exc


def unpack(body: bytes | bytearray | memoryview, *, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """Decode one body with limits; any problem is ``BadRequest`` naming what was wrong.

    ``len(body) <= max_bytes`` plays the role of msgpack's ``max_buffer_size``; the per-object
    limits are bounded by the body's real size, which is tighter than the frame limit.
    """
    size = len(body)
    if size > max_bytes:
        raise _too_big(size, max_bytes)
    if size == 0:
        raise BadRequest("frame body is empty; expected a msgpack map")
    prefix = f"frame body of {size} bytes is not valid shardlog msgpack"
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_reject_ext,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            # 0 also refuses the timestamp ext (-1), which msgpack decodes without the ext_hook.
            max_ext_len=0,
        )
    except _ExtRejected as exc:
        raise BadRequest(f"{prefix}: {exc}") from None
    except msgpack.StackError:
        raise BadRequest(
            f"{prefix}: containers nest deeper than msgpack's limit; flatten the value") from None
    except msgpack.ExtraData:
        raise BadRequest(f"{prefix}: extra bytes after the first value; a body holds one map") from None
    except msgpack.FormatError:
        raise BadRequest(f"{prefix}: reserved type byte 0xc1 or another malformed header") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{prefix}: a string is not valid UTF-8 ({exc}); send binary data as bytes") from None
    except ValueError as exc:
        detail = str(exc)
        if "max_ext_len" in detail:
            detail = f"msgpack ext types (including timestamps) are not part of the protocol ({detail})"
        elif "exceeds max_" in detail:
            detail = f"a string or container claims more items than the body holds ({detail})"
        elif "incomplete input" in detail:
            detail = "the body ends inside a value (incomplete input)"
        raise BadRequest(f"{prefix}: {detail}") from None
    except Exception as exc:  # hostile input must never escape as anything but BadRequest
        raise BadRequest(f"{prefix}: {type(exc).__name__}: {exc}") from None


def encode_frame(obj: Any, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Header + body.  ``BadRequest`` if the body is unencodable or longer than ``max_bytes``."""
    body = pack(obj)
    limit = min(max_bytes, _U32_MAX)
    if len(body) > limit:
        raise _too_big(len(body), limit)
    return HEADER.pack(MAGIC, VERSION, _FLAGS_NONE, len(body)) + body


def parse_header(header: bytes | bytearray | memoryview, *, max_bytes: int = MAX_FRAME_BYTES) -> int:
    """Check an 8-byte header and return the body length."""
    if len(header) != HEADER.size:
        raise _TruncatedFrame(
            f"truncated frame header: got {len(header)} of {HEADER.size} bytes",
            got_bytes=len(header),
        )
    magic, version, flags, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise BadRequest(
            f"bad frame magic {bytes(magic)!r} (expected {MAGIC!r}); the peer is not speaking the "
            f"shardlog protocol -- check that the socket path points at a shardlog daemon or shard"
        )
    if version != VERSION:
        raise BadRequest(
            f"unsupported protocol version {version} (this side speaks version {VERSION}); run the "
            f"same shardlog version on both ends of the socket"
        )
    if flags != _FLAGS_NONE:
        raise BadRequest(
            f"unsupported frame flags 0x{flags:02x} (protocol version {VERSION} defines none; "
            f"expected 0x00); run the same shardlog version on both ends of the socket"
        )
    if length > max_bytes:
        raise _too_big(length, max_bytes)
    return int(length)


# --------------------------------------------------------------------------------------------
# Reading and writing frames: sync (sockets) and async (streams) side by side


def _recv_exactly(sock: socket.socket, size: int, deadline_s: float | None) -> bytearray:
    """Up to ``size`` bytes; fewer only at EOF.  With a deadline (``time.monotonic``), each recv
    gets the remaining time and running out raises ``TimeoutError``."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        if deadline_s is not None:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("deadline passed while reading a frame")
            sock.settimeout(remaining_s)
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            break
        got += n
    del view
    if got < size:
        del buf[got:]
    return buf


def _read_body_sync(sock: socket.socket, max_bytes: int, deadline_s: float | None) -> bytearray | None:
    header = _recv_exactly(sock, HEADER.size, deadline_s)
    if not header:
        return None
    length = parse_header(header, max_bytes=max_bytes)
    body = _recv_exactly(sock, length, deadline_s)
    if len(body) < length:
        raise _TruncatedFrame(
            f"truncated frame: expected {length} body bytes, got {len(body)} before the connection "
            f"closed",
            expected_bytes=length,
            got_bytes=len(body),
        )
    return body


def read_frame(sock: socket.socket, *, max_bytes: int = MAX_FRAME_BYTES) -> Any | None:
    """Read and decode one frame (blocking, per the socket's own timeout); ``None`` on clean EOF."""
    body = _read_body_sync(sock, max_bytes, None)
    if body is None:
        return None
    return unpack(body, max_bytes=max_bytes)


def write_frame(sock: socket.socket, obj: Any, *, max_bytes: int = MAX_FRAME_BYTES) -> None:
    """Encode and send one frame (``sendall``)."""
    sock.sendall(encode_frame(obj, max_bytes=max_bytes))


async def _read_body_async(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        header = exc.partial  # parse_header reports the truncation with the byte count
    length = parse_header(header, max_bytes=max_bytes)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise _TruncatedFrame(
            f"truncated frame: expected {length} body bytes, got {len(exc.partial)} before the "
            f"connection closed",
            expected_bytes=length,
            got_bytes=len(exc.partial),
        ) from None


async def read_frame_async(reader: asyncio.StreamReader, *, max_bytes: int = MAX_FRAME_BYTES) -> Any | None:
    """Read and decode one frame; ``None`` on clean EOF."""
    body = await _read_body_async(reader, max_bytes)
    if body is None:
        return None
    return unpack(body, max_bytes=max_bytes)


async def write_frame_async(writer: asyncio.StreamWriter, obj: Any, *,
                            max_bytes: int = MAX_FRAME_BYTES) -> None:
    """Encode, write and drain one frame.  One ``write`` per frame, so concurrent writers on the
    same stream never interleave bytes of different frames."""
    writer.write(encode_frame(obj, max_bytes=max_bytes))
    await writer.drain()


# --------------------------------------------------------------------------------------------
# Request / response schema


_MISSING = object()


def _is_wire_id(value: Any) -> bool:
    # bool is an int subclass, and msgpack true/false must not pass as ids 1/0.
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """How a wrong field is described in an error; built only on the error path (describing a
    whole ingest batch for every request was a measurable share of a shard's CPU)."""
    return "nothing (the key is missing)" if value is _MISSING else _describe(value)


def check_request(obj: Any) -> tuple[int, str, dict[str, Any]]:
    """``(id, op, args)`` of a decoded request, or ``BadRequest`` naming the wrong field.
    Extra top-level keys are ignored (room for later versions)."""
    if not isinstance(obj, dict):
        raise BadRequest(f"a request must be a msgpack map with id, op and args; got {_describe(obj)}")
    req_id = obj.get("id", _MISSING)
    if not _is_wire_id(req_id):
        raise BadRequest(f"request id must be an integer; got {_shown(req_id)}")
    op = obj.get("op", _MISSING)
    if not isinstance(op, str) or not op:
        raise BadRequest(f"request {req_id}: op must be a non-empty string; got {_shown(op)}")
    if len(op) > MAX_OP_CHARS:
        raise BadRequest(
            f"request {req_id}: op is {len(op)} characters; the limit is {MAX_OP_CHARS} "
            f"(MAX_OP_CHARS) -- op names are short identifiers such as 'query'")
    args = obj.get("args", _MISSING)
    if not isinstance(args, dict):
        raise BadRequest(f"request {req_id} ({op}): args must be a map; got {_shown(args)}")
    return req_id, op, args


def check_response(obj: Any) -> tuple[int, Any, ShardlogError | None]:
    """``(id, result, error)`` of a decoded response; ``error`` is the rebuilt ShardlogError
    (same class as raised on the other side) or None."""
    if not isinstance(obj, dict):
        raise BadRequest(f"a response must be a msgpack map with id and ok or error; got {_describe(obj)}")
    resp_id = obj.get("id", _MISSING)
    if not _is_wire_id(resp_id):
        raise BadRequest(f"response id must be an integer; got {_shown(resp_id)}")
    has_ok = "ok" in obj
    has_error = "error" in obj
    if has_ok == has_error:
        which = "both" if has_ok else "neither"
        raise BadRequest(f"response {resp_id} must have exactly one of 'ok' and 'error'; it has {which}")
    if has_error:
        return resp_id, None, ShardlogError.from_dict(obj["error"])
    return resp_id, obj["ok"], None


def ok_response(req_id: int, result: Any) -> dict[str, Any]:
    return {"id": req_id, "ok": result}


def error_response(req_id: int, err: ShardlogError) -> dict[str, Any]:
    return {"id": req_id, "error": err.to_dict()}


def _salvage_id(body: bytes | bytearray, max_bytes: int) -> int | None:
    """The id of a body that failed the strict decode or schema check, if a lenient decode (any
    map keys, ext types ignored, bad UTF-8 replaced; still size-bounded) can find one.  Lets a
    reader fail one call instead of the whole connection when a peer sends e.g. int map keys."""
    size = len(body)
    if size == 0 or size > max_bytes:
        return None
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            unicode_errors="replace",
            ext_hook=lambda code, data: None,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except Exception:
        return None
    if isinstance(obj, dict) and _is_wire_id(obj.get("id")):
        return int(obj["id"])
    return None


# --------------------------------------------------------------------------------------------
# Server side


def _encode_response(response: dict[str, Any], op: str, max_bytes: int) -> bytes:
    """Encode a response; if it cannot be sent as is, encode an error envelope that says why, so
    the caller always gets an answer for its id."""
    req_id = response["id"]
    try:
        return encode_frame(response, max_bytes=max_bytes)
    except BadRequest as err:
        if "ok" in response and "limit_bytes" in err.details:
            # Too big: the caller can fix this by asking for less, so it is the caller's error.
            fallback: ShardlogError = BadRequest(
                f"result of {op} cannot be sent: {err.message}", **err.details)
        elif "ok" in response:
            logger.error("result of %s is not encodable: %s", op, err.message)
            fallback = ShardlogError(f"internal error in {op}: result is not encodable: {err.message}")
        else:
            # An error whose details do not encode: keep its class and message, drop the details.
            fallback = ShardlogError.from_dict({**response["error"], "details": {}})
    try:
        return encode_frame(error_response(req_id, fallback), max_bytes=max_bytes)
    except BadRequest:
        last = ShardlogError(f"internal error in {op}: the response could not be encoded")
        return encode_frame(error_response(req_id, last), max_bytes=max_bytes)


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    max_in_flight: int = 64,
) -> None:
    """Serve one connection until EOF; never raises (except ``CancelledError``).

    Each request runs ``await handler(op, args)`` in its own task, at most ``max_in_flight`` at a
    time (reading pauses when all slots are busy, which pushes back on the peer).  Results go back
    as ``ok`` envelopes; a ``ShardlogError`` as its own envelope; any other exception is logged with
    its traceback and sent as ``ShardlogError("internal error in <op>: <exc>")``.

    A frame that cannot be decoded gets a best-effort error response with id 0 and the connection
    is closed, since the byte stream may be desynchronized.  A body that decodes but breaks the
    schema while carrying a usable integer id is answered under that id and serving continues
    (the stream is still in sync).  At EOF or after a bad frame, requests already running finish
    and are answered before the connection closes; handlers should bound their own work with
    deadlines.  Cancelling ``serve_connection`` cancels the running handlers.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight is {max_in_flight}; it must be at least 1")
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def send(frame: bytes) -> None:
        if writer.is_closing():
            return
        try:
            writer.write(frame)
            await writer.drain()
        except (OSError, RuntimeError):
            pass  # the peer went away; the read loop sees EOF and winds down

    async def run(req_id: int, op: str, args: dict[str, Any]) -> None:
        try:
            try:
                result = await handler(op, args)
            except ShardlogError as err:
                response = error_response(req_id, err)
            except Exception as exc:
                logger.exception("internal error in %s (request %d)", op, req_id)
                response = error_response(req_id, ShardlogError(f"internal error in {op}: {exc}"))
            else:
                response = ok_response(req_id, result)
            await send(_encode_response(response, op, max_bytes))
        finally:
            slots.release()

    async def reject(req_id: int, err: BadRequest) -> None:
        await send(_encode_response(error_response(req_id, err), "<frame>", max_bytes))

    try:
        while True:
            try:
                body = await _read_body_async(reader, max_bytes)
            except BadRequest as err:
                logger.warning("closing connection after an unreadable frame: %s", err.message)
                await reject(0, err)
                break
            except OSError:
                break  # reset by the peer: nobody to answer
            if body is None:
                break
            try:
                obj = unpack(body, max_bytes=max_bytes)
                req_id, op, args = check_request(obj)
            except BadRequest as err:
                salvaged_id = _salvage_id(body, max_bytes)
                if salvaged_id is None:
                    logger.warning("closing connection after an undecodable request: %s", err.message)
                    await reject(0, err)
                    break
                await reject(salvaged_id, err)
                continue
            await slots.acquire()
            task = asyncio.create_task(run(req_id, op, args), name=f"shardlog-request-{op}-{req_id}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    except Exception:  # a bug here must not kill the caller's server loop
        logger.exception("unexpected error while serving a connection")
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
        except (OSError, TimeoutError, RuntimeError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise


class ConnectionSet:
    """The ``client_connected_cb`` of a server that serves every connection with ``serve_connection``
    and can end them all gracefully: ``close()`` stops reading from each connection and ends its
    stream (as if the peer had sent EOF), so requests already running are answered before the
    connection closes; only those still running after ``timeout_s`` are cancelled."""

    def __init__(self, handler: Handler, *, max_bytes: int = MAX_FRAME_BYTES, max_in_flight: int = 64) -> None:
        self._handler = handler
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._live: dict[asyncio.Task[Any], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    def __len__(self) -> int:
        return len(self._live)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._live[task] = (reader, writer)
        try:
            await serve_connection(reader, writer, self._handler, max_bytes=self._max_bytes,
                                   max_in_flight=self._max_in_flight)
        except asyncio.CancelledError:
            pass  # close() gave up waiting; the connection is aborted, nothing to report
        finally:
            if task is not None:
                self._live.pop(task, None)

    async def close(self, timeout_s: float = 10.0) -> None:
        for reader, writer in self._live.values():
            # stop the transport delivering bytes first: data after feed_eof() is an error
            if not writer.is_closing():
                writer.transport.pause_reading()
            reader.feed_eof()
        if self._live:
            _, pending = await asyncio.wait(list(self._live), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
