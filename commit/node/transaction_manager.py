"""A node's transaction manager for one protocol: which of its transactions run here, and what they became.

It starts a core for a commit (``commit``), for a status question about a transaction nobody drives
(``status``: Paxos Commit recovers it from the acceptors, raft-2pc resumes its begin record), for a
transaction a crashed or replaced coordinator left behind (``resume``), and for a 3PC participant that
terminates one (``terminate``); each runs under the one driver (``commit.node.driver.drive``) with this
node's executors (``commit.node.executors``). Unsolicited messages for a running core, Paxos 2b
bundles, arrive through ``deliver``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from commit.node.decision_stores import DecisionStore
from commit.node.driver import CoreRun, drive
from commit.node.executors import NodeExecutors
from commit.node.hooks import FaultHooks
from commit.node.peers import Peers
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.tracing import Tracer
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PENDING, PREPARED
from commit.protocols import paxos_commit as pc
from commit.protocols import three_phase as three
from commit.protocols import two_phase as tp
from commit.protocols.events import Start
from commit.protocols.mutants import Mutant
from commit.protocols.registry import CoreContext, ProtocolSpec
from commit.txids import created_ms
from consensus.errors import InvalidRequest
from consensus.group import ReplicaGroup
from consensus.horizon import HorizonTable
from consensus.paxos import Ballot

log = logging.getLogger(__name__)


def _fingerprint(payloads: dict[str, dict[str, Any]]) -> str:
    """A digest of a commit's reads and writes per participant, to tell a resend from another transaction."""
    canonical = [[shard, payloads[shard]["reads"], payloads[shard]["writes"]] for shard in sorted(payloads)]
    return hashlib.blake2b(msgpack.packb(canonical, use_bin_type=True), digest_size=16).hexdigest()


class _Reply:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: str | None = None
        self.reason = ""


class ActiveTxn(CoreRun):
    """A run of a coordinator core on this node, with what the node's executors need of it."""

    def __init__(self, txid: str, core: Any, payloads: dict[str, dict[str, Any]] | None, term: int) -> None:
        super().__init__(txid, core)
        self.started = trio.current_time()
        self.reply = _Reply()
        self.payloads = payloads  # the client's reads and writes per shard; None for a recovered transaction
        self.hop = 1  # the client's commit request
        self.why: dict[str, str] = {}  # participant -> why it voted no, in its own words
        self.term = term  # Paxos Commit: the Raft term this node led in when the core started


@dataclass(frozen=True)
class PaxosSetup:
    """What a Paxos Commit leader needs besides the common settings: its acceptors, its rank among them,
    and this node's view of the coordinator group (current Raft term, and whether it leads)."""

    acceptors: tuple[str, ...]
    rank: int
    term: Callable[[], int]
    leading: Callable[[], bool]
    mutant: Mutant = Mutant.NONE  # a deliberately broken build (tests only: commit.protocols.mutants)

    def leads_in(self, term: int) -> bool:
        """Whether this node still leads the coordinator group in ``term``: only then may it use ballots of it."""
        return self.leading() and self.term() == term


