"""Every commit protocol as one frozen spec: what the rest of the system asks instead of testing names.

Who coordinates a transaction, whether its client may send the commit again, who answers a question
about its outcome, whether its participants finish it on their own, and how to make its core: each is a
field here, read by the client, the node and the tooling alike. Adding a protocol is one core module
and one entry in ``PROTOCOLS``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from commit.protocols import paxos_commit, three_phase, two_phase
from commit.protocols.mutants import Mutant
from consensus.paxos import Ballot


class Coordinator(enum.Enum):
    """Where a transaction's coordinator runs, and so whom its client and its participants ask."""

    NODE = "node"  # the one node ``transactions.twopc_coordinator``
    GROUP = "group"  # the coordinator group's Raft leader
    SHARD = "shard"  # a one-phase commit: the transaction's one shard decides it alone


class DecisionStore(enum.Enum):
    """Where a 2PC coordinator makes its decision durable (commit.node.decision_stores)."""

    LOG = "log"  # an fsync'd file on the coordinator node: lost with the node until it restarts
    RAFT = "raft"  # records of the coordinator group, begin before the first PREPARE: a new leader finishes it


@dataclass(frozen=True, slots=True)
class Costs:
    """What one committed transaction of N participants costs, as the nodes' traces count it (docs/PROTOCOLS.md,
    "Costs"): protocol messages, forced writes, message delays (the client's request is delay 1), and the
    Raft entries its commit adds across every group (a forced write at a shard or at the coordinator group
    is one; an fsync'd log write is not)."""

    messages: int
    forced_writes: int
    message_delays: int
    raft_entries: int


def _two_phase_costs(coordinator_entries: int) -> Callable[[int, int], Costs]:
    """PREPARE, vote, decision per participant; each shard's prepare and decision are Raft entries, and the
    coordinator's decision is an fsync'd record (``2pc``) or its begin, decide and finish entries."""
    def costs(n: int, f: int) -> Costs:
        forced = n + (1 if coordinator_entries == 0 else 2)
        return Costs(messages=3 * n, forced_writes=forced, message_delays=4, raft_entries=2 * n + coordinator_entries)

    return costs


def _paxos_costs(fast: bool) -> Callable[[int, int], Costs]:
    """N prepares, N(2F+1) phase 2a, 2F+1 2b bundles to the leader, and N decisions (Faster Paxos Commit:
    the bundles go to the participants too, and no decision is sent); one forced write per shard prepare
    and per acceptor (its own log, not Raft)."""
    def costs(n: int, f: int) -> Costs:
        acceptors = 2 * f + 1
        messages = n * (4 * f + 3) + acceptors if fast else n * (2 * f + 3) + acceptors
        return Costs(messages=messages, forced_writes=n + acceptors, message_delays=4 if fast else 5,
                     raft_entries=2 * n)

    return costs


def _three_phase_costs(n: int, f: int) -> Costs:
    """CanCommit, vote, PreCommit, ack, DoCommit per participant; each shard forces its prepare and its
    precommit, and applies the commit: three Raft entries; the coordinator writes nothing."""
    return Costs(messages=5 * n, forced_writes=2 * n, message_delays=6, raft_entries=3 * n)


