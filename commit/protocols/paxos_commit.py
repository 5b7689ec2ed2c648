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

``fast`` (Faster Paxos Commit): the acceptors also send their bundled 2b to
the participants, which learn the outcome one message delay sooner; the
leader then sends no decision messages on the normal path (after a
recovery it does, since those 2b only reach the leader).

Effect-order contract with the driver: ``Reply`` and ``SendDecision`` come
only after an outcome is chosen by a quorum of acceptors, which persisted
their acceptances before answering.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from commit.protocols.two_phase import (
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

PREPARED = "prepared"
ABORTED = "aborted"
COMMIT = "committed"
ABORT = "aborted"

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
    """Acceptor's answer to phase 1a: promised or not, and what it accepted (participant -> (ballot, value))."""

    now: float
    acceptor: str
    ballot: Ballot
    promised: bool
    accepted: dict[str, tuple[Ballot | None, Any]]


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


Effect = SendPrepare | Phase1a | Phase2a | SendDecision | Reply | SetTimer | Finished

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

    @property
    def quorum(self) -> int:
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
        for participant, value in event.values.items():
            if participant not in self.participants:
                raise ProtocolError(f"{self.txid}: 2b for non-participant {participant!r}")
            if event.ballot == BALLOT_ZERO and value == ABORTED:
                # Only the participant proposes at ballot 0: it voted no, so "prepared" can never be chosen.
                self.chosen[participant] = ABORTED
                continue
            voters = self.accepts.setdefault((event.ballot, participant), {}).setdefault(value, set())
            voters.add(event.acceptor)
            if len(voters) >= self.quorum:
                self.chosen.setdefault(participant, value)
        return self._maybe_decide(event.now)

    def _maybe_decide(self, now: float) -> list[Effect]:
        if any(v == ABORTED for v in self.chosen.values()):
            return self._decide(ABORT, now)
        if all(self.chosen.get(p) == PREPARED for p in self.participants):
            return self._decide(COMMIT, now)
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
        if not event.promised or event.acceptor in self.promises:
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
        return [Phase2a(ballot=self.ballot, values=values)]

    def _decide(self, outcome: str, now: float) -> list[Effect]:
        self.state = "decided"
        self.outcome = outcome
        effects: list[Effect] = [Reply(outcome=outcome)]
        if self.fast and not self.recovered:
            return effects + self._maybe_done()
        self.unacked = set(self.participants)
        return (
            effects
            + [SendDecision(participant=p, outcome=outcome) for p in self.participants]
            + [SetTimer(name=RESEND_TIMER, deadline=now + self.resend_s)]
        )

    def _maybe_done(self) -> list[Effect]:
        if self.unacked or self.state == "done":
            return []
        self.state = "done"
        return [Finished(outcome=self.outcome or ABORT)]