class TransactionManager:
    """Runs the coordinator cores of one protocol on this node (``spec`` None: 3PC terminators only)."""

    def __init__(
        self,
        spec: ProtocolSpec | None,
        store: DecisionStore | None,
        peers: Peers,
        *,
        node_id: str,
        vote_timeout_s: float,
        resend_s: float,
        persist_timeout_s: float,
        hooks: FaultHooks,
        tracer: Tracer,
        nursery: trio.Nursery,
        max_remembered: int,
        paxos: PaxosSetup | None = None,
    ) -> None:
        self.spec = spec
        self.protocol = spec.name if spec is not None else "3pc-termination"  # labels: counters, traces
        self.store = store
        self.peers = peers
        self.node_id = node_id
        self.vote_timeout_s = vote_timeout_s
        self.resend_s = resend_s
        self.persist_timeout_s = persist_timeout_s
        self.hooks = hooks
        self.tracer = tracer
        self.nursery = nursery
        self.paxos = paxos
        self.executors = NodeExecutors(self)
        self.active: dict[str, ActiveTxn] = {}
        self.outcomes: Counter[str] = Counter()
        self.decided: HorizonTable[str, str] = HorizonTable(max_remembered)  # store-less protocols: a cache
        self.fingerprints: HorizonTable[str, str] = HorizonTable(max_remembered)  # txid -> its reads and writes
        self.acknowledged: list[tuple[str, tuple[str, ...]]] = []  # Paxos Commit: to tell the acceptors (paxos.forget)
        self._ballot_counter = itertools.count(1)

    def _ballots(self, term: int) -> Iterator[Ballot]:
        """Ballots unique to this leader: (Raft term, rank, counter).

        The term is the one this node leads in (one leader per term, and a node leads a term only once),
        so no two leaders share a ballot, and a later leader's ballots are always higher. The executors
        stop a core before it sends a ballot of a term this node no longer leads (``leads_in``).
        """
        assert self.paxos is not None
        while True:
            yield (term, self.paxos.rank, next(self._ballot_counter))

    def _core(self, txid: str, participants: tuple[str, ...], term: int) -> Any:
        assert self.spec is not None and self.spec.core is not None
        return self.spec.core(CoreContext(
            txid=txid, participants=participants, vote_timeout_s=self.vote_timeout_s, resend_s=self.resend_s,
            acceptors=self.paxos.acceptors if self.paxos is not None else (),
            ballots=self._ballots(term) if self.paxos is not None else None,
            mutant=self.paxos.mutant if self.paxos is not None else Mutant.NONE,
        ))

    async def commit(self, txid: str, payloads: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
        """Run the protocol for txid; returns ``(outcome, reason)`` once the outcome is durable.

        The outcome is None when this coordinator stopped before deciding (a store write that did not
        become durable in time, a transaction handed over to a later leader, a core's protocol error):
        it may still commit.

        A commit of a txid this coordinator already knows is the client's resend, and never starts the
        protocol over: it waits for the run in progress, is answered the decided outcome (no decision is
        sent again), or resumes an in-flight record from the record alone (its participants' votes, never
        this request's writes). Its reads and writes must be those the txid was first committed with here
        (``fingerprints``): a txid names one transaction, and answering a resend with other writes the
        first outcome would claim writes that were never applied (InvalidRequest).
        """
        fingerprint = _fingerprint(payloads)
        first = self.fingerprints.get(txid)
        if first is not None and first != fingerprint:
            raise InvalidRequest(f"{txid} was committed here with other reads and writes: a txid names one "
                                 f"transaction, so a resend must carry the same ones")
        active = self.active.get(txid)
        if active is None:
            known = self.store.outcome_of(txid) if self.store is not None else self.decided.get(txid)
            if known is not None:
                return known, ""
            if self._forgotten(txid):
                return FORGOTTEN, (f"{txid} is older than anything this coordinator remembers: it may have "
                                   f"committed, and is never run again (ask its participants: db.status)")
            recorded = self.store.recorded_participants(txid) if self.store is not None else None
            if recorded is not None:
                active = self.resume(txid, recorded, None)
            else:
                self.fingerprints.remember(txid, created_ms(txid), fingerprint)
                active = self._launch(txid, tuple(sorted(payloads)), payloads, None)
        await active.reply.done.wait()
        return active.reply.outcome, active.reply.reason

    async def status(self, txid: str, participants: tuple[str, ...] = ()) -> str:
        """What this coordinator knows of txid; ``participants`` are txid's own (the caller checked them).

        A txid that no core here drives and no record here names is asked of its participants first
        (``Peers.participant_states``): a participant that decided it gives the answer, and one that never
        prepared it records it aborted before it answers, so it never will, and "aborted" is then final.
        A question about a txid nobody ran thus costs this coordinator and the acceptors nothing to
        remember, however many are asked. The protocol's own rule runs only for a transaction a
        participant is still prepared for (or that one did not answer about): presumed abort, forced to
        the 2pc log when no participant's fence decides it already, so that a restarted coordinator still
        answers it and never commits it (Mohan, Lindsay & Obermarck, "Transaction Management in the R*
        Distributed Database Management System", 1986); recovery from the acceptors for Paxos Commit,
        which also tells the prepared participants (Gray & Lamport 2006, section 4). 3PC keeps no record,
        so its participants' word is the whole answer; the coordinator group's ``fence`` (raft-2pc) is
        replicated and bounded, and needs no participant. Without the participants there is nothing to
        ask or recover: ``pending``.

        A txid this coordinator's store may have decided and forgotten (older than its horizon,
        docs/PROTOCOLS.md "Forgetting") is answered by a participant that still remembers the outcome, or
        ``forgotten``: presumed abort would turn a forgotten commit into an abort. Paxos Commit's outcome
        is the acceptors', not this node's cache: a participant in doubt still gets a recovery, which an
        acceptor that forgot the instances stops (``OutcomeForgotten``) before it could choose "aborted".
        """
        active = self.active.get(txid)
        running = active is not None and active.reply.outcome is None
        outcome = None
        if self.store is not None:
            outcome = await self.store.status(txid, active=running)
            recorded = self.store.recorded_participants(txid) if outcome == PENDING and active is None else None
            if recorded is not None:
                self.resume(txid, recorded, None)  # a begin record nobody drives (its coordinator stopped)
            if outcome not in (None, FORGOTTEN):
                return outcome
        elif active is not None:
            return active.reply.outcome or PENDING
        known = self.decided.get(txid)
        forgotten = outcome == FORGOTTEN  # the store's horizon is the word; a cache's (store-less) is not
        if known is not None or not participants:
            return known or (FORGOTTEN if forgotten or self._forgotten(txid) else PENDING)
        states = await self.peers.participant_states(txid, participants, self.vote_timeout_s)
        decided = next((o for o in (COMMITTED, ABORTED) if o in states.values()), None)
        in_doubt = len(states) < len(participants) or PREPARED in states.values()
        undecided = FORGOTTEN if FORGOTTEN in states.values() else PENDING
        if forgotten:
            return decided or FORGOTTEN  # it may have committed: never presumed aborted, never recovered
        if self.spec is not None and self.spec.participants_terminate:
            return decided or undecided
        if self.store is not None:
            # presumed abort: forced to the log only when no participant's fence already makes it final
            return decided or await self.store.decide(txid, ABORTED, participants)
        if not in_doubt:
            return decided or undecided
        # a participant waits on it: recover it from the acceptors, which also tells every participant
        active = self.active.get(txid) or self._launch(txid, participants, None, pc.Recover(now=trio.current_time()))
        if decided is not None:
            return decided
        with trio.move_on_after(self.persist_timeout_s):
            await active.reply.done.wait()
        return active.reply.outcome or PENDING

    def _forgotten(self, txid: str) -> bool:
        """Whether this coordinator may have decided txid and forgotten it: then it never runs it again."""
        if self.store is not None:
            return self.store.forgotten(txid)
        return txid not in self.decided and self.decided.forgotten(created_ms(txid))

    def forget(self, horizon: int) -> int:
        """Forget what this manager keeps of the runs made before ``horizon``: store-less protocols'
        outcomes (a cache: the acceptors or the participants hold them) and every txid's fingerprint."""
        self.fingerprints.forget_before(horizon, keep=self.active.__contains__)
        return self.decided.forget_before(horizon, keep=self.active.__contains__)

    def terminate(self, txid: str, participants: tuple[str, ...], round_: three.Round, quorum: bool) -> bool:
        """Run Skeen's termination protocol for txid at ``round_``, unless a terminator already runs here."""
        if txid in self.active:
            return False
        core = three.Terminator(txid, participants, round_, quorum, self.vote_timeout_s)
        self._start(ActiveTxn(txid, core, None, 0), Start(now=trio.current_time()))
        return True

    def resume(self, txid: str, participants: tuple[str, ...], outcome: str | None) -> ActiveTxn:
        """Finish a transaction this node found unfinished in durable state (after a crash or failover)."""
        return self.active.get(txid) or self._launch(
            txid, participants, None, tp.Recover(now=trio.current_time(), outcome=outcome))

    def deliver(self, txid: str, event: pc.Phase2b, hop: int, reasons: dict[str, str]) -> None:
        """A Paxos 2b bundle for txid, with the NO voters' reasons it carried; dropped if no core runs it here.

        InvalidRequest (to its sender) if it names a shard that is not a participant or comes from no
        acceptor of ours: a well-formed but wrong message must not reach the core, whose ProtocolError
        would end the transaction.
        """
        active = self.active.get(txid)
        if active is None:
            return
        stray = sorted(set(event.values) - set(active.core.participants))
        if stray:
            raise InvalidRequest(f"{txid}: a 2b for {', '.join(stray)}, which are not its participants")
        if self.paxos is not None and event.acceptor not in self.paxos.acceptors:
            raise InvalidRequest(f"{txid}: a 2b from {event.acceptor!r}, which is not an acceptor")
        active.hop = max(active.hop, hop)
        active.why.update(reasons)
        active.feed(event)

    def replied(self, run: ActiveTxn, outcome: str, reason: str) -> None:
        """The core decided (the executors carried out its Reply): tell whoever waits, and remember it."""
        if self.store is None:
            self.decided.remember(run.txid, created_ms(run.txid), outcome)
        run.reply.outcome = outcome
        run.reply.reason = reason
        self.outcomes[outcome] += 1
        run.reply.done.set()

    def _launch(self, txid: str, participants: tuple[str, ...], payloads: dict[str, dict[str, Any]] | None,
                first: Any) -> ActiveTxn:
        term = self.paxos.term() if self.paxos is not None else 0
        active = ActiveTxn(txid, self._core(txid, participants, term), payloads, term)
        return self._start(active, first or Start(now=trio.current_time()))

    def _start(self, active: ActiveTxn, first: Any) -> ActiveTxn:
        self.active[active.txid] = active
        self.nursery.start_soon(self._drive, active, first)
        return active

    async def _drive(self, active: ActiveTxn, first: Any) -> None:
        try:
            stopped = await drive(active, self.executors, first)
            if stopped is not None and not active.reply.done.is_set():
                active.reply.reason = f"the coordinator stopped before deciding: {stopped}"
        finally:
            if not active.reply.done.is_set():
                active.reply.reason = active.reply.reason or "the coordinator stopped before deciding"
                active.reply.done.set()
            self.active.pop(active.txid, None)

    def in_doubt(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "txid": txid,
                "protocol": self.protocol,
                "participants": ",".join(a.core.participants),
                "state": f"coordinator:{a.core.state}",
                "age_s": round(now - a.started, 3),
            }
            for txid, a in self.active.items()
        ]


async def recover_in_flight(manager: TransactionManager, group: ReplicaGroup) -> int:
    """On becoming coordinator-group leader: resume every transaction the old leader left unfinished."""
    await group.read_barrier()
    machine = group.machine
    assert isinstance(machine, CoordinatorState)
    records = machine.in_flight()
    for txid, record in records:
        manager.resume(txid, record.participants, record.outcome)
    return len(records)
