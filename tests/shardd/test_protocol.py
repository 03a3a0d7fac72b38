"""Tests for shardd/protocol.py and shardd/client.py: framing, hostile input, schema, servers and clients.

Servers run over real unix sockets in short /tmp directories.  Async tests use ``asyncio.run``;
sync-client tests run the asyncio server in a background thread.  No test sleeps for a fixed time:
every wait is for an event, with a deadline so a bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import msgpack
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from shardd import protocol
from shardd.client import AsyncClient, Client
from shardd.protocol import (
    HEADER,
    MAGIC,
    MAX_FRAME_BYTES,
    VERSION,
    check_request,
    check_response,
    encode_frame,
    error_response,
    ok_response,
    pack,
    parse_header,
    read_frame,
    read_frame_async,
    serve_connection,
    unpack,
    write_frame,
)
from storage.errors import BadQuery, BadRequest, CorruptData, NotFound, ShardlogError, ShardUnavailable

WAIT_S = 10.0  # upper bound for condition waits; never reached when the code works


def raw_frame(body: bytes, *, magic: bytes = MAGIC, version: int = VERSION, flags: int = 0,
              length: int | None = None) -> bytes:
    return struct.pack(">2sBBI", magic, version, flags, len(body) if length is None else length) + body


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(dir="/tmp", prefix="slp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Pure encoding / decoding


def test_header_layout_is_magic_version_flags_length() -> None:
    body = pack({"a": 1})
    frame = encode_frame({"a": 1})
    assert frame[:2] == b"SL"
    assert frame[2] == 1 and frame[3] == 0
    assert int.from_bytes(frame[4:8], "big") == len(body)
    assert frame[8:] == body
    assert HEADER.size == 8
    assert MAX_FRAME_BYTES == 64 * 1024 * 1024
    assert parse_header(frame[:8]) == len(body)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(wire_values)
def test_round_trip_preserves_every_msgpack_native_value(value: Any) -> None:
    frame = encode_frame(value)
    assert parse_header(frame[:8]) == len(frame) - 8
    assert unpack(frame[8:]) == value


def test_tuples_arrive_as_lists_and_bytes_stay_bytes() -> None:
    assert unpack(pack({"t": (1, "a"), "b": b"\x00\xff"})) == {"t": [1, "a"], "b": b"\x00\xff"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_unpack_of_arbitrary_bytes_returns_or_raises_bad_request(data: bytes) -> None:
    try:
        unpack(data)
    except BadRequest:
        pass  # anything else (ValueError, MemoryError, ...) fails the test


@pytest.mark.parametrize(
    "header, expected",
    [
        (b"SL\x01", "truncated frame header: got 3 of 8 bytes"),
        (b"GET / HT", "bad frame magic b'GE'"),
        (raw_frame(b"", version=2), "unsupported protocol version 2"),
        (raw_frame(b"", flags=1), "unsupported frame flags 0x01"),
        (raw_frame(b"", length=80_000_000),
         "frame of 80000000 bytes exceeds the limit of 67108864 bytes (MAX_FRAME_BYTES)"),
    ],
)
def test_parse_header_rejects_hostile_headers(header: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_header(header)
    assert expected in info.value.message


def test_parse_header_honours_a_custom_limit() -> None:
    assert parse_header(raw_frame(b"", length=100), max_bytes=100) == 100
    with pytest.raises(BadRequest, match=r"frame of 101 bytes exceeds the limit of 100 bytes \(max_bytes\)"):
        parse_header(raw_frame(b"", length=101), max_bytes=100)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"", "empty"),
        (b"\xc1", "reserved type byte"),
        (pack({"a": "hello"})[:-2], "ends inside a value"),
        (pack(1) + pack(2), "extra bytes"),
        (b"\xdd" + struct.pack(">I", 2**31), "2147483648 exceeds max_array_len(5)"),
        (b"\xdf" + struct.pack(">I", 2**31), "2147483648 exceeds max_map_len(2)"),
        (b"\xdb" + struct.pack(">I", 2**31) + b"abc", "frame body of 8 bytes"),
        (msgpack.packb(msgpack.ExtType(5, b"abc")), "ext type"),
        (b"\xc7\x00\x05", "ext type 5"),
        (msgpack.packb(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), datetime=True),
         "timestamps"),
        (msgpack.packb({1: "a"}), "int is not allowed for map key"),
        (b"\xa2\xff\xfe", "not valid UTF-8"),
        (b"\x91" * 5000 + b"\x00", "nest deeper"),
    ],
)
def test_unpack_rejects_hostile_bodies(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as info:
        unpack(body)
    assert expected in info.value.message


def test_encode_and_unpack_enforce_max_bytes() -> None:
    with pytest.raises(BadRequest) as info:
        encode_frame({"m": "x" * 200}, max_bytes=100)
    # fixmap(1) + "m" (2 bytes) + str8 header (2) + 200 bytes = 205 bytes of body.
    assert "frame of 205 bytes exceeds the limit of 100 bytes (max_bytes)" in info.value.message
    assert info.value.details == {"size_bytes": 205, "limit_bytes": 100}
    with pytest.raises(BadRequest, match="frame of 205 bytes"):
        unpack(pack({"m": "x" * 200}), max_bytes=100)


@pytest.mark.parametrize("value", [object(), datetime.datetime(2024, 1, 1), 2**64, {"s": "\ud800"}])
def test_pack_rejects_non_wire_values(value: Any) -> None:
    with pytest.raises(BadRequest, match="cannot encode a value for the wire"):
        pack(value)


# ------------------------------------------------------------------------------------------
# Schema


def test_check_request_accepts_a_valid_request() -> None:
    assert check_request({"id": 3, "op": "query", "args": {"q": "x"}}) == (3, "query", {"q": "x"})


@pytest.mark.parametrize(
    "obj, expected",
    [
        ([1, 2], "must be a msgpack map"),
        ({"op": "x", "args": {}}, "request id must be an integer; got nothing (the key is missing)"),
        ({"id": "7", "op": "x", "args": {}}, "request id must be an integer; got str '7'"),
        ({"id": True, "op": "x", "args": {}}, "request id must be an integer; got bool True"),
        ({"id": 1, "op": 5, "args": {}}, "request 1: op must be a non-empty string; got int 5"),
        ({"id": 1, "op": "", "args": {}}, "op must be a non-empty string"),
        ({"id": 1, "op": "q" * 65, "args": {}}, "op is 65 characters; the limit is 64 (MAX_OP_CHARS)"),
        ({"id": 1, "op": "x", "args": None}, "request 1 (x): args must be a map; got NoneType None"),
        ({"id": 1, "op": "x"}, "args must be a map; got nothing"),
    ],
)
def test_check_request_names_the_wrong_field(obj: Any, expected: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_request(obj)
    assert expected in info.value.message


def test_check_response_ok_error_and_malformed() -> None:
    assert check_response(ok_response(4, None)) == (4, None, None)
    resp_id, result, error = check_response(
        unpack(pack(error_response(9, BadQuery("unknown field 'lvl' at column 3", column=3)))))
    assert (resp_id, result) == (9, None)
    assert type(error) is BadQuery
    assert error.message == "unknown field 'lvl' at column 3" and error.details == {"column": 3}
    with pytest.raises(BadRequest, match="exactly one of 'ok' and 'error'; it has both"):
        check_response({"id": 1, "ok": 1, "error": {}})
    with pytest.raises(BadRequest, match="it has neither"):
        check_response({"id": 1})
    with pytest.raises(BadRequest, match="response id must be an integer"):
        check_response({"id": None, "ok": 1})


# ------------------------------------------------------------------------------------------
# Sync and async frame I/O on raw streams


def test_sync_frames_over_a_socketpair() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(WAIT_S)
        right.settimeout(WAIT_S)
        write_frame(left, {"id": 1, "op": "ping", "args": {}})
        write_frame(left, {"id": 2, "ok": [1, 2, 3]})
        assert read_frame(right) == {"id": 1, "op": "ping", "args": {}}
        assert read_frame(right) == {"id": 2, "ok": [1, 2, 3]}
        left.sendall(raw_frame(pack("x")))
        left.shutdown(socket.SHUT_WR)
        assert read_frame(right) == "x"
        assert read_frame(right) is None  # clean EOF between frames


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"SL\x01\x00\x00", "truncated frame header: got 5 of 8 bytes"),
        (raw_frame(b"abc", length=10), "truncated frame: expected 10 body bytes, got 3"),
        (raw_frame(b"", length=2**32 - 1), "frame of 4294967295 bytes exceeds the limit"),
    ],
)
def test_sync_read_frame_rejects_truncated_and_oversized_frames(data: bytes, expected: str) -> None:
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(WAIT_S)
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(BadRequest) as info:
            read_frame(right)
        assert expected in info.value.message


def test_async_read_frame_from_a_stream() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame({"id": 1, "ok": "a"}) + raw_frame(b"ab", length=5))
        reader.feed_eof()
        assert await read_frame_async(reader) == {"id": 1, "ok": "a"}
        with pytest.raises(BadRequest, match="truncated frame: expected 5 body bytes, got 2"):
            await read_frame_async(reader)

        empty = asyncio.StreamReader()
        empty.feed_eof()
        assert await read_frame_async(empty) is None

        half_header = asyncio.StreamReader()
        half_header.feed_data(b"SL")
        half_header.feed_eof()
        with pytest.raises(BadRequest, match="truncated frame header: got 2 of 8 bytes"):
            await read_frame_async(half_header)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------
# Servers and clients


class Handlers:
    """The ops the test servers answer."""

    def __init__(self) -> None:
        self.release_hang = asyncio.Event()
        self.hang_started = threading.Event()  # for sync tests in another thread
        self.hang_started_async = asyncio.Event()  # for tests in the server's own loop
        self.calls = 0

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        self.calls += 1
        if op == "echo":
            return args
        if op == "bad_query":
            raise BadQuery("unknown field 'lvl' at column 3; did you mean 'level'?", column=3)
        if op == "not_found":
            raise NotFound(f"alert rule {args['name']!r} does not exist")
        if op == "boom":
            raise RuntimeError("kaboom")
        if op == "int_keys":
            return {1: "one"}
        if op == "unencodable":
            return object()
        if op == "big":
            return "x" * args["n"]
        if op == "hang":
            self.hang_started.set()
            self.hang_started_async.set()
            await self.release_hang.wait()
            return "late"
        raise BadRequest(f"unknown op {op!r}")


async def start_server(path: str, handler: protocol.Handler, **kwargs: Any) -> asyncio.Server:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, handler, **kwargs)

    return await asyncio.start_unix_server(on_connect, path)


async def stop_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


RunAsync = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run_async(request: pytest.FixtureRequest) -> RunAsync:
    """``asyncio.run`` on the stock loop and on uvloop, which the coordinator and shards use."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return run


