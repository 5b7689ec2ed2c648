"""The ``2pc`` coordinator's decision log: a local file, fsync'd before anyone hears a decision.

This is the baseline's single point of failure on purpose: the log lives on
one node, so when that node is down, participants that voted yes can only
wait for it (DESIGN.md section 7).

Records are msgpack frames (``consensus.wire``) appended to one file:
``["decide", txid, outcome, participants]`` is forced (written and fsync'd)
before the decision is acted on; ``["end", txid]`` is written lazily once
every participant acknowledged. A torn last record (a crash mid-write) is
cut off on load: it was never fsync'd, so no one acted on it, and records
appended later must not land behind its remains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from consensus.framed_file import read_frames
from consensus.wire import encode_frame

_MAX_RECORD = 1 << 20


@dataclass
class LoggedDecision:
    outcome: str
    participants: tuple[str, ...]
    finished: bool = False


class DecisionLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.decisions: dict[str, LoggedDecision] = {}
        self.forced_writes = 0
        self._load()
        self._file = open(path, "ab")

    def _load(self) -> None:
        for record in read_frames(self.path, _MAX_RECORD):
            match record:
                case ["decide", str() as txid, str() as outcome, list() as participants]:
                    self.decisions.setdefault(txid, LoggedDecision(outcome, tuple(participants)))
                case ["end", str() as txid] if txid in self.decisions:
                    self.decisions[txid].finished = True

    def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        """Force the decision to disk; returns the logged outcome (the first one wins)."""
        logged = self.decisions.get(txid)
        if logged is not None:
            return logged.outcome
        self._file.write(encode_frame(["decide", txid, outcome, list(participants)], _MAX_RECORD))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.forced_writes += 1
        self.decisions[txid] = LoggedDecision(outcome, participants)
        return outcome

    def finish(self, txid: str) -> None:
        logged = self.decisions.get(txid)
        if logged is None or logged.finished:
            return
        logged.finished = True
        self._file.write(encode_frame(["end", txid], _MAX_RECORD))
        self._file.flush()

    def unfinished(self) -> list[tuple[str, LoggedDecision]]:
        return [(txid, d) for txid, d in self.decisions.items() if not d.finished]

    def close(self) -> None:
        self._file.close()

