"""A deterministic simulator for Three-Phase Commit (``3pc`` and ``3pc-quorum``), with its invariant checker.

The simulator drives the sans-IO cores of ``commit.protocols.three_phase`` with the node's own driver
code (``commit.node.driver.CoreRun``) and executors of its own, and acts on a participant's silence by
the node's rules (``on_silence`` and ``next_round``, which ``SilenceTimer`` applies on a node), with
everything else replaced by deterministic models (the scheduler is ``SimWorld`` in
``tests/sim/base.py``):

* shards are ``ShardState`` objects, Raft groups modelled as one atomic durable state machine that is
  always eventually available; each shard's leader runs on a node of its own, named after the shard;
  the shard leader driver is stateless (it applies ``prepare``, ``3pc_join``, ``3pc_move``, ``commit``
  or ``abort`` and answers: a vote, a ``StateReport``, an ack);
* the coordinator process, on node ``coord``, runs one ``ThreePhaseCoordinator`` per transaction; it may
  crash (losing its cores and timers) and restart with amnesia: 3PC's coordinator keeps nothing durable,
  so a restarted one only starts the transactions nobody started yet (but see ``client_retries``);
* each participant has a *silence* timer, the ``SilenceWatch``: when it fires, the participant acts by
  ``on_silence``, aborting on its own (``3pc_timeout_abort``) or running a ``Terminator`` on its node at
  ``next_round(promised, index)``, unless a terminator for the transaction already runs there;
* terminators run on shard leaders' nodes and die with them (``kill``: the node's terminators are lost,
  the shard's state is not);
* a shard's leader may fail over after applying a request and before answering (``failover``): the
  caller's client library sends the request again (``call_group`` has no session, so the command
  applies twice) and the first answer is lost;
* with ``client_retries``, a client that never got an answer resends ``txn.commit`` and reaches the
  restarted coordinator, which starts the transaction again: a second coordinator core at round (0, 0)
  (``retry``). The real client does not do this (``resend_maybe_applied=False`` in
  ``Transaction.commit``) because this model shows that it splits the transaction;
* the network is a bag of messages delivered in any order; time moves only when a timer fires (a
  silence moves it to the end of the participant's quiet period).

Every request carries the id of the core that sent it and every answer goes back to that core only: an
answer to a core that crashed, finished or gave up is lost, as an RPC reply to a dead task is.

Two failure models (``model``):

``crash``
    Reliable links (nothing lost; a request applies twice only by a ``failover``) and a PERFECT failure
    detector: a participant's silence fires only when the process it waits on (the coordinator at round
    (0, 0), else the terminator of the round it promised) has really stopped: crashed, gave up, or
    stepped aside; or finished without a decision on its way to this participant. The FD timers of the
    cores (the coordinator's PreCommit acks, a terminator's join and move timers: the ones whose expiry
    means "presume the silent participants crashed") fire only when a participant they wait on is really
    unreachable, which in this model is never. The other timers (the vote timeout, the decision resends,
    a terminator's announce timer) may fire at any time: their expiry presumes nothing.
``partition``
    As ``crash``, plus ``cut``: the nodes (``coord`` and the shards) split into two sides, and a message
    delivered across the cut is lost; ``mend`` ends it. Timers fire as if the other side crashed (an
    imperfect failure detector): a silence fires when the process waited on is across the cut, an FD
    timer when a participant waited on is. A lost exchange also lets an FD timer fire once the cut is
    mended (the real RPC times out).

A seeded ``random.Random`` picks every action, so a seed (with the protocol and the model) replays a
run exactly. After every step the ``ThreePhaseChecker`` reads the new history entries and the shards'
states, and the run stops with ``SimulationFailure`` at the first violation of:

* ``atomicity``: no transaction committed at one shard and aborted at another, and no shard's outcome
  changes (nor a shard refusing a decision because it contradicts its own state);
* ``stability``: the coordinator, the terminators and the client replies never say both outcomes;
* ``validity``: commit (and PreCommit) only if every participant voted yes (prepared);
* ``agreement``: a shard's outcome is every decision said;
* ``reply``: the client is told the final outcome ("pending" says nothing);
* ``round`` / ``phase``: a participant's promised round never goes down, and precommitted and
  preaborted never turn into each other or back to waiting.

``strict=False`` records violations without stopping the run (to look at a split as it plays out).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from commit.node.driver import CoreRun
from commit.protocols import three_phase as three
from commit.protocols.three_phase import (
    ACKS_TIMER,
    COORDINATOR_ROUND,
    JOIN_TIMER,
    MOVE_TIMER,
    PREABORTED,
    PRECOMMITTED,
    WAITING,
    GaveUp,
    Round,
    SendJoin,
    SendMove,
    StateReport,
    Terminator,
    ThreePhaseCoordinator,
)
from commit.outcomes import PENDING
from commit.protocols.events import Acked, Finished, Reply, SendDecision, SendPrepare, Start, Vote
from tests.sim.base import (
    ABORTED,
    COMMITTED,
    KEYS,
    OUTCOMES,
    PREPARED,
    Candidate,
    Decided,
    ShardChanged,
    ShardRefused,
    SimulationFailure,
    SimWorld,
    Txn,
)
from tests.sim.base import Weights as CommonWeights
from tests.sim.world import Checker, Replied
from tests.sim.world import check as check_with

PROTOCOLS = ("3pc", "3pc-quorum")
MODELS = ("crash", "partition")
COORD = "coord"  # the coordinator's node
REQUESTS = ("prepare", "move", "join", "decision")  # core -> shard; the answers go shard -> core
TXN_KEYS = KEYS + (b"d", b"e", b"f")
FD_TIMERS = (ACKS_TIMER, JOIN_TIMER, MOVE_TIMER)  # their expiry presumes the silent participants crashed


# -- history (besides ShardChanged, Decided, ShardRefused and Replied) -------------------------------


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    """A shard's 3PC state for a prepared ``txid`` became ``phase`` with ``promised`` round."""

    shard: str
    txid: str
    phase: str
    promised: Round


