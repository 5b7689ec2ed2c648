"""The events and effects every coordinator core shares, and the error a core raises.

A core is ``handle(event) -> list[effect]``: it does no I/O and reads no clock (every event carries
``now``; timers are effects). The driver (``commit.node.driver``) carries the effects out, in order, each
by the executor its type names in ``EXECUTORS``; what a core may emit is its class's ``EFFECTS``.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProtocolError(Exception):
    """An event the protocol has no transition for: a bug, never a network fault."""


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    now: float
    participant: str
    yes: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Acked:
    now: float
    participant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    now: float
    name: str


# -- effects -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendPrepare:
    participant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDecision:
    participant: str
    outcome: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Tell the client the outcome; for an abort, ``no_votes`` are the participants that voted no and
    ``reason`` says what else made it abort (a vote that never came)."""

    outcome: str
    no_votes: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    name: str
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    outcome: str


def votes_missing(participants: tuple[str, ...], voted: set[str], vote_timeout_s: float) -> str:
    """Why a vote timer aborted: the participants whose vote never came, for the client to read."""
    silent = ", ".join(p for p in participants if p not in voted)
    return f"no vote from {silent} within {vote_timeout_s}s"
