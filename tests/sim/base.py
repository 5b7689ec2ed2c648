"""What the deterministic simulators of ``world.py`` (2PC) and ``paxos_world.py`` (Paxos Commit) share.

``SimWorld`` holds the scheduler machinery: the seeded RNG that makes the shards, the transactions and
every choice; the bag of messages, which the scheduler may deliver in any order, drop or duplicate; the
timers, the only way time moves; the trace; the dispatch of the actions every world has; the weighted
random step; the chaos and healing loops; and the failure that names the seed to replay. A subclass
supplies the protocol: its driver (``start``, ``deliver``, ``restart``, ``ask``, ...), its own actions
and their place among the candidates, its checker and its test module.

The order of the candidates and of the RNG draws is part of what a seed means: changing it changes
every recorded run.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from commit.node.driver import Call, CoreRun, Failed
from commit.node.state_machines.shard import Reads, ShardState, Writes
from consensus.errors import InternalError

COMMITTED = "committed"
ABORTED = "aborted"
PREPARED = "prepared"
OUTCOMES = (COMMITTED, ABORTED)
KEYS = (b"a", b"b", b"c")



def weighted_pick(rng: random.Random, cands: list[tuple[float, str, list[Any]]]) -> tuple[str, Any]:
    """One of ``(weight, action, args)``, chosen with its weight, and one of its args, uniformly."""
    pick = rng.random() * sum(c[0] for c in cands)
    for weight, name, args in cands:
        pick -= weight
        if pick < 0:
            break
    return name, args[rng.randrange(len(args))]

class SimulationFailure(AssertionError):
    """An invariant broke, the core raised ``ProtocolError``, or the healed world did not settle."""


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
class ShardRefused:
    """A shard raised on a decision that contradicts its state (commit of an aborted txid, ...)."""

    shard: str
    txid: str
    command: str
    error: str


@dataclass(frozen=True, slots=True)
class Txn:
    txid: str
    participants: tuple[str, ...]
    reads: Mapping[str, Reads]
    writes: Mapping[str, Writes]


@dataclass(frozen=True, slots=True)
class Weights:
    """How likely each kind of action is, when it is possible (a world adds its own kinds)."""

    start: float = 3.0
    deliver: float = 10.0
    drop: float = 0.0
    duplicate: float = 0.0
    timer: float = 1.0
    crash: float = 0.0
    restart: float = 0.0
    ask: float = 1.0


Action = tuple[str, object]
W = TypeVar("W", bound=Weights)
Candidate = tuple[float, str, list[object]]


class SimWorld(ABC):
    """Shards, one coordinator process, a network and a clock, all in memory; the protocol is a subclass's."""

    vote_timeout_s = 1.0
    resend_s = 0.5
    replay_module: str  # the test module that replays a seed
    heal_weights: Weights  # the subclass's weights, with no faults
    trace_tail = 60  # how many last actions a failure shows
    chaos_steps = (30, 200)  # bounds of a chaos run's seeded length
    heal_steps = 3000
    checker: Any  # the subclass's checker, fed every history entry
    chaos: Weights  # the subclass's fault rates, drawn from the seed
    txn_keys: tuple[bytes, ...] = KEYS  # what transactions read and write
    span_all = False  # every transaction has every shard as participant (no draw for them)

    def __init__(
        self,
        case: str,
        seed: int,
        *,
        rng_name: str,
        n_shards: int | None,
        n_txns: int | None,
        core_factory: Callable[..., Any],
    ) -> None:
        self.case = case  # the selector of a replay: ``-k '[case]'``
        self.seed = seed
        self.rng = random.Random(rng_name)
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
        # the coordinator process: volatile
        self.up = True
        self.runs: dict[str, CoreRun] = {}  # the cores it drives, each under the node's own driver code
        # the rest
        self.started: set[str] = set()
        self.bag: list[Any] = []
        self.now = 0.0
        self.steps = 0
        self.history: list[Any] = []
        self.trace: list[str] = []
        self._shard_view: dict[tuple[str, str], str] = {}
        self._said: set[tuple[str, str, str]] = set()

    def _draw_chaos(self, kind: type[W], **own: tuple[float, ...]) -> W:
        """The fault rates of a run, drawn from the seed; a subclass's ``own`` kinds are drawn, in order,
        between ``restart`` and ``ask`` (the order of the draws is part of what a seed means)."""
        rng = self.rng
        return kind(
            drop=rng.choice((0.0, 0.5, 1.5)),
            duplicate=rng.choice((0.0, 0.5, 1.0)),
            timer=rng.choice((0.5, 1.0, 2.0)),
            crash=rng.choice((0.0, 0.1, 0.3)),
            restart=rng.choice((0.5, 2.0)),
            **{name: rng.choice(choices) for name, choices in own.items()},
            ask=rng.choice((0.5, 1.5)),
        )

    def _make_txns(self, n: int) -> list[Txn]:
        """Transactions over overlapping keys, reading the versions the shards hold now."""
        rng = self.rng
        names = sorted(self.shards)
        made = []
        for i in range(n):
            txid = f"t{i}"
            if self.span_all:
                parts = tuple(names)
            else:
                parts = tuple(sorted(rng.sample(names, rng.randint(2, len(names)))))
            reads: dict[str, Reads] = {}
            writes: dict[str, Writes] = {}
            for shard in parts:
                r: list[tuple[bytes, int]] = []
                w: list[tuple[bytes, bytes | None]] = []
                for key in sorted(rng.sample(self.txn_keys, rng.randint(1, 2))):
                    mode = rng.choice(("read", "write", "both"))
                    if mode != "write":
                        r.append((key, self.shards[shard].read(key).version))
                    if mode != "read":
                        w.append((key, None if rng.random() < 0.15 else f"{txid}-{key.decode()}".encode()))
                reads[shard], writes[shard] = tuple(r), tuple(w)
            made.append(Txn(txid, parts, reads, writes))
        return made

    # -- the coordinator driver: commit.node.driver's CoreRun, carried out synchronously ------------

    @property
    def cores(self) -> dict[str, Any]:
        return {key: run.core for key, run in self._live_runs().items()}

    @property
    def timers(self) -> dict[tuple[str, str], float]:
        """Every running core's timers, by (run, timer name): what the scheduler may fire."""
        return {(key, name): deadline for key, run in self._live_runs().items()
                for name, deadline in run.timers.items()}

    def _live_runs(self) -> dict[str, CoreRun]:
        return self.runs

    def _handle(self, key: str, event: Any) -> None:
        run = self._live_runs()[key]
        self._carry(run, run.handle(event))

    def _carry(self, run: CoreRun, calls: list[Call]) -> None:
        """The calls of one step, each by this world's executor of that name (``driver.EXECUTORS``)."""
        if run.core.outcome in OUTCOMES:
            self._say(self._sayer(run), run.core.txid, run.core.outcome)
        for name, effect in calls:
            getattr(self, name)(run, effect)

    def _sayer(self, run: CoreRun) -> str:
        """Who the history says spoke when ``run``'s core decided."""
        return "core"

    def _who(self, run: CoreRun) -> str:
        return f"the {self._sayer(run)}"

    def failed(self, run: CoreRun, effect: Failed) -> None:
        raise self._failure(f"ProtocolError from {self._who(run)}: {effect.reason}") from run.error

    def _say(self, source: str, txid: str, outcome: str) -> None:
        """Record that ``source`` said ``outcome`` for ``txid``, the first time it does."""
        if (source, txid, outcome) not in self._said:
            self._said.add((source, txid, outcome))
            self._record(Decided(source, txid, outcome))

    def _forget(self, txid: str) -> None:
        """The core of ``txid`` finished: drop it and its timers."""
        del self.runs[txid]

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

    @abstractmethod
    def start(self, txid: str) -> None: ...

    @abstractmethod
    def deliver(self, index: int) -> None: ...

    @abstractmethod
    def ask(self, shard: str, txid: str) -> None: ...

    def drop(self, index: int) -> None:
        self.bag.pop(index)

    def duplicate(self, index: int) -> None:
        self.bag.append(self.bag[index])

    def fire(self, key: tuple[str, str]) -> None:
        ident, name = key
        run = self._live_runs()[ident]
        self.now = max(self.now, run.timers[name])
        self._carry(run, run.fire(name, self.now))

    def crash(self) -> None:
        """The coordinator process dies, with its cores and timers (a subclass adds what else it loses)."""
        assert self.up
        self.up = False
        self.runs.clear()

    # -- observing and checking ----------------------------------------------------------

    def _record(self, entry: Any) -> None:
        self.history.append(entry)
        self.checker.feed(entry)

    def _observe_store(self, txid: str) -> None:
        """After a step: record a durable decision for ``txid`` the driver did not write itself (raft-2pc's
        fence writes an abort). Nothing to do where every write to the store is recorded as it happens."""

    def _check_states(self) -> None:
        """The invariants on the current states, however they were reached."""
        self.checker.check_shards(self.shards)

    def _observe(self) -> None:
        for txid, parts in self.participants.items():
            for shard in parts:
                state = self.shards[shard].state_of(txid)
                if state is not None and self._shard_view.get((shard, txid)) != state:
                    self._shard_view[(shard, txid)] = state
                    self._record(ShardChanged(shard, txid, state))
            self._observe_store(txid)
        self._check_states()
        if self.checker.violations:
            raise self._failure("\n".join(map(str, self.checker.violations)))

    def _failure(self, what: str) -> SimulationFailure:
        tail = "\n".join(self.trace[-self.trace_tail :])
        return SimulationFailure(
            f"{what}\nreplay with: SIM_SEED={self.seed} .venv/bin/python -m pytest"
            f" {self.replay_module} -k '[{self.case}]' (step {self.steps})\nlast actions:\n{tail}"
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
            case "ask":
                self.ask(*arg)  # type: ignore[misc]
            case _:
                self._act(name, arg)
        self._observe()

    def _act(self, name: str, arg: object) -> None:
        """The actions only a subclass has (``restart`` too: what it is handed differs)."""
        raise ValueError(f"unknown action {name!r}")

    def _describe(self, name: str, arg: object) -> str:
        if name in ("deliver", "drop", "duplicate"):
            return f"{name} {self.bag[arg]}"  # type: ignore[index]
        if name == "timer":
            return f"timer {arg} (due {self.timers[arg]:g})"  # type: ignore[index]
        return name if arg is None else f"{name} {arg}"

    # -- the scheduler -----------------------------------------------------------------

    def in_doubt(self) -> list[tuple[str, str]]:
        return [(shard, txid) for shard, state in sorted(self.shards.items()) for txid in state.prepared]

    def _restarts(self) -> list[object]:
        """What a restart may be handed, the plain restart first."""
        return [None]

    def _own_candidates(self, weights: Any) -> Iterator[Candidate]:
        """The timers, between the process's actions and the questions; a subclass adds its own actions
        before or after them."""
        yield (weights.timer, "timer", sorted(self.timers))

    @abstractmethod
    def _asking(self) -> set[tuple[str, str]]:
        """The (shard, txid) pairs with a question under way: while healing, a shard asks once at a time."""

    def _candidates(self, weights: Any, healing: bool) -> list[Candidate]:
        cands: list[Candidate] = []
        n = len(self.bag)
        if n:
            cands.append((weights.deliver, "deliver", list(range(n))))
            cands.append((weights.drop, "drop", list(range(n))))
            cands.append((weights.duplicate, "duplicate", list(range(n))))
        if self.up:
            cands.append((weights.start, "start", [txid for txid in self.txns if txid not in self.started]))
            cands.append((weights.crash, "crash", [None]))
        else:
            cands.append((weights.restart, "restart", self._restarts()))
        cands.extend(self._own_candidates(weights))
        doubts = self.in_doubt()
        if healing:
            asking = self._asking()
            doubts = [d for d in doubts if d not in asking]
        cands.append((weights.ask, "ask", doubts))
        return [c for c in cands if c[0] > 0 and c[2]]

    def step(self, weights: Any, *, healing: bool = False) -> bool:
        """Run one random action; False if none is possible."""
        cands = self._candidates(weights, healing)
        if not cands:
            return False
        name, arg = weighted_pick(self.rng, cands)
        self.do((name, arg))
        return True

    def run_chaos(self, steps: int | None = None, weights: Any = None) -> None:
        """Run the faults of ``self.chaos`` (or ``weights``), checking every step, until the world settles."""
        for _ in range(steps if steps is not None else self.rng.randint(*self.chaos_steps)):
            if self.settled() or not self.step(weights or self.chaos):
                break

    def deliver_all(self, kind: str, where: Callable[[Any], bool] = lambda m: True) -> int:
        """Scripted runs: deliver every message of ``kind`` in the bag, oldest first (also those it causes)."""
        count = 0
        while (index := next((i for i, m in enumerate(self.bag) if m.kind == kind and where(m)), None)) is not None:
            self.do(("deliver", index))
            count += 1
        return count

    def settled(self) -> bool:
        return (
            self.up
            and not self.bag
            and not self._live_runs()
            and len(self.started) == len(self.txns)
            and all(not s.prepared and not s.locks for s in self.shards.values())
        )

    @abstractmethod
    def _stuck(self) -> dict[str, object]:
        """What a world that did not settle shows, besides the bag, the cores, the doubts and the locks."""

    def heal(self, max_steps: int | None = None) -> None:
        """No more faults (but what a subclass leaves broken, like an acceptor down): restart the process,
        start what is left, deliver everything, fire timers, let in-doubt shards ask.

        Raises SimulationFailure unless the world settles within ``max_steps`` (``heal_steps``).
        """
        if not self.up:
            self.do(("restart", self._restarts()[0]))
        for _ in range(max_steps if max_steps is not None else self.heal_steps):
            if self.settled():
                return
            if not self.step(self.heal_weights, healing=True):
                break
        if not self.settled():
            stuck = {
                "bag": [str(m) for m in self.bag],
                "cores": {txid: core.state for txid, core in self.cores.items()},
                "in doubt": self.in_doubt(),
                "locks": {name: sorted(s.locks) for name, s in self.shards.items() if s.locks},
                **self._stuck(),
            }
            raise self._failure(f"liveness: not settled after healing: {stuck}")

    @abstractmethod
    def check_settled_outcomes(self) -> None:
        """After heal: raise SimulationFailure unless every transaction ended as the protocol promises."""

    def outcome_at(self, txid: str) -> dict[str, str | None]:
        return {shard: self.shards[shard].state_of(txid) for shard in self.participants[txid]}

    def _one_outcome(self, txid: str) -> tuple[dict[str, str | None], set[str]]:
        """After heal: the participants' states of ``txid`` and the one outcome among them (if any)."""
        states = self.outcome_at(txid)
        decided = {s for s in states.values() if s is not None}
        if len(decided) > 1 or decided - set(OUTCOMES):
            raise self._failure(f"liveness: {txid} ends {states}")
        return states, decided