def run_with_server(run: RunAsync, sock_dir: str, body: Callable[[str, Handlers], Awaitable[None]],
                    **kwargs: Any) -> None:
    async def main() -> None:
        path = f"{sock_dir}/s.sock"
        handlers = Handlers()
        server = await start_server(path, handlers, **kwargs)
        try:
            await asyncio.wait_for(body(path, handlers), WAIT_S)
        finally:
            handlers.release_hang.set()
            await stop_server(server)

    run(main())


def test_async_client_round_trip_and_error_classes(
        run_async: RunAsync, sock_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(path: str, handlers: Handlers) -> None:
        async with await AsyncClient.connect(path) as client:
            assert await client.call("echo", {"a": [1, b"\x00"], "s": "é"}) == {"a": [1, b"\x00"], "s": "é"}
            assert await client.call("echo") == {}

            with pytest.raises(BadQuery) as bad_query:
                await client.call("bad_query")
            assert type(bad_query.value) is BadQuery
            assert "did you mean 'level'" in bad_query.value.message
            assert bad_query.value.details == {"column": 3}

            with pytest.raises(NotFound, match="alert rule 'r1' does not exist"):
                await client.call("not_found", {"name": "r1"})

            with caplog.at_level(logging.ERROR, logger="shardd.protocol"):
                with pytest.raises(ShardlogError) as boom:
                    await client.call("boom")
            assert type(boom.value) is ShardlogError
            assert boom.value.message == "internal error in boom: kaboom"
            assert any(r.exc_info and "kaboom" in str(r.exc_info[1]) for r in caplog.records)

            with pytest.raises(ShardlogError, match="internal error in unencodable: result is not encodable"):
                await client.call("unencodable")

            # A result the client cannot decode fails that call only; the connection survives.
            with pytest.raises(CorruptData, match="int is not allowed for map key"):
                await client.call("int_keys")
            assert not client.closed
            assert await client.call("echo", {"still": "up"}) == {"still": "up"}
            assert client.in_flight == 0

    run_with_server(run_async, sock_dir, body)


def test_too_big_result_becomes_a_bad_request_for_that_call(run_async: RunAsync, sock_dir: str) -> None:
    async def body(path: str, handlers: Handlers) -> None:
        async with await AsyncClient.connect(path) as client:
            assert await client.call("big", {"n": 100}) == "x" * 100
            with pytest.raises(BadRequest) as info:
                await client.call("big", {"n": 5000})
            assert "result of big cannot be sent" in info.value.message
            assert "exceeds the limit of 1000 bytes" in info.value.message
            assert await client.call("echo", {"n": 1}) == {"n": 1}

    run_with_server(run_async, sock_dir, body, max_bytes=1000)


def test_pipelined_calls_answered_out_of_order_each_get_their_own_answer(
        run_async: RunAsync, sock_dir: str) -> None:
    seed = random.randrange(2**32)
    print(f"pipelining seed={seed}")
    rng = random.Random(seed)
    count = 50
    gates = {i: asyncio.Event() for i in range(count)}  # created outside a loop: fine since 3.10
    all_arrived = asyncio.Event()
    arrived: list[int] = []

    async def handler(op: str, args: dict[str, Any]) -> Any:
        arrived.append(args["i"])
        if len(arrived) == count:
            all_arrived.set()
        await gates[args["i"]].wait()
        return {"i": args["i"], "square": args["i"] ** 2}

    async def main() -> None:
        path = f"{sock_dir}/p.sock"
        server = await start_server(path, handler)
        try:
            async with await AsyncClient.connect(path) as client:
                completed: list[int] = []

                async def one(i: int) -> dict[str, int]:
                    result = await client.call("work", {"i": i}, timeout_s=WAIT_S)
                    completed.append(i)
                    return result

                tasks = [asyncio.create_task(one(i)) for i in range(count)]
                await asyncio.wait_for(all_arrived.wait(), WAIT_S)
                assert client.in_flight == count  # all 50 share the connection at once
                release_order = list(range(count))
                while release_order == sorted(release_order):
                    rng.shuffle(release_order)
                for i in release_order:
                    gates[i].set()
                results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
                assert results == [{"i": i, "square": i * i} for i in range(count)]
                # Responses came back in release order, not request order.
                assert completed == release_order
        finally:
            await stop_server(server)

    run_async(main())


def test_serve_connection_bounds_concurrent_handlers(run_async: RunAsync, sock_dir: str) -> None:
    limit = 3
    state = {"active": 0, "peak": 0}
    gate = asyncio.Event()

    async def handler(op: str, args: dict[str, Any]) -> Any:
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        if state["active"] == limit:
            gate.set()
        await gate.wait()
        await asyncio.sleep(0)  # let any over-limit handler start before this one finishes
        state["active"] -= 1
        return args["i"]

    async def main() -> None:
        path = f"{sock_dir}/b.sock"
        server = await start_server(path, handler, max_in_flight=limit)
        try:
            async with await AsyncClient.connect(path) as client:
                results = await asyncio.wait_for(
                    asyncio.gather(*(client.call("w", {"i": i}) for i in range(10))), WAIT_S)
            assert results == list(range(10))
            assert state["peak"] == limit
        finally:
            await stop_server(server)

    run_async(main())


def test_async_timeout_raises_shard_unavailable_and_late_answer_is_dropped(
        run_async: RunAsync, sock_dir: str) -> None:
    async def body(path: str, handlers: Handlers) -> None:
        async with await AsyncClient.connect(path) as client:
            with pytest.raises(ShardUnavailable, match="hang on .* did not answer within 0.05 s"):
                await client.call("hang", timeout_s=0.05)
            assert client.in_flight == 0
            handlers.release_hang.set()  # the late answer arrives for an id nobody waits on
            assert await client.call("echo", {"after": "timeout"}) == {"after": "timeout"}
            assert not client.closed

    run_with_server(run_async, sock_dir, body)


def test_connection_drop_fails_every_pending_call(run_async: RunAsync, sock_dir: str) -> None:
    async def main() -> None:
        path = f"{sock_dir}/d.sock"
        received: list[Any] = []

        async def drop_after_three(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(3):
                received.append(await read_frame_async(reader))
            writer.close()  # no answers: every call is in flight when the connection goes
            await writer.wait_closed()

        server = await asyncio.start_unix_server(drop_after_three, path)
        try:
            client = await AsyncClient.connect(path)
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(client.call("q", {"i": i}) for i in range(3)), return_exceptions=True),
                WAIT_S)
            assert [r["op"] for r in received] == ["q", "q", "q"]
            assert all(type(o) is ShardUnavailable for o in outcomes), outcomes
            assert all("closed by the other side" in o.message for o in outcomes)
            assert client.closed
            with pytest.raises(ShardUnavailable, match="is closed"):
                await client.call("q")
            await client.close()
        finally:
            await stop_server(server)

    run_async(main())


