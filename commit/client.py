"""The async client library: ``async with commit.connect("cluster.toml") as db``.

Keys are ``str`` or ``bytes`` (a str key is its UTF-8 bytes). Values are any
msgpack-able Python value: None, bool, int, float, str, bytes, and lists and
dicts of those; tuples come back as lists.

Each call is routed to the leader of the key's shard. The client keeps one
pipelined connection per node, remembers which node leads each group,
follows ``not_leader`` redirects, and rides through leader changes by
retrying with backoff until ``timeouts.client_deadline_s`` (``commit.retry``). A write carries
``(session, seq)``, the same on every retry, so a retry after a timeout or a
lost connection is applied at most once. When the deadline passes, the error
raised says whether the write may have been applied (``maybe_applied``).

Sessions are opened explicitly, one per group, the first time the client
writes there (``session.open``: the group hands out a number it never hands
out again, as in the Raft thesis, section 6.3). A group that has forgotten a
session (``raft.max_sessions``) refuses its commands with ``SessionExpired``;
the client then opens a new session and carries on, and re-sends the command
in hand under it only if no earlier attempt of it can have been applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from commit.config import COORDINATOR_GROUP, ClusterConfig, load_config, shard_group
from commit.routing import Key, key_bytes, shard_of
from commit.errors import Conflict
from commit.retry import RetryPolicy
from commit.status import status as status_of
from commit.transaction import Transaction, run as run_transaction
from commit.txids import check_txid
from commit.values import Versioned, pack_value, unpack_value
from consensus.errors import ClusterError, InvalidRequest, NotLeader, SessionExpired, Timeout, Unavailable
from consensus.rpc import RpcClient, RpcSettings, run_rpc_client
from consensus.tasks import open_helper_nursery


R = TypeVar("R")

# An attempt may use at most this share of the time its caller has left (trio.current_effective_deadline),
# so that a node that says nothing (paused, partitioned) leaves time to try another member of the group:
# otherwise a caller's deadline shorter than timeouts.client_attempt_s cancels every call at the same
# silent node, and the leader cache never moves on.
ATTEMPT_SHARE = 0.5


@dataclass
class _Session:
    """This client's exactly-once session with one group: the number the group gave it, and its commands."""

    id: int
    next_seq: int = 1
    outstanding: set[int] = field(default_factory=set)

    def allocate(self) -> int:
        """The next sequence number, outstanding until the caller discards it."""
        seq = self.next_seq
        self.next_seq += 1
        self.outstanding.add(seq)
        return seq

    def low_water(self) -> int:
        return min(self.outstanding)


@dataclass
class ClientStatistics:
    requests: int = 0
    attempts: int = 0
    redirects: int = 0
    retries: int = 0


