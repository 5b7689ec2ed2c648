"""consensus.rpc's handshake and per-connection limits, in-process: a real server on 127.0.0.1:0.

A client is not a node (each proves its own key), the server proves its key
back (a squatter on a node's port is not trusted), and what a stranger or a
client that misbehaves can make a server hold is bounded.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
import trio

from consensus import auth
from consensus.auth import Credentials
from consensus.errors import Unauthorized, Unavailable
from consensus.rpc import RpcSettings, current_caller, open_rpc_client
from tests.test_rpc_memory import HOST, MAX_FRAME, WAIT, RawConn, server_starter

CLUSTER = Credentials(client_secret="client-secret", peer_secret="peer-secret", node_id="n1")
BASE = RpcSettings(max_frame_bytes=MAX_FRAME, handshake_timeout_s=5.0, max_in_flight_per_connection=64)
SERVER = dataclasses.replace(BASE, credentials=CLUSTER)
CLIENT = dataclasses.replace(BASE, credentials=Credentials(client_secret="client-secret"))


def as_node(node_id: str, peer_secret: str = "peer-secret") -> RpcSettings:
    return dataclasses.replace(BASE, credentials=Credentials("client-secret", peer_secret, node_id))


async def _whoami(params):
    caller = current_caller()
    return {"node": caller.node_id, "address": caller.address.split(":")[0]}


async def _sleep(params):
    await trio.sleep(params["delay"])
    return "slept"


async def _big(params):
    return b"x" * params["n"]


ROUTER = {"whoami": _whoami, "sleep": _sleep, "big": _big}


@pytest.fixture
def start_server(nursery):
    return server_starter(nursery, ROUTER, SERVER)


async def whoami(port: int, settings: RpcSettings) -> dict:
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=settings) as client:
            return await client.call("whoami", {})


async def test_a_client_is_a_client_and_a_node_is_the_node_whose_key_it_proved(start_server):
    port = await start_server()
    assert await whoami(port, CLIENT) == {"node": None, "address": HOST}
    assert await whoami(port, as_node("n2")) == {"node": "n2", "address": HOST}
    assert await whoami(port, as_node("n3")) == {"node": "n3", "address": HOST}


async def test_a_node_claim_without_the_peer_secret_is_refused(start_server):
    port = await start_server()
    with pytest.raises(Unauthorized, match="node key of 'n2' was not proven"):
        await whoami(port, as_node("n2", peer_secret="guessed"))
    # the client secret alone never makes a node: the claim is checked against the node's own key
    client_as_node = dataclasses.replace(BASE, credentials=Credentials("client-secret", "client-secret", "n2"))
    with pytest.raises(Unauthorized):
        await whoami(port, client_as_node)


async def test_a_server_without_the_secret_is_not_trusted(start_server):
    """A process squatting a dead node's port, knowing no secret, cannot pass for the node."""
    squatter = await start_server(BASE)  # accepts anyone, proves nothing
    with pytest.raises(Unauthorized, match="did not prove the cluster secret"):
        await whoami(squatter, CLIENT)
    with pytest.raises(Unauthorized):  # it cannot check a node key either, so it refuses the claim
        await whoami(squatter, as_node("n2"))
    wrong = await start_server(dataclasses.replace(SERVER, credentials=Credentials("other", "other-peer")))
    with pytest.raises(Unauthorized):
        await whoami(wrong, CLIENT)


def test_a_proof_is_bound_to_the_server_the_role_and_both_nonces():
    key = CLUSTER.key_for("n2")
    assert key is not None and key != CLUSTER.key_for("n3") and key != CLUSTER.key_for(auth.CLIENT)
    nonce, theirs = auth.new_nonce(), auth.new_nonce()
    proof = auth.prove(key, "to-server", "n2", "n1", nonce, theirs)
    assert auth.verify(key, "to-server", "n2", "n1", nonce, theirs, proof)
    for changed in (("to-client", "n2", "n1", nonce, theirs), ("to-server", "n3", "n1", nonce, theirs),
                    ("to-server", "n2", "n3", nonce, theirs), ("to-server", "n2", "n1", theirs, nonce)):
        assert not auth.verify(key, *changed, proof)
    assert not auth.verify(key, "to-server", "n2", "n1", nonce, theirs, "not bytes")


