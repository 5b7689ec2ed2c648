"""A deterministic simulator for Paxos Commit and Faster Paxos Commit (Gray & Lamport 2006).

The simulator drives the sans-IO core ``PaxosCommitLeader`` with the node's own driver code
(``commit.node.driver.CoreRun``) and executors of its own, with
everything else replaced by deterministic models. It runs on the scheduler of ``tests/sim/base.py``
(``SimWorld``), as the 2PC simulator ``tests/sim/world.py`` does, and reuses that one's ``Checker``:

* shards are ``ShardState`` objects (a Raft group: one atomic durable state machine that survives
  everything). On PREPARE a shard applies ``prepare`` and sends its vote as phase 2a at ballot 0
  ("prepared" or "aborted") for instance ``(txid, shard)`` to every acceptor, one message each. A
  repeated PREPARE re-applies ``prepare``: the same 2a again while the txid is prepared there, no 2a
  once it is decided there (``("decided", outcome)``, as ``commit/node/handlers/participants.py`` does);
* three acceptors (F = 1), each an ``AcceptorState`` that is durable, with the node's own bundling of
  ballot-0 2b messages (``AcceptorBundles``; the shards learn with the node's ``FastLearner``): an
  acceptor crash is the acceptor being down (messages to it are lost, it sends nothing) and later up
  again, its state intact and its bundles (volatile) gone;
* one leader process, volatile: a crash loses its cores, timers and pending questions. There is no
  durable coordinator record: recovery is driven by in-doubt shards asking the leader, which starts a
  core of a new incarnation (ballots ``(incarnation, 0, counter)``, higher than all earlier ones) and
  feeds it ``Recover``. A restarted leader may also be handed every in-doubt txid at once;
* the network is a bag of messages that the scheduler may deliver in any order, drop or duplicate;
* time moves only when a timer fires.

A seeded ``random.Random`` picks every action, so a seed (with the variant) replays a run exactly.
After every step the ``PaxosChecker`` (the 2PC ``Checker`` plus the Paxos invariants) has read every
new history entry and the shards' and acceptors' states; the run stops with ``SimulationFailure``
at the first violation:

* ``atomicity``, ``stability``, ``validity``, ``agreement``, ``reply``: as for 2PC (``world.py``).
  The durable decision (history source "store") is what the acceptors have chosen: committed once
  every instance chose "prepared", aborted once some instance chose "aborted" or some acceptor
  accepted "aborted" at ballot 0 (only the participant itself proposes at ballot 0);
* ``vote``: a participant proposes one value only at its ballot 0 (its vote; nobody else uses ballot 0);
* ``chosen``: no instance has two different values each accepted by F+1 acceptors at the same
  ballot, and once a value is chosen at a ballot every value accepted at a higher ballot is the same;
* ``promise``: no acceptor accepts a ballot below its promise, nor promises a ballot not above it;
* ``acceptor``: an acceptor's ``AcceptorState`` is what its recorded promises and accepts make it,
  and every 2b it sends reports values it did accept at that ballot.

A ``ProtocolError`` from the core also ends the run: the core had no transition for an event the driver
may legitimately feed it (late, duplicated or from an earlier incarnation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from commit.node.driver import CoreRun, calls_of
from commit.protocols.paxos_commit import (
    PaxosCommitLeader,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
    Recover,
    Superseded,
)
from commit.protocols.events import Acked, Finished, Reply, SendDecision, SendPrepare, Start
from commit.protocols.paxos_participant import (
    AcceptorBundles,
    FastLearner,
    PersistAcceptances,
    Send2b,
    SendLearn,
    Vote2a,
)
from consensus.paxos import BALLOT_ZERO, NO_PROMISE, AcceptorState, Ballot
from tests.sim.base import ABORTED, COMMITTED, OUTCOMES, PREPARED, Candidate, SimWorld
from tests.sim.base import Weights as CommonWeights
from tests.sim.world import Checker, HistoryEntry, Replied

VARIANTS = {False: "classic", True: "fast"}  # fast: Faster Paxos Commit
ACCEPTORS = ("a1", "a2", "a3")
LEADER = "leader"
BUNDLE_CAP = 1000  # far more than a run has transactions: the sim never evicts

Instance = tuple[str, str]  # (txid, participant)

# -- history, besides the 2PC entries (ShardChanged, Decided, Replied, ShardRefused) ---------------


@dataclass(frozen=True, slots=True)
class Promised:
    """``acceptor`` ran ``promise(instance, ballot)``; ``ok`` is what it returned."""

    acceptor: str
    instance: Instance
    ballot: Ballot
    ok: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    """``acceptor`` ran ``accept(instance, ballot, value)``; ``ok`` is what it returned."""

    acceptor: str
    instance: Instance
    ballot: Ballot
    value: Any
    ok: bool


@dataclass(frozen=True, slots=True)
class Voted:
    """``shard`` sent its phase 2a at ballot 0 for ``txid``: its vote, "prepared" or "aborted"."""

    shard: str
    txid: str
    value: str


@dataclass(frozen=True, slots=True)
class Sent2b:
    """``acceptor`` sent a phase 2b for ``txid`` to ``to`` (the leader, or a shard in fast mode)."""

    acceptor: str
    txid: str
    ballot: Ballot
    values: tuple[tuple[str, Any], ...]
    to: str


PaxosHistoryEntry = HistoryEntry | Voted | Promised | Accepted | Sent2b


class PaxosChecker(Checker):
    """The 2PC invariants (``Checker``) plus the Paxos ones, fed one history entry at a time."""

    def __init__(self, participants: Mapping[str, tuple[str, ...]], acceptors: Iterable[str] = ACCEPTORS) -> None:
        super().__init__(participants)
        self.acceptors = tuple(acceptors)
        self.quorum = len(self.acceptors) // 2 + 1
        # what a correct acceptor's memory is, from the history alone
        self._promise: dict[tuple[str, Instance], Ballot] = {}
        self._last: dict[tuple[str, Instance], tuple[Ballot, Any]] = {}
        self._ever: dict[tuple[str, Instance], set[tuple[Ballot, Any]]] = {}
        # for "chosen": every accept of an instance, voters per (instance, ballot) and value, chosen values
        self._accepts: dict[Instance, list[tuple[Ballot, Any, str]]] = {}
        self._voters: dict[tuple[Instance, Ballot], dict[Any, set[str]]] = {}
        self._chosen: dict[Instance, dict[Ballot, Any]] = {}
        self._zero_aborted: set[Instance] = set()
        self._votes: dict[tuple[str, str], str] = {}  # (shard, txid) -> its ballot-0 value

    def feed(self, entry: PaxosHistoryEntry) -> None:  # type: ignore[override]
        match entry:
            case Voted(shard=shard, txid=txid, value=value):
                first = self._votes.setdefault((shard, txid), value)
                if first != value:
                    self._report("vote", txid, f"{shard} proposed {first}, then {value}, at its ballot 0")
            case Promised(acceptor=acceptor, instance=instance, ballot=ballot, ok=ok):
                key = (acceptor, instance)
                before = self._promise.get(key, NO_PROMISE)
                if ok:
                    if ballot <= before:
                        self._report(
                            "promise", instance[0], f"{acceptor} promised {ballot} for {instance} after {before}"
                        )
                    self._promise[key] = max(before, ballot)
            case Accepted(acceptor=acceptor, instance=instance, ballot=ballot, value=value, ok=True):
                self._accepted(acceptor, instance, ballot, value)
            case Accepted():
                pass  # refused: changes nothing
            case Sent2b(acceptor=acceptor, txid=txid, ballot=ballot, values=values, to=to):
                for participant, value in values:
                    if (ballot, value) not in self._ever.get((acceptor, (txid, participant)), ()):
                        self._report(
                            "acceptor",
                            txid,
                            f"{acceptor} told {to} it accepted {value} at {ballot} for {participant}, it did not",
                        )
            case _:
                super().feed(entry)

    def _accepted(self, acceptor: str, instance: Instance, ballot: Ballot, value: Any) -> None:
        txid = instance[0]
        key = (acceptor, instance)
        promised = self._promise.get(key, NO_PROMISE)
        if ballot < promised:
            self._report(
                "promise", txid, f"{acceptor} accepted {value} at {ballot} for {instance} below its promise {promised}"
            )
        self._promise[key] = max(promised, ballot)
        self._last[key] = (ballot, value)
        self._ever.setdefault(key, set()).add((ballot, value))
        if ballot == BALLOT_ZERO and value == ABORTED:
            self._zero_aborted.add(instance)
        chosen = self._chosen.setdefault(instance, {})
        for at, was in chosen.items():
            if at < ballot and was != value:
                self._report(
                    "chosen", txid, f"{instance}: {was} chosen at {at}, then {acceptor} accepted {value} at {ballot}"
                )
        self._accepts.setdefault(instance, []).append((ballot, value, acceptor))
        voters = self._voters.setdefault((instance, ballot), {}).setdefault(value, set())
        if acceptor in voters:
            return
        voters.add(acceptor)
        if len(voters) != self.quorum:
            return
        # newly chosen at this ballot
        if ballot in chosen and chosen[ballot] != value:
            self._report("chosen", txid, f"{instance}: both {chosen[ballot]} and {value} chosen at {ballot}")
        chosen.setdefault(ballot, value)
        for at, other, by in self._accepts[instance]:
            if at > ballot and other != value:
                self._report(
                    "chosen", txid, f"{instance}: {value} chosen at {ballot}, but {by} accepted {other} at {at}"
                )

    # -- what the acceptors decided --------------------------------------------------------

    def chosen_values(self, instance: Instance) -> set[Any]:
        return set(self._chosen.get(instance, {}).values())

    def chosen_at(self, instance: Instance) -> dict[Ballot, Any]:
        return dict(self._chosen.get(instance, {}))

    def durable_outcomes(self, txid: str, participants: Iterable[str]) -> set[str]:
        """What the acceptors decided for ``txid``: {} (nothing yet), {committed}, {aborted} (or both: a bug)."""
        instances = [(txid, p) for p in participants]
        outcomes = set()
        if any(i in self._zero_aborted or ABORTED in self.chosen_values(i) for i in instances):
            outcomes.add(ABORTED)
        if all(PREPARED in self.chosen_values(i) for i in instances):
            outcomes.add(COMMITTED)
        return outcomes

    def check_acceptors(self, acceptors: Mapping[str, AcceptorState]) -> None:
        """Each acceptor's state is what its recorded promises and accepts make it (nothing lost or invented)."""
        for name, state in acceptors.items():
            for instance in state.instances:
                key = (name, instance)
                want = (self._promise.get(key, NO_PROMISE), *self._last.get(key, (None, None)))
                got = state.record(instance)
                if tuple(got) != want:
                    self._report("acceptor", instance[0], f"{name} holds {got} for {instance}, its history says {want}")


