"""consensus.rpc in-process: a real server on 127.0.0.1:0, real clients and raw sockets."""

from __future__ import annotations

import struct
from functools import partial

import msgpack
import pytest
import trio

from consensus.errors import InternalError, InvalidRequest, Unauthorized, Unavailable
from consensus.auth import Credentials
from consensus.rpc import RpcSettings, open_rpc_client, serve_rpc

MAX_FRAME = 64 * 1024
SETTINGS = RpcSettings(max_frame_bytes=MAX_FRAME, handshake_timeout_s=5.0, max_in_flight_per_connection=256)
SECRET_SETTINGS = RpcSettings(
    max_frame_bytes=MAX_FRAME, handshake_timeout_s=5.0, max_in_flight_per_connection=256,
    credentials=Credentials(client_secret="s3cret"),
)
HOST = "127.0.0.1"
WAIT = 10  # seconds; no single wait in these tests should come close


async def _echo(params):
    return params


async def _sleep(params):
    await trio.sleep(params["delay"])
    return params["tag"]


async def _invalid(params):
    raise InvalidRequest("bad params", field="x")


async def _boom(params):
    raise RuntimeError("kaboom")


async def _big(params):
    return b"x" * params["n"]


ROUTER = {"echo": _echo, "sleep": _sleep, "invalid": _invalid, "boom": _boom, "big": _big}


def server_starter(nursery, router, default: RpcSettings):
    """``start(settings, node_id)``: a server in the test's nursery (cancelled when the test ends); its port."""

    async def start(settings: RpcSettings = default, node_id: str = "n1") -> int:
        listeners = await nursery.start(
            partial(serve_rpc, router, node_id=node_id, host=HOST, port=0, settings=settings)
        )
        return listeners[0].socket.getsockname()[1]

    return start


@pytest.fixture
def start_server(nursery):
    return server_starter(nursery, ROUTER, SETTINGS)


async def assert_server_works(port: int, settings: RpcSettings = SETTINGS) -> None:
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=settings) as client:
            assert await client.call("echo", {"still": "alive"}) == {"still": "alive"}


# -- a raw client, framing written independently of consensus.wire ----------------------


class RawConn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, message) -> None:
        payload = msgpack.packb(message, use_bin_type=True)
        await self.stream.send_all(struct.pack(">I", len(payload)) + payload)

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buffer += data
        return True

    async def receive(self):
        """Next message; raises EOFError if the server closed the connection."""
        if not await self._fill(4):
            raise EOFError
        (length,) = struct.unpack(">I", self.buffer[:4])
        if not await self._fill(4 + length):
            raise EOFError
        payload, self.buffer = self.buffer[4 : 4 + length], self.buffer[4 + length :]
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)

    async def expect_eof(self) -> None:
        try:
            message = await self.receive()
        except (EOFError, trio.BrokenResourceError):
            return
        raise AssertionError(f"expected the server to close, got {message!r}")


async def raw_connect(port: int) -> RawConn:
    """Open a socket and complete the handshake of an unauthenticated server."""
    conn = RawConn(await trio.open_tcp_stream(HOST, port))
    hello = await conn.receive()
    assert hello["hello"] == "n1" and hello["auth"] is False
    assert isinstance(hello["nonce"], bytes) and len(hello["nonce"]) == 16
    await conn.send({"as": "client", "nonce": bytes(16), "proof": b""})
    assert await conn.receive() == {"welcome": "n1", "proof": b""}
    return conn


# -- calls ---------------------------------------------------------------------------


async def test_call_round_trip(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS, expect_node="n1") as client:
            assert client.node_id == "n1"
            params = {"key": b"\x00\xffbin", "text": "é", "n": [1, None, True, 2.5], "m": {"a": {}}}
            assert await client.call("echo", params) == params
            assert await client.call("echo", {}) == {}
            assert not client.closed


async def test_pipelined_calls_are_answered_out_of_order(start_server):
    port = await start_server()
    n = 8
    step = 0.03
    sent: list[int] = []
    finished: list[int] = []
    results: dict[int, int] = {}

    async def one() -> None:
        position = len(sent)
        sent.append(position)  # call() takes its request id before its first checkpoint
        delay = step * (n - position)  # the first request sent is the slowest
        results[position] = await client.call("sleep", {"delay": delay, "tag": position})
        finished.append(position)

    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one)
            elapsed = trio.current_time() - start
    assert results == {i: i for i in range(n)}  # every answer matched to its own call
    assert finished == list(reversed(range(n)))  # answered in the reverse of the send order
    # concurrent, not serial: serial would take step * n * (n + 1) / 2 = 1.08 s
    assert elapsed < step * n + 0.4, elapsed


async def test_many_concurrent_calls_on_one_connection(start_server):
    port = await start_server()
    results = {}
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:

            async def one(i):
                results[i] = await client.call("echo", {"i": i, "pad": "x" * (i % 50)})

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
    assert results == {i: {"i": i, "pad": "x" * (i % 50)} for i in range(300)}