class Database:
    """A connection to a cluster. Create it with ``connect``; safe to share between tasks."""

    def __init__(self, config: ClusterConfig, nursery: trio.Nursery, rpc_settings: RpcSettings) -> None:
        self.config = config
        self._nursery = nursery
        self._rpc_settings = rpc_settings
        self._connections: dict[str, RpcClient] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self._leaders: dict[str, str] = {}
        self._members = {g.name: g.members for g in config.groups()}
        # Each group keeps its own session table, so sessions (and their sequence numbers) are per group.
        self._sessions: dict[str, _Session] = {}
        self._session_locks = {g.name: trio.Lock() for g in config.groups()}
        self._stats = ClientStatistics()
        # Node-side fault injection only (commit.faults): why a (node id, method) message is lost, or None.
        self.lose: Callable[[str, str], str | None] | None = None

    def leader_of(self, group: str) -> str | None:
        """The node this client last found leading ``group``, if any."""
        return self._leaders.get(group)

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(**vars(self._stats))

    def _group_of(self, key: Key) -> tuple[str, bytes]:
        raw = key_bytes(key, self.config.limits.max_key_bytes)
        return shard_group(shard_of(raw, self.config.shard_count)), raw

    async def get(self, key: Key) -> Versioned:
        """Linearizable read: sees every write acknowledged before it began."""
        return await self._get(key, fence=True)

    async def read_for_commit(self, key: Key) -> Versioned:
        """A read whose version a commit will validate (a transaction's): no read barrier, so it may be stale.

        Only for reads that go into a commit's read set: the commit's validation then aborts a stale one
        (commit.node.handlers.kv explains why that is safe).
        """
        return await self._get(key, fence=False)

    async def _get(self, key: Key, fence: bool) -> Versioned:
        group, raw = self._group_of(key)
        reply = await self._request(group, "kv.get", {"key": raw, "fence": fence}, write=False)
        return Versioned(unpack_value(reply["value"]), reply["version"], reply["exists"])

    def checked_value(self, value: Any) -> bytes:
        """``value`` packed with msgpack, or InvalidRequest if it cannot be stored."""
        packed = pack_value(value)
        if len(packed) > self.config.limits.max_value_bytes:
            raise InvalidRequest(
                f"value of {len(packed)} bytes exceeds the limit of {self.config.limits.max_value_bytes} bytes"
            )
        return packed

    async def put(self, key: Key, value: Any) -> int:
        """Store ``value`` under ``key``; returns the new version. Waits out a prepared transaction's lock."""
        group, raw = self._group_of(key)
        packed = self.checked_value(value)
        reply = await self._request(group, "kv.put", {"key": raw, "value": packed}, write=True)
        return reply["version"]

    async def delete(self, key: Key) -> int:
        """Delete ``key`` (absent keys too); returns the version of the deletion."""
        group, raw = self._group_of(key)
        reply = await self._request(group, "kv.delete", {"key": raw}, write=True)
        return reply["version"]

    @asynccontextmanager
    async def transaction(self, protocol: str | None = None) -> AsyncIterator[Transaction]:
        """A transaction that commits on a clean exit and aborts on an exception (no retry: see ``run``)."""
        tx = Transaction(self, protocol)
        try:
            yield tx
        except BaseException:
            await tx.abort()
            raise
        if tx.state == "open":
            await tx.commit()

    async def run(self, fn: Callable[..., Awaitable[R]], *args: Any, protocol: str | None = None) -> R:
        """Run ``fn(tx, *args)`` and commit, retrying on conflict; see ``commit.transaction``."""
        return await run_transaction(self, fn, *args, protocol=protocol)

    async def status(self, txid: str, participants: tuple[str, ...] = ()) -> str:
        """``committed``, ``aborted``, ``pending``, ``unknown`` or ``forgotten``: asks the authority for txid.

        For 2PC an unknown txid is aborted when the participants are given (presumed abort: a participant
        that never prepared it records it aborted, so it can never commit); without them, pending. A Paxos
        Commit outcome lives with the
        acceptors, one instance per participant, and a 3PC outcome with the participants themselves (the
        3PC coordinator keeps no record, and with the participants given the client asks them directly,
        dead coordinator or not): pass the participants (``CommitUnknown.participants``) so an authority
        that never saw txid, or forgot it in a crash, can find the outcome; without them such a txid
        stays ``pending``. The participants must be all of txid's, exactly (the txid binds them): any
        other list is answered ``unknown`` and changes nothing. ``forgotten``: txid was made before what
        its authority and participants still remember (``limits.forget_after_s``); it may have committed,
        and asking again will not tell (docs/PROTOCOLS.md, "Forgetting").
        """
        return await status_of(self, check_txid(txid), tuple(participants))

    async def new_epoch(self) -> int:
        """A fresh number from the coordinator group, larger than any handed out before."""
        reply = await self._request(COORDINATOR_GROUP, "coord.epoch", {}, write=True)
        return reply["epoch"]

    async def _connection(self, node_id: str) -> RpcClient:
        conn = self._connections.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connect_locks.setdefault(node_id, trio.Lock())
        async with lock:
            conn = self._connections.get(node_id)
            if conn is not None and not conn.closed:
                return conn
            node = self.config.node(node_id)
            with trio.fail_after(self.config.timeouts.connect_s):
                conn = await self._nursery.start(
                    partial(
                        run_rpc_client, node.host, node.rpc_port,
                        settings=self._rpc_settings, expect_node=node_id,
                    )
                )
            self._connections[node_id] = conn
            return conn

    def _fallback(self, group: str | None, failed: str, pinned: str | None) -> str:
        """The node to try after ``failed`` did not serve ``group``: the next member, or the pinned node again."""
        if pinned is not None or group is None:
            return pinned or failed
        self._leaders.pop(group, None)
        members = self._members[group]
        if failed not in members:
            return members[0]
        return members[(members.index(failed) + 1) % len(members)]

    async def call_group(self, group: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """An idempotent request to ``group``'s leader, retried through redirects and failures."""
        return await self._request(group, method, params, write=False)

    async def call_node(self, node_id: str, method: str, params: dict[str, Any], *,
                        resend_maybe_applied: bool = True) -> dict[str, Any]:
        """A request to one node, retried until the deadline while it is unreachable.

        ``resend_maybe_applied=False`` is for a request that is not idempotent across a restart of the
        node: once an attempt may have reached it, the call raises ``Timeout(maybe_applied=True)``
        instead of sending it again (a 3PC commit: a restarted coordinator would start a second
        coordination of the same transaction, which can split it).
        """
        self._stats.requests += 1
        return await self._attempts(None, method, params, pinned=node_id, resend=resend_maybe_applied)

    async def _request(
        self, group: str, method: str, params: dict[str, Any], *, write: bool
    ) -> dict[str, Any]:
        """A request routed to ``group``'s leader; a write carries a session and waits out locks."""
        self._stats.requests += 1
        return await self._attempts(group, method, params, await self._session(group, None) if write else None)

    async def _session(self, group: str, expired: _Session | None) -> _Session:
        """This client's session with ``group``: opened on first use, and again once ``expired`` is gone."""
        current = self._sessions.get(group)
        if current is not None and current is not expired:
            return current
        async with self._session_locks[group]:
            session = self._sessions.get(group)
            if session is None or session is expired:
                reply = await self._attempts(group, "session.open", {"group": group})
                session = self._sessions[group] = _Session(reply["session"])
            return session

    async def _attempts(
        self, group: str | None, method: str, params: dict[str, Any], session: _Session | None = None,
        pinned: str | None = None, resend: bool = True,
    ) -> dict[str, Any]:
        """Send until answered, under ``commit.retry``'s policy; a write under ``session`` gets its seq here."""
        timeouts = self.config.timeouts
        target = f"node {pinned}" if pinned is not None else group
        policy = RetryPolicy.starting_now(f"{method} on {target}", timeouts)
        node = pinned or self._leaders.get(group or "") or self._members[group or ""][0]
        seq = session.allocate() if session is not None else 0
        try:
            while True:
                remaining = policy.start_attempt()
                self._stats.attempts += 1
                if session is not None:
                    params["session"] = [session.id, seq, session.low_water()]
                caller_left = max(0.0, trio.current_effective_deadline() - trio.current_time())
                error: ClusterError
                try:
                    with trio.fail_after(min(timeouts.client_attempt_s, remaining, caller_left * ATTEMPT_SHARE)):
                        lost = self.lose(node, method) if self.lose is not None else None
                        if lost is not None:
                            raise Unavailable(lost)  # as if node were unreachable: nothing was sent
                        conn = await self._connection(node)
                        reply = await conn.call(method, params)
                    if group is not None:
                        self._leaders[group] = node
                    return reply
                except NotLeader as exc:
                    self._stats.redirects += 1
                    # Only a member of the group is followed: a redirect to a node the config does not
                    # have in the group (a confused or hostile answer) is treated as no hint at all.
                    if pinned is None and exc.leader in self._members[group or ""] and exc.leader != node:
                        node = exc.leader
                        await policy.on_error(exc, backoff=False)
                        continue
                    error, node = exc, self._fallback(group, node, pinned)
                except Conflict as exc:
                    if session is None:
                        raise  # a transaction's conflict is the transaction's to retry (commit.transaction)
                    error = exc  # a single-key write waits out a prepared transaction's lock
                except SessionExpired:
                    if session is None or group is None or policy.maybe_applied:
                        raise  # an earlier attempt may have been applied under the forgotten session
                    # Refused before it was applied, and no earlier attempt can have been: send it again,
                    # under a new session.
                    session.outstanding.discard(seq)
                    session = await self._session(group, session)
                    seq = session.allocate()
                    continue
                except (Unavailable, Timeout) as exc:
                    error, node = exc, self._fallback(group, node, pinned)
                except trio.TooSlowError:
                    error = Timeout(f"no answer from {node} within the attempt timeout", maybe_applied=True)
                    node = self._fallback(group, node, pinned)
                if error.maybe_applied and not resend:
                    raise Timeout(f"{method} on {target} may have been applied; not sent again: {error}",
                                  maybe_applied=True)
                self._stats.retries += 1
                await policy.on_error(error)
        finally:
            if session is not None:
                session.outstanding.discard(seq)


@asynccontextmanager
async def connect(
    config: str | Path | ClusterConfig = "cluster.toml", *, as_node: str | None = None
) -> AsyncIterator[Database]:
    """Open a client for the cluster described by ``config`` (a path or a parsed config).

    ``as_node`` is for a node's own calls to its peers: they prove that node's key (``consensus.auth``).
    """
    cfg = config if isinstance(config, ClusterConfig) else load_config(config)
    async with open_helper_nursery() as nursery:
        yield Database(cfg, nursery, cfg.rpc_settings(as_node))

