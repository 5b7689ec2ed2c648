"""The RPC methods a node serves, over the replica groups it hosts.

Every parameter is checked here, at the edge, before anything is proposed:
a request with a wrong type or size is answered with ``invalid_request`` and
changes nothing. A request for a group this node does not lead is answered
with ``not_leader`` and the leader's id, so the client goes there directly.

Methods (params -> result):

    kv.get           {key}                          -> {value, version, exists}
    kv.put           {key, value, session}          -> {version}
    kv.delete        {key, session}                 -> {version}
    session.open     {group}                        -> {session}     leader of group: a new exactly-once session
    txn.commit       {txid, participants}           -> {outcome}     coordinator of txid's protocol
    txn.commit_one   {txid, shard, reads, writes}   -> {outcome}     leader of the one shard
    txn.status       {txid, participants?}          -> {outcome}     coordinator (fences unknown txids)
    shard.prepare    {txid, shard, reads, writes, participants, leader, hop} -> {vote, reason?}
    shard.query      {txid, shard}                  -> {state}       (fences unknown txids)
    shard.decide     {txid, shard, outcome}         -> {state}
    shard.inspect    {txid, shard}                  -> {state, phase, promised}  read-only (no fencing)
    3pc.join         {txid, shard, round, leader, hop}         -> {state, promised}   3PC state request
    3pc.move         {txid, shard, round, target, leader, hop} -> {state, promised}   PreCommit / PreAbort
    paxos.phase2a    {txid, shard, value, reason?, participants, leader, fast, hop} -> {}   acceptor, ballot 0
    paxos.phase2b    {txid, acceptor, ballot, values, reasons?, hop}      -> {}   leader
    paxos.learn      {txid, shard, acceptor, ballot, values, participants, hop} -> {outcome}  fast participant
    paxos.phase1a    {txid, ballot, participants, instances} -> {promised, accepted, promise}  acceptor
    paxos.accept     {txid, ballot, values}         -> {accepted}                acceptor
    node.trace       {txid}                         -> {events}
    coord.epoch      {session}                      -> {epoch}
    node.status      {}                             -> {node, groups, transactions, in_doubt, counters}
    node.compact     {}                             -> {groups}
    test.hold        {point}                        -> {}            only with transactions.fault_hooks
    test.transfer_leader {group, to}                -> {}            only with transactions.fault_hooks
    test.fault       {op, peer?, method?}           -> {faults}      only with transactions.fault_hooks
                     op: cut | heal | drop | undrop | list (commit.faults)

``session`` is ``[session id, seq, low_water]``, the id from ``session.open``
(see ``consensus.sessions``); values are bytes (the client packs them).
``participants`` maps a shard name to ``{reads: [[key, version]...],
writes: [[key, value or nil]...]}`` in ``txn.commit``, and is the list of
shard names elsewhere; every participant list is checked against the txid,
which binds them (``commit.txids``): a wrong one is ``invalid_request``, and
``txn.status`` answers ``unknown`` for it (nothing can be looked up from it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from commit.config import COORDINATOR_GROUP, ClusterConfig, shard_group
from commit.errors import CommitUnknown, Conflict
from commit.node.faults import OPS, LinkFaults
from commit.node.hooks import FaultHooks
from commit.node.paxos_roles import PaxosNode
from commit.node.resolver import InDoubtResolver
from commit.node.silence_watch import SilenceWatch
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.shard import ShardState
from commit.node.tracing import Tracer
from commit.node.transaction_manager import TransactionManager
from commit.outcomes import ABORTED, COMMITTED, PREPARED, UNKNOWN
from commit.protocols.paxos_commit import Phase2b
from commit.protocols.registry import ONE_PHASE, Coordinator
from commit.protocols.three_phase import PREABORTED, PRECOMMITTED, Round
from commit.routing import key_bytes, shard_of
from commit.txids import are_participants_of, authority_of, check_participants, check_txid, protocol_of
from consensus.errors import InvalidRequest, NotLeader, Timeout, Unavailable
from consensus.group import ReplicaGroup
from consensus.paxos import BALLOT_ZERO, Ballot, ballot_of
from consensus.sessions import SessionRef

LOCK_POLL_S = 0.002
MAX_SESSION_NUMBER = 2**63 - 1  # msgpack's largest signed integer


def _session(params: dict[str, Any]) -> SessionRef:
    raw = params.get("session")
    if not (isinstance(raw, list) and len(raw) == 3):
        raise InvalidRequest("session must be [session id, seq, low_water]")
    session_id, seq, low_water = raw
    for name, n in (("session id", session_id), ("seq", seq), ("low_water", low_water)):
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SESSION_NUMBER:
            raise InvalidRequest(f"session {name} must be a positive integer")
    if low_water > seq:
        raise InvalidRequest("session low_water must not exceed seq")
    return SessionRef(session_id, seq, low_water)


class NodeService:
    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        groups: dict[str, ReplicaGroup],
        managers: dict[str, TransactionManager],
        resolver: InDoubtResolver,
        silence: SilenceWatch,
        hooks: FaultHooks,
        faults: LinkFaults,
        paxos: PaxosNode,
        tracer: Tracer,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.groups = groups
        self.managers = managers
        self.resolver = resolver
        self.silence = silence
        self.hooks = hooks
        self.faults = faults
        self.paxos = paxos
        self.tracer = tracer
        paxos.deliver_local = self._deliver_phase2b
        self.one_phase: dict[str, int] = {COMMITTED: 0, ABORTED: 0}

    def router(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {
            "kv.get": self.kv_get,
            "kv.put": self.kv_put,
            "kv.delete": self.kv_delete,
            "session.open": self.session_open,
            "txn.commit": self.txn_commit,
            "txn.commit_one": self.txn_commit_one,
            "txn.status": self.txn_status,
            "shard.prepare": self.shard_prepare,
            "shard.query": self.shard_query,
            "shard.decide": self.shard_decide,
            "shard.inspect": self.shard_inspect,
            "3pc.join": self.three_phase_join,
            "3pc.move": self.three_phase_move,
            "paxos.phase2a": self.paxos_phase2a,
            "paxos.phase2b": self.paxos_phase2b,
            "paxos.learn": self.paxos_learn,
            "paxos.phase1a": self.paxos_phase1a,
            "paxos.accept": self.paxos_accept,
            "node.trace": self.node_trace,
            "coord.epoch": self.coord_epoch,
            "node.status": self.node_status,
            "node.compact": self.node_compact,
            "test.hold": self.test_hold,
            "test.transfer_leader": self.test_transfer_leader,
            "test.fault": self.test_fault,
        }

    # -- validation -----------------------------------------------------------------

    def _key(self, raw: Any) -> bytes:
        return key_bytes(raw, self.config.limits.max_key_bytes)

    def _key_param(self, params: dict[str, Any]) -> bytes:
        if "key" not in params:
            raise InvalidRequest("missing param 'key'")
        return self._key(params["key"])

    def _value(self, value: Any, allow_none: bool = False) -> bytes | None:
        if value is None and allow_none:
            return None
        if not isinstance(value, bytes):
            raise InvalidRequest(f"value must be bytes (msgpack-packed), got {type(value).__name__}")
        if len(value) > self.config.limits.max_value_bytes:
            raise InvalidRequest(
                f"value of {len(value)} bytes exceeds the limit of {self.config.limits.max_value_bytes} bytes"
            )
        return value

    def _shard_name(self, raw: Any) -> str:
        if raw not in self.config.shard_names():
            raise InvalidRequest(f"unknown shard {raw!r:.40}")
        return raw

    def _payload(self, params: dict[str, Any], shard: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        reads, writes = params.get("reads"), params.get("writes")
        if not isinstance(reads, list) or not isinstance(writes, list):
            raise InvalidRequest("reads and writes must be arrays")
        checked_reads = []
        for item in reads:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], int)
                    and not isinstance(item[1], bool) and item[1] >= 0):
                raise InvalidRequest("each read must be [key, version >= 0]")
            checked_reads.append((self._key(item[0]), item[1]))
        checked_writes = []
        for item in writes:
            if not (isinstance(item, list) and len(item) == 2):
                raise InvalidRequest("each write must be [key, value or nil]")
            checked_writes.append((self._key(item[0]), self._value(item[1], allow_none=True)))
        for key, _ in checked_reads + checked_writes:
            if shard_group(shard_of(key, self.config.shard_count)) != shard:
                raise InvalidRequest(f"key {key!r:.40} does not belong to {shard}")
        return tuple(checked_reads), tuple(checked_writes)

    def _leading(self, name: str) -> ReplicaGroup:
        group = self.groups.get(name)
        if group is None:
            raise NotLeader(f"node {self.node_id} hosts no replica of {name}", leader=None)
        if not group.is_leader():
            raise NotLeader(f"node {self.node_id} does not lead {name}", leader=group.leader_id())
        return group

    def _shard_for(self, key: bytes) -> ReplicaGroup:
        return self._leading(shard_group(shard_of(key, self.config.shard_count)))

    def _manager(self, txid: str) -> TransactionManager:
        spec = protocol_of(txid)
        if spec.coordinator is Coordinator.NODE and self.node_id != self.config.twopc_coordinator:
            raise NotLeader(f"{spec.name} transactions are coordinated by {self.config.twopc_coordinator}",
                            leader=self.config.twopc_coordinator)
        if spec.coordinator is Coordinator.GROUP:
            self._leading(COORDINATOR_GROUP)
        manager = self.managers.get(spec.name)
        if manager is None:
            raise InvalidRequest(f"{txid} is not a transaction this node coordinates")
        return manager

    def _shards(self, raw: Any, what: str) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise InvalidRequest(f"{what} must be a non-empty array of shard names")
        return tuple(self._shard_name(s) for s in raw)

    def _participants_of(self, txid: str, raw: Any) -> tuple[str, ...]:
        """txid's participants, given as an array of shard names; InvalidRequest unless they are its own."""
        return check_participants(txid, self._shards(raw, "participants"))

    def _reason(self, raw: Any) -> str:
        """A participant's own words for its NO vote, carried to the leader; cut to ``limits.max_reason_chars``."""
        if not isinstance(raw, str):
            raise InvalidRequest("reason must be a string")
        return raw[: self.config.limits.max_reason_chars]

    def _node_id(self, raw: Any, what: str) -> str:
        if not isinstance(raw, str) or raw not in {n.id for n in self.config.nodes}:
            raise InvalidRequest(f"{what} must be a node id of this cluster, got {raw!r:.40}")
        return raw

    def _hop(self, params: dict[str, Any]) -> int:
        hop = params.get("hop", 1)
        if not isinstance(hop, int) or isinstance(hop, bool) or not 1 <= hop <= 64:
            raise InvalidRequest("hop must be an integer from 1 to 64")
        return hop

    def _ballot(self, raw: Any) -> Ballot:
        try:
            return ballot_of(raw)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    def _votes(self, raw: Any, what: str) -> dict[str, str]:
        if not isinstance(raw, dict) or not all(v in (PREPARED, ABORTED) for v in raw.values()):
            raise InvalidRequest(f"{what} must map shard names to 'prepared' or 'aborted'")
        return {self._shard_name(k): v for k, v in raw.items()}

    def _acceptor_here(self) -> None:
        if self.paxos.acceptor is None:
            raise InvalidRequest(f"node {self.node_id} is not an acceptor (not in the coordinator group)")

    async def _within_request_timeout(self, what: str, work: Callable[[], Awaitable[Any]], maybe_applied: bool) -> Any:
        with trio.move_on_after(self.config.timeouts.request_s):
            return await work()
        raise Timeout(f"{what}: no result within {self.config.timeouts.request_s}s", maybe_applied=maybe_applied)

    async def _propose(self, group: ReplicaGroup, command: Any, session: SessionRef | None = None) -> Any:
        return await self._within_request_timeout(group.name, lambda: group.propose(command, session), True)

    # -- single keys ----------------------------------------------------------------

    async def kv_get(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._key_param(params)
        group = self._shard_for(key)
        return await self._within_request_timeout(group.name, lambda: self._read_unlocked(group, key), False)

    @staticmethod
    def _shard_state(group: ReplicaGroup) -> ShardState:
        machine = group.machine
        assert isinstance(machine, ShardState)
        return machine

    async def _read_unlocked(self, group: ReplicaGroup, key: bytes) -> dict[str, Any]:
        """Linearizable read that never returns a value a prepared transaction is about to change."""
        await group.read_barrier()
        await self._wait_unlocked(group, key, lambda k: self._shard_state(group).writer_of(k), in_doubt_is_final=True)
        cell = self._shard_state(group).read(key)
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
                learned = await self.resolver.resolve(group, holder)
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
        group = self._shard_for(key)
        request_s = self.config.timeouts.request_s
        proposing = False
        with trio.move_on_after(request_s):
            while True:
                await self._wait_unlocked(group, key, lambda k: self._shard_state(group).holder_of(k),
                                          in_doubt_is_final=False)
                proposing = True
                try:
                    return {"version": await group.propose(command, session)}
                except Conflict:
                    proposing = False
        if proposing:
            raise Timeout(f"{group.name}: no result within {request_s}s", maybe_applied=True)
        holder = self._shard_state(group).holder_of(key) or ""
        raise Conflict(f"key {key!r:.60} is still locked by transaction {holder} after {request_s}s", txid=holder)

    async def kv_put(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._key_param(params)
        value = self._value(params.get("value"))
        return await self._write_unlocked(key, ("put", key, value), _session(params))

    async def kv_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._key_param(params)
        return await self._write_unlocked(key, ("delete", key), _session(params))

    async def session_open(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("group")
        if not isinstance(name, str) or name not in {g.name for g in self.config.groups()}:
            raise InvalidRequest(f"group must name a group of this cluster, got {name!r:.40}")
        group = self._leading(name)
        return {"session": await self._within_request_timeout(name, group.open_session, True)}

    # -- transactions: coordinator side ---------------------------------------------

    async def txn_commit(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = check_txid(params.get("txid"))
        participants = params.get("participants")
        if not isinstance(participants, dict) or len(participants) < 2:
            raise InvalidRequest("participants must map at least two shard names to their reads and writes")
        check_participants(txid, participants)
        payloads = {}
        for shard, payload in participants.items():
            name = self._shard_name(shard)
            if not isinstance(payload, dict):
                raise InvalidRequest(f"participant {name}: expected {{reads, writes}}")
            reads, writes = self._payload(payload, name)
            payloads[name] = {"reads": [list(r) for r in reads], "writes": [list(w) for w in writes]}
        manager = self._manager(txid)
        outcome, reason = await manager.commit(txid, payloads)
        if outcome == COMMITTED:
            return {"outcome": COMMITTED}
        if outcome == ABORTED:
            raise Conflict(f"{txid} aborted: {reason}", txid=txid)
        raise CommitUnknown(f"{txid}: {reason}", txid=txid)

    async def txn_status(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = check_txid(params.get("txid"))
        participants = self._shards(params["participants"], "participants") if "participants" in params else ()
        if participants and not are_participants_of(txid, participants):
            return {"outcome": UNKNOWN}  # never recover, or fence, over a list the txid does not bind
        manager = self._manager(txid)
        outcome = await self._within_request_timeout(
            "txn.status", lambda: manager.status(txid, participants), True)
        return {"outcome": outcome}

    # -- transactions: participant side ---------------------------------------------

    def _participant(self, params: dict[str, Any]) -> tuple[str, ReplicaGroup]:
        txid = check_txid(params.get("txid"))
        return txid, self._leading(self._shard_name(params.get("shard")))

    async def txn_commit_one(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self._participant(params)
        if protocol_of(txid).coordinator is not Coordinator.SHARD or authority_of(txid)[1] != group.name:
            raise InvalidRequest(f"{txid} is not a one-phase transaction of {group.name}")
        reads, writes = self._payload(params, group.name)
        try:
            outcome = await self._propose(group, ("commit_one", txid, reads, writes))
        except Conflict:
            self.one_phase[ABORTED] += 1
            raise
        self.tracer.forced(txid, "shard commit_one")
        self.one_phase[COMMITTED] += 1
        return {"outcome": outcome}

    async def shard_prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self._participant(params)
        reads, writes = self._payload(params, group.name)
        spec = protocol_of(txid)
        if spec.coordinator is Coordinator.SHARD:
            raise InvalidRequest(f"{txid} is a one-phase transaction (txn.commit_one), it has no PREPARE")
        participants = self._participants_of(txid, params.get("participants"))
        leader = self._node_id(params.get("leader", self.node_id), "leader")
        hop = self._hop(params)
        if group.name not in participants:
            raise InvalidRequest(f"{group.name} is not among the participants {participants}")
        vote = await self._propose(group, ("prepare", txid, reads, writes, participants))
        decided = isinstance(vote, tuple) and vote[0] == "decided"
        if decided:
            vote = "yes" if vote[1] == COMMITTED else ("no", f"{txid} is already {vote[1]} here")
        else:
            self.tracer.forced(txid, "shard prepare")
        reason = "" if vote == "yes" else vote[1]
        if spec.acceptors:
            if not decided:  # a decided participant already cast its one ballot-0 vote
                value = PREPARED if vote == "yes" else ABORTED
                self.paxos.nursery.start_soon(self._send_vote, txid, group.name, value, reason, participants,
                                              leader, spec.fast, hop + 1)
        else:
            self.tracer.sent(txid, "vote", leader, hop + 1)
        if vote == "yes":
            return {"vote": "yes"}
        return {"vote": "no", "reason": reason}

    async def _send_vote(self, txid: str, shard: str, value: str, reason: str, participants: tuple[str, ...],
                         leader: str, fast: bool, hop: int) -> None:
        await self.hooks.checkpoint("participant.before_2a", txid)
        self.paxos.send_vote(txid, shard, value, reason, participants, leader, fast, hop)

    # -- Paxos Commit: acceptors, leader, fast participants ----------------------------

    async def paxos_phase2a(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = check_txid(params.get("txid"))
        shard = self._shard_name(params.get("shard"))
        value = params.get("value")
        if value not in (PREPARED, ABORTED):
            raise InvalidRequest("value must be 'prepared' or 'aborted'")
        reason = self._reason(params.get("reason", "")) if value == ABORTED else ""
        participants = self._participants_of(txid, params.get("participants"))
        if shard not in participants:
            raise InvalidRequest(f"{shard} is not among the participants")
        leader = self._node_id(params.get("leader"), "leader")
        fast = params.get("fast") is True
        await self.paxos.on_phase2a(txid, shard, value, reason, participants, leader, fast, self._hop(params))
        return {}

    async def paxos_phase2b(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = check_txid(params.get("txid"))
        acceptor = params.get("acceptor")
        if acceptor not in self.paxos.acceptor_ids:
            raise InvalidRequest(f"{acceptor!r:.40} is not an acceptor")
        ballot = self._ballot(params.get("ballot"))
        values = self._votes(params.get("values"), "values")
        raw_reasons = params.get("reasons", {})
        if not isinstance(raw_reasons, dict):
            raise InvalidRequest("reasons must map shard names to strings")
        reasons = {self._shard_name(k): self._reason(v) for k, v in raw_reasons.items() if values.get(k) == ABORTED}
        self._manager(txid)  # only the coordinator group's leader takes 2b messages
        self._deliver_phase2b(txid, acceptor, ballot, values, self._hop(params), reasons)
        return {}

    def _deliver_phase2b(self, txid: str, acceptor: str, ballot: Ballot, values: dict[str, str], hop: int,
                         reasons: dict[str, str]) -> None:
        manager = self.managers.get(protocol_of(txid).name)
        if manager is not None:
            manager.deliver(txid, Phase2b(now=trio.current_time(), acceptor=acceptor, ballot=ballot, values=values),
                            hop, reasons)

    async def paxos_learn(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self._participant(params)
        acceptor = params.get("acceptor")
        if acceptor not in self.paxos.acceptor_ids:
            raise InvalidRequest(f"{acceptor!r:.40} is not an acceptor")
        if self._ballot(params.get("ballot")) != BALLOT_ZERO:
            raise InvalidRequest("participants learn from ballot-0 bundles only")
        values = self._votes(params.get("values"), "values")
        participants = self._participants_of(txid, params.get("participants"))
        outcome = await self._within_request_timeout(
            "paxos.learn", lambda: self.paxos.on_learn(txid, group.name, acceptor, values, participants), True)
        return {"outcome": outcome}

    async def paxos_phase1a(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = check_txid(params.get("txid"))
        ballot = self._ballot(params.get("ballot"))
        participants = self._participants_of(txid, params.get("participants"))
        instances = self._shards(params.get("instances"), "instances")
        if not set(instances) <= set(participants):
            raise InvalidRequest(f"instances {instances} are not all participants of {txid}")
        return await self.paxos.on_phase1a(txid, ballot, instances)

    async def paxos_accept(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = check_txid(params.get("txid"))
        ballot = self._ballot(params.get("ballot"))
        if ballot == BALLOT_ZERO:
            raise InvalidRequest("ballot 0 belongs to the participants (paxos.phase2a)")
        return await self.paxos.on_accept(txid, ballot, self._votes(params.get("values"), "values"))

    async def node_trace(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"events": self.tracer.of(check_txid(params.get("txid")))}

    async def shard_query(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self._participant(params)
        return {"state": await self._propose(group, ("refuse", txid))}

    def _round(self, raw: Any) -> Round:
        if not (isinstance(raw, list) and len(raw) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in raw)):
            raise InvalidRequest("round must be [attempt, participant] with small non-negative integers")
        return raw[0], raw[1]

    def _three_phase(self, params: dict[str, Any]) -> tuple[str, ReplicaGroup, Round, str, int]:
        txid, group = self._participant(params)
        if not protocol_of(txid).participants_terminate:
            raise InvalidRequest(f"{txid} is not a 3pc transaction")
        return txid, group, self._round(params.get("round")), self._node_id(params.get("leader"), "leader"), \
            self._hop(params)

    async def three_phase_join(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group, round_, leader, hop = self._three_phase(params)
        state, promised = await self._propose(group, ("3pc_join", txid, round_))
        self.tracer.sent(txid, "state", leader, hop + 1)
        return {"state": state, "promised": list(promised)}

    async def three_phase_move(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group, round_, leader, hop = self._three_phase(params)
        target = params.get("target")
        if target not in (PRECOMMITTED, PREABORTED):
            raise InvalidRequest(f"target must be {PRECOMMITTED!r} or {PREABORTED!r}")
        state, promised = await self._propose(group, ("3pc_move", txid, round_, target))
        if state == target:
            self.tracer.forced(txid, f"shard {target}")
        self.tracer.sent(txid, "ack", leader, hop + 1)
        return {"state": state, "promised": list(promised)}

    async def shard_inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        """What the shard holds for txid, without fencing it: for demonstrations and operators."""
        txid, group = self._participant(params)
        await self._within_request_timeout(group.name, group.read_barrier, False)
        machine = self._shard_state(group)
        prepared = machine.prepared.get(txid)
        if prepared is not None and protocol_of(txid).participants_terminate:
            return {"state": PREPARED, "phase": prepared.phase, "promised": list(prepared.promised)}
        if prepared is not None:
            return {"state": PREPARED, "phase": None, "promised": None}
        return {"state": machine.decided.get(txid, "unknown"), "phase": None, "promised": None}

    async def shard_decide(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self._participant(params)
        outcome = params.get("outcome")
        if outcome not in (COMMITTED, ABORTED):
            raise InvalidRequest("outcome must be 'committed' or 'aborted'")
        command = ("commit" if outcome == COMMITTED else "abort", txid)
        return {"state": await self._propose(group, command)}

    # -- the rest -------------------------------------------------------------------

    async def coord_epoch(self, params: dict[str, Any]) -> dict[str, Any]:
        session = _session(params)
        epoch = await self._propose(self._leading(COORDINATOR_GROUP), ("new_epoch",), session)
        return {"epoch": epoch}

    async def node_status(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for group in self.groups.values():
            row = group.status()
            machine = group.machine
            if isinstance(machine, ShardState):
                row["keys"] = machine.live_keys()
                row["prepared"] = len(machine.prepared)
                row["locks"] = len(machine.locks)
            elif isinstance(machine, CoordinatorState):
                row["epoch"] = machine.epoch
                row["in_flight"] = len(machine.txns)
            rows.append(row)
        now = trio.current_time()
        transactions = {name: dict(m.outcomes) for name, m in self.managers.items()}
        transactions[ONE_PHASE.name] = dict(self.one_phase)
        transactions["resolved_in_doubt"] = dict(self.resolver.resolved)
        in_doubt = [row for m in self.managers.values() for row in m.in_doubt(now)]
        in_doubt += self.resolver.in_doubt(now) + self.silence.in_doubt(now)
        counters = {"messages_sent": dict(self.tracer.messages), "forced_writes": dict(self.tracer.forced_writes),
                    "3pc_participant": self.silence.counts()}
        status: dict[str, Any] = {"node": self.node_id, "groups": rows, "transactions": transactions, "in_doubt": in_doubt,
                  "counters": counters}
        if self.faults.active():
            status["faults"] = self.faults.describe()
        return status

    async def node_compact(self, params: dict[str, Any]) -> dict[str, Any]:
        for group in self.groups.values():
            group.force_log_compaction()
        return {"groups": sorted(self.groups)}

    async def test_transfer_leader(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.hooks.enabled:
            raise InvalidRequest("fault hooks are disabled (transactions.fault_hooks = false)")
        group = params.get("group")
        if not isinstance(group, str) or group not in self.groups:
            raise InvalidRequest(f"group must name a group hosted here ({', '.join(self.groups)})")
        leading = self._leading(group)
        leading.transfer_leadership(self._node_id(params.get("to"), "to"))
        return {}

    async def test_hold(self, params: dict[str, Any]) -> dict[str, Any]:
        point = params.get("point")
        if not isinstance(point, str):
            raise InvalidRequest("point must be a string")
        self.hooks.arm(point)
        return {}

    async def test_fault(self, params: dict[str, Any]) -> dict[str, Any]:
        """Cut or heal this node's outgoing links, drop or undrop an outgoing method (see ``commit.faults``)."""
        self.faults.require_enabled()
        op = params.get("op")
        if op not in OPS:
            raise InvalidRequest(f"op must be one of {', '.join(OPS)}, got {op!r:.40}")
        if op == "cut":
            self.faults.cut(self._peer(params.get("peer")))
        elif op == "heal":
            self.faults.heal(self._peer(params["peer"]) if "peer" in params else None)
        elif op == "drop":
            self.faults.drop(self._rpc_method(params.get("method")))
        elif op == "undrop":
            self.faults.undrop(self._rpc_method(params["method"]) if "method" in params else None)
        return {"faults": self.faults.describe()}

    def _peer(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise InvalidRequest(f"peer must be a node id of this cluster, got {raw!r:.40}")
        return self._node_id(raw, "peer")

    def _rpc_method(self, raw: Any) -> str:
        if not (isinstance(raw, str) and raw in self.router()):
            raise InvalidRequest(f"method must name an RPC method such as shard.prepare, got {raw!r:.40}")
        return raw