def check_paxos(
    history: Iterable[PaxosHistoryEntry],
    participants: Mapping[str, tuple[str, ...]],
    acceptors: Iterable[str] = ACCEPTORS,
) -> list:
    """Every violation in a whole history."""
    checker = PaxosChecker(participants, acceptors)
    for entry in history:
        checker.feed(entry)
    return checker.violations


# -- the world -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One message in the bag. ``values`` and ``accepted`` are tuples of pairs (participant first).

    Kinds: prepare (leader -> shard), vote (a shard's ballot-0 2a, shard -> acceptor), 1a, 2a (leader ->
    acceptor), 1b, 2b (acceptor -> leader), learn (fast: an acceptor's bundled 2b, acceptor -> shard),
    decision, answer (leader -> shard), ack, status (shard -> leader).
    """

    kind: str
    txid: str
    src: str
    dst: str
    ballot: Ballot = BALLOT_ZERO
    values: tuple[tuple[str, Any], ...] = ()
    participants: tuple[str, ...] = ()
    promised: bool = False
    accepted: tuple[tuple[str, Ballot | None, Any], ...] = ()
    outcome: str = ""

    def __str__(self) -> str:
        extra = ""
        if self.kind in ("1a", "1b", "2a", "2b", "learn"):
            extra += f" b={self.ballot}"
        if self.values:
            extra += " " + ",".join(f"{p}:{v}" for p, v in self.values)
        if self.kind == "1b":
            extra += " ok" if self.promised else " refused"
            extra += " " + ",".join(f"{p}:{b}/{v}" for p, b, v in self.accepted)
        if self.outcome:
            extra += f" {self.outcome}"
        return f"{self.kind}({self.txid} {self.src}->{self.dst}{extra})"


@dataclass(frozen=True, slots=True)
class Weights(CommonWeights):
    """How likely each kind of action is, when it is possible (``crash`` and ``restart`` are the
    leader's): also taking an acceptor down and back up."""

    down: float = 0.0
    up: float = 0.0


HEAL = Weights()

CoreFactory = Callable[..., PaxosCommitLeader]


class PaxosWorld(SimWorld):
    """Shards, three acceptors, one leader process, a network and a clock, all in memory."""

    replay_module = "tests/test_sim_paxos_commit.py"
    heal_weights = HEAL
    trace_tail = 80
    chaos_steps = (40, 300)
    heal_steps = 5000

    def __init__(
        self,
        fast: bool,
        seed: int,
        *,
        n_shards: int | None = None,
        n_txns: int | None = None,
        max_down: int | None = None,
        core_factory: CoreFactory = PaxosCommitLeader,
    ) -> None:
        self.fast = fast
        self.variant = VARIANTS[fast]
        super().__init__(
            self.variant,
            seed,
            rng_name=f"paxos-commit/{self.variant}/{seed}",
            n_shards=n_shards,
            n_txns=n_txns,
            core_factory=core_factory,
        )
        # acceptors: durable; "down" only silences them
        self.acceptor_names = ACCEPTORS
        self.f = len(ACCEPTORS) // 2
        self.max_down = self.f if max_down is None else max_down
        self.acceptors: dict[str, AcceptorState] = {name: AcceptorState() for name in ACCEPTORS}
        self.acceptor_up: dict[str, bool] = {name: True for name in ACCEPTORS}
        self.chaos = self._draw_chaos(Weights, down=(0.0, 0.2, 0.5), up=(0.3, 1.0))
        # the leader process: volatile, except its incarnation number (the Raft term, in the real system)
        self.incarnation = 1
        self._counter: Iterator[int] = itertools.count(1)
        self.waiting: dict[str, list[str]] = {}  # txid -> shards that asked, answered at the core's Reply
        # the acceptors' and the shards' sides, as the node runs them (commit.protocols.paxos_participant);
        # an acceptor's bundles are volatile, lost when it goes down
        self.bundles: dict[str, AcceptorBundles] = {name: AcceptorBundles(BUNDLE_CAP) for name in ACCEPTORS}
        self.learners: dict[str, FastLearner] = {}
        self.learned: dict[str, int] = {COMMITTED: 0, ABORTED: 0}  # fast: decisions shards learned by themselves
        # the rest
        self.checker = PaxosChecker(self.participants, ACCEPTORS)
        self.ballots_used: list[Ballot] = []  # every ballot a core proposed in phase 1

    # -- the leader driver -----------------------------------------------------------------

    def _ballots(self) -> Iterator[Ballot]:
        incarnation, counter = self.incarnation, self._counter
        while True:
            yield (incarnation, 0, next(counter))

    def _new_core(self, txid: str) -> PaxosCommitLeader:
        core = self.core_factory(
            txid=txid,
            participants=self.participants[txid],
            acceptors=self.acceptor_names,
            ballots=self._ballots(),
            vote_timeout_s=self.vote_timeout_s,
            resend_s=self.resend_s,
            fast=self.fast,
        )
        self.runs[txid] = CoreRun(txid, core)
        return core

    def _send(self, kind: str, txid: str, src: str, dst: str, **fields: Any) -> None:
        self.bag.append(Message(kind, txid, src, dst, **fields))

    # -- its executors (commit.node.driver.EXECUTORS names them) -----------------------------

    def send_prepare(self, run: CoreRun, effect: SendPrepare) -> None:
        self._send("prepare", run.txid, LEADER, effect.participant)

    def phase1a(self, run: CoreRun, effect: Phase1a) -> None:
        self.ballots_used.append(effect.ballot)
        for acceptor in self.acceptor_names:
            self._send("1a", run.txid, LEADER, acceptor, ballot=effect.ballot, participants=tuple(effect.participants))

    def phase2a(self, run: CoreRun, effect: Phase2a) -> None:
        for acceptor in self.acceptor_names:
            self._send("2a", run.txid, LEADER, acceptor, ballot=effect.ballot,
                       values=tuple(sorted(effect.values.items())))

    def send_decision(self, run: CoreRun, effect: SendDecision) -> None:
        self._say("decision message", run.txid, effect.outcome)
        self._send("decision", run.txid, LEADER, effect.participant, outcome=effect.outcome)

    def reply(self, run: CoreRun, effect: Reply) -> None:
        self._record(Replied(run.txid, effect.outcome))
        for shard in self.waiting.pop(run.txid, []):
            self._send("answer", run.txid, LEADER, shard, outcome=effect.outcome)

    def finished(self, run: CoreRun, effect: Finished) -> None:
        self._forget(run.txid)
        self.waiting.pop(run.txid, None)

    def superseded(self, run: CoreRun, effect: Superseded) -> None:
        raise self._failure(f"{run.txid}: superseded with one leader incarnation at a time: {effect.reason}")

    def _leader_receives(self, msg: Message) -> None:
        if not self.up:
            return  # lost
        txid = msg.txid
        if msg.kind == "status":
            self._answer_status(msg.src, txid)
            return
        if txid not in self.cores:
            return  # no core for txid: a late message
        match msg.kind:
            case "2b":
                self._handle(txid, Phase2b(now=self.now, acceptor=msg.src, ballot=msg.ballot, values=dict(msg.values)))
            case "1b":
                accepted = {p: (b, v) for p, b, v in msg.accepted}
                event = Phase1b(
                    now=self.now, acceptor=msg.src, ballot=msg.ballot, promised=msg.promised, accepted=accepted
                )
                self._handle(txid, event)
            case "ack":
                self._handle(txid, Acked(now=self.now, participant=msg.src))
            case _:
                raise self._failure(f"the leader got {msg}")

    def _answer_status(self, shard: str, txid: str) -> None:
        """An in-doubt shard asks: answer from a live core once it replied, else start one that recovers."""
        core = self.cores.get(txid)
        if core is None:
            self.waiting[txid] = [shard]
            self._new_core(txid)
            self._handle(txid, Recover(now=self.now))
        elif core.outcome is not None:
            self._send("answer", txid, LEADER, shard, outcome=core.outcome)
        else:
            self.waiting.setdefault(txid, []).append(shard)

    # -- the acceptors -----------------------------------------------------------------------

    def _promise(self, name: str, instance: Instance, ballot: Ballot) -> tuple[bool, Ballot | None, Any]:
        result = self.acceptors[name].promise(instance, ballot)
        self._record(Promised(name, instance, ballot, result[0]))
        return result

    def _accept(self, name: str, instance: Instance, ballot: Ballot, value: Any) -> bool:
        ok = self.acceptors[name].accept(instance, ballot, value)
        self._record(Accepted(name, instance, ballot, value, ok))
        if ok:
            self._observe_choices(instance[0])
        return ok

    def _send_2b(self, name: str, txid: str, ballot: Ballot, values: dict[str, Any], to: str) -> None:
        pairs = tuple(sorted(values.items()))
        self._record(Sent2b(name, txid, ballot, pairs, to))
        self._send("learn" if to != LEADER else "2b", txid, name, to, ballot=ballot, values=pairs)

    # the acceptor's executors: its state is durable as soon as it changes, so persisting is nothing here

    def persist_acceptances(self, name: str, effect: PersistAcceptances) -> None:
        pass

    def send_2b(self, name: str, effect: Send2b) -> None:
        self._send_2b(name, effect.txid, BALLOT_ZERO, effect.values, LEADER)

    def send_learn(self, name: str, effect: SendLearn) -> None:
        self._send_2b(name, effect.txid, BALLOT_ZERO, effect.values, effect.shard)

    def _acceptor_receives(self, msg: Message) -> None:
        name = msg.dst
        if not self.acceptor_up[name]:
            return  # lost
        txid = msg.txid
        match msg.kind:
            case "vote":  # a participant's own 2a at ballot 0
                ((shard, value),) = msg.values
                vote = Vote2a(txid=txid, shard=shard, value=value, reason="", participants=msg.participants,
                              leader=LEADER, fast=self.fast, hop=0,
                              accepted=self._accept(name, (txid, shard), BALLOT_ZERO, value))
                for executor, effect in calls_of(self.bundles[name].on_2a(vote)):
                    getattr(self, executor)(name, effect)
            case "1a":
                promised = True
                accepted: list[tuple[str, Ballot | None, Any]] = []
                for p in msg.participants:
                    ok, ballot, value = self._promise(name, (txid, p), msg.ballot)
                    promised = promised and ok
                    accepted.append((p, ballot, value))
                self._send("1b", txid, name, LEADER, ballot=msg.ballot, promised=promised, accepted=tuple(accepted))
            case "2a":
                took = {p: v for p, v in msg.values if self._accept(name, (txid, p), msg.ballot, v)}
                if took:
                    self._send_2b(name, txid, msg.ballot, took, LEADER)
            case _:
                raise self._failure(f"acceptor {name} got {msg}")

    # -- the shard leader driver -------------------------------------------------------------

    def _shard_receives(self, msg: Message) -> None:
        shard, txid = msg.dst, msg.txid
        match msg.kind:
            case "prepare":
                txn = self.txns[txid]
                command = ("prepare", txid, txn.reads[shard], txn.writes[shard], txn.participants)
                value = self._vote_value(self.shards[shard].apply(command))
                if value is None:
                    return
                self._record(Voted(shard, txid, value))
                for acceptor in self.acceptor_names:
                    self._send("vote", txid, shard, acceptor, values=((shard, value),), participants=txn.participants)
            case "decision":
                if self._shard_decide(shard, txid, msg.outcome):
                    self._send("ack", txid, shard, LEADER)
            case "answer":
                if msg.outcome in OUTCOMES:
                    self._shard_decide(shard, txid, msg.outcome)
            case "learn":
                self._learn(shard, msg)
            case _:
                raise self._failure(f"shard {shard} got {msg}")

    @staticmethod
    def _vote_value(result: Any) -> str | None:
        """The ballot-0 value for a prepare's result: "yes" (also a repeated PREPARE of a prepared txid),
        ("no", reason), or ("decided", outcome) for a txid already decided here, which casts no new vote."""
        match result:
            case "yes":
                return PREPARED
            case ("no", _):
                return ABORTED
            case ("decided", _):
                return None
            case _:
                raise AssertionError(f"unexpected prepare result {result!r}")

    def _learn(self, shard: str, msg: Message) -> None:
        """Faster Paxos Commit: a participant decides from the acceptors' ballot-0 2b bundles."""
        if msg.ballot != BALLOT_ZERO:
            return
        txid = msg.txid
        learner = self.learners.setdefault(shard, FastLearner(self.f + 1, BUNDLE_CAP))
        outcome = learner.on_2b(txid, shard, msg.src, dict(msg.values), self.participants[txid])
        if outcome is None:
            return
        before = self.shards[shard].state_of(txid)
        if self._shard_decide(shard, txid, outcome) and before != outcome:
            self.learned[outcome] += 1

    # -- actions -----------------------------------------------------------------------------

    def start(self, txid: str) -> None:
        assert self.up and txid not in self.started, txid
        self.started.add(txid)
        self._new_core(txid)
        self._handle(txid, Start(now=self.now))

    def deliver(self, index: int) -> None:
        msg = self.bag.pop(index)
        if msg.dst == LEADER:
            self._leader_receives(msg)
        elif msg.dst in self.acceptors:
            self._acceptor_receives(msg)
        else:
            self._shard_receives(msg)

    def crash(self) -> None:
        super().crash()
        self.waiting.clear()

    def restart(self, recover: tuple[str, ...] = ()) -> None:
        """A new incarnation, with higher ballots; it may be handed txids to recover at once."""
        assert not self.up
        self.up = True
        self.incarnation += 1
        self._counter = itertools.count(1)
        for txid in recover:
            if txid not in self.cores:
                self._new_core(txid)
                self._handle(txid, Recover(now=self.now))

    def acceptor_down(self, name: str) -> None:
        assert self.acceptor_up[name]
        self.acceptor_up[name] = False

    def acceptor_back(self, name: str) -> None:
        assert not self.acceptor_up[name]
        self.acceptor_up[name] = True
        self.bundles[name] = AcceptorBundles(BUNDLE_CAP)  # restarted: what it accepted is durable, its bundles not

    def ask(self, shard: str, txid: str) -> None:
        """An in-doubt shard asks the leader for the outcome."""
        self._send("status", txid, shard, LEADER, participants=self.participants[txid])

    def _act(self, name: str, arg: object) -> None:
        match name:
            case "restart":
                self.restart(arg or ())  # type: ignore[arg-type]
            case "down":
                self.acceptor_down(arg)  # type: ignore[arg-type]
            case "up":
                self.acceptor_back(arg)  # type: ignore[arg-type]
            case _:
                super()._act(name, arg)

    # -- observing and checking ----------------------------------------------------------------

    def _observe_choices(self, txid: str) -> None:
        """Record what the acceptors decided for ``txid`` (their choices change only when one accepts)."""
        for outcome in sorted(self.checker.durable_outcomes(txid, self.participants[txid])):
            self._say("store", txid, outcome)

    def store_outcome(self, txid: str) -> str | None:
        """What the acceptors decided, or None."""
        outcomes = self.checker.durable_outcomes(txid, self.participants[txid])
        return next(iter(outcomes)) if len(outcomes) == 1 else None

    def _check_states(self) -> None:
        super()._check_states()
        self.checker.check_acceptors(self.acceptors)

    def _describe(self, name: str, arg: object) -> str:
        if name in ("deliver", "drop", "duplicate"):
            msg = self.bag[arg]  # type: ignore[index]
            lost = not self.up if msg.dst == LEADER else not self.acceptor_up.get(msg.dst, True)
            return f"{name} {msg}{' (lost: down)' if name == 'deliver' and lost else ''}"
        if name == "restart":
            handed = f", recovering {list(arg)}" if arg else ""  # type: ignore[call-overload]
            return f"restart as incarnation {self.incarnation + 1}{handed}"
        return super()._describe(name, arg)

    # -- the scheduler -----------------------------------------------------------------------

    def down_acceptors(self) -> list[str]:
        return [name for name, up in self.acceptor_up.items() if not up]

    def _restarts(self) -> list[object]:
        doubtful = tuple(sorted({txid for _, txid in self.in_doubt()}))
        return [(), doubtful] if doubtful else [()]

    def _own_candidates(self, weights: Weights) -> Iterator[Candidate]:
        yield from super()._own_candidates(weights)
        down = self.down_acceptors()
        if len(down) < self.max_down:
            yield (weights.down, "down", [a for a in self.acceptor_names if a not in down])
        yield (weights.up, "up", down)

    def _asking(self) -> set[tuple[str, str]]:
        asked = {(m.src, m.txid) for m in self.bag if m.kind == "status"}
        answered = {(m.dst, m.txid) for m in self.bag if m.kind == "answer"}
        waiting = {(shard, txid) for txid, shards in self.waiting.items() for shard in shards}
        return asked | answered | waiting

    def drain(self, where: Callable[[Message], bool] = lambda m: True) -> int:
        """Scripted runs: deliver every message (matching ``where``) in a seeded order, until none is left
        (no drops, no timers: time stands still)."""
        count = 0
        while matching := [i for i, m in enumerate(self.bag) if where(m)]:
            self.do(("deliver", self.rng.choice(matching)))
            count += 1
        return count

    def _stuck(self) -> dict[str, object]:
        return {"acceptors down": self.down_acceptors()}

    def replies(self, txid: str) -> set[str]:
        return {e.outcome for e in self.history if isinstance(e, Replied) and e.txid == txid}

    def check_settled_outcomes(self) -> None:
        """After heal: every transaction is decided at every participant that prepared, with one outcome,
        the one the acceptors chose and the leader replied."""
        for txid in self.txns:
            states, decided = self._one_outcome(txid)
            for shard in self.participants[txid]:
                if (shard, txid) in self.checker.ever_prepared and states[shard] not in OUTCOMES:
                    raise self._failure(f"liveness: {txid} prepared at {shard} but ends {states}")
            durable = self.checker.durable_outcomes(txid, self.participants[txid])
            if len(durable) > 1 or (decided and durable and durable != decided):
                raise self._failure(f"{txid}: the acceptors chose {durable}, the shards end {states}")
            if decided == {COMMITTED} and durable != decided:
                raise self._failure(f"{txid} committed at {states} but the acceptors chose {durable}")
            replies = self.replies(txid)
            if replies and decided and replies != decided:
                raise self._failure(f"{txid}: the leader replied {replies}, the shards end {states}")
