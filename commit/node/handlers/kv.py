"""Single keys: linearizable reads and exactly-once writes that respect transactions' locks.

    kv.get        {key, fence?}          -> {value, version, exists}
    kv.put        {key, value, session}  -> {version}
    kv.delete     {key, session}         -> {version}
    session.open  {group}                -> {session}   leader of group: a new exactly-once session

``session`` is ``[session id, seq, low_water]``, the id from ``session.open``
(see ``consensus.sessions``); values are bytes (the client packs them).

``fence`` (default true) is the read barrier that makes a read linearizable. A
transaction's read sends ``fence: false``: its version is validated when the
transaction prepares, inside a replicated command, against the shard's state at
that point of the log (``ShardState.prepare``; versions never repeat), so a
stale read there costs an abort and a retry, never a wrong commit. That is the
optimistic-concurrency argument (Kung and Robinson, 1981), and it saves a Raft
round per read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from commit.errors import Conflict
from commit.node.handlers.base import Handler, Handlers, shard_state
from commit.node.handlers.params import session_of
from commit.outcomes import ABORTED, COMMITTED
from consensus.errors import InvalidRequest, Timeout, Unavailable
from consensus.group import ReplicaGroup
from consensus.sessions import SessionRef

LOCK_POLL_S = 0.002


class KeyValue(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {"kv.get": self.get, "kv.put": self.put, "kv.delete": self.delete, "session.open": self.open_session}

    async def get(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self.check.key_param(params)
        fence = params.get("fence", True)
        if not isinstance(fence, bool):
            raise InvalidRequest(f"fence must be true or false, got {type(fence).__name__}")
        group = self.shard_for(key)
        return await self.within_request_timeout(group.name, lambda: self._read_unlocked(group, key, fence), False)

    async def put(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self.check.key_param(params)
        value = self.check.value(params.get("value"))
        return await self._write_unlocked(key, ("put", key, value), session_of(params))

    async def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self.check.key_param(params)
        return await self._write_unlocked(key, ("delete", key), session_of(params))

    async def open_session(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self.check.group_name(params.get("group"))
        group = self.leading(name)
        return {"session": await self.within_request_timeout(name, group.open_session, True)}

    async def _read_unlocked(self, group: ReplicaGroup, key: bytes, fence: bool) -> dict[str, Any]:
        """A read (linearizable when fenced) that never returns a value a prepared transaction is about to change."""
        if fence:
            await group.read_barrier()
        if not shard_state(group).read_skips_lock:
            await self._wait_unlocked(group, key, lambda k: shard_state(group).writer_of(k), in_doubt_is_final=True)
        cell = shard_state(group).read(key)
        return {"value": cell.value, "version": cell.version, "exists": cell.value is not None}

    async def _wait_unlocked(self, group: ReplicaGroup, key: bytes, holder_of: Callable[[bytes], str | None], *,
                             in_doubt_is_final: bool) -> None:
        """Until no transaction holds ``key`` (as ``holder_of`` sees it on this leader).

        A holder that keeps the key for ``transactions.lock_wait_s`` is resolved once: its authority is
        asked for the outcome, which is applied here if decided. If it is still in doubt, a read gives up
        at once (``Unavailable``: a reader must not wait on a blocked 2PC), and a write waits on within its
        caller's deadline.
        """
        wait_s = self.config.transactions.lock_wait_s
        holder, asked = holder_of(key), None
        patience = trio.current_time() + wait_s
        while holder is not None:
            if trio.current_time() >= patience and holder != asked:
                asked = holder
                learned = await self.node.resolver.resolve(group, holder)
                if in_doubt_is_final and learned not in (COMMITTED, ABORTED):
                    raise Unavailable(f"{key!r:.60} is locked by in-doubt transaction {holder} ({learned})",
                                      txid=holder)
            await trio.sleep(LOCK_POLL_S)
            current = holder_of(key)
            if current != holder:
                holder, patience = current, trio.current_time() + wait_s

    async def _write_unlocked(self, key: bytes, command: tuple[Any, ...], session: SessionRef) -> dict[str, Any]:
        """A single-key write that waits out the transactions locking its key (issue 9.2).

        The shard refuses a write on a locked key (``Conflict``) without changing anything, and the session
        table does not keep that refusal, so the write is proposed again, with the same session, once the
        key is free; a transaction may take the key in between, and then it waits again. Bounded by
        ``timeouts.request_s``: still locked then, it answers ``Conflict`` (not applied; the client retries).
        """
        group = self.shard_for(key)
        request_s = self.config.timeouts.request_s
        proposing = False
        with trio.move_on_after(request_s):
            while True:
                await self._wait_unlocked(group, key, lambda k: shard_state(group).holder_of(k),
                                          in_doubt_is_final=False)
                proposing = True
                try:
                    return {"version": await group.propose(command, session)}
                except Conflict:
                    proposing = False
        if proposing:
            raise Timeout(f"{group.name}: no result within {request_s}s", maybe_applied=True)
        holder = shard_state(group).holder_of(key) or ""
        raise Conflict(f"key {key!r:.60} is still locked by transaction {holder} after {request_s}s", txid=holder)