HistoryEntry = ShardChanged | PhaseChanged | Decided | Replied | ShardRefused


class ThreePhaseChecker(Checker):
    """The 2PC checker's invariants without a durable store, plus the participant's 3PC states.

    3PC has no decision record: every core's decision (``Decided``, its source names the core) and every
    reply must agree with each other and with every shard's outcome; a "pending" reply says nothing.
    """

    def __init__(self, participants: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__(participants)
        self._phase: dict[tuple[str, str], tuple[str, Round]] = {}

    def feed(self, entry: HistoryEntry) -> None:  # type: ignore[override]
        match entry:
            case PhaseChanged(shard=shard, txid=txid, phase=phase, promised=promised):
                self._phase_changed(shard, txid, phase, promised)
            case Decided(outcome=outcome) | Replied(outcome=outcome) if outcome not in OUTCOMES:
                pass  # "pending": the coordinator stepped aside
            case Decided(source=source, txid=txid, outcome=outcome):
                self._decision(source, txid, outcome)
            case Replied(txid=txid, outcome=outcome):
                self._reply(txid, outcome)
            case _:
                super().feed(entry)

    def _phase_changed(self, shard: str, txid: str, phase: str, promised: Round) -> None:
        key = (shard, txid)
        if (shard, txid) not in self.ever_prepared:
            self._report("validity", txid, f"{shard} is {phase} but never prepared")
        before = self._phase.get(key)
        if before is not None:
            was, was_promised = before
            if promised < was_promised:
                self._report("round", txid, f"{shard} promised {list(was_promised)}, then {list(promised)}")
            if was in (PRECOMMITTED, PREABORTED) and phase != was:
                self._report("phase", txid, f"{shard} went from {was} to {phase}")
        self._phase[key] = (phase, promised)
        if phase == PRECOMMITTED:
            self._check_all_prepared(txid, f"{shard} precommitted")


check = functools.partial(check_with, checker_class=ThreePhaseChecker)


# -- the world -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """``shard`` is the participant; ``core`` the id of the core that sent the request or gets the answer,
    running on ``node``.

    Kinds: prepare, move, join, decision (core -> shard); vote, report, ack (shard -> core).
    """

    kind: str
    txid: str
    shard: str
    core: str
    node: str
    yes: bool = False
    round: Round = COORDINATOR_ROUND
    target: str = ""
    state: str = ""
    outcome: str = ""

    def __str__(self) -> str:
        to_shard = self.kind in REQUESTS
        route = f"{self.core}->{self.shard}" if to_shard else f"{self.shard}->{self.core}"
        extra = ""
        if self.kind == "vote":
            extra = " yes" if self.yes else " no"
        elif self.kind in ("move", "join"):
            extra = f" r={list(self.round)}" + (f" {self.target}" if self.target else "")
        elif self.kind == "report":
            extra = f" {self.state} r={list(self.round)}"
        elif self.outcome:
            extra = f" {self.outcome}"
        return f"{self.kind}({self.txid} {route}{extra})"


@dataclass(eq=False)
class Instance:
    """One core (the coordinator of a transaction, or a terminator) on a node, for its lifetime."""

    id: str
    node: str
    txid: str
    round: Round
    core: Any
    incarnation: int = 0  # of the coordinator process, for a coordinator core
    status: str = "running"  # running | finished (said its outcome) | gone (crashed, gave up, stepped aside)
    run: CoreRun = field(init=False)  # the core under the node's driver code, keyed by this instance's id

    def __post_init__(self) -> None:
        self.run = CoreRun(self.id, self.core)

    @property
    def name(self) -> str:
        if self.round == COORDINATOR_ROUND:
            return f"the coordinator {self.id}"
        return f"terminator {self.id}"


@dataclass(frozen=True, slots=True)
class Weights(CommonWeights):
    """How likely each kind of action is, when it is possible: also a participant's silence timer, the
    crash of a node's terminators, and cutting and mending the network."""

    ask: float = 0.0  # 3PC participants do not ask anyone: they terminate
    silence: float = 1.0
    failover: float = 0.0
    retry: float = 0.0
    kill: float = 0.0
    cut: float = 0.0
    mend: float = 0.0


HEAL = Weights()

SilenceRule = Callable[[str, Round, bool], str]


class ThreePhaseWorld(SimWorld):
    """Shards, one coordinator process, terminators on the shards' nodes, a network and a clock."""

    replay_module = "tests/test_sim_three_phase.py"
    heal_weights = HEAL
    trace_tail = 80
    chaos_steps = (40, 250)
    heal_steps = 4000
    wait_s = 2.0  # SilenceWatch: the quiet period, plus the stagger times the participant's index
    stagger_s = 0.5

    def __init__(
        self,
        protocol: str,
        seed: int,
        *,
        model: str = "crash",
        n_shards: int | None = None,
        n_txns: int | None = None,
        span_all: bool | None = None,
        client_retries: bool = False,
        strict: bool = True,
        coordinator_factory: Callable[..., Any] = ThreePhaseCoordinator,
        terminator_factory: Callable[..., Any] = Terminator,
        on_silence: SilenceRule = three.on_silence,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}")
        self.protocol = protocol
        self.model = model
        self.quorum = protocol == "3pc-quorum"
        # under a partition every transaction spans all three shards, so the quorums are 2 of 3
        self.span_all = model == "partition" if span_all is None else span_all
        self.txn_keys = TXN_KEYS
        self._n_txns = n_txns
        if model == "partition" and n_shards is None:
            n_shards = 3
        self.client_retries = client_retries
        super().__init__(
            f"{protocol}-{model}" + ("-retries" if client_retries else ""),
            seed,
            rng_name=f"3pc/{protocol}/{model}/{seed}",
            n_shards=n_shards,
            n_txns=n_txns,
            core_factory=coordinator_factory,
        )
        self.strict = strict
        self.terminator_factory = terminator_factory
        self.on_silence = on_silence
        rng = self.rng
        partition = model == "partition"
        self.chaos = Weights(
            timer=rng.choice((0.5, 1.0, 2.0)),
            crash=rng.choice((0.1, 0.5, 2.0)),
            restart=rng.choice((0.0, 0.5, 2.0)),
            silence=rng.choice((0.5, 3.0, 20.0)),
            failover=rng.choice((0.0, 0.3, 1.0)),
            retry=rng.choice((0.5, 1.0, 2.0)) if client_retries else 0.0,
            kill=rng.choice((0.0, 0.2, 0.5)),
            cut=rng.choice((0.3, 0.6, 1.2)) if partition else 0.0,
            mend=rng.choice((0.0, 0.1, 0.3)) if partition else 0.0,
        )
        self.checker = ThreePhaseChecker(self.participants)
        self.incarnation = 1  # of the coordinator process
        self.live: dict[str, Instance] = {}  # every running core, by id
        self.by_id: dict[str, Instance] = {}  # every core ever, by id
        self.coordinators: dict[str, Any] = {}  # txid -> the running coordinator core (not a terminator)
        self.instances: dict[str, list[Instance]] = {txid: [] for txid in self.txns}  # every core ever
        self.terminators: dict[tuple[str, str], Instance] = {}  # (node, txid) -> its running terminator
        self._ids = itertools.count(1)
        self.cut: frozenset[str] | None = None  # the nodes on the far side (never ``coord``)
        self.last_change: dict[tuple[str, str], float] = {}
        self._phase_view: dict[tuple[str, str], tuple[str, Round]] = {}
        self.stats: Counter[str] = Counter()

    def _make_txns(self, n: int) -> list[Txn]:
        """As ``SimWorld._make_txns``, but more of them (unless ``n_txns`` says) over more keys: fewer
        conflicts, so more commits to break."""
        return super()._make_txns(self.rng.randint(2, 6) if self._n_txns is None else n)

    # -- the cores' driver: commit.node.driver's CoreRun, with this world's executors -----------

    def _new_instance(self, node: str, txid: str, round_: Round, core: Any) -> Instance:
        number = next(self._ids)
        if round_ == COORDINATOR_ROUND:
            ident = f"C{self.incarnation}.{number}"
        else:
            ident = f"T{number}@{node}{list(round_)}".replace(" ", "")
        inst = Instance(ident, node, txid, round_, core, self.incarnation if node == COORD else 0)
        self.live[ident] = inst
        self.by_id[ident] = inst
        self.instances[txid].append(inst)
        if round_ == COORDINATOR_ROUND:
            self.coordinators[txid] = core
        else:
            self.terminators[(node, txid)] = inst
        return inst

    def _live_runs(self) -> dict[str, CoreRun]:
        return {ident: inst.run for ident, inst in self.live.items()}

    def _sayer(self, run: CoreRun) -> str:
        return self.by_id[run.txid].name

    def _who(self, run: CoreRun) -> str:
        return self._sayer(run)

    def _run(self, inst: Instance, event: Any) -> None:
        self._carry(inst.run, inst.run.handle(event))

    def _send(self, run: CoreRun, kind: str, shard: str, **fields: Any) -> None:
        inst = self.by_id[run.txid]
        self.bag.append(Message(kind, inst.txid, shard, inst.id, inst.node, **fields))

    def send_prepare(self, run: CoreRun, effect: SendPrepare) -> None:
        self._send(run, "prepare", effect.participant)

    def send_move(self, run: CoreRun, effect: SendMove) -> None:
        self._send(run, "move", effect.participant, round=effect.round, target=effect.target)

    def send_join(self, run: CoreRun, effect: SendJoin) -> None:
        self._send(run, "join", effect.participant, round=effect.round)

    def send_decision(self, run: CoreRun, effect: SendDecision) -> None:
        self._send(run, "decision", effect.participant, outcome=effect.outcome)

    def reply(self, run: CoreRun, effect: Reply) -> None:
        self._record(Replied(self.by_id[run.txid].txid, effect.outcome))

    def finished(self, run: CoreRun, effect: Finished) -> None:
        inst = self.by_id[run.txid]
        self.stats["finished " + ("coordinator" if inst.round == COORDINATOR_ROUND else "terminator")] += 1
        self._stop(inst, "finished" if effect.outcome in OUTCOMES else "gone")

    def gave_up(self, run: CoreRun, effect: GaveUp) -> None:
        inst = self.by_id[run.txid]
        self.stats["gave up"] += 1
        self.trace.append(f"       {inst.name} gave up: {effect.reason}")
        self._stop(inst, "gone")

    def _stop(self, inst: Instance, status: str) -> None:
        """``inst`` ended (or its process died): drop it and its timers."""
        inst.status = status
        self.live.pop(inst.id, None)
        if inst.round == COORDINATOR_ROUND:
            if self.coordinators.get(inst.txid) is inst.core:
                del self.coordinators[inst.txid]
        elif self.terminators.get((inst.node, inst.txid)) is inst:
            del self.terminators[(inst.node, inst.txid)]

    # -- the shard leader driver (commit/node/handlers/participants.py) ------------------------------------------

    def _shard_receives(self, msg: Message) -> None:
        shard, txid = msg.shard, msg.txid
        state = self.shards[shard]
        match msg.kind:
            case "prepare":
                txn = self.txns[txid]
                result = state.apply(("prepare", txid, txn.reads[shard], txn.writes[shard], txn.participants))
                self._answer(msg, "vote", yes=result in ("yes", ("decided", COMMITTED)))
            case "join":
                phase, promised = state.apply(("3pc_join", txid, msg.round))
                self._answer(msg, "report", state=phase, round=promised)
            case "move":
                phase, promised = state.apply(("3pc_move", txid, msg.round, msg.target))
                self._answer(msg, "report", state=phase, round=promised)
            case "decision":
                if self._shard_decide(shard, txid, msg.outcome):
                    self._answer(msg, "ack")
            case _:
                raise self._failure(f"shard {shard} got {msg}")

    def _answer(self, request: Message, kind: str, **fields: Any) -> None:
        self.bag.append(Message(kind, request.txid, request.shard, request.core, request.node, **fields))

    def _core_receives(self, msg: Message) -> None:
        inst = self.live.get(msg.core)
        if inst is None:
            return  # the core crashed, finished or gave up: the answer is lost
        match msg.kind:
            case "vote":
                event: Any = Vote(now=self.now, participant=msg.shard, yes=msg.yes)
            case "report":
                event = StateReport(now=self.now, participant=msg.shard, state=msg.state, promised=msg.round)
            case "ack":
                event = Acked(now=self.now, participant=msg.shard)
            case _:
                raise self._failure(f"{inst.name} got {msg}")
        self._run(inst, event)

    # -- the participant's silence (SilenceWatch._look_at) -------------------------------------

    def silence(self, shard: str, txid: str) -> None:
        """``shard``'s quiet period for ``txid`` ran out: abort on its own, or terminate at a round of its own."""
        prepared = self.shards[shard].prepared[txid]
        assert (shard, txid) not in self.terminators, (shard, txid)
        participants = prepared.participants or (shard,)
        index = participants.index(shard)
        key = (shard, txid)
        self.now = max(self.now, self.last_change.get(key, 0.0) + self.wait_s + index * self.stagger_s)
        self.last_change[key] = self.now  # the next try waits a full quiet period again
        if self.on_silence(prepared.phase, prepared.promised, self.quorum) == "abort":
            state, _ = self.shards[shard].apply(("3pc_timeout_abort", txid))
            if state == ABORTED:
                self.stats["aborted on its own"] += 1
            return
        round_ = three.next_round(prepared.promised, index)
        core = self.terminator_factory(txid, participants, round_, self.quorum, self.vote_timeout_s)
        inst = self._new_instance(shard, txid, round_, core)
        self.stats[f"terminated while {prepared.phase}"] += 1
        self._run(inst, Start(now=self.now))

    def waits_in_vain(self, shard: str, txid: str) -> bool:
        """Whether ``shard``'s failure detector may suspect the process that owns its promised round for
        ``txid``: no core of that round runs within reach, nor sent a decision still on its way here."""
        promised = self.shards[shard].prepared[txid].promised
        for inst in self.instances[txid]:
            if inst.round != promised or self._across(inst.node, shard):
                continue
            if inst.status == "running":
                return False
            if inst.status == "finished" and any(
                m.kind == "decision" and m.core == inst.id and m.shard == shard for m in self.bag
            ):
                return False
        return True

    def pending_silences(self) -> list[tuple[str, str]]:
        return [
            (shard, txid)
            for shard, state in sorted(self.shards.items())
            for txid in state.prepared
            if (shard, txid) not in self.terminators and self.waits_in_vain(shard, txid)
        ]

    # -- failure detection for the cores' timers --------------------------------------------

    @staticmethod
    def waited_on(core: Any) -> set[str]:
        """The participants whose answer ``core`` is waiting for before its FD timer would presume them crashed."""
        if isinstance(core, ThreePhaseCoordinator):
            return set(core.participants) - core.precommitted if core.state == "precommitting" else set()
        if core.state == "joining":
            return set(core.participants) - set(core.reports)
        if core.state == "moving":
            return {p for p, s in core.reports.items() if s == WAITING} - core.moved
        return set()

    def timer_allowed(self, key: tuple[str, str]) -> bool:
        ident, name = key
        if name not in FD_TIMERS:
            return True
        inst = self.live[ident]
        return any(
            self._across(inst.node, p) or not any(m.core == ident and m.shard == p for m in self.bag)
            for p in self.waited_on(inst.core)
        )

    def _across(self, a: str, b: str) -> bool:
        return self.cut is not None and (a in self.cut) != (b in self.cut)

    # -- actions -----------------------------------------------------------------------

    def start(self, txid: str) -> None:
        assert self.up and txid not in self.started, txid
        self.started.add(txid)
        core = self.core_factory(
            txid, self.txns[txid].participants, quorum=self.quorum, vote_timeout_s=self.vote_timeout_s,
            resend_s=self.resend_s,
        )
        self._run(self._new_instance(COORD, txid, COORDINATOR_ROUND, core), Start(now=self.now))

    def deliver(self, index: int) -> None:
        msg = self.bag.pop(index)
        if self._across(msg.node, msg.shard):
            return  # lost in the cut
        if msg.kind in REQUESTS:
            self._shard_receives(msg)
        else:
            self._core_receives(msg)

    def failover(self, index: int) -> None:
        """The shard's leader applies the request at ``index`` and fails over before answering: the caller's
        client library sends it again to the new leader (``call_group`` has no session, so the command
        applies twice), and the first answer is lost."""
        msg = self.bag[index]
        assert msg.kind in REQUESTS, msg
        before = len(self.bag)
        self.deliver(index)
        del self.bag[before - 1 :]  # the answer, if any
        self.bag.append(msg)

    def retry(self, txid: str) -> None:
        """The client, which never got an answer, sends ``txn.commit`` for ``txid`` again (``call_node``
        retries while the node is unreachable) and reaches the restarted coordinator, which knows nothing
        of it: a second coordinator core for the same transaction, at the same round (0, 0)."""
        assert self.up and txid in self.started and txid not in self.coordinators, txid
        self.stats["client retry"] += 1
        core = self.core_factory(
            txid, self.txns[txid].participants, quorum=self.quorum, vote_timeout_s=self.vote_timeout_s,
            resend_s=self.resend_s,
        )
        self._run(self._new_instance(COORD, txid, COORDINATOR_ROUND, core), Start(now=self.now))

    def pending_retries(self) -> list[str]:
        """The transactions whose client may retry at this coordinator: started by an earlier incarnation,
        never answered."""
        if not self.up:
            return []
        replied = {e.txid for e in self.history if isinstance(e, Replied)}
        return sorted(
            txid for txid in self.started
            if txid not in replied and all(i.incarnation != self.incarnation for i in self.instances[txid])
        )

    def crash(self) -> None:
        """The coordinator process dies with every core and timer it had; the shards keep everything."""
        assert self.up
        self.up = False
        for inst in [i for i in self.live.values() if i.node == COORD]:
            self._stop(inst, "gone")
        self.stats["coordinator crash"] += 1

    def restart(self) -> None:
        """A new coordinator process that knows nothing (3PC's coordinator keeps nothing durable)."""
        assert not self.up
        self.up = True
        self.incarnation += 1

    def kill(self, node: str) -> None:
        """``node`` (a shard leader's) dies with its terminators; the shard elects a new leader at once."""
        for inst in [i for i in self.live.values() if i.node == node]:
            self._stop(inst, "gone")
        self.stats["terminators killed"] += 1

    def cut_network(self, far: tuple[str, ...]) -> None:
        assert self.cut is None and COORD not in far
        self.cut = frozenset(far)
        self.stats["cut"] += 1

    def mend(self) -> None:
        assert self.cut is not None
        self.cut = None

    def ask(self, shard: str, txid: str) -> None:
        raise ValueError("3PC participants do not ask for the outcome: they terminate")

    def _act(self, name: str, arg: object) -> None:
        match name:
            case "restart":
                self.restart()
            case "silence":
                self.silence(*arg)  # type: ignore[misc]
            case "failover":
                self.failover(arg)  # type: ignore[arg-type]
            case "retry":
                self.retry(arg)  # type: ignore[arg-type]
            case "kill":
                self.kill(arg)  # type: ignore[arg-type]
            case "cut":
                self.cut_network(arg)  # type: ignore[arg-type]
            case "mend":
                self.mend()
            case _:
                super()._act(name, arg)

    # -- observing and checking ----------------------------------------------------------

    def _observe_store(self, txid: str) -> None:
        """After a step: record the 3PC state changes of ``txid`` (and when each participant's last was)."""
        for shard in self.participants[txid]:
            prepared = self.shards[shard].prepared.get(txid)
            if prepared is None:
                continue
            now = (prepared.phase, prepared.promised)
            if self._phase_view.get((shard, txid)) != now:
                self._phase_view[(shard, txid)] = now
                self.last_change[(shard, txid)] = self.now
                self._record(PhaseChanged(shard, txid, *now))

    def _observe(self) -> None:
        try:
            super()._observe()
        except SimulationFailure:
            if self.strict:
                raise

    def _describe(self, name: str, arg: object) -> str:
        if name == "failover":
            msg = self.bag[arg]  # type: ignore[index]
            return f"failover at {msg.shard} after {msg}: the request is sent again"
        if name == "deliver":
            msg = self.bag[arg]  # type: ignore[index]
            if self._across(msg.node, msg.shard):
                return f"deliver {msg} (lost: cut)"
            if msg.kind in ("vote", "report", "ack") and msg.core not in self.live:
                return f"deliver {msg} (lost: no such core)"
            return f"deliver {msg}"
        if name == "silence":
            shard, txid = arg  # type: ignore[misc]
            prepared = self.shards[shard].prepared[txid]
            return f"silence {txid}@{shard} ({prepared.phase}, promised {list(prepared.promised)})"
        if name == "cut":
            far = arg  # type: ignore[assignment]
            near = [COORD] + [s for s in self.shards if s not in far]  # type: ignore[operator]
            return f"cut {{{', '.join(near)}}} | {{{', '.join(far)}}}"  # type: ignore[arg-type]
        if name == "restart":
            return f"restart the coordinator as incarnation {self.incarnation + 1}"
        if name == "kill":
            dying = [i.id for i in self.live.values() if i.node == arg]
            return f"kill the terminators on {arg}: {', '.join(dying)}"
        return super()._describe(name, arg)

    # -- the scheduler -----------------------------------------------------------------

    def _cuts(self) -> list[tuple[str, ...]]:
        names = sorted(self.shards)
        return [
            far
            for size in range(1, len(names) + 1)
            for far in itertools.combinations(names, size)
        ]

    def _own_candidates(self, weights: Weights) -> Iterator[Candidate]:  # type: ignore[override]
        yield (weights.timer, "timer", [key for key in sorted(self.timers) if self.timer_allowed(key)])
        yield (weights.silence, "silence", self.pending_silences())
        yield (weights.failover, "failover", self._failovers())
        yield (weights.retry, "retry", self.pending_retries())
        yield (weights.kill, "kill", sorted({i.node for i in self.live.values() if i.node != COORD}))
        if self.cut is None:
            yield (weights.cut, "cut", self._cuts())  # type: ignore[misc]
        else:
            yield (weights.mend, "mend", [None])

    def _failovers(self) -> list[int]:
        """The requests a failover may hit: on their way to a reachable shard, from a core still running
        (whose client library retries them)."""
        return [
            i for i, m in enumerate(self.bag)
            if m.kind in REQUESTS and m.core in self.live and not self._across(m.node, m.shard)
        ]

    def _asking(self) -> set[tuple[str, str]]:
        return set()

    def settled(self) -> bool:
        """Nothing in flight, no core running, no participant prepared; the coordinator started every
        transaction, or is down (a crashed coordinator stays down: 3PC must finish without it)."""
        return (
            not self.bag
            and not self.live
            and (not self.up or len(self.started) == len(self.txns))
            and all(not s.prepared and not s.locks for s in self.shards.values())
        )

    def quiesce(self, max_steps: int, weights: Weights = HEAL) -> bool:
        """Run ``weights`` (no faults by default) until no action is possible; False if still busy after
        ``max_steps`` (a blocked participant may retry its termination for ever)."""
        for _ in range(max_steps):
            if not self.step(weights, healing=True):
                return True
        return False

    def heal(self, max_steps: int | None = None) -> None:
        """No more faults: mend the network, then run until nothing can happen. The coordinator is not
        restarted: the participants must finish every transaction it started without it.

        Raises SimulationFailure unless the world settles within ``max_steps`` (``heal_steps``).
        """
        if self.cut is not None:
            self.do(("mend", None))
        self.quiesce(max_steps if max_steps is not None else self.heal_steps)
        if not self.settled():
            raise self._failure(f"liveness: not settled after healing: {self._stuck()}")

    def _stuck(self) -> dict[str, object]:
        return {
            "bag": [str(m) for m in self.bag],
            "running": {i.id: i.core.state for i in self.live.values()},
            "timers": {f"{k[0]}/{k[1]}": self.timer_allowed(k) for k in sorted(self.timers)},
            "in doubt": {
                f"{txid}@{shard}": (p.phase, list(p.promised))
                for shard, s in sorted(self.shards.items())
                for txid, p in s.prepared.items()
            },
            "silences": self.pending_silences(),
            "locks": {name: sorted(s.locks) for name, s in self.shards.items() if s.locks},
        }

    def check_settled_outcomes(self) -> None:
        """After heal: every transaction the coordinator started is decided at every participant, with
        one outcome, and the replies say it (under a partition, a participant that never got its
        PREPARE may not know the transaction, and then it was not committed). A transaction never
        started is unknown everywhere."""
        for txid in self.txns:
            states, decided = self._one_outcome(txid)
            if txid not in self.started:
                if decided:
                    raise self._failure(f"{txid} was never started but ends {states}")
                continue
            unknown = [shard for shard, state in states.items() if state not in OUTCOMES]
            if unknown and (self.model == "crash" or decided == {COMMITTED} or PREPARED in states.values()):
                raise self._failure(f"liveness: {txid} ends {states}")
            replies = self.replies(txid) - {PENDING}
            if replies and decided and replies != decided:
                raise self._failure(f"{txid}: the client was told {replies}, the shards end {states}")

    # -- what tests look at ----------------------------------------------------------------

    def replies(self, txid: str) -> set[str]:
        return {e.outcome for e in self.history if isinstance(e, Replied) and e.txid == txid}

    def phase_at(self, txid: str) -> dict[str, str | None]:
        """Each participant's 3PC state: its phase while prepared, else its outcome (or None)."""
        out: dict[str, str | None] = {}
        for shard in self.participants[txid]:
            prepared = self.shards[shard].prepared.get(txid)
            out[shard] = prepared.phase if prepared is not None else self.shards[shard].state_of(txid)
        return out

    def splits(self) -> list[str]:
        """The transactions committed at one participant and aborted at another."""
        return [txid for txid in self.txns if {COMMITTED, ABORTED} <= set(self.outcome_at(txid).values())]
