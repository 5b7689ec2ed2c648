"""The Paxos Commit leader, sans-IO (Gray & Lamport, "Consensus on Transaction Commit", 2006).

One Paxos instance per participant (resource manager, here a shard) chooses
"prepared" or "aborted"; the transaction commits iff every instance chooses
"prepared". The acceptors are the coordinator group's nodes (2F+1 of them).

Normal case (``Start``): the leader sends PREPARE to every participant. A
participant replicates its vote in its own Raft group, then sends phase 2a
at ballot 0 (its own ballot: nobody else uses it) straight to every
acceptor. Each acceptor, once it has accepted ballot-0 values for every
instance of the transaction, persists them and sends one bundled phase 2b
to the leader (``Phase2b``). An instance is chosen when F+1 acceptors
accepted the same value at the same ballot. The leader decides commit when
every instance chose "prepared", and abort as soon as any acceptor reports
"aborted" at ballot 0: only the participant itself proposes at ballot 0, so
that instance can never choose "prepared".

Recovery (``Recover``, or the vote timer): phase 1 at a fresh, higher ballot
(from ``ballots``, partitioned among leaders) for every undecided instance;
with F+1 promises, phase 2 proposes for each instance the value accepted at
the highest ballot, or "aborted" where none was accepted. This is how a new
leader, or an in-doubt participant's question, finishes a transaction
without the old leader, and why no single failure blocks it.

Every phase-1b answer, promised or not, also reports what the acceptor
accepted, and counts like a 2b: "aborted" at ballot 0 from any acceptor, or
one value at one ballot from F+1 of them, is a chosen value, and ends the
recovery at once. An acceptor that refuses because it promised a ballot of a
later term means a later leader owns the transaction: the core stops with
``Superseded`` instead of trying again with ballots that cannot win there
(issue 9.4: a paused old leader ran phase 1 every vote timeout until the
term changed). The driver also stops a core whose node no longer leads in
the term its ballots carry.

``fast`` (Faster Paxos Commit): the acceptors also send their bundled 2b to
the participants, which learn the outcome one message delay sooner; the
leader then sends no decision messages on the normal path (after a
recovery it does, since those 2b only reach the leader).

An acceptor forgets a transaction's instances only once told that every
participant acknowledged its outcome (``participants_acked``), and after
that answers a phase 1a about them ``forgotten``: the core then stops with
``OutcomeForgotten``, because "nothing accepted" would make it propose
"aborted" for a transaction that may have committed (docs/PROTOCOLS.md,
"Forgetting").

Effect-order contract with the driver: ``Reply`` and ``SendDecision`` come
only after an outcome is chosen by a quorum of acceptors, which persisted
their acceptances before answering.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from commit.outcomes import ABORTED, COMMITTED, PREPARED
from commit.protocols.events import (
    Acked,
    Finished,
    ProtocolError,
    Reply,
    SendDecision,
    SendPrepare,
    SetTimer,
    Start,
    TimerFired,
)
from consensus.paxos import BALLOT_ZERO, Ballot


VOTES_TIMER = "votes"
RECOVERY_TIMER = "recovery"
RESEND_TIMER = "resend"

# -- events (besides Start, Acked and TimerFired, shared with 2PC) -----------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recover:
    """Finish the transaction from what the acceptors know (a new leader, or an in-doubt question)."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase2b:
    """Acceptor ``acceptor`` accepted ``values`` (participant -> value) at ``ballot``."""

    now: float
    acceptor: str
    ballot: Ballot
    values: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase1b:
    """Acceptor's answer to phase 1a: promised or not, and what it accepted (participant -> (ballot, value)).

    ``promise``: when it refused, the highest ballot it had promised instead (None if it did not say).
    ``forgotten``: it refused because it forgot these instances (every participant had acknowledged the
    outcome, long ago): nothing it says can be counted, and no value may be proposed in their place.
    """

    now: float
    acceptor: str
    ballot: Ballot
    promised: bool
    accepted: dict[str, tuple[Ballot | None, Any]]
    promise: Ballot | None = None
    forgotten: bool = False


Event = Start | Recover | Phase2b | Phase1b | Acked | TimerFired

