"""The one driver (commit.node.driver) on trio's MockClock, with in-memory executors; a toy protocol too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import trio

from commit.node.driver import EXECUTORS, CoreRun, Failed, UnknownEffect, drive
from commit.node.executors import NodeExecutors
from commit.node.paxos_roles import PaxosNode
from commit.node.sagas import SagaOrchestrator
from commit.node.silence_watch import SilenceWatch
from commit.outcomes import ABORTED, COMMITTED
from commit.protocols import three_phase, two_phase
from commit.protocols.paxos_participant import AcceptorBundles
from commit.protocols.saga import SagaCore
from commit.protocols.events import (
    Finished,
    ProtocolError,
    Reply,
    SendDecision,
    SendPrepare,
    SetTimer,
    Start,
    Vote,
)
from commit.protocols.registry import PROTOCOLS, Coordinator, CoreContext, ProtocolSpec

PARTS = ("s0", "s1")
VOTE_TIMEOUT_S = 2.0


def context(txid: str = "t") -> CoreContext:
    ballots = ((1, 0, n) for n in range(1, 100))
    return CoreContext(txid=txid, participants=PARTS, vote_timeout_s=VOTE_TIMEOUT_S, resend_s=0.5,
                       acceptors=("a0", "a1", "a2"), ballots=ballots)


def test_every_effect_a_core_can_emit_has_an_executor_and_the_node_carries_each_out() -> None:
    """Each core's effects have an executor name, and the node component that runs that core has a method
    of that name: the coordinator cores' executors, the acceptor's, the silence watch's, the orchestrator's."""
    coordinator_cores = {type(spec.core(context())) for spec in PROTOCOLS.values() if spec.core is not None}
    runners: list[tuple[type, tuple[type, ...]]] = [
        (NodeExecutors, sum((c.EFFECTS for c in coordinator_cores | {three_phase.Terminator}), ())),
        (PaxosNode, AcceptorBundles.EFFECTS),
        (SilenceWatch, three_phase.SilenceTimer.EFFECTS),
        (SagaOrchestrator, SagaCore.EFFECTS),
    ]
    for runner, effects in runners:
        missing = [e.__name__ for e in effects if e is not SetTimer and e not in EXECUTORS]
        assert not missing, f"effects {missing} have no executor"
        names = {EXECUTORS[e] for e in effects if e is not SetTimer}
        assert not [n for n in names if not callable(getattr(runner, n, None))], runner
    assert callable(getattr(NodeExecutors, EXECUTORS[Failed]))


class MemoryExecutors:
    """Executors in memory: what was asked and when, with answers made up on the spot."""

    def __init__(self, votes: dict[str, bool] | None = None) -> None:
        self.votes = votes or {}  # participants that answer a PREPARE, and how
        self.log: list[tuple[float, str, Any]] = []

    def _note(self, name: str, effect: Any) -> None:
        self.log.append((trio.current_time(), name, effect))

    async def send_prepare(self, run: CoreRun, effect: SendPrepare) -> None:
        self._note("send_prepare", effect)
        if effect.participant in self.votes:
            run.feed(Vote(now=trio.current_time(), participant=effect.participant, yes=self.votes[effect.participant]))

    async def persist_decision(self, run: CoreRun, effect: two_phase.PersistDecision) -> None:
        self._note("persist_decision", effect)
        run.feed(two_phase.Persisted(now=trio.current_time(), outcome=effect.outcome))

    async def send_decision(self, run: CoreRun, effect: SendDecision) -> None:
        self._note("send_decision", effect)

    async def reply(self, run: CoreRun, effect: Reply) -> None:
        self._note("reply", effect)

    async def finished(self, run: CoreRun, effect: Finished) -> None:
        self._note("finished", effect)

    async def failed(self, run: CoreRun, effect: Failed) -> None:
        self._note("failed", effect)

    def at(self, name: str) -> list[tuple[float, Any]]:
        return [(t, e) for t, n, e in self.log if n == name]


async def test_the_vote_timeout_fires_at_exactly_vote_timeout_s(autojump_clock: trio.testing.MockClock) -> None:
    executors = MemoryExecutors(votes={"s0": True})  # s1 never answers
    run = CoreRun("t", PROTOCOLS["2pc"].core(context()))  # type: ignore[misc]
    start = trio.current_time()
    with trio.move_on_after(VOTE_TIMEOUT_S + 1):  # the decision is re-sent for ever: nobody acknowledges
        await drive(run, executors, Start(now=start))
    [(when, persist)] = executors.at("persist_decision")
    assert when - start == VOTE_TIMEOUT_S
    assert persist.outcome == ABORTED
    [(_, reply)] = executors.at("reply")
    assert reply == Reply(outcome=ABORTED, reason=f"no vote from s1 within {VOTE_TIMEOUT_S}s")


@dataclass
class Broken:
    """A core that raises ProtocolError on its first vote, or emits what no executor knows."""

    EFFECTS: ClassVar[tuple[type, ...]] = (SendPrepare,)
    txid: str
    participants: tuple[str, ...] = PARTS
    state: str = "idle"
    unknown: bool = False

    def handle(self, event: Any) -> list[Any]:
        if isinstance(event, Start):
            self.state = "collecting"
            return [SendPrepare(participant=p) for p in self.participants]
        if self.unknown:
            return [object()]
        raise ProtocolError(f"{self.txid}: no transition on {event!r}")


async def test_a_protocol_error_fails_its_transaction_only(autojump_clock: trio.testing.MockClock) -> None:
    broken_log, healthy_log = MemoryExecutors(votes={"s0": True}), MemoryExecutors(votes={"s0": True, "s1": True})
    broken = CoreRun("bad", Broken("bad"))
    healthy = CoreRun("good", PROTOCOLS["2pc"].core(context("good")))  # type: ignore[misc]
    results: dict[str, str | None] = {}

    async def run(name: str, core_run: CoreRun, executors: MemoryExecutors) -> None:
        with trio.move_on_after(10):
            results[name] = await drive(core_run, executors, Start(now=trio.current_time()))

    async with trio.open_nursery() as nursery:  # the node's nursery: it must not be taken down
        nursery.start_soon(run, "bad", broken, broken_log)
        nursery.start_soon(run, "good", healthy, healthy_log)
    assert results["bad"] is not None and results["bad"].startswith("protocol error: bad: no transition")
    assert [e.reason for _, e in broken_log.at("failed")] == [results["bad"]]
    assert [r.outcome for _, r in healthy_log.at("reply")] == [COMMITTED]


def test_an_effect_without_an_executor_raises() -> None:
    run = CoreRun("odd", Broken("odd", unknown=True))
    run.handle(Start(now=0.0))
    with pytest.raises(UnknownEffect, match="which no executor carries out"):
        run.handle(Vote(now=1.0, participant="s0", yes=True))


async def test_an_effect_without_an_executor_stops_its_run_under_the_driver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executors = MemoryExecutors(votes={"s0": True})
    stopped = await drive(CoreRun("odd", Broken("odd", unknown=True)), executors, Start(now=0.0))
    assert stopped is not None and "which no executor carries out" in stopped
    assert len(executors.at("failed")) == 1


# -- a toy protocol, registered in a registry of this test's own -------------------------------------


@dataclass
class OneRoundCommit:
    """Commit once every participant voted yes, abort at the first no: no durable record, no recovery."""

    EFFECTS: ClassVar[tuple[type, ...]] = (SendPrepare, Reply, Finished, SetTimer)
    txid: str
    participants: tuple[str, ...]
    patience_s: float
    state: str = "idle"
    yes: set[str] = field(default_factory=set)

    def handle(self, event: Any) -> list[Any]:
        match event:
            case Start(now=now):
                self.state = "collecting"
                return [SendPrepare(participant=p) for p in self.participants] + [
                    SetTimer(name="patience", deadline=now + self.patience_s)]
            case Vote(participant=p, yes=True) if self.state == "collecting":
                self.yes.add(p)
                return self._end(COMMITTED) if self.yes == set(self.participants) else []
            case Vote(yes=False) if self.state == "collecting":
                return self._end(ABORTED)
            case _ if self.state == "collecting":
                return self._end(ABORTED)  # the patience timer
            case _:
                return []

    def _end(self, outcome: str) -> list[Any]:
        self.state = "done"
        return [Reply(outcome=outcome), Finished(outcome=outcome)]


TOY_REGISTRY = {
    "one-round": ProtocolSpec(name="one-round", coordinator=Coordinator.GROUP,
                              core=lambda ctx: OneRoundCommit(ctx.txid, ctx.participants, ctx.vote_timeout_s)),
}


class SlowVoters(MemoryExecutors):
    """Each participant answers a PREPARE after its own delay, on the (mock) clock."""

    def __init__(self, delays: dict[str, float]) -> None:
        super().__init__()
        self.delays = delays

    async def send_prepare(self, run: CoreRun, effect: SendPrepare) -> None:
        self._note("send_prepare", effect)
        assert run.tasks is not None

        async def answer() -> None:
            await trio.sleep(self.delays[effect.participant])
            run.feed(Vote(now=trio.current_time(), participant=effect.participant, yes=True))

        run.tasks.start_soon(answer)


@pytest.mark.parametrize(("delays", "outcome", "after"), [
    ({"s0": 0.3, "s1": 1.1}, COMMITTED, 1.1),  # the last vote decides
    ({"s0": 0.3, "s1": 5.0}, ABORTED, VOTE_TIMEOUT_S),  # patience runs out first
])
async def test_a_toy_protocol_runs_through_the_real_driver(
    autojump_clock: trio.testing.MockClock, delays: dict[str, float], outcome: str, after: float,
) -> None:
    spec = TOY_REGISTRY["one-round"]
    assert spec.core is not None
    executors = SlowVoters(delays)
    start = trio.current_time()
    stopped = await drive(CoreRun("toy", spec.core(context("toy"))), executors, Start(now=start))
    assert stopped is None
    [(when, reply)] = executors.at("reply")
    assert (reply.outcome, when - start) == (outcome, pytest.approx(after))
    assert [e.outcome for _, e in executors.at("finished")] == [outcome]