def _one_phase_costs(n: int, f: int) -> Costs:
    return Costs(messages=0, forced_writes=1, message_delays=1, raft_entries=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreContext:
    """What a coordinator core is made from; ``ballots`` only for protocols with acceptors."""

    txid: str
    participants: tuple[str, ...]
    vote_timeout_s: float
    resend_s: float
    acceptors: tuple[str, ...] = ()
    ballots: Iterator[Ballot] | None = None
    mutant: Mutant = Mutant.NONE


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolSpec:
    name: str
    coordinator: Coordinator
    # A commit that may have reached the coordinator may be sent again. Not for 3PC: its coordinator keeps
    # no record, so a restarted one would coordinate the transaction a second time while the participants
    # terminate it, which can split it (tests/test_sim_three_phase.py).
    resend_commit: bool = True
    decision_store: DecisionStore | None = None
    acceptors: bool = False  # Paxos Commit: each participant's vote is its own Paxos instance, ballot 0
    fast: bool = False  # the acceptors also tell the participants, which learn the outcome themselves
    # 3PC: a participant whose coordinator goes quiet finishes the transaction (commit.node.silence_watch)
    # rather than ask anyone; its state is the only record, so a status question asks the participants.
    participants_terminate: bool = False
    quorum: bool = False  # 3PC's quorum variant (Skeen 1982): terminate only with a commit or abort quorum
    splits_under_partition: bool = False  # plain 3PC: its termination trusts timeouts as a failure detector
    reply_holds: tuple[str, ...] = ()  # test hold points checked before the core's Reply is carried out
    core: Callable[[CoreContext], Any] | None = None
    costs: Callable[[int, int], Costs] = _one_phase_costs  # (participants N, tolerated acceptor failures F)


def _two_phase(record_begin: bool) -> Callable[[CoreContext], Any]:
    def make(ctx: CoreContext) -> two_phase.TwoPhaseCoordinator:
        return two_phase.TwoPhaseCoordinator(ctx.txid, ctx.participants, record_begin, ctx.vote_timeout_s,
                                             ctx.resend_s)

    return make


def _paxos(fast: bool) -> Callable[[CoreContext], Any]:
    def make(ctx: CoreContext) -> paxos_commit.PaxosCommitLeader:
        assert ctx.ballots is not None, "a Paxos Commit leader needs its ballots"
        broken = ctx.mutant is Mutant.DECIDE_ON_F_VOTES
        return paxos_commit.PaxosCommitLeader(ctx.txid, ctx.participants, ctx.acceptors, ctx.ballots,
                                              ctx.vote_timeout_s, ctx.resend_s, fast=fast,
                                              votes_to_commit=len(ctx.acceptors) // 2 if broken else None)

    return make


def _three_phase(quorum: bool) -> Callable[[CoreContext], Any]:
    def make(ctx: CoreContext) -> three_phase.ThreePhaseCoordinator:
        return three_phase.ThreePhaseCoordinator(ctx.txid, ctx.participants, quorum=quorum,
                                                 vote_timeout_s=ctx.vote_timeout_s, resend_s=ctx.resend_s)

    return make


PAXOS_HOLDS = ("coordinator.after_votes",)  # no decision record: frozen once the acceptors chose
THREE_PHASE_HOLDS = ("coordinator.after_decision",)  # no decision record: frozen once it decided

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(name="2pc", coordinator=Coordinator.NODE, decision_store=DecisionStore.LOG,
                     core=_two_phase(record_begin=False), costs=_two_phase_costs(coordinator_entries=0)),
        ProtocolSpec(name="raft-2pc", coordinator=Coordinator.GROUP, decision_store=DecisionStore.RAFT,
                     core=_two_phase(record_begin=True), costs=_two_phase_costs(coordinator_entries=3)),
        ProtocolSpec(name="paxos-commit", coordinator=Coordinator.GROUP, acceptors=True, reply_holds=PAXOS_HOLDS,
                     core=_paxos(fast=False), costs=_paxos_costs(fast=False)),
        ProtocolSpec(name="fast-paxos-commit", coordinator=Coordinator.GROUP, acceptors=True, fast=True,
                     reply_holds=PAXOS_HOLDS, core=_paxos(fast=True), costs=_paxos_costs(fast=True)),
        ProtocolSpec(name="3pc", coordinator=Coordinator.NODE, resend_commit=False, participants_terminate=True,
                     splits_under_partition=True, reply_holds=THREE_PHASE_HOLDS, core=_three_phase(quorum=False),
                     costs=_three_phase_costs),
        ProtocolSpec(name="3pc-quorum", coordinator=Coordinator.NODE, resend_commit=False,
                     participants_terminate=True, quorum=True, reply_holds=THREE_PHASE_HOLDS,
                     core=_three_phase(quorum=True), costs=_three_phase_costs),
    )
}
ONE_PHASE = ProtocolSpec(name="1pc", coordinator=Coordinator.SHARD)  # not a choice: what one shard does alone
NAMES = tuple(PROTOCOLS)


def spec(name: str) -> ProtocolSpec:
    """The spec of a protocol a user or a txid names; KeyError if there is none."""
    return ONE_PHASE if name == ONE_PHASE.name else PROTOCOLS[name]


def _any(spec: ProtocolSpec) -> bool:
    return True


def _one_phase(spec: ProtocolSpec) -> bool:
    return spec.coordinator is Coordinator.SHARD


def _multi_shard(spec: ProtocolSpec) -> bool:
    return spec.coordinator is not Coordinator.SHARD


def _with_acceptors(spec: ProtocolSpec) -> bool:
    return spec.acceptors


def _fast(spec: ProtocolSpec) -> bool:
    return spec.fast


def _terminated_by_participants(spec: ProtocolSpec) -> bool:
    return spec.participants_terminate


# The RPC methods that are about one transaction, and which transactions each is about: the messages a
# protocol sends are the only ones its txids may come with. A one-phase txid has no PREPARE and no
# decision (its shard decides it in ``txn.commit_one``), so a ``shard.prepare`` for one could only lock keys
# that nobody will ever release; only Paxos Commit has acceptors and ballots (Gray & Lamport, "Consensus on
# Transaction Commit", 2006, section 4), so a 2b for a 2PC txid would end its core with a ProtocolError;
# only 3PC has termination rounds. ``commit.node.handlers.params.ParamChecks.txid`` refuses anything else
# with ``invalid_request``, at the edge.
TXID_METHODS: dict[str, Callable[[ProtocolSpec], bool]] = {
    "txn.commit": _multi_shard,
    "txn.commit_one": _one_phase,
    "txn.status": _multi_shard,
    "shard.prepare": _multi_shard,
    "shard.decide": _multi_shard,
    "shard.query": _any,
    "shard.inspect": _any,
    "3pc.join": _terminated_by_participants,
    "3pc.move": _terminated_by_participants,
    "paxos.phase2a": _with_acceptors,
    "paxos.phase2b": _with_acceptors,
    "paxos.phase1a": _with_acceptors,
    "paxos.accept": _with_acceptors,
    "paxos.forget": _with_acceptors,
    "paxos.learned": _fast,
    "paxos.learn": _fast,
    "node.trace": _any,
}


def sends(spec: ProtocolSpec, method: str) -> bool:
    """Whether a transaction of ``spec`` ever comes with RPC ``method`` (KeyError: a method about no txid)."""
    return TXID_METHODS[method](spec)
