"""A deterministic simulator for Two-Phase Commit (``2pc`` and ``raft-2pc``), with its invariant checker.

The simulator drives the sans-IO core ``TwoPhaseCoordinator`` exactly as the trio driver does
(DESIGN.md section 4), with everything else replaced by deterministic models:

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

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from commit.coordinator import CoordinatorState
from commit.protocols.two_phase import (
    Acked,
    Effect,
    Event,
    Finished,
    PersistBegin,
    PersistDecision,
    Persisted,
    ProtocolError,
    Recover,
    Reply,
    SendDecision,
    SendPrepare,
    SetTimer,
    Start,
    TimerFired,
    TwoPhaseCoordinator,
    Vote,
)
from commit.shard import Reads, ShardState, Writes
from consensus.errors import InternalError

COMMITTED = "committed"
ABORTED = "aborted"
PREPARED = "prepared"
PENDING = "pending"
OUTCOMES = (COMMITTED, ABORTED)
PROTOCOLS = ("2pc", "raft-2pc")
KEYS = (b"a", b"b", b"c")
UNDECIDED_CORE_STATES = ("idle", "beginning", "collecting", "persisting")


class SimulationFailure(AssertionError):
    """An invariant broke, the core raised ``ProtocolError``, or the healed world did not settle."""


# -- history -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardChanged:
    """A shard's replicated state for ``txid`` became ``state`` (prepared, committed or aborted)."""

    shard: str
    txid: str
    state: str


@dataclass(frozen=True, slots=True)
class Decided:
    """The coordinator side said ``outcome``: ``source`` is "store" (durable) or "core" (in memory)."""

    source: str
    txid: str
    outcome: str


@dataclass(frozen=True, slots=True)
class Replied:
    txid: str
    outcome: str


@dataclass(frozen=True, slots=True)
class ShardRefused:
    """A shard raised on a decision that contradicts its state (commit of an aborted txid, ...)."""

    shard: str
    txid: str
    command: str
    error: str


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
        self._prepared: set[tuple[str, str]] = set()  # (shard, txid) seen prepared
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
                    self._prepared.add((shard, txid))
                else:
                    self._shard_decided(shard, txid, state)
            case Decided(source=source, txid=txid, outcome=outcome):
                self._coordinator_said(f"the {source}", txid, outcome)
                if source == "store":
                    self._durable.setdefault(txid, outcome)
                if outcome == COMMITTED:
                    self._check_all_prepared(txid, f"the {source} says committed")
                for shard, got in self._shard_outcome[txid].items():
                    if got != outcome:
                        self._report("agreement", txid, f"{shard} {got}, the {source} says {outcome}")
                self._check_replies(txid)
            case Replied(txid=txid, outcome=outcome):
                if txid not in self._durable:
                    self._report("reply", txid, f"client told {outcome} before any durable decision")
                self._replies[txid].add(outcome)
                self._coordinator_said("a reply", txid, outcome)
                self._check_replies(txid)
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

    def _coordinator_said(self, sayer: str, txid: str, outcome: str) -> None:
        said = self._said[txid]
        said.setdefault(outcome, sayer)
        if len(said) > 1:
            self._report("stability", txid, f"{said[COMMITTED]} said committed, {said[ABORTED]} said aborted")

    def _check_all_prepared(self, txid: str, what: str) -> None:
        for shard in self.participants.get(txid, ()):
            if (shard, txid) not in self._prepared:
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
    history: Iterable[HistoryEntry],
    participants: Mapping[str, tuple[str, ...]],
    shards: Mapping[str, ShardState] | None = None,
) -> list[Violation]:
    """Every violation in a whole history (and, if given, in the shards' current states)."""
    checker = Checker(participants)
    for entry in history:
        checker.feed(entry)
    if shards is not None:
        checker.check_shards(shards)
    return checker.violations


# -- the world -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Txn:
    txid: str
    participants: tuple[str, ...]
    reads: Mapping[str, Reads]
    writes: Mapping[str, Writes]


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
class Weights:
    """How likely each kind of action is, when it is possible."""

    start: float = 3.0
    deliver: float = 10.0
    drop: float = 0.0
    duplicate: float = 0.0
    timer: float = 1.0
    crash: float = 0.0
    restart: float = 0.0
    ask: float = 1.0
    persist: float = 4.0


HEAL = Weights()

