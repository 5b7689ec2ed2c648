"""A deterministic simulator for Two-Phase Commit (``2pc`` and ``raft-2pc``), with its invariant checker.

The simulator drives the sans-IO core ``TwoPhaseCoordinator`` with the node's own driver code
(``commit.node.driver.CoreRun``: its effect table, its timers, its failure rule; DESIGN.md section 4), and
carries the calls out with executors of its own, everything else being deterministic models (the
scheduler, shared with the other simulators, is ``SimWorld`` in ``tests/sim/base.py``):

* shards are ``ShardState`` objects: a Raft group modelled as one atomic durable state machine, which
  survives everything; the shard leader driver is stateless here (it applies a command and answers);
* the ``raft-2pc`` durable store is a ``CoordinatorState`` (the coordinator group, likewise atomic and
  durable, and always available: only the coordinator *process* crashes); the ``2pc`` durable store is
  the coordinator's local log, a dict txid -> outcome (first write wins) plus the set of finished txids;
* the network is a bag of messages that the scheduler may deliver in any order, drop or duplicate;
* the coordinator process may crash (losing its cores, timers and the persists not yet run) and restart
  (recovering from the durable store);
* time moves only when a timer fires.

A seeded ``random.Random`` picks every action, so a seed (with the protocol) replays a run exactly.
After every step the ``Checker`` reads the new history entries and the shards' states and the run
stops with ``SimulationFailure`` at the first violation of (Lamport's TCommit, Gray & Lamport 2006):

* ``atomicity``: no transaction committed at one shard and aborted at another (nor a shard refusing a
  decision because it contradicts its own state);
* ``stability``: the coordinator side (durable store, cores, replies) never says both outcomes;
* ``validity``: commit only if every participant prepared; a participant that voted NO or never voted
  forces abort;
* ``agreement``: a shard's outcome is the coordinator's decision;
* ``reply``: the client is told the final outcome, and only once it is durable.

A ``ProtocolError`` from the core also ends the run: the core had no transition for an event the driver
may legitimately feed it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from commit.node.driver import CoreRun
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.protocols.events import Acked, Finished, Reply, SendDecision, SendPrepare, Start, Vote
from commit.protocols.two_phase import (
    PersistBegin,
    PersistDecision,
    Persisted,
    Recover,
    TwoPhaseCoordinator,
)
from commit.node.state_machines.shard import ShardState
from tests.sim.base import (
    ABORTED,
    COMMITTED,
    OUTCOMES,
    PREPARED,
    Candidate,
    Decided,
    ShardChanged,
    ShardRefused,
    SimWorld,
)
from tests.sim.base import Weights as CommonWeights

PENDING = "pending"
PROTOCOLS = ("2pc", "raft-2pc")
UNDECIDED_CORE_STATES = ("idle", "beginning", "collecting", "persisting")


# -- history (besides ShardChanged, Decided and ShardRefused, in base.py) --------------------


@dataclass(frozen=True, slots=True)
class Replied:
    txid: str
    outcome: str


HistoryEntry = ShardChanged | Decided | Replied | ShardRefused


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # atomicity | stability | validity | agreement | reply
    txid: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} violation for {self.txid}: {self.detail}"


class Checker:
    """The invariants, fed one history entry at a time (so checking every step stays linear)."""

    def __init__(self, participants: Mapping[str, tuple[str, ...]]) -> None:
        self.participants = dict(participants)
        self.violations: list[Violation] = []
        self._reported: set[tuple[str, str, str]] = set()
        self.ever_prepared: set[tuple[str, str]] = set()  # (shard, txid) seen prepared
        self._shard_outcome: dict[str, dict[str, str]] = defaultdict(dict)  # txid -> shard -> outcome
        self._said: dict[str, dict[str, str]] = defaultdict(dict)  # txid -> outcome -> first sayer
        self._durable: dict[str, str] = {}  # txid -> first outcome the store said
        self._replies: dict[str, set[str]] = defaultdict(set)

    def _report(self, kind: str, txid: str, detail: str) -> None:
        if (kind, txid, detail) not in self._reported:
            self._reported.add((kind, txid, detail))
            self.violations.append(Violation(kind, txid, detail))

    def feed(self, entry: HistoryEntry) -> None:
        match entry:
            case ShardChanged(shard=shard, txid=txid, state=state):
                if state == PREPARED:
                    self.ever_prepared.add((shard, txid))
                else:
                    self._shard_decided(shard, txid, state)
            case Decided(source=source, txid=txid, outcome=outcome):
                if source == "store":
                    self._durable.setdefault(txid, outcome)
                self._decision(f"the {source}", txid, outcome)
            case Replied(txid=txid, outcome=outcome):
                if txid not in self._durable:
                    self._report("reply", txid, f"client told {outcome} before any durable decision")
                self._reply(txid, outcome)
            case ShardRefused(shard=shard, txid=txid, command=command, error=error):
                self._report("atomicity", txid, f"{shard} refused {command}: {error}")
            case _:
                raise TypeError(f"not a history entry: {entry!r}")

    def _shard_decided(self, shard: str, txid: str, outcome: str) -> None:
        outcomes = self._shard_outcome[txid]
        before = outcomes.get(shard)
        if before is not None and before != outcome:
            self._report("atomicity", txid, f"{shard} went from {before} to {outcome}")
        outcomes[shard] = outcome
        for other, got in outcomes.items():
            if got != outcome:
                self._report("atomicity", txid, f"{other} {got}, {shard} {outcome}")
        if outcome == COMMITTED:
            self._check_all_prepared(txid, f"{shard} committed")
        for said, sayer in self._said[txid].items():
            if said != outcome:
                self._report("agreement", txid, f"{shard} {outcome}, {sayer} said {said}")
        self._check_replies(txid)

    def _decision(self, sayer: str, txid: str, outcome: str) -> None:
        """A coordinator-side decision: stable, valid, and in agreement with the shards and the replies."""
        self._coordinator_said(sayer, txid, outcome)
        if outcome == COMMITTED:
            self._check_all_prepared(txid, f"{sayer} says committed")
        for shard, got in self._shard_outcome[txid].items():
            if got != outcome:
                self._report("agreement", txid, f"{shard} {got}, {sayer} says {outcome}")
        self._check_replies(txid)

    def _reply(self, txid: str, outcome: str) -> None:
        self._replies[txid].add(outcome)
        self._coordinator_said("a reply", txid, outcome)
        self._check_replies(txid)

    def _coordinator_said(self, sayer: str, txid: str, outcome: str) -> None:
        said = self._said[txid]
        said.setdefault(outcome, sayer)
        if len(said) > 1:
            self._report("stability", txid, f"{said[COMMITTED]} said committed, {said[ABORTED]} said aborted")

    def _check_all_prepared(self, txid: str, what: str) -> None:
        for shard in self.participants.get(txid, ()):
            if (shard, txid) not in self.ever_prepared:
                self._report("validity", txid, f"{what} but participant {shard} never prepared")

    def _check_replies(self, txid: str) -> None:
        finals = set(self._shard_outcome[txid].values())
        if txid in self._durable:
            finals.add(self._durable[txid])
        for told in self._replies[txid]:
            for final in finals - {told}:
                self._report("reply", txid, f"client told {told}, the outcome is {final}")

    def check_shards(self, shards: Mapping[str, ShardState]) -> None:
        """Invariant 1 on the current states (independent of how they were reached)."""
        for txid, parts in self.participants.items():
            states = {shard: shards[shard].state_of(txid) for shard in parts if shard in shards}
            if COMMITTED in states.values() and ABORTED in states.values():
                pretty = ", ".join(f"{shard} {state}" for shard, state in sorted(states.items()))
                self._report("atomicity", txid, f"shards disagree: {pretty}")


def check(
    history: Iterable[object],
    participants: Mapping[str, tuple[str, ...]],
    shards: Mapping[str, ShardState] | None = None,
    checker_class: type[Checker] = Checker,
) -> list[Violation]:
    """Every violation in a whole history (and, if given, in the shards' current states)."""
    checker = checker_class(participants)
    for entry in history:
        checker.feed(entry)
    if shards is not None:
        checker.check_shards(shards)
    return checker.violations


# -- the world -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """``shard`` is the sender for messages to the coordinator and the receiver for the others."""

    kind: str  # prepare | query | decision | status | answer (to a shard); vote | ack (to the coordinator)
    txid: str
    shard: str
    yes: bool = False
    outcome: str = ""

    def __str__(self) -> str:
        if self.kind == "vote":
            extra = " yes" if self.yes else " no"
        else:
            extra = f" {self.outcome}" if self.outcome else ""
        return f"{self.kind}({self.txid}@{self.shard}{extra})"


@dataclass(frozen=True, slots=True)
class Weights(CommonWeights):
    """How likely each kind of action is, when it is possible: also running a pending persist."""

    persist: float = 4.0


HEAL = Weights()

CoreFactory = Callable[..., TwoPhaseCoordinator]


class World(SimWorld):
    """Shards, one coordinator process, its durable store, a network and a clock, all in memory."""

    replay_module = "tests/test_sim_two_phase.py"
    heal_weights = HEAL

    def __init__(
        self,
        protocol: str,
        seed: int,
        *,
        n_shards: int | None = None,
        n_txns: int | None = None,
        core_factory: CoreFactory = TwoPhaseCoordinator,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol = protocol
        super().__init__(
            protocol,
            seed,
            rng_name=f"{protocol}/{seed}",
            n_shards=n_shards,
            n_txns=n_txns,
            core_factory=core_factory,
        )
        self.chaos = self._draw_chaos(Weights)
        # the coordinator process: volatile
        self.recovered: set[str] = set()  # cores made by Recover: their SendPrepare is a vote query
        self.persists: list[tuple[str, PersistBegin | PersistDecision]] = []
        # durable stores
        self.group = CoordinatorState()  # raft-2pc
        self.log: dict[str, str] = {}  # 2pc: txid -> outcome, first write wins
        self.log_finished: set[str] = set()  # 2pc: the end records
        self.presumed_aborted: set[str] = set()  # 2pc: never start a core for these
        # the rest
        self.checker = Checker(self.participants)
        self._store_view: dict[str, str] = {}

    # -- what the durable stores say ---------------------------------------------------

    def store_outcome(self, txid: str) -> str | None:
        """The durable decision for txid, or None."""
        if self.protocol == "raft-2pc":
            known = self.group.outcome_of(txid)
            return known if known in OUTCOMES else None
        return self.log.get(txid)

    def store_unfinished(self) -> list[str]:
        if self.protocol == "raft-2pc":
            return [txid for txid, _ in self.group.in_flight()]
        return [txid for txid in self.log if txid not in self.log_finished]

    # -- the coordinator driver ----------------------------------------------------------

    def _new_core(self, txid: str, participants: tuple[str, ...]) -> TwoPhaseCoordinator:
        core = self.core_factory(
            txid=txid,
            participants=participants,
            record_begin=self.protocol == "raft-2pc",
            vote_timeout_s=self.vote_timeout_s,
            resend_s=self.resend_s,
        )
        self.runs[txid] = CoreRun(txid, core)
        return core

    # -- its executors (commit.node.driver.EXECUTORS names them) -----------------------------

    def persist_begin(self, run: CoreRun, effect: PersistBegin) -> None:
        self.persists.append((run.txid, effect))

    def persist_decision(self, run: CoreRun, effect: PersistDecision) -> None:
        self.persists.append((run.txid, effect))

    def send_prepare(self, run: CoreRun, effect: SendPrepare) -> None:
        kind = "query" if run.txid in self.recovered else "prepare"
        self.bag.append(Message(kind, run.txid, effect.participant))

    def send_decision(self, run: CoreRun, effect: SendDecision) -> None:
        self.bag.append(Message("decision", run.txid, effect.participant, outcome=effect.outcome))

    def reply(self, run: CoreRun, effect: Reply) -> None:
        self._record(Replied(run.txid, effect.outcome))

    def finished(self, run: CoreRun, effect: Finished) -> None:
        txid = run.txid
        if self.protocol == "raft-2pc":
            self.group.apply(("finish", txid))
        else:
            self.log_finished.add(txid)
        self._forget(txid)
        self.recovered.discard(txid)

    def _answer_status(self, txid: str) -> str | None:
        """The coordinator side's answer to an in-doubt shard (None: no answer)."""
        if self.protocol == "raft-2pc":
            return self.group.apply(("fence", txid))
        if not self.up:
            return None
        core = self.cores.get(txid)
        if core is not None and core.state in UNDECIDED_CORE_STATES:
            return PENDING
        if txid in self.log:
            return self.log[txid]
        self.presumed_aborted.add(txid)
        return ABORTED

    # -- actions -----------------------------------------------------------------------

    def start(self, txid: str) -> None:
        assert self.up and txid not in self.started, txid
        self.started.add(txid)
        if txid in self.presumed_aborted:
            return
        self._new_core(txid, self.txns[txid].participants)
        self._handle(txid, Start(now=self.now))

    def deliver(self, index: int) -> None:
        msg = self.bag.pop(index)
        txid, shard = msg.txid, msg.shard
        match msg.kind:
            case "prepare":
                txn = self.txns[txid]
                result = self.shards[shard].apply(("prepare", txid, txn.reads[shard], txn.writes[shard]))
                self.bag.append(Message("vote", txid, shard, yes=result in ("yes", ("decided", "committed"))))
            case "query":
                result = self.shards[shard].apply(("refuse", txid))
                self.bag.append(Message("vote", txid, shard, yes=result in (PREPARED, COMMITTED)))
            case "decision":
                if self._shard_decide(shard, txid, msg.outcome):
                    self.bag.append(Message("ack", txid, shard))
            case "vote" if self.up and txid in self.cores:
                self._handle(txid, Vote(now=self.now, participant=shard, yes=msg.yes))
            case "ack" if self.up and txid in self.cores:
                self._handle(txid, Acked(now=self.now, participant=shard))
            case "vote" | "ack":
                pass  # the coordinator is down, or has no core for txid
            case "status":
                answer = self._answer_status(txid)
                if answer is not None:
                    self.bag.append(Message("answer", txid, shard, outcome=answer))
            case "answer":
                if msg.outcome in OUTCOMES:
                    self._shard_decide(shard, txid, msg.outcome)
            case _:
                raise self._failure(f"unknown message {msg}")

    def crash(self) -> None:
        super().crash()
        self.recovered.clear()
        self.persists.clear()

    def restart(self) -> None:
        assert not self.up
        self.up = True
        if self.protocol == "raft-2pc":
            for txid, record in self.group.in_flight():
                self._new_core(txid, record.participants)
                self.recovered.add(txid)
                self._handle(txid, Recover(now=self.now, outcome=record.outcome))
        else:
            for txid, outcome in list(self.log.items()):
                if txid not in self.log_finished:
                    self._new_core(txid, self.txns[txid].participants)
                    self.recovered.add(txid)
                    self._handle(txid, Recover(now=self.now, outcome=outcome))

    def ask(self, shard: str, txid: str) -> None:
        """An in-doubt shard asks the coordinator side for the outcome."""
        self.bag.append(Message("status", txid, shard))

    def run_persist(self, index: int) -> None:
        txid, effect = self.persists.pop(index)
        if self.protocol == "raft-2pc":
            if isinstance(effect, PersistBegin):
                result = self.group.apply(("begin", txid, effect.participants))
                outcome = None if result == PENDING else result
            else:
                outcome = self.group.apply(("decide", txid, effect.outcome))
        else:
            if isinstance(effect, PersistBegin):
                raise self._failure(f"2pc core of {txid} asked to persist a begin record")
            self.log.setdefault(txid, effect.outcome)
            outcome = self.log[txid]
        self._observe_store(txid)
        self._handle(txid, Persisted(now=self.now, outcome=outcome))

    def _act(self, name: str, arg: object) -> None:
        match name:
            case "restart":
                self.restart()
            case "persist":
                self.run_persist(arg)  # type: ignore[arg-type]
            case _:
                super()._act(name, arg)

    # -- observing and checking ----------------------------------------------------------

    def _observe_store(self, txid: str) -> None:
        outcome = self.store_outcome(txid)
        if outcome is not None and self._store_view.get(txid) != outcome:
            self._store_view[txid] = outcome
            self._record(Decided("store", txid, outcome))

    def _describe(self, name: str, arg: object) -> str:
        if name == "persist":
            txid, effect = self.persists[arg]  # type: ignore[index]
            return f"persist {txid} {effect}"
        return super()._describe(name, arg)

    # -- the scheduler -----------------------------------------------------------------

    def _own_candidates(self, weights: Weights) -> Iterator[Candidate]:
        yield (weights.persist, "persist", list(range(len(self.persists))))
        yield from super()._own_candidates(weights)

    def _asking(self) -> set[tuple[str, str]]:
        return {(m.shard, m.txid) for m in self.bag if m.kind in ("status", "answer")}

    def settled(self) -> bool:
        return super().settled() and not self.persists and not self.store_unfinished()

    def _stuck(self) -> dict[str, object]:
        return {"unfinished": self.store_unfinished(), "persists": self.persists}

    def check_settled_outcomes(self) -> None:
        """After heal: every transaction is decided everywhere, or (presumed abort) unknown where it never came.

        A transaction with a durable decision is decided at every participant; one without (its
        coordinator lost it before the first durable write) may be unknown at some participants, but
        then no participant committed it.
        """
        for txid in self.txns:
            states, decided = self._one_outcome(txid)
            durable = self.store_outcome(txid)
            if durable is not None and (None in states.values() or decided != {durable}):
                raise self._failure(f"liveness: {txid} decided {durable} in the store but ends {states}")
            if durable is None and decided == {COMMITTED}:
                raise self._failure(f"{txid} committed at {states} with no durable decision")
