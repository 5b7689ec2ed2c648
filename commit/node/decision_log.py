"""The ``2pc`` coordinator's decision log: a local file, fsync'd before anyone hears a decision.

This is the baseline's single point of failure on purpose: the log lives on
one node, so when that node is down, participants that voted yes can only
wait for it (DESIGN.md section 7).

Records (``consensus.framed_file``, each with its checksum) are appended to
one file: ``["decide", txid, outcome, participants]`` is forced (written and
fsync'd) before the decision is acted on; ``["end", txid]`` is written lazily
once every participant acknowledged. A torn last record (a crash mid-write) is
cut off on load: it was never fsync'd, so no one acted on it. Damage anywhere
else, and a record that is not one of these two (an outcome that is not a
decision word, an end without its decision, a second decision), is
``CorruptFile``: the node refuses to start rather than answer from it.

A decision that cannot be written (a full disk) raises ``StorageUnavailable``
and leaves no trace, in the file or in memory: the transaction is not decided,
so its coordinator stops and its participants, asking, hear it presumed
aborted. The next decision tries the disk again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commit.outcomes import DECIDED
from consensus.errors import CorruptFile
from consensus.framed_file import open_record_file

KIND = "2pc decision log"


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
        self._file, records = open_record_file(
            path, KIND, synced=True, consequence="The 2pc coordinator decides no transaction")
        for record in records:
            self._restore(record.offset, record.value)

    def _restore(self, offset: int, record: Any) -> None:
        match record:
            case ["decide", str() as txid, str() as outcome, list() as participants] if (
                    outcome in DECIDED and all(isinstance(p, str) for p in participants)):
                if txid in self.decisions:
                    raise CorruptFile(self.path, offset, f"a second decision for {txid}")
                self.decisions[txid] = LoggedDecision(outcome, tuple(participants))
            case ["end", str() as txid]:
                logged = self.decisions.get(txid)
                if logged is None:
                    raise CorruptFile(self.path, offset, f"an end record for {txid}, which no decision precedes")
                logged.finished = True
            case _:
                raise CorruptFile(self.path, offset, f"not a decision record: {record!r:.120}")

    def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        """Force the decision to disk; returns the logged outcome (the first one wins).

        ``StorageUnavailable`` if it could not be forced: then it is not decided.
        """
        logged = self.decisions.get(txid)
        if logged is not None:
            return logged.outcome
        if outcome not in DECIDED:
            raise ValueError(f"{txid}: {outcome!r} is not a decision")
        self._file.append([["decide", txid, outcome, list(participants)]], sync=True)
        self.forced_writes += 1
        self.decisions[txid] = LoggedDecision(outcome, participants)
        return outcome

    def finish(self, txid: str) -> None:
        """Record, lazily, that every participant has the decision; ``StorageUnavailable`` leaves it unfinished."""
        logged = self.decisions.get(txid)
        if logged is None or logged.finished:
            return
        self._file.append([["end", txid]], sync=False)
        logged.finished = True

    def unfinished(self) -> list[tuple[str, LoggedDecision]]:
        return [(txid, d) for txid, d in self.decisions.items() if not d.finished]

    def intact(self) -> bool:
        """False once a decision that failed could not be cut back out of the file: it may be read at restart."""
        return self._file.intact

    def problem(self) -> str | None:
        """Why the log cannot be written now, for the node's status; None if it can."""
        return self._file.problem()

    def close(self) -> None:
        self._file.close()