async def test_before_the_proof_a_stranger_may_send_only_a_tiny_frame(start_server):
    port = await start_server(dataclasses.replace(SERVER, max_handshake_frame_bytes=512))
    with trio.fail_after(WAIT):
        conn = RawConn(await trio.open_tcp_stream(HOST, port))
        assert (await conn.receive())["auth"] is True
        await conn.send_bytes(struct.pack(">I", 513))  # announced, never sent: nothing is buffered for it
        await conn.expect_eof()
    assert (await whoami(port, CLIENT))["node"] is None


@pytest.mark.parametrize("total, per_address, refusal", [
    (3, 2, "at most 2 connections from 127.0.0.1"),
    (2, 10, "the node serves at most 2 connections"),
])
async def test_connections_are_capped_in_all_and_per_address(start_server, total, per_address, refusal):
    port = await start_server(dataclasses.replace(SERVER, max_connections=total, max_connections_per_address=per_address))
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=CLIENT), open_rpc_client(HOST, port, settings=CLIENT):
            with pytest.raises(Unavailable, match=refusal):
                async with open_rpc_client(HOST, port, settings=CLIENT):
                    pass  # pragma: no cover
    with trio.fail_after(WAIT):  # closed connections free their places, once the server has seen them close
        while True:
            try:
                assert (await whoami(port, CLIENT))["node"] is None
                break
            except Unavailable:
                await trio.sleep(0.01)


async def test_an_idle_connection_is_closed_but_one_waiting_for_a_reply_is_not(start_server):
    port = await start_server(dataclasses.replace(SERVER, idle_timeout_s=0.3))
    with trio.fail_after(WAIT):
        async with open_rpc_client(HOST, port, settings=CLIENT) as client:
            assert await client.call("sleep", {"delay": 0.8}) == "slept"  # in flight longer than the idle limit
            await trio.sleep(0.6)
            assert client.closed
            with pytest.raises(Unavailable, match="closed"):
                await client.call("whoami", {})


async def test_a_client_that_never_reads_its_replies_is_cut_off(start_server):
    budget = 256 * 1024
    port = await start_server(dataclasses.replace(SERVER, max_queued_reply_bytes=budget))
    with trio.fail_after(WAIT):
        conn = RawConn(await trio.open_tcp_stream(HOST, port))
        hello = await conn.receive()
        nonce = auth.new_nonce()
        key = CLUSTER.key_for(auth.CLIENT)
        assert key is not None
        proof = auth.prove(key, "to-server", auth.CLIENT, "n1", hello["nonce"], nonce)
        await conn.send({"as": auth.CLIENT, "nonce": nonce, "proof": proof})
        assert "welcome" in await conn.receive()
        requests = 400
        answered = 0
        try:
            for req_id in range(1, requests + 1):
                await conn.send([req_id, "big", {"n": 60_000}])
            await trio.sleep(1.0)  # the server meanwhile fills the socket buffers, then its budget
            while True:
                message = await conn.receive()
                answered += message[0] > 0
        except (EOFError, trio.BrokenResourceError):  # cut off
            pass
        assert answered < requests, "the server buffered every reply for a client that did not read"
    assert (await whoami(port, CLIENT))["node"] is None


async def test_a_client_that_half_closes_still_gets_its_replies(start_server):
    port = await start_server(BASE)
    with trio.fail_after(WAIT):
        conn = RawConn(await trio.open_tcp_stream(HOST, port))
        await conn.receive()
        await conn.send({"as": auth.CLIENT, "nonce": auth.new_nonce(), "proof": b""})
        await conn.receive()
        await conn.send([1, "sleep", {"delay": 0.2}])
        await conn.send([2, "whoami", {}])
        await conn.stream.send_eof()
        replies = {(await conn.receive())[0], (await conn.receive())[0]}
        assert replies == {1, 2}
        await conn.expect_eof()