async def test_in_flight_limit_per_connection(start_server):
    settings = RpcSettings(max_frame_bytes=MAX_FRAME, handshake_timeout_s=5.0, max_in_flight_per_connection=2)
    port = await start_server(settings)
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=settings) as client:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(client.call, "sleep", {"delay": 0.15, "tag": i})
            elapsed = trio.current_time() - start
    assert elapsed >= 0.29, elapsed  # two waves of two


# -- errors from handlers -------------------------------------------------------------


async def test_handler_invalid_request_reaches_the_client(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
            with pytest.raises(InvalidRequest) as info:
                await client.call("invalid", {})
            assert info.value.message == "bad params"
            assert info.value.detail == {"field": "x"}
            assert info.value.maybe_applied is False
            assert await client.call("echo", {"a": 1}) == {"a": 1}


async def test_handler_crash_becomes_internal_error_and_server_keeps_serving(start_server, caplog):
    port = await start_server()
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
            with pytest.raises(InternalError) as info:
                await client.call("boom", {})
            assert "boom failed on the node" in info.value.message
            assert "kaboom" not in info.value.message  # internals stay in the node's log
            assert info.value.maybe_applied is True
            assert await client.call("echo", {"next": 1}) == {"next": 1}
    assert any("handler for boom failed" in r.getMessage() for r in caplog.records)
    await assert_server_works(port)


async def test_unknown_method(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
            with pytest.raises(InvalidRequest, match="unknown method 'no_such_method'"):
                await client.call("no_such_method", {})
            assert await client.call("echo", {}) == {}


async def test_response_too_large_is_an_error_for_that_call_only(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
            assert await client.call("big", {"n": 1000}) == b"x" * 1000
            with pytest.raises(InvalidRequest, match="exceeds the limit"):
                await client.call("big", {"n": MAX_FRAME + 1})
            assert await client.call("echo", {"ok": True}) == {"ok": True}


async def test_request_too_large_fails_locally(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
            with pytest.raises(InvalidRequest, match="exceeds the limit"):
                await client.call("echo", {"blob": b"x" * (MAX_FRAME + 1)})
            assert await client.call("echo", {"ok": True}) == {"ok": True}


async def test_pending_call_fails_unavailable_when_server_goes_away():
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as server_nursery:
            listeners = await server_nursery.start(
                partial(serve_rpc, ROUTER, node_id="n1", host=HOST, port=0, settings=SETTINGS)
            )
            port = listeners[0].socket.getsockname()[1]
            async with open_rpc_client(HOST, port, settings=SETTINGS) as client:
                async with trio.open_nursery() as nursery:
                    outcome = {}

                    async def slow_call():
                        try:
                            await client.call("sleep", {"delay": 30, "tag": 1})
                        except Unavailable as exc:
                            outcome["error"] = exc

                    nursery.start_soon(slow_call)
                    await trio.sleep(0.1)
                    server_nursery.cancel_scope.cancel()
                assert outcome["error"].maybe_applied is True  # it had been sent
                assert client.closed
                with pytest.raises(Unavailable, match="is closed"):
                    await client.call("echo", {})


# -- bad input on raw sockets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "answer_id", "pattern"),
    [
        ("just a string", 0, "3-element array"),
        ({"req": 1}, 0, "3-element array"),
        ([1, "echo"], 1, "3-element array"),
        ([0, "echo", {}], 0, "req_id must be a positive integer"),
        ([-4, "echo", {}], 0, "req_id must be a positive integer"),
        ([True, "echo", {}], 0, "req_id must be a positive integer"),
        (["1", "echo", {}], 0, "req_id must be a positive integer"),
        ([5, 123, {}], 5, "method must be a string"),
        ([6, "echo", [1, 2]], 6, "params must be a map"),
    ],
)
async def test_malformed_envelope_is_answered_and_connection_stays_usable(
    start_server, envelope, answer_id, pattern
):
    port = await start_server()
    with trio.fail_after(WAIT):
        conn = await raw_connect(port)
        await conn.send(envelope)
        req_id, error, result = await conn.receive()
        assert req_id == answer_id
        assert error["code"] == "invalid_request"
        assert pattern in error["message"]
        assert error["maybe_applied"] is False
        assert result is None
        await conn.send([9, "echo", {"after": "bad"}])
        assert await conn.receive() == [9, None, {"after": "bad"}]
        await conn.stream.aclose()
    await assert_server_works(port)


async def test_oversized_frame_gets_error_then_eof(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        conn = await raw_connect(port)
        await conn.send_bytes(struct.pack(">I", MAX_FRAME + 1))  # the header alone is enough
        req_id, error, result = await conn.receive()
        assert req_id == 0 and result is None
        assert error["code"] == "invalid_request"
        assert f"{MAX_FRAME + 1} bytes exceeds the limit of {MAX_FRAME} bytes" in error["message"]
        await conn.expect_eof()
    await assert_server_works(port)


async def test_non_msgpack_frame_closes_the_connection(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        conn = await raw_connect(port)
        await conn.send_bytes(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        req_id, error, _ = await conn.receive()
        assert req_id == 0
        assert error["code"] == "invalid_request" and "not valid msgpack" in error["message"]
        await conn.expect_eof()
    await assert_server_works(port)


async def test_undecodable_map_key_closes_the_connection(start_server):
    # {[]: 0}: valid msgpack, but not a Python dict (see test_wire for the TypeError).
    port = await start_server()
    with trio.fail_after(WAIT):
        conn = await raw_connect(port)
        await conn.send_bytes(struct.pack(">I", 3) + b"\x81\x90\x00")
        while True:  # an error frame is allowed, more requests are not served
            try:
                message = await conn.receive()
            except (EOFError, trio.BrokenResourceError):
                break
            assert message[0] == 0 and message[1]["code"] == "invalid_request", message
    await assert_server_works(port)


async def test_garbage_instead_of_proof_closes_without_welcome(start_server):
    port = await start_server()
    with trio.fail_after(WAIT):
        conn = RawConn(await trio.open_tcp_stream(HOST, port))
        assert (await conn.receive())["hello"] == "n1"
        await conn.send_bytes(b"\x00\x00\x00\x01\xc1")
        await conn.expect_eof()
    await assert_server_works(port)


async def test_silent_client_is_dropped_after_handshake_timeout(start_server):
    settings = RpcSettings(max_frame_bytes=MAX_FRAME, handshake_timeout_s=0.2, max_in_flight_per_connection=8)
    port = await start_server(settings)
    with trio.fail_after(WAIT):
        conn = RawConn(await trio.open_tcp_stream(HOST, port))
        assert (await conn.receive())["hello"] == "n1"
        start = trio.current_time()
        await conn.expect_eof()
        assert trio.current_time() - start >= 0.15
    await assert_server_works(port, settings)


# -- authentication and identity ------------------------------------------------------------


async def test_secret_is_required_and_checked(start_server):
    port = await start_server(SECRET_SETTINGS)
    with trio.fail_after(WAIT):
        wrong = RpcSettings(MAX_FRAME, 5.0, 256, credentials=Credentials(client_secret="wrong"))
        with pytest.raises(Unauthorized, match="cluster secret was not proven"):
            async with open_rpc_client(HOST, port, settings=wrong):
                pass  # pragma: no cover
        with pytest.raises(Unauthorized, match="requires the cluster secret"):
            async with open_rpc_client(HOST, port, settings=SETTINGS):
                pass  # pragma: no cover
        async with open_rpc_client(HOST, port, settings=SECRET_SETTINGS) as client:
            assert await client.call("echo", {"authed": True}) == {"authed": True}


async def test_raw_client_with_empty_proof_is_refused(start_server):
    port = await start_server(SECRET_SETTINGS)
    with trio.fail_after(WAIT):
        conn = RawConn(await trio.open_tcp_stream(HOST, port))
        hello = await conn.receive()
        assert hello["auth"] is True
        await conn.send({"as": "client", "nonce": bytes(16), "proof": b""})
        req_id, error, _ = await conn.receive()
        assert req_id == 0 and error["code"] == "unauthorized"
        await conn.expect_eof()
    await assert_server_works(port, SECRET_SETTINGS)


async def test_expect_node_mismatch(start_server):
    port = await start_server(node_id="n1")
    with trio.fail_after(WAIT):
        with pytest.raises(InvalidRequest, match="claims to be node 'n1', expected 'n2'"):
            async with open_rpc_client(HOST, port, settings=SETTINGS, expect_node="n2"):
                pass  # pragma: no cover
        async with open_rpc_client(HOST, port, settings=SETTINGS, expect_node="n1") as client:
            assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_connect_to_closed_port_is_unavailable():
    with trio.socket.socket() as sock:  # find a port nobody listens on
        await sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with trio.fail_after(WAIT):
        with pytest.raises(Unavailable, match=f"cannot connect to {HOST}:{port}"):
            async with open_rpc_client(HOST, port, settings=SETTINGS):
                pass  # pragma: no cover


async def test_duplicate_request_ids_are_both_answered(start_server):
    """A client reusing a request id gets two answers under it; the connection survives."""
    port = await start_server()
    with trio.fail_after(WAIT):
        conn = await raw_connect(port)
        await conn.send([5, "sleep", {"delay": 0.05, "tag": "first"}])
        await conn.send([5, "sleep", {"delay": 0.0, "tag": "second"}])
        answers = [await conn.receive(), await conn.receive()]
        assert sorted(a[2] for a in answers) == ["first", "second"]
        assert all(a[0] == 5 and a[1] is None for a in answers)
        await conn.send([6, "echo", {"still": "open"}])
        assert await conn.receive() == [6, None, {"still": "open"}]
