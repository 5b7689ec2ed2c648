"""Against one real 3-node cluster: reads and writes, exactly-once retries, bad input, status."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import struct

import msgpack
import pytest
import trio

import commit
from commit.config import shard_group
from commit.routing import shard_of
from consensus import auth
from consensus.auth import Credentials
from consensus.rpc import connect_rpc
from commit.tooling.localcluster import ROOT, LocalCluster

pytestmark = pytest.mark.cluster


async def test_thousand_keys_spread_over_every_shard(shared_cluster: LocalCluster) -> None:
    keys = [f"user:{i}" for i in range(1000)]
    async with commit.connect(shared_cluster.config) as db:
        limiter = trio.CapacityLimiter(32)
        versions: dict[str, int] = {}

        async def write(key: str) -> None:
            async with limiter:
                versions[key] = await db.put(key, {"name": key, "n": len(key)})

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(write, key)
        for key in keys:
            value, version, exists = await db.get(key)
            assert exists and value == {"name": key, "n": len(key)}
            assert version == versions[key]

    per_shard = {shard_group(s): 0 for s in range(3)}
    for key in keys:
        per_shard[shard_group(shard_of(key.encode(), 3))] += 1
    rows = await shared_cluster.status()
    stored = {r["group"]: r["keys"] for r in rows if r.get("role") == "leader" and "keys" in r}
    for group, expected in per_shard.items():
        assert expected > 0
        assert stored[group] >= expected, (group, stored)


async def test_values_round_trip_and_delete(shared_cluster: LocalCluster) -> None:
    async with commit.connect(shared_cluster.config) as db:
        for value in [None, True, 7, -2.5, "text", b"\x00bytes", [1, [2]], {"a": {"b": None}}]:
            await db.put(b"rt", value)
            assert (await db.get("rt")).value == value
        put_version = await db.put("gone", 1)
        delete_version = await db.delete("gone")
        assert delete_version > put_version
        assert await db.get("gone") == (None, delete_version, False)
        assert await db.get("never-written") == (None, 0, False)
        with pytest.raises(commit.InvalidRequest):
            await db.put("bad", object())
        with pytest.raises(commit.InvalidRequest):
            await db.put(12, 1)  # type: ignore[arg-type]


def test_sync_facade(shared_cluster: LocalCluster) -> None:
    with commit.connect_sync(shared_cluster.config) as db:
        version = db.put("sync-key", [1, 2])
        assert db.get("sync-key") == ([1, 2], version, True)
        with pytest.raises(commit.InvalidRequest):
            db.put("x" * 5000, 1)


async def _shard_leader(cluster: LocalCluster, key: bytes) -> str:
    return (await cluster.leaders())[shard_group(shard_of(key, 3))]


async def test_retried_put_is_applied_once(shared_cluster: LocalCluster) -> None:
    """The first attempt is sent and its connection dropped before the answer; the retry returns the first result."""
    key = b"exactly-once"
    leader = await _shard_leader(shared_cluster, key)
    opened = await shared_cluster.call(leader, "session.open", {"group": shard_group(shard_of(key, 3))})
    session = [opened["session"], 1, 1]
    params = {"key": key, "value": msgpack.packb("first"), "session": session}
    await _raw_exchange(shared_cluster, leader, _frame([1, "kv.put", params]), wait_s=0)
    node = shared_cluster.config.node(leader)
    conn = await connect_rpc(node.host, node.rpc_port, settings=shared_cluster.config.rpc_settings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.read_responses)
        with trio.fail_after(10):
            retry = await conn.call("kv.put", dict(params, value=msgpack.packb("retry")))
            again = await conn.call("kv.put", dict(params, value=msgpack.packb("again")))
        nursery.cancel_scope.cancel()
    assert retry == again
    async with commit.connect(shared_cluster.config) as db:
        value, version, _ = await db.get(key)
        assert (value, version) == ("first", retry["version"])
        # Had a retry been applied, the shard's write counter would have moved on.
        assert await db.put(key, "next") == retry["version"] + 1


async def test_a_client_that_half_closes_after_a_put_still_gets_its_reply(shared_cluster: LocalCluster) -> None:
    """The put is applied; the reply used to be dropped with the connection when the client shut its side."""
    key = b"half-closed"
    leader = await _shard_leader(shared_cluster, key)
    opened = await shared_cluster.call(leader, "session.open", {"group": shard_group(shard_of(key, 3))})
    params = {"key": key, "value": msgpack.packb("sent"), "session": [opened["session"], 1, 1]}
    frames = await _raw_exchange(shared_cluster, leader, _frame([1, "kv.put", params]), half_close=True)
    replies = [f for f in frames if isinstance(f, list)]
    assert len(replies) == 1 and replies[0][0] == 1 and replies[0][1] is None, frames
    assert frames[-1] == "EOF"
    async with commit.connect(shared_cluster.config) as db:
        assert await db.get(key) == ("sent", replies[0][2]["version"], True)


async def test_client_retry_after_attempt_timeout_is_applied_once(shared_cluster: LocalCluster) -> None:
    """A paused leader makes the first attempt time out; the retry on the new leader applies once."""
    key = b"paused-leader"
    cluster = shared_cluster
    leader = await _shard_leader(cluster, key)
    config = cluster.config
    fast = dataclasses.replace(config, timeouts=dataclasses.replace(config.timeouts, client_attempt_s=0.5))
    async with commit.connect(fast) as db:
        before = await db.put(key, "before")
        cluster.pause(leader)
        try:
            after = await db.put(key, "after")
        finally:
            cluster.resume(leader)
        stats = db.statistics()
        assert stats.retries >= 1
        value, version, _ = await db.get(key)
        assert value == "after" and version == after > before
    await cluster.wait_ready()


async def _raw_exchange(
    cluster: LocalCluster, node_id: str, payload: bytes, wait_s: float = 2.0, half_close: bool = False
) -> list[object]:
    """Handshake by hand, send raw bytes (then shut the sending side if ``half_close``), return every
    frame received until EOF or ``wait_s``."""
    node = cluster.config.node(node_id)
    stream = await trio.open_tcp_stream(node.host, node.rpc_port)
    frames: list[object] = []
    buffer = b""

    async def read_frame() -> object:
        nonlocal buffer
        while True:
            if len(buffer) >= 4:
                (length,) = struct.unpack(">I", buffer[:4])
                if len(buffer) >= 4 + length:
                    frame = msgpack.unpackb(buffer[4 : 4 + length], raw=False)
                    buffer = buffer[4 + length :]
                    return frame
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError
            buffer += chunk

    def frame(obj: object) -> bytes:
        data = msgpack.packb(obj, use_bin_type=True)
        return struct.pack(">I", len(data)) + data

    async with stream:
        hello = await read_frame()
        assert isinstance(hello, dict) and hello["hello"] == node_id and hello["auth"] is True
        key = Credentials(client_secret=cluster.config.secret).key_for(auth.CLIENT)
        assert key is not None
        nonce = auth.new_nonce()
        proof = auth.prove(key, "to-server", auth.CLIENT, node_id, hello["nonce"], nonce)
        await stream.send_all(frame({"as": auth.CLIENT, "nonce": nonce, "proof": proof}))
        welcome = await read_frame()
        assert isinstance(welcome, dict) and welcome["welcome"] == node_id
        assert auth.verify(key, "to-client", auth.CLIENT, node_id, nonce, hello["nonce"], welcome["proof"])
        await stream.send_all(payload)
        if half_close:
            await stream.send_eof()
        with trio.move_on_after(wait_s):
            try:
                while True:
                    frames.append(await read_frame())
            except (EOFError, trio.BrokenResourceError):
                frames.append("EOF")
    return frames


def _frame(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


@pytest.mark.parametrize(
    ("name", "payload", "expect_close", "message_part"),
    [
        ("garbage", struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1", True, "not valid msgpack"),
        ("oversized", struct.pack(">I", 64 * 1024 * 1024) + b"xx", True, "exceeds the limit"),
        ("not-an-envelope", _frame("hello"), False, "3-element array"),
        ("unknown-method", _frame([7, "kv.explode", {}]), False, "unknown method 'kv.explode'"),
        ("wrong-key-type", _frame([8, "kv.get", {"key": 42}]), False, "key must be str or bytes"),
        ("wrong-value-type", _frame([9, "kv.put", {"key": "bad-input", "value": 3,
                                                    "session": [1, 1, 1]}]), False, "value must be bytes"),
        ("bad-session", _frame([10, "kv.put", {"key": "bad-input", "value": b"\x01",
                                               "session": [b"x" * 16, 1, 1]}]), False, "session id must be"),
        ("huge-session", _frame([10, "kv.put", {"key": "bad-input", "value": b"\x01",
                                                "session": [2**64 - 1, 1, 1]}]), False, "session id must be"),
        ("missing-key", _frame([11, "kv.delete", {"session": [1, 1, 1]}]), False, "missing param 'key'"),
        ("bad-group", _frame([12, "session.open", {"group": ["coord"]}]), False, "group must name a group"),
    ],
)
async def test_bad_input_is_answered_and_changes_nothing(
    shared_cluster: LocalCluster, name: str, payload: bytes, expect_close: bool, message_part: str
) -> None:
    cluster = shared_cluster
    leader = await _shard_leader(cluster, b"bad-input")
    frames = await _raw_exchange(cluster, leader, payload)
    errors = [f for f in frames if isinstance(f, list) and f[1] is not None]
    assert errors, f"{name}: no error reply in {frames!r}"
    assert message_part in errors[0][1]["message"], errors[0]
    assert errors[0][1]["code"] == "invalid_request"
    assert (frames[-1] == "EOF") == expect_close, frames
    async with commit.connect(cluster.config) as db:
        assert (await db.get("bad-input")).exists is False
        await db.put(f"after-{name}", name)
        assert (await db.get(f"after-{name}")).value == name


def test_status_json_reports_a_leader_for_every_group(shared_cluster: LocalCluster) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "node.py"), "status", "--json", "--config", str(shared_cluster.config_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    report = json.loads(out.stdout)
    assert report["leaderless"] == []
    groups = {g.name for g in shared_cluster.config.groups()}
    leaders = {r["group"] for r in report["groups"] if r["role"] == "leader"}
    assert leaders == groups
    assert len(report["groups"]) == 3 * len(groups)
    assert all(r["reachable"] for r in report["groups"])
    table = subprocess.run(
        [sys.executable, str(ROOT / "node.py"), "--config", str(shared_cluster.config_path), "status"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert table.splitlines()[0].split() == [
        "node", "group", "role", "leader", "term", "commit_index", "applied_index", "reachable"
    ]
