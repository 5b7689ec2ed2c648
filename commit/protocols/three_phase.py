"""Three-Phase Commit, sans-IO: the coordinator, the participant's timeout rule, and the terminator.

Skeen's 3PC ("Nonblocking Commit Protocols", 1981; Bernstein, Hadzilacos &
Goodman, ch. 7.4) adds a state between "voted yes" and "committed" so that
no participant can commit while another is still uncertain. That is what
lets the participants finish a transaction without the coordinator, and
what makes it split under a partition: the termination protocol trusts that
a participant it cannot reach has crashed.

Participant states, as the shard records them (``commit.shard``):

    waiting       voted yes, no PreCommit yet (uncertain)
    precommitted  got PreCommit: everyone voted yes
    preaborted    quorum variant only: a terminator is moving towards abort
    committed / aborted

Normal case (``ThreePhaseCoordinator``): CanCommit (the shard's ``prepare``)
and votes; PreCommit and acks; DoCommit. The coordinator keeps nothing
durable: its participants' replicated states are the whole record, and a
coordinator that forgets (crash) is replaced by the termination protocol.

Rounds make terminations safe against each other and against the old
coordinator. The coordinator acts at round ``COORDINATOR_ROUND``; a
terminator picks a higher round (``next_round``, unique per participant).
A participant that answered a terminator's state request at round r (it
*joined* round r) ignores every later state change from a lower round. The
decisions (commit, abort) are not round-checked: once made they are stable.

Timeouts (``on_silence``): a participant that hears nothing for a while
either aborts on its own (plain 3PC, still ``waiting`` and never joined a
termination: the coordinator cannot have sent DoCommit yet, since that
needs everyone precommitted) or starts a termination as the terminator.
Participants stagger their timeouts by shard index, so the lowest-numbered
live participant is in effect the elected new coordinator.

``Terminator`` rules, over the participants that answered (the others are
presumed crashed: this is the perfect-failure-detector assumption):

    plain 3PC (Skeen's termination protocol)
        any committed      -> commit
        any aborted        -> abort
        any precommitted   -> PreCommit every waiting one, then commit
        all waiting        -> abort
    quorum 3PC (Skeen, "A Quorum-Based Commit Protocol", 1982), with a
    commit quorum Vc and an abort quorum Va, Vc + Va > N:
        any committed      -> commit
        any aborted        -> abort
        precommitted >= Vc -> commit
        any precommitted, none preaborted, precommitted + waiting >= Vc
                           -> PreCommit the waiting ones; commit at Vc acks
        preaborted + waiting >= Va
                           -> PreAbort the waiting ones; abort at Va acks
        otherwise          -> blocked (try again later)

Why the quorum variant never decides both ways: a participant is
precommitted or preaborted, never both, so Vc precommitted and Va preaborted
cannot coexist; commit needs the first and abort the second (or an earlier
abort that made precommit impossible). The coordinator in the quorum variant
also commits at Vc acks, and never aborts once it sent a PreCommit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from commit.outcomes import ABORTED, COMMITTED, DECIDED, PENDING
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
    Vote,
    votes_missing,
)

WAITING = "waiting"
PRECOMMITTED = "precommitted"
PREABORTED = "preaborted"

Round = tuple[int, int]
COORDINATOR_ROUND: Round = (0, 0)

VOTES_TIMER = "votes"
ACKS_TIMER = "acks"
RESEND_TIMER = "resend"
JOIN_TIMER = "join"
MOVE_TIMER = "move"
ANNOUNCE_TIMER = "announce"


def quorums(n: int) -> tuple[int, int]:
    """``(Vc, Va)``: a majority to commit, and the smallest abort quorum with Vc + Va > n."""
    commit_quorum = n // 2 + 1
    return commit_quorum, n + 1 - commit_quorum


def next_round(promised: Round, index: int) -> Round:
    """A round above ``promised`` that only the participant with this index uses."""
    return (promised[0] + 1, index + 1)


def on_silence(phase: str, promised: Round, quorum: bool) -> str:
    """What a participant does when the coordinator (or terminator) went quiet: "abort" or "terminate"."""
    if phase == WAITING and promised == COORDINATOR_ROUND and not quorum:
        return "abort"
    return "terminate"


# -- the participant's side: when it acts without its coordinator ------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortAlone:
    """A waiting participant whose coordinator went quiet aborts on its own (plain 3PC, never joined)."""

    txid: str
    shard: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminate:
    """A participant whose coordinator went quiet runs Skeen's termination protocol at ``round``."""

    txid: str
    shard: str
    participants: tuple[str, ...]
    round: Round
    quorum: bool