# -- effects (besides SendPrepare, SendDecision, Reply, SetTimer, Finished) ---------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase1a:
    ballot: Ballot
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase2a:
    ballot: Ballot
    values: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Superseded:
    """Stop without an outcome: a leader of a later term owns the transaction now."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeForgotten:
    """Stop without an outcome: an acceptor forgot the instances (docs/PROTOCOLS.md, "Forgetting"), so a
    recovery would take "nothing accepted" for "aborted" where a commit may have been chosen."""

    acceptor: str


Effect = SendPrepare | Phase1a | Phase2a | SendDecision | Reply | SetTimer | Finished | Superseded | OutcomeForgotten

TRANSITIONS: dict[str, tuple[type, ...]] = {
    "idle": (Start, Recover),
    # Acked while undecided: a late acknowledgement of an earlier leader's decision, ignored.
    "collecting": (Phase2b, Phase1b, TimerFired, Acked),
    "recovering": (Phase2b, Phase1b, TimerFired, Acked),
    "decided": (Acked, TimerFired, Phase2b, Phase1b),
    "done": (Acked, TimerFired, Phase2b, Phase1b),
}


@dataclass
class PaxosCommitLeader:
    EFFECTS: ClassVar[tuple[type, ...]] = (SendPrepare, Phase1a, Phase2a, SendDecision, Reply, SetTimer, Finished,
                                           Superseded, OutcomeForgotten)

    txid: str
    participants: tuple[str, ...]
    acceptors: tuple[str, ...]
    ballots: Iterator[Ballot]
    vote_timeout_s: float
    resend_s: float
    fast: bool = False
    state: str = "idle"
    outcome: str | None = None
    chosen: dict[str, str] = field(default_factory=dict)
    # (ballot, participant) -> value -> acceptors that accepted it
    accepts: dict[tuple[Ballot, str], dict[str, set[str]]] = field(default_factory=dict)
    ballot: Ballot = BALLOT_ZERO
    promises: dict[str, dict[str, tuple[Ballot | None, Any]]] = field(default_factory=dict)
    unacked: set[str] = field(default_factory=set)
    recovered: bool = False
    no_votes: list[str] = field(default_factory=list)  # instances chosen "aborted" at ballot 0: a NO vote
    unvoted: tuple[str, ...] = ()  # instances phase 2 proposed "aborted" for: no vote reached the acceptors
    votes_to_commit: int | None = None  # only the decide-on-f-votes mutant sets it (commit.protocols.mutants)

    @property
    def quorum(self) -> int:
        if self.votes_to_commit is not None:  # the mutant: F acceptors' votes, one short of a majority
            return self.votes_to_commit
        return len(self.acceptors) // 2 + 1

    def handle(self, event: Event) -> list[Effect]:
        if not isinstance(event, TRANSITIONS[self.state]):
            raise ProtocolError(
                f"Paxos Commit leader of {self.txid}: no transition from state {self.state!r} on {event!r}"
            )
        match event:
            case Start():
                self.state = "collecting"
                prepares: list[Effect] = [SendPrepare(participant=p) for p in self.participants]
                return prepares + [SetTimer(name=VOTES_TIMER, deadline=event.now + self.vote_timeout_s)]
            case Recover():
                return self._phase1(event.now)
            case Phase2b() if self.state in ("collecting", "recovering"):
                return self._on_2b(event)
            case Phase1b() if self.state == "recovering" and event.ballot == self.ballot:
                return self._on_1b(event)
            case Phase1b() if self.state == "recovering":
                return self._learn(event.acceptor, event.accepted, event.now)
            case TimerFired(name=name) if self.state == "collecting" and name == VOTES_TIMER:
                return self._phase1(event.now)
            case TimerFired(name=name) if self.state == "recovering" and name == RECOVERY_TIMER:
                return self._phase1(event.now)
            case Acked() if self.state == "decided":
                self.unacked.discard(event.participant)
                return self._maybe_done()
            case TimerFired(name=name) if self.state == "decided" and name == RESEND_TIMER:
                assert self.outcome is not None
                resend: list[Effect] = [SendDecision(participant=p, outcome=self.outcome) for p in sorted(self.unacked)]
                return resend + [SetTimer(name=RESEND_TIMER, deadline=event.now + self.resend_s)]
            case _:
                return []

    def _on_2b(self, event: Phase2b) -> list[Effect]:
        if event.acceptor not in self.acceptors:
            raise ProtocolError(f"{self.txid}: 2b from non-acceptor {event.acceptor!r}")
        for participant in event.values:
            if participant not in self.participants:
                raise ProtocolError(f"{self.txid}: 2b for non-participant {participant!r}")
        return self._learn(event.acceptor, {p: (event.ballot, v) for p, v in event.values.items()}, event.now)

    def _learn(self, acceptor: str, accepted: dict[str, tuple[Ballot | None, Any]], now: float) -> list[Effect]:
        """Count what ``acceptor`` accepted (from a 2b, or reported in a 1b); decide once values are chosen."""
        for participant, (ballot, value) in accepted.items():
            if ballot is None or participant not in self.participants or participant in self.chosen:
                continue
            if ballot == BALLOT_ZERO and value == ABORTED:
                # Only the participant proposes at ballot 0: it voted no, so "prepared" can never be chosen.
                self.chosen[participant] = ABORTED
                self.no_votes.append(participant)
                continue
            at: Ballot = (ballot[0], ballot[1], ballot[2])
            voters = self.accepts.setdefault((at, participant), {}).setdefault(value, set())
            voters.add(acceptor)
            if len(voters) >= self.quorum:
                self.chosen[participant] = value
        return self._maybe_decide(now)

    def _maybe_decide(self, now: float) -> list[Effect]:
        if self.votes_to_commit is not None:  # the mutant: the first F "prepared" instances decide commit
            if sum(1 for v in self.chosen.values() if v == PREPARED) >= self.votes_to_commit:
                return self._decide(COMMITTED, now)
        if any(v == ABORTED for v in self.chosen.values()):
            return self._decide(ABORTED, now)
        if all(self.chosen.get(p) == PREPARED for p in self.participants):
            return self._decide(COMMITTED, now)
        return []

    def _phase1(self, now: float) -> list[Effect]:
        self.state = "recovering"
        self.recovered = True
        self.ballot = next(self.ballots)
        self.promises = {}
        undecided = tuple(p for p in self.participants if p not in self.chosen)
        return [
            Phase1a(ballot=self.ballot, participants=undecided),
            SetTimer(name=RECOVERY_TIMER, deadline=now + self.vote_timeout_s),
        ]

    def _on_1b(self, event: Phase1b) -> list[Effect]:
        if event.forgotten:
            self.state = "done"
            return [OutcomeForgotten(acceptor=event.acceptor)]
        learned = self._learn(event.acceptor, event.accepted, event.now)
        if learned or self.state != "recovering":
            return learned
        if not event.promised:
            if event.promise is not None and event.promise[0] > self.ballot[0]:
                self.state = "done"
                return [Superseded(reason=f"acceptor {event.acceptor} promised ballot {list(event.promise)} "
                                          f"of a later term than ours {list(self.ballot)}")]
            return []
        if event.acceptor in self.promises:
            return []
        self.promises[event.acceptor] = event.accepted
        if len(self.promises) != self.quorum:
            return []
        values: dict[str, str] = {}
        for participant in self.participants:
            if participant in self.chosen:
                continue
            best: tuple[Ballot, str] | None = None
            for accepted in self.promises.values():
                ballot, value = accepted.get(participant, (None, None))
                if ballot is not None and (best is None or tuple(ballot) > best[0]):
                    best = (tuple(ballot), value)  # type: ignore[assignment]
            values[participant] = best[1] if best is not None else ABORTED
        self.unvoted = tuple(p for p, v in values.items() if v == ABORTED)
        return [Phase2a(ballot=self.ballot, values=values)]

    def _decide(self, outcome: str, now: float) -> list[Effect]:
        self.state = "decided"
        self.outcome = outcome
        reply = Reply(outcome=outcome)
        if outcome == ABORTED:
            unvoted = [p for p in self.unvoted if self.chosen.get(p) == ABORTED]
            reason = f"no vote from {', '.join(unvoted)} reached the acceptors in time" if unvoted else ""
            reply = Reply(outcome=outcome, no_votes=tuple(self.no_votes), reason=reason)
        effects: list[Effect] = [reply]
        if self.fast and not self.recovered:
            return effects + self._maybe_done()
        self.unacked = set(self.participants)
        return (
            effects
            + [SendDecision(participant=p, outcome=outcome) for p in self.participants]
            + [SetTimer(name=RESEND_TIMER, deadline=now + self.resend_s)]
        )

    @property
    def participants_acked(self) -> bool:
        """Whether every participant acknowledged the outcome: then the acceptors may forget it. Not on
        Faster Paxos Commit's normal path, where the leader sends no decision and hears no ack (there the
        participants tell the acceptors themselves: ``commit.node.paxos_roles``, ``paxos.learned``)."""
        return self.state == "done" and self.outcome is not None and not (self.fast and not self.recovered)

    def _maybe_done(self) -> list[Effect]:
        if self.unacked or self.state == "done":
            return []
        self.state = "done"
        return [Finished(outcome=self.outcome or ABORTED)]
