"""The shardlog clients: ``Client`` (blocking) and ``AsyncClient`` (pipelined asyncio).

``Client`` serves the CLI and the Python API; ``AsyncClient`` the coordinator's calls to its
shards.  Both speak the protocol of ``shardd.protocol`` (framing, limits, the request / response
envelopes) through its functions, so the wire format stays in that one module.  Socket errors,
timeouts and dropped connections become ``ShardUnavailable``; an answer that is not a valid
shardlog response becomes ``CorruptData``; an error response is raised as the rebuilt
``ShardlogError`` subclass.  Like ``shardd.protocol``, this imports only the standard library,
``msgpack`` (through ``shardd.protocol``) and ``storage.errors``, so a user process can use it
without loading LMDB.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

from shardd.protocol import (
    MAX_FRAME_BYTES,
    _CLOSE_TIMEOUT_S,
    _U32_MAX,
    _TruncatedFrame,
    _read_body_async,
    _read_body_sync,
    _salvage_id,
    check_response,
    encode_frame,
    unpack,
)
from storage.errors import BadRequest, CorruptData, ShardlogError, ShardUnavailable

__all__ = ["Client", "AsyncClient"]

logger = logging.getLogger(__name__)


#: StreamReader buffer high-water mark for our clients: big enough that reading a large body does
#: not pause/resume the transport every 64 KiB (asyncio's default), small enough to stay cheap.
_STREAM_LIMIT_BYTES = 1024 * 1024


def _unreachable(path: str, err: OSError | str) -> ShardUnavailable:
    reason = err if isinstance(err, str) else (err.strerror or str(err))
    return ShardUnavailable(
        f"cannot connect to {path}: {reason}; the shardlog daemon (or shard) may not be running -- "
        f"start it with `shardlog serve`, or point --socket / --data-dir at a running one",
        path=path,
    )


def _check_limits(max_bytes: int, timeout_s: float | None) -> None:
    if not 1 <= max_bytes <= _U32_MAX:
        raise ValueError(f"max_bytes is {max_bytes}; it must be between 1 and {_U32_MAX}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s is {timeout_s}; it must be a positive number of seconds")


class Client:
    """Blocking client for the CLI and the Python API.  Thread-safe: one call at a time per
    client (``_lock`` guards the socket and the id counter).  Connects lazily and reconnects on
    the next call after any failure."""

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0,
                 max_bytes: int = MAX_FRAME_BYTES) -> None:
        _check_limits(max_bytes, timeout_s)
        self.path = os.fspath(path)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # guarded by _lock (close() may shut it down)
        self._next_id = 1  # guarded by _lock
        self._closed = False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection.  A call blocked in another thread fails with ShardUnavailable."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
            except OSError:
                pass
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connection(self, deadline_s: float) -> socket.socket:
        sock = self._sock
        if sock is not None and _is_stale(sock):
            self._drop()
            sock = None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline_s - time.monotonic(), 0.001))
                sock.connect(self.path)
            except OSError as err:
                sock.close()
                raise _unreachable(self.path, err) from None
            self._sock = sock
        return sock

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> Any:
        """Send one request and wait for its answer.

        Raises the rebuilt ShardlogError subclass on an error response; ``ShardUnavailable`` when
        the socket cannot be reached, the connection drops mid-call, or no answer comes within
        ``timeout_s`` (default: the client's); ``CorruptData`` when the answer is not a valid
        shardlog response; ``BadRequest`` when the request cannot be encoded or is too big.
        """
        budget_s = self.timeout_s if timeout_s is None else timeout_s
        _check_limits(self.max_bytes, budget_s)
        with self._lock:
            if self._closed:
                raise ShardlogError(f"this Client for {self.path} was closed; create a new Client")
            req_id = self._next_id
            self._next_id += 1
            frame = encode_frame({"id": req_id, "op": op, "args": {} if args is None else args},
                                 max_bytes=self.max_bytes)
            deadline_s = time.monotonic() + budget_s
            sock = self._connection(deadline_s)
            try:
                sock.settimeout(max(deadline_s - time.monotonic(), 0.001))
                sock.sendall(frame)
                body = _read_body_sync(sock, self.max_bytes, deadline_s)
            except TimeoutError:
                # A late answer would arrive on this connection; start the next call afresh.
                self._drop()
                raise ShardUnavailable(
                    f"{op} on {self.path} did not answer within {budget_s:g} s; the daemon may be "
                    f"overloaded or stuck -- retry, or pass a larger timeout_s",
                    path=self.path, op=op, timeout_s=budget_s,
                ) from None
            except (OSError, _TruncatedFrame) as err:
                self._drop()
                raise ShardUnavailable(
                    f"connection to {self.path} dropped during {op}: {err}; the daemon may have "
                    f"stopped or restarted -- retry",
                    path=self.path, op=op,
                ) from None
            except BadRequest as err:
                self._drop()
                raise CorruptData(f"answer from {self.path} to {op} is not a shardlog frame: {err.message}",
                                  path=self.path, op=op) from None
            except BaseException:
                # E.g. Ctrl+C mid-call: the answer may still come, so this connection is out of step.
                self._drop()
                raise
            if body is None:
                self._drop()
                raise ShardUnavailable(
                    f"connection to {self.path} closed before answering {op}; the daemon may have "
                    f"stopped or restarted -- retry",
                    path=self.path, op=op,
                )
            try:
                resp_id, result, error = check_response(unpack(body, max_bytes=self.max_bytes))
            except BadRequest as err:
                self._drop()
                raise CorruptData(f"answer from {self.path} to {op} could not be decoded: {err.message}",
                                  path=self.path, op=op) from None
            if resp_id != req_id:
                self._drop()
                if resp_id == 0 and error is not None:
                    raise error  # the server could not read our frame and is closing
                raise CorruptData(
                    f"answer from {self.path} has id {resp_id}; expected {req_id} (the answer to {op})",
                    path=self.path, op=op,
                )
        if error is not None:
            raise error
        return result


def _is_stale(sock: socket.socket) -> bool:
    """True if an idle connection has been closed by the peer or holds unexpected bytes; either
    way a new call must not use it.  (The daemon may have restarted between two CLI calls.)"""
    try:
        sock.settimeout(0)  # with a timeout set, recv would poll first instead of failing fast
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class AsyncClient:
    """Pipelined asyncio client: many concurrent ``call``s share one connection.

    A reader task matches responses to per-id futures (``_pending``; touched only from the event
    loop thread).  When the connection is lost every pending call fails with
    ``ShardUnavailable`` and the client stays closed; make a new one with ``connect``.
    """

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_bytes: int = MAX_FRAME_BYTES) -> None:
        """Use ``AsyncClient.connect``; this wraps an already-open stream pair."""
        _check_limits(max_bytes, None)
        self.path = path
        self.max_bytes = max_bytes
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)  # id 0 is the server's "unreadable frame" answer
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closed = False
        self._close_reason = ""
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"shardlog-client-reader {path}")

    @classmethod
    async def connect(cls, path: str | os.PathLike[str], *,
                      max_bytes: int = MAX_FRAME_BYTES) -> "AsyncClient":
        _check_limits(max_bytes, None)
        path = os.fspath(path)
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=_STREAM_LIMIT_BYTES)
        except OSError as err:
            raise _unreachable(path, err) from None
        return cls(path, reader, writer, max_bytes=max_bytes)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        """Calls waiting for an answer (for metrics and tests)."""
        return len(self._pending)

    async def call(self, op: str, args: dict[str, Any] | None = None, *,
                   timeout_s: float | None = None) -> Any:
        """Send one request and wait for its answer (no timeout when ``timeout_s`` is None).
        Errors as for ``Client.call``; a timed-out call's late answer is dropped."""
        _check_limits(self.max_bytes, timeout_s)
        if self._closed:
            raise ShardUnavailable(
                f"connection to {self.path} is closed ({self._close_reason}); reconnect with "
                f"AsyncClient.connect", path=self.path, op=op)
        req_id = next(self._ids)
        frame = encode_frame({"id": req_id, "op": op, "args": {} if args is None else args},
                             max_bytes=self.max_bytes)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (OSError, RuntimeError) as err:
                if future.done():
                    return future.result()  # the reader already failed it with a better reason
                raise ShardUnavailable(f"connection to {self.path} dropped while sending {op}: {err}",
                                       path=self.path, op=op) from None
            if timeout_s is None:
                return await future
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise ShardUnavailable(
                    f"{op} on {self.path} did not answer within {timeout_s:g} s; the shard may be "
                    f"overloaded or stuck -- retry, or pass a larger timeout_s",
                    path=self.path, op=op, timeout_s=timeout_s,
                ) from None
        finally:
            self._pending.pop(req_id, None)

    async def close(self) -> None:
        """Close the connection; pending calls fail with ShardUnavailable."""
        if not self._closed:
            self._closed = True
            self._close_reason = "closed by the caller"
        self._reader_task.cancel()
        await asyncio.gather(self._reader_task, return_exceptions=True)
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), _CLOSE_TIMEOUT_S)
        except (OSError, TimeoutError, RuntimeError):
            self._writer.transport.abort()  # a peer that stopped reading must not hang close()

    def _fail_all(self, error_class: type[ShardlogError], message: str) -> None:
        # One exception instance per future: sharing one would tangle their tracebacks.
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error_class(message, path=self.path))
        self._pending.clear()

    def _dispatch(self, body: bytes) -> tuple[type[ShardlogError], str] | None:
        """Deliver one response.  Returns (error class, message) when the connection must close."""
        try:
            resp_id, result, error = check_response(unpack(body, max_bytes=self.max_bytes))
        except BadRequest as err:
            salvaged_id = _salvage_id(body, self.max_bytes)
            future = self._pending.get(salvaged_id) if salvaged_id is not None else None
            message = f"answer from {self.path} could not be decoded: {err.message}"
            if future is None:
                return (CorruptData, message)
            if not future.done():
                future.set_exception(CorruptData(message, path=self.path))
            return None
        future = self._pending.get(resp_id)
        if future is None:
            if resp_id == 0 and error is not None:
                # The server could not read one of our frames and is closing the connection.
                return (ShardUnavailable,
                        f"{self.path} rejected a frame and closed the connection: {error.message}")
            logger.debug("dropping a late answer for request %d from %s", resp_id, self.path)
            return None
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        return None

    async def _read_loop(self) -> None:
        failure: tuple[type[ShardlogError], str] | None = None
        try:
            while failure is None:
                try:
                    body = await _read_body_async(self._reader, self.max_bytes)
                except (OSError, _TruncatedFrame) as err:
                    failure = (ShardUnavailable, f"connection to {self.path} dropped: {err}")
                    break
                except BadRequest as err:
                    failure = (CorruptData, f"answer from {self.path} is not a shardlog frame: {err.message}")
                    break
                if body is None:
                    failure = (ShardUnavailable, f"connection to {self.path} was closed by the other "
                               f"side; the shard or daemon may have stopped -- retry after it restarts")
                    break
                failure = self._dispatch(body)
        except asyncio.CancelledError:
            failure = (ShardUnavailable, f"connection to {self.path} {self._close_reason or 'cancelled'}")
            raise
        except Exception as exc:  # a bug in dispatch must not leave callers waiting forever
            logger.exception("reader for %s failed", self.path)
            failure = (ShardUnavailable, f"reader for {self.path} failed: {exc}")
        finally:
            if failure is None:
                failure = (ShardUnavailable, f"connection to {self.path} closed")
            if not self._closed:
                self._closed = True
                self._close_reason = failure[1]
            self._fail_all(*failure)
            self._writer.close()