class SilenceTimer:
    """The quiet period of each 3PC participant a shard leader holds, and what it does when it runs out.

    A participant whose state (phase and promised round) has not changed for ``wait_s`` plus
    ``stagger_s`` times its place among the participants acts by ``on_silence``. The stagger makes the
    lowest-numbered live participant act first, which is how the participants elect a terminator; after
    acting, it waits a full quiet period again. This is where 3PC's assumption bites: "quiet" is a
    timeout, not a perfect failure detector, so a partitioned coordinator looks crashed.
    """

    EFFECTS = (AbortAlone, Terminate)

    def __init__(self, wait_s: float, stagger_s: float) -> None:
        self.wait_s = wait_s
        self.stagger_s = stagger_s
        self.last_change: dict[tuple[str, str], tuple[float, str, Round]] = {}  # (shard, txid) -> since

    def observe(self, shard: str, txid: str, phase: str, promised: Round, participants: tuple[str, ...],
                quorum: bool, now: float) -> list[AbortAlone | Terminate]:
        key = (shard, txid)
        since, seen_phase, seen_promised = self.last_change.get(key, (now, "", COORDINATOR_ROUND))
        if (seen_phase, seen_promised) != (phase, promised):
            self.last_change[key] = (now, phase, promised)
            return []
        index = participants.index(shard) if shard in participants else len(participants)
        if now - since < self.wait_s + index * self.stagger_s:
            return []
        self.last_change[key] = (now, phase, promised)  # the next try waits a full quiet period again
        if on_silence(phase, promised, quorum) == "abort":
            return [AbortAlone(txid=txid, shard=shard)]
        return [Terminate(txid=txid, shard=shard, participants=participants, round=next_round(promised, index),
                          quorum=quorum)]

    def forget_all_but(self, held: set[tuple[str, str]]) -> None:
        """Drop the transactions the shards no longer hold prepared (decided, or leadership moved)."""
        for key in [k for k in self.last_change if k not in held]:
            del self.last_change[key]


# -- events (besides Start, Vote, Acked and TimerFired, shared with 2PC) ----------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StateReport:
    """A participant's answer to a PreCommit, a state request or a move: its state and promised round."""

    now: float
    participant: str
    state: str
    promised: Round


# -- effects (besides SendPrepare, SendDecision, Reply, SetTimer and Finished) ----------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendMove:
    """Move ``participant`` to ``target`` (precommitted or preaborted) at ``round``: PreCommit is one."""

    participant: str
    target: str
    round: Round


@dataclass(frozen=True, slots=True, kw_only=True)
class SendJoin:
    """Ask ``participant`` for its state, and to ignore rounds below ``round`` from now on."""

    participant: str
    round: Round


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp:
    """The terminator stops without a decision: superseded by a higher round, or blocked (quorum)."""

    reason: str