def test_async_close_fails_pending_calls(run_async: RunAsync, sock_dir: str) -> None:
    async def body(path: str, handlers: Handlers) -> None:
        client = await AsyncClient.connect(path)
        pending = asyncio.create_task(client.call("hang"))
        await handlers.hang_started_async.wait()
        await client.close()
        with pytest.raises(ShardUnavailable, match="closed by the caller"):
            await pending
        assert client.closed

    run_with_server(run_async, sock_dir, body)


def test_clients_on_a_missing_socket_raise_shard_unavailable_naming_the_path(
        run_async: RunAsync, sock_dir: str) -> None:
    path = f"{sock_dir}/nobody-home.sock"
    with Client(path) as client:
        with pytest.raises(ShardUnavailable) as info:
            client.call("ping")
    assert path in info.value.message and "may not be running" in info.value.message
    assert info.value.retryable

    async def main() -> None:
        with pytest.raises(ShardUnavailable, match="nobody-home.sock.*may not be running"):
            await AsyncClient.connect(path)

    run_async(main())


# --- sync Client against a server running in a background thread ---------------------------


class ThreadServer:
    """An asyncio serve_connection server in a background thread, for sync-client tests."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self.handlers: Handlers = self.run(self._make_handlers())
        self.server: asyncio.Server = self.run(start_server(path, self.handlers, **kwargs))

    async def _make_handlers(self) -> Handlers:
        return Handlers()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)  # type: ignore[arg-type]

    def close(self) -> None:
        async def shutdown() -> None:
            self.handlers.release_hang.set()
            await stop_server(self.server)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), WAIT_S)

        try:
            self.run(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT_S)
            self.loop.close()


@pytest.fixture
def thread_server(sock_dir: str) -> Iterator[ThreadServer]:
    server = ThreadServer(f"{sock_dir}/t.sock")
    yield server
    server.close()


def test_sync_client_round_trip_errors_and_threads(thread_server: ThreadServer) -> None:
    with Client(thread_server.path, timeout_s=WAIT_S) as client:
        assert client.call("echo", {"x": [1, 2]}) == {"x": [1, 2]}
        with pytest.raises(BadQuery) as info:
            client.call("bad_query")
        assert type(info.value) is BadQuery and info.value.details == {"column": 3}
        with pytest.raises(CorruptData, match="could not be decoded"):
            client.call("int_keys")
        assert client.call("echo") == {}  # reconnected after the decode failure

        results: dict[int, Any] = {}
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                for i in range(20):
                    results[t * 100 + i] = client.call("echo", {"v": t * 100 + i})
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert not errors
        assert results == {k: {"v": k} for k in results} and len(results) == 80


def test_sync_client_timeout_then_reconnects(thread_server: ThreadServer) -> None:
    with Client(thread_server.path, timeout_s=WAIT_S) as client:
        with pytest.raises(ShardUnavailable, match=r"hang on .* did not answer within 0.1 s"):
            client.call("hang", timeout_s=0.1)
        assert client.call("echo", {"ok": 1}) == {"ok": 1}


def test_sync_client_close_interrupts_a_blocked_call(thread_server: ThreadServer) -> None:
    client = Client(thread_server.path, timeout_s=WAIT_S)
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            client.call("hang")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    assert thread_server.handlers.hang_started.wait(WAIT_S)
    client.close()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(outcome) == 1 and type(outcome[0]) is ShardUnavailable, outcome
    with pytest.raises(ShardlogError, match="was closed; create a new Client"):
        client.call("echo")


@contextlib.contextmanager
def background(listener: socket.socket, serve: Callable[[], None]) -> Iterator[None]:
    """Run a hand-written sync server in a thread.  On exit (normally it has finished already),
    wake it if a failed test left it waiting in accept, by connecting and hanging up, and join it.
    Its own errors after such a wake-up are expected and swallowed; the test has failed anyway."""

    def target() -> None:
        try:
            serve()
        except (OSError, ShardlogError):
            pass

    thread = threading.Thread(target=target, name="test-sync-server")
    thread.start()
    try:
        yield
    finally:
        if thread.is_alive():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waker:
                waker.connect(listener.getsockname())
        thread.join(WAIT_S)
        listener.close()


def test_sync_client_reconnects_after_the_server_closed_an_idle_connection(sock_dir: str) -> None:
    """One answer per connection, like a daemon restarting between two CLI calls."""
    path = f"{sock_dir}/r.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    listener.settimeout(WAIT_S)
    closed = threading.Event()
    served: list[str] = []

    def serve_twice() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(WAIT_S)
                req_id, op, args = check_request(read_frame(conn))
                served.append(op)
                write_frame(conn, ok_response(req_id, len(served)))
            closed.set()

    with background(listener, serve_twice):
        with Client(path, timeout_s=WAIT_S) as client:
            assert client.call("first") == 1
            assert closed.wait(WAIT_S)
            assert client.call("second") == 2  # the stale connection was noticed and replaced
    assert served == ["first", "second"]


def test_sync_client_connection_dropped_mid_call(sock_dir: str) -> None:
    path = f"{sock_dir}/m.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    listener.settimeout(WAIT_S)

    def read_then_hang_up() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT_S)
            read_frame(conn)
            conn.sendall(raw_frame(b"\x81", length=20))  # half a frame, then gone

    with background(listener, read_then_hang_up):
        with Client(path, timeout_s=WAIT_S) as client:
            with pytest.raises(ShardUnavailable, match="dropped during ingest.*truncated frame"):
                client.call("ingest", {"logs": []})


# --- hostile frames against a real serve_connection server ----------------------------------


HOSTILE = [
    pytest.param(b"SL\x01", "truncated frame header", id="truncated-header"),
    pytest.param(raw_frame(b"\x81\xa1a", length=50), "truncated frame: expected 50 body bytes, got 3",
                 id="truncated-body"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad frame magic b'GE'", id="bad-magic"),
    pytest.param(raw_frame(pack({"id": 1}), version=9), "unsupported protocol version 9", id="bad-version"),
    pytest.param(raw_frame(b"", length=2**32 - 1),
                 "frame of 4294967295 bytes exceeds the limit of 67108864 bytes (MAX_FRAME_BYTES)",
                 id="oversized-length"),
    pytest.param(raw_frame(b"\xc1\xc1\xc1"), "not valid shardlog msgpack", id="garbage-body"),
    pytest.param(raw_frame(b"\xdd\x80\x00\x00\x00"), "2147483648 exceeds max_array_len", id="huge-array"),
    pytest.param(raw_frame(msgpack.packb(msgpack.ExtType(1, b"x"))), "ext type", id="ext-type"),
    pytest.param(raw_frame(pack([1, 2, 3])), "a request must be a msgpack map", id="not-a-map"),
    pytest.param(raw_frame(pack({"id": "x", "op": "echo", "args": {}})), "request id must be an integer",
                 id="id-not-int"),
]


@pytest.mark.parametrize("payload, expected", HOSTILE)
def test_hostile_frame_gets_id_0_error_then_close_and_server_keeps_serving(
        thread_server: ThreadServer, payload: bytes, expected: str, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(WAIT_S)
        raw.connect(thread_server.path)
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)  # truncation is only visible at EOF
        response = read_frame(raw)
        resp_id, _, error = check_response(response)
        assert resp_id == 0
        assert type(error) is BadRequest
        assert expected in error.message
        assert read_frame(raw) is None  # the server closed this connection
    assert thread_server.handlers.calls == 0
    with Client(thread_server.path, timeout_s=WAIT_S) as client:
        assert client.call("echo", {"after": "hostile"}) == {"after": "hostile"}


def test_requests_in_flight_at_eof_are_still_answered(thread_server: ThreadServer) -> None:
    """A peer may send its requests, shut down its sending side, then read the answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(WAIT_S)
        raw.connect(thread_server.path)
        write_frame(raw, {"id": 1, "op": "hang", "args": {}})
        raw.shutdown(socket.SHUT_WR)
        assert thread_server.handlers.hang_started.wait(WAIT_S)
        thread_server.loop.call_soon_threadsafe(thread_server.handlers.release_hang.set)
        assert read_frame(raw) == {"id": 1, "ok": "late"}
        assert read_frame(raw) is None


def test_schema_error_with_a_usable_id_is_answered_and_the_connection_stays(
        thread_server: ThreadServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(WAIT_S)
        raw.connect(thread_server.path)
        write_frame(raw, {"id": 7, "op": 5, "args": {}})
        resp_id, _, error = check_response(read_frame(raw))
        assert resp_id == 7 and type(error) is BadRequest
        assert "op must be a non-empty string; got int 5" in error.message
        write_frame(raw, {"id": 8, "op": "echo", "args": {"a": 1}})
        assert read_frame(raw) == {"id": 8, "ok": {"a": 1}}


@pytest.mark.parametrize("module", ["shardd.protocol", "shardd.client", "storage.query", "storage.querytext",
                                    "storage.querywire", "storage.filters"])
def test_module_imports_without_lmdb(module: str) -> None:
    """The wire module, the clients and the query language serve user processes (CLI, Python API):
    they must not load LMDB."""
    import pathlib
    import subprocess

    repo_root = pathlib.Path(__file__).resolve().parents[2]
    code = f"import sys, {module}; sys.exit('lmdb' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=repo_root, timeout=WAIT_S).returncode == 0