Action = tuple[str, object]
CoreFactory = Callable[..., TwoPhaseCoordinator]


class World:
    """Shards, one coordinator process, its durable store, a network and a clock, all in memory."""

    vote_timeout_s = 1.0
    resend_s = 0.5

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
        self.seed = seed
        self.rng = random.Random(f"{protocol}/{seed}")
        self.core_factory = core_factory
        rng = self.rng
        self.shards: dict[str, ShardState] = {
            f"s{i}": ShardState() for i in range(n_shards if n_shards is not None else rng.randint(2, 3))
        }
        for name, shard in self.shards.items():
            for key in KEYS:
                if rng.random() < 0.6:
                    shard.apply(("put", key, b"init-" + name.encode()))
        made = self._make_txns(n_txns if n_txns is not None else rng.randint(2, 4))
        self.txns: dict[str, Txn] = {txn.txid: txn for txn in made}
        self.participants = {txid: txn.participants for txid, txn in self.txns.items()}
        self.chaos = Weights(
            drop=rng.choice((0.0, 0.5, 1.5)),
            duplicate=rng.choice((0.0, 0.5, 1.0)),
            timer=rng.choice((0.5, 1.0, 2.0)),
            crash=rng.choice((0.0, 0.1, 0.3)),
            restart=rng.choice((0.5, 2.0)),
            ask=rng.choice((0.5, 1.5)),
        )
        # the coordinator process: volatile
        self.up = True
        self.cores: dict[str, TwoPhaseCoordinator] = {}
        self.recovered: set[str] = set()  # cores made by Recover: their SendPrepare is a vote query
        self.timers: dict[tuple[str, str], float] = {}
        self.persists: list[tuple[str, PersistBegin | PersistDecision]] = []
        # durable stores
        self.group = CoordinatorState()  # raft-2pc
        self.log: dict[str, str] = {}  # 2pc: txid -> outcome, first write wins
        self.log_finished: set[str] = set()  # 2pc: the end records
        self.presumed_aborted: set[str] = set()  # 2pc: never start a core for these
        # the rest
        self.started: set[str] = set()
        self.bag: list[Message] = []
        self.now = 0.0
        self.steps = 0
        self.history: list[HistoryEntry] = []
        self.trace: list[str] = []
        self.checker = Checker(self.participants)
        self._shard_view: dict[tuple[str, str], str] = {}
        self._store_view: dict[str, str] = {}
        self._core_said: set[tuple[str, str]] = set()

    def _make_txns(self, n: int) -> list[Txn]:
        """Transactions over overlapping keys, reading the versions the shards hold now."""
        rng = self.rng
        names = sorted(self.shards)
        made = []
        for i in range(n):
            txid = f"t{i}"
            parts = tuple(sorted(rng.sample(names, rng.randint(2, len(names)))))
            reads: dict[str, Reads] = {}
            writes: dict[str, Writes] = {}
            for shard in parts:
                r: list[tuple[bytes, int]] = []
                w: list[tuple[bytes, bytes | None]] = []
                for key in sorted(rng.sample(KEYS, rng.randint(1, 2))):
                    mode = rng.choice(("read", "write", "both"))
                    if mode != "write":
                        r.append((key, self.shards[shard].read(key).version))
                    if mode != "read":
                        w.append((key, None if rng.random() < 0.15 else f"{txid}-{key.decode()}".encode()))
                reads[shard], writes[shard] = tuple(r), tuple(w)
            made.append(Txn(txid, parts, reads, writes))
        return made

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
        self.cores[txid] = core
        return core

    def _handle(self, txid: str, event: Event) -> None:
        core = self.cores[txid]
        try:
            effects = core.handle(event)
        except ProtocolError as exc:
            raise self._failure(f"ProtocolError from the core: {exc}") from exc
        if core.outcome is not None and (txid, core.outcome) not in self._core_said:
            self._core_said.add((txid, core.outcome))
            self._record(Decided("core", txid, core.outcome))
        for effect in effects:
            self._carry_out(txid, effect)

    def _carry_out(self, txid: str, effect: Effect) -> None:
        match effect:
            case PersistBegin() | PersistDecision():
                self.persists.append((txid, effect))
            case SendPrepare(participant=shard):
                kind = "query" if txid in self.recovered else "prepare"
                self.bag.append(Message(kind, txid, shard))
            case SendDecision(participant=shard, outcome=outcome):
                self.bag.append(Message("decision", txid, shard, outcome=outcome))
            case Reply(outcome=outcome):
                self._record(Replied(txid, outcome))
            case SetTimer(name=name, deadline=deadline):
                self.timers[(txid, name)] = deadline
            case Finished():
                if self.protocol == "raft-2pc":
                    self.group.apply(("finish", txid))
                else:
                    self.log_finished.add(txid)
                del self.cores[txid]
                self.recovered.discard(txid)
                for key in [key for key in self.timers if key[0] == txid]:
                    del self.timers[key]
            case _:
                raise self._failure(f"unknown effect {effect!r}")

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

    # -- the shard leader driver ---------------------------------------------------------

    def _shard_decide(self, shard: str, txid: str, outcome: str) -> bool:
        command = "commit" if outcome == COMMITTED else "abort"
        try:
            self.shards[shard].apply((command, txid))
        except InternalError as exc:
            self._record(ShardRefused(shard, txid, command, str(exc)))
            return False
        return True

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

    def drop(self, index: int) -> None:
        self.bag.pop(index)

    def duplicate(self, index: int) -> None:
        self.bag.append(self.bag[index])

    def fire(self, key: tuple[str, str]) -> None:
        deadline = self.timers.pop(key)
        self.now = max(self.now, deadline)
        txid, name = key
        self._handle(txid, TimerFired(now=self.now, name=name))

    def crash(self) -> None:
        assert self.up
        self.up = False
        self.cores.clear()
        self.recovered.clear()
        self.timers.clear()
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

    # -- observing and checking ----------------------------------------------------------

    def _record(self, entry: HistoryEntry) -> None:
        self.history.append(entry)
        self.checker.feed(entry)

    def _observe_store(self, txid: str) -> None:
        outcome = self.store_outcome(txid)
        if outcome is not None and self._store_view.get(txid) != outcome:
            self._store_view[txid] = outcome
            self._record(Decided("store", txid, outcome))

    def _observe(self) -> None:
        for txid, parts in self.participants.items():
            for shard in parts:
                state = self.shards[shard].state_of(txid)
                if state is not None and self._shard_view.get((shard, txid)) != state:
                    self._shard_view[(shard, txid)] = state
                    self._record(ShardChanged(shard, txid, state))
            self._observe_store(txid)
        self.checker.check_shards(self.shards)
        if self.checker.violations:
            raise self._failure("\n".join(map(str, self.checker.violations)))

    def _failure(self, what: str) -> SimulationFailure:
        tail = "\n".join(self.trace[-60:])
        return SimulationFailure(
            f"{what}\nreplay with: SIM_SEED={self.seed} .venv/bin/python -m pytest"
            f" tests/test_sim_two_phase.py -k '[{self.protocol}]' (step {self.steps})\nlast actions:\n{tail}"
        )

    def do(self, action: Action) -> None:
        """Run one action, then check every invariant."""
        name, arg = action
        self.steps += 1
        self.trace.append(f"{self.steps:4d} t={self.now:<5g} {self._describe(name, arg)}")
        match name:
            case "start":
                self.start(arg)  # type: ignore[arg-type]
            case "deliver":
                self.deliver(arg)  # type: ignore[arg-type]
            case "drop":
                self.drop(arg)  # type: ignore[arg-type]
            case "duplicate":
                self.duplicate(arg)  # type: ignore[arg-type]
            case "timer":
                self.fire(arg)  # type: ignore[arg-type]
            case "crash":
                self.crash()
            case "restart":
                self.restart()
            case "ask":
                self.ask(*arg)  # type: ignore[misc]
            case "persist":
                self.run_persist(arg)  # type: ignore[arg-type]
            case _:
                raise ValueError(f"unknown action {name!r}")
        self._observe()

    def _describe(self, name: str, arg: object) -> str:
        if name in ("deliver", "drop", "duplicate"):
            return f"{name} {self.bag[arg]}"  # type: ignore[index]
        if name == "persist":
            txid, effect = self.persists[arg]  # type: ignore[index]
            return f"persist {txid} {effect}"
        if name == "timer":
            return f"timer {arg} (due {self.timers[arg]:g})"  # type: ignore[index]
        return name if arg is None else f"{name} {arg}"

    # -- the scheduler -----------------------------------------------------------------

    def in_doubt(self) -> list[tuple[str, str]]:
        return [(shard, txid) for shard, state in sorted(self.shards.items()) for txid in state.prepared]

    def _candidates(self, weights: Weights, healing: bool) -> list[tuple[float, str, list[object]]]:
        cands: list[tuple[float, str, list[object]]] = []
        n = len(self.bag)
        if n:
            cands.append((weights.deliver, "deliver", list(range(n))))
            cands.append((weights.drop, "drop", list(range(n))))
            cands.append((weights.duplicate, "duplicate", list(range(n))))
        if self.up:
            unstarted = [txid for txid in self.txns if txid not in self.started]
            cands.append((weights.start, "start", unstarted))
            cands.append((weights.crash, "crash", [None]))
        else:
            cands.append((weights.restart, "restart", [None]))
        if self.persists:
            cands.append((weights.persist, "persist", list(range(len(self.persists)))))
        if self.timers:
            cands.append((weights.timer, "timer", sorted(self.timers)))
        doubts = self.in_doubt()
        if healing:  # one question at a time per shard and txid
            asked = {(m.shard, m.txid) for m in self.bag if m.kind in ("status", "answer")}
            doubts = [d for d in doubts if d not in asked]
        cands.append((weights.ask, "ask", doubts))
        return [c for c in cands if c[0] > 0 and c[2]]

    def step(self, weights: Weights, *, healing: bool = False) -> bool:
        """Run one random action; False if none is possible."""
        cands = self._candidates(weights, healing)
        if not cands:
            return False
        pick = self.rng.random() * sum(c[0] for c in cands)
        for weight, name, args in cands:
            pick -= weight
            if pick < 0:
                break
        self.do((name, args[self.rng.randrange(len(args))]))
        return True

    def run_chaos(self, steps: int | None = None) -> None:
        """Reorder, drop, duplicate, crash and restart, checking every step."""
        for _ in range(steps if steps is not None else self.rng.randint(30, 200)):
            if self.settled() or not self.step(self.chaos):
                break

    def deliver_all(self, kind: str) -> int:
        """Scripted runs: deliver every message of ``kind`` in the bag, oldest first (also those it causes)."""
        count = 0
        while (index := next((i for i, m in enumerate(self.bag) if m.kind == kind), None)) is not None:
            self.do(("deliver", index))
            count += 1
        return count

    def settled(self) -> bool:
        return (
            self.up
            and not self.bag
            and not self.persists
            and not self.cores
            and len(self.started) == len(self.txns)
            and all(not s.prepared and not s.locks for s in self.shards.values())
            and not self.store_unfinished()
        )

    def heal(self, max_steps: int = 3000) -> None:
        """No more faults: restart, start what is left, deliver everything, fire timers, let shards ask.

        Raises SimulationFailure unless the world settles within ``max_steps``.
        """
        if not self.up:
            self.do(("restart", None))
        for _ in range(max_steps):
            if self.settled():
                return
            if not self.step(HEAL, healing=True):
                break
        if not self.settled():
            stuck = {
                "bag": [str(m) for m in self.bag],
                "cores": {txid: core.state for txid, core in self.cores.items()},
                "in doubt": self.in_doubt(),
                "locks": {name: sorted(s.locks) for name, s in self.shards.items() if s.locks},
                "unfinished": self.store_unfinished(),
                "persists": self.persists,
            }
            raise self._failure(f"liveness: not settled after healing: {stuck}")

    def outcome_at(self, txid: str) -> dict[str, str | None]:
        return {shard: self.shards[shard].state_of(txid) for shard in self.participants[txid]}

    def check_settled_outcomes(self) -> None:
        """After heal: every transaction is decided everywhere, or (presumed abort) unknown where it never came.

        A transaction with a durable decision is decided at every participant; one without (its
        coordinator lost it before the first durable write) may be unknown at some participants, but
        then no participant committed it.
        """
        for txid in self.txns:
            states = self.outcome_at(txid)
            durable = self.store_outcome(txid)
            decided = {s for s in states.values() if s is not None}
            if len(decided) > 1 or decided - set(OUTCOMES):
                raise self._failure(f"liveness: {txid} ends {states}")
            if durable is not None and (None in states.values() or decided != {durable}):
                raise self._failure(f"liveness: {txid} decided {durable} in the store but ends {states}")
            if durable is None and decided == {COMMITTED}:
                raise self._failure(f"{txid} committed at {states} with no durable decision")