class ThreePhaseCoordinator:
    """The coordinator of one transaction: CanCommit, PreCommit, DoCommit; nothing durable.

    States: idle -> collecting -> precommitting -> decided -> done; or -> done
    with outcome ``pending`` when a terminator took the transaction over.
    """

    EFFECTS: ClassVar[tuple[type, ...]] = (SendPrepare, SendMove, SendDecision, Reply, SetTimer, Finished)
    TRANSITIONS: ClassVar[dict[str, tuple[type, ...]]] = {
        "idle": (Start,),
        "collecting": (Vote, TimerFired, StateReport),
        "precommitting": (StateReport, TimerFired, Vote),
        "decided": (Acked, TimerFired, Vote, StateReport),
        "done": (Acked, TimerFired, Vote, StateReport),
    }

    def __init__(self, txid: str, participants: tuple[str, ...], *, quorum: bool, vote_timeout_s: float,
                 resend_s: float) -> None:
        self.txid = txid
        self.participants = participants
        self.quorum = quorum
        self.vote_timeout_s = vote_timeout_s
        self.resend_s = resend_s
        self.state = "idle"
        self.outcome: str | None = None
        self.yes_votes: set[str] = set()
        self.precommitted: set[str] = set()
        self.unacked: set[str] = set()

    def handle(self, event: object) -> list[object]:
        if not isinstance(event, self.TRANSITIONS[self.state]):
            raise ProtocolError(f"3PC coordinator of {self.txid}: no transition from {self.state!r} on {event!r}")
        match event:
            case Start():
                self.state = "collecting"
                sends: list[object] = [SendPrepare(participant=p) for p in self.participants]
                return sends + [SetTimer(name=VOTES_TIMER, deadline=event.now + self.vote_timeout_s)]
            case Vote() if self.state == "collecting":
                if event.participant not in self.participants:
                    raise ProtocolError(f"{self.txid}: vote from non-participant {event.participant!r}")
                if not event.yes:
                    return self._decide(ABORTED, event.now, no_votes=(event.participant,))
                self.yes_votes.add(event.participant)
                if self.yes_votes != set(self.participants):
                    return []
                self.state = "precommitting"
                moves: list[object] = [
                    SendMove(participant=p, target=PRECOMMITTED, round=COORDINATOR_ROUND) for p in self.participants
                ]
                return moves + [SetTimer(name=ACKS_TIMER, deadline=event.now + self.vote_timeout_s)]
            case TimerFired(name=name) if name == VOTES_TIMER and self.state == "collecting":
                reason = votes_missing(self.participants, self.yes_votes, self.vote_timeout_s)
                return self._decide(ABORTED, event.now, reason=reason)
            case StateReport() if self.state == "precommitting":
                return self._on_ack(event)
            case TimerFired(name=name) if name == ACKS_TIMER and self.state == "precommitting":
                if not self.quorum:
                    # Skeen: a participant that did not acknowledge is presumed crashed; it will learn
                    # the outcome by termination when it recovers. Under a partition this is a split.
                    return self._decide(COMMITTED, event.now)
                missing = [p for p in self.participants if p not in self.precommitted]
                resend: list[object] = [
                    SendMove(participant=p, target=PRECOMMITTED, round=COORDINATOR_ROUND) for p in missing
                ]
                return resend + [SetTimer(name=ACKS_TIMER, deadline=event.now + self.vote_timeout_s)]
            case Acked() if self.state == "decided":
                self.unacked.discard(event.participant)
                if not self.unacked:
                    self.state = "done"
                    return [Finished(outcome=self.outcome or ABORTED)]
                return []
            case TimerFired(name=name) if name == RESEND_TIMER and self.state == "decided":
                assert self.outcome is not None
                again: list[object] = [SendDecision(participant=p, outcome=self.outcome) for p in sorted(self.unacked)]
                return again + [SetTimer(name=RESEND_TIMER, deadline=event.now + self.resend_s)]
            case _:
                return []  # late or duplicated

    def _on_ack(self, report: StateReport) -> list[object]:
        if report.state == PRECOMMITTED and report.promised == COORDINATOR_ROUND:
            self.precommitted.add(report.participant)
            needed = quorums(len(self.participants))[0] if self.quorum else len(self.participants)
            if len(self.precommitted) >= needed:
                return self._decide(COMMITTED, report.now)
            return []
        if report.state == ABORTED and not self.quorum:
            # It gave up waiting and aborted on its own: no one can have committed (that needs it).
            return self._decide(ABORTED, report.now, reason=f"{report.participant} aborted on its own while waiting")
        # A terminator owns the transaction now (a higher round), or it is already decided there:
        # the coordinator steps aside and the client hears "pending".
        self.state = "done"
        self.outcome = report.state if report.state in DECIDED else PENDING
        return [Reply(outcome=self.outcome), Finished(outcome=self.outcome)]

    def _decide(self, outcome: str, now: float, no_votes: tuple[str, ...] = (), reason: str = "") -> list[object]:
        self.state = "decided"
        self.outcome = outcome
        self.unacked = set(self.participants)
        effects: list[object] = [Reply(outcome=outcome, no_votes=no_votes, reason=reason)]
        effects += [SendDecision(participant=p, outcome=outcome) for p in self.participants]
        return effects + [SetTimer(name=RESEND_TIMER, deadline=now + self.resend_s)]


@dataclass
class Terminator:
    """A participant acting as the new coordinator at ``round`` (Skeen's termination protocol).

    States: idle -> joining -> (moving ->) announcing -> done; or done at once by ``GaveUp``.
    """

    EFFECTS: ClassVar[tuple[type, ...]] = (SendJoin, SendMove, SendDecision, SetTimer, Finished, GaveUp)

    txid: str
    participants: tuple[str, ...]
    round: Round
    quorum: bool
    timeout_s: float
    state: str = "idle"
    reports: dict[str, str] = field(default_factory=dict)  # who joined this round, and in what state
    target: str | None = None
    moved: set[str] = field(default_factory=set)
    outcome: str | None = None
    unacked: set[str] = field(default_factory=set)

    def handle(self, event: object) -> list[object]:
        match event:
            case Start() if self.state == "idle":
                self.state = "joining"
                joins: list[object] = [SendJoin(participant=p, round=self.round) for p in self.participants]
                return joins + [SetTimer(name=JOIN_TIMER, deadline=event.now + self.timeout_s)]
            case StateReport() if self.state in ("joining", "moving"):
                return self._on_report(event)
            case TimerFired(name=name) if name == JOIN_TIMER and self.state == "joining":
                return self._evaluate(event.now)
            case TimerFired(name=name) if name == MOVE_TIMER and self.state == "moving":
                return self._moves_timed_out(event.now)
            case Acked() if self.state == "announcing":
                self.unacked.discard(event.participant)
                return [] if self.unacked else self._done()
            case TimerFired(name=name) if name == ANNOUNCE_TIMER and self.state == "announcing":
                return self._done()
            case _:
                return []

    def _on_report(self, report: StateReport) -> list[object]:
        if report.state in DECIDED:
            return self._decide(report.state, report.now)  # a decision is stable: spread it
        if report.promised > self.round:
            return self._give_up(f"superseded by round {list(report.promised)}")
        if self.state == "joining":
            self.reports[report.participant] = report.state
            if len(self.reports) == len(self.participants):
                return self._evaluate(report.now)
            return []
        if report.state == self.target:
            self.moved.add(report.participant)
            if self._move_done():
                return self._decide(COMMITTED if self.target == PRECOMMITTED else ABORTED, report.now)
        return []

    def _evaluate(self, now: float) -> list[object]:
        states = list(self.reports.values())
        count = states.count
        if not self.quorum:
            if PRECOMMITTED in states:
                return self._move(PRECOMMITTED, now)
            if states:
                return self._decide(ABORTED, now)  # everyone that answered is still waiting
            return self._give_up("no participant answered")
        commit_quorum, abort_quorum = quorums(len(self.participants))
        if count(PRECOMMITTED) >= commit_quorum:
            return self._decide(COMMITTED, now)
        if PRECOMMITTED in states and PREABORTED not in states and count(PRECOMMITTED) + count(WAITING) >= commit_quorum:
            return self._move(PRECOMMITTED, now)
        if count(PREABORTED) + count(WAITING) >= abort_quorum:
            return self._move(PREABORTED, now)
        return self._give_up(
            f"blocked: {len(states)} of {len(self.participants)} participants answered "
            f"({', '.join(sorted(states)) or 'none'}); no commit quorum of {commit_quorum} "
            f"or abort quorum of {abort_quorum}"
        )

    def _move(self, target: str, now: float) -> list[object]:
        self.state = "moving"
        self.target = target
        self.moved = {p for p, s in self.reports.items() if s == target}
        if self._move_done():
            return self._decide(COMMITTED if target == PRECOMMITTED else ABORTED, now)
        waiting = sorted(p for p, s in self.reports.items() if s == WAITING)
        sends: list[object] = [SendMove(participant=p, target=target, round=self.round) for p in waiting]
        return sends + [SetTimer(name=MOVE_TIMER, deadline=now + self.timeout_s)]

    def _move_done(self) -> bool:
        if not self.quorum:
            return self.moved == set(self.reports)
        commit_quorum, abort_quorum = quorums(len(self.participants))
        return len(self.moved) >= (commit_quorum if self.target == PRECOMMITTED else abort_quorum)

    def _moves_timed_out(self, now: float) -> list[object]:
        if not self.quorum and self.moved:
            # Skeen: the ones that did not acknowledge are presumed crashed.
            return self._decide(COMMITTED if self.target == PRECOMMITTED else ABORTED, now)
        return self._give_up(f"blocked: only {len(self.moved)} participants reached {self.target}")

    def _decide(self, outcome: str, now: float) -> list[object]:
        """Tell everyone once, and wait a while for the acks: a participant this misses terminates itself."""
        self.state = "announcing"
        self.outcome = outcome
        self.unacked = set(self.participants)
        sends: list[object] = [SendDecision(participant=p, outcome=outcome) for p in self.participants]
        return sends + [SetTimer(name=ANNOUNCE_TIMER, deadline=now + self.timeout_s)]

    def _done(self) -> list[object]:
        self.state = "done"
        return [Finished(outcome=self.outcome or ABORTED)]

    def _give_up(self, reason: str) -> list[object]:
        self.state = "done"
        return [GaveUp(reason=reason)]
