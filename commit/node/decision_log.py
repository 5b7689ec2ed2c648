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

Forgetting (``forget``, docs/PROTOCOLS.md "Forgetting"): a decision is dropped
once every participant acknowledged it (its ``end``) and its txid was made
before the log's horizon, the node's clock minus ``limits.forget_after_s``.
``["horizon", ms]`` records the horizon: a txid made before it that the log
does not hold may have been decided and forgotten, so the coordinator answers
it ``forgotten`` and neither presumes it aborted nor runs it again
(``forgotten``). Once the dead records are ``limits.compact_dead_share`` of the
file and at least ``limits.compact_min_dead_records``, the file is rewritten
with the horizon and the live records only (``RecordFile.replace``: a new file,
synced, renamed over the old one, the directory synced), as Gray & Reuter
truncate a log below its low-water mark ("Transaction Processing", 9.6). A
crash during the rewrite leaves the old file or the new one, both whole.

A decision that cannot be written (a full disk) raises ``StorageUnavailable``
and leaves no trace, in the file or in memory: the transaction is not decided,
so its coordinator stops and its participants, asking, hear it presumed
aborted. The next decision tries the disk again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commit.outcomes import DECIDED, FORGOTTEN
from commit.txids import created_ms
from consensus.errors import CorruptFile
from consensus.framed_file import open_record_file
from consensus.settings import Compaction

KIND = "2pc decision log"


@dataclass
class LoggedDecision:
    outcome: str
    participants: tuple[str, ...]
    finished: bool = False


class DecisionLog:
    def __init__(self, path: Path, compaction: Compaction = Compaction()) -> None:
        self.path = path
        self.compaction = compaction
        self.decisions: dict[str, LoggedDecision] = {}
        self.horizon = 0
        self.forced_writes = 0
        self.compactions = 0
        self._lock = threading.Lock()  # decisions are forced in worker threads, forgetting in another
        self._file, records = open_record_file(
            path, KIND, synced=True, consequence="The 2pc coordinator decides no transaction")
        for record in records:
            self._restore(record.offset, record.value)
        self._records = len(records)  # in the file, live or dead: what the share of dead ones is of

    def _restore(self, offset: int, record: Any) -> None:
        match record:
            case ["horizon", int() as horizon]:
                self.horizon = max(self.horizon, horizon)
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
        if outcome not in DECIDED:
            raise ValueError(f"{txid}: {outcome!r} is not a decision")
        with self._lock:
            logged = self.decisions.get(txid)
            if logged is not None:
                return logged.outcome
            if self.forgotten(txid):
                return FORGOTTEN  # it may have been decided the other way: nothing is written
            self._file.append([["decide", txid, outcome, list(participants)]], sync=True)
            self._records += 1
            self.forced_writes += 1
            self.decisions[txid] = LoggedDecision(outcome, participants)
            return outcome

    def finish(self, txid: str) -> None:
        """Record, lazily, that every participant has the decision; ``StorageUnavailable`` leaves it unfinished."""
        with self._lock:
            logged = self.decisions.get(txid)
            if logged is None or logged.finished:
                return
            self._file.append([["end", txid]], sync=False)
            self._records += 1
            logged.finished = True

    def forgotten(self, txid: str) -> bool:
        """Whether txid, of which the log holds nothing, may have been decided here and forgotten."""
        return txid not in self.decisions and created_ms(txid) < self.horizon

    def forget(self, horizon: int) -> int:
        """Raise the horizon (never lower it), drop the finished decisions made before it, and rewrite the
        file if enough of it is dead; returns how many decisions were dropped.

        ``StorageUnavailable`` if the rewrite failed: the file is as it was, the memory already forgot
        (every dropped decision is still in the file, so a restart only remembers more).
        """
        with self._lock:
            self.horizon = max(self.horizon, horizon)
            dropped = [txid for txid, logged in self.decisions.items()
                       if logged.finished and created_ms(txid) < self.horizon]
            for txid in dropped:
                del self.decisions[txid]
            live = 1 + sum(2 if logged.finished else 1 for logged in self.decisions.values())
            if self.compaction.due(self._records - live + 1, self._records):
                self._file.replace(self._live_records())
                self._records = live
                self.compactions += 1
            return len(dropped)

    def _live_records(self) -> list[list[Any]]:
        """What a rewritten file holds: the horizon first, then each decision kept, with its end if it has one."""
        records: list[list[Any]] = [["horizon", self.horizon]]
        for txid, logged in self.decisions.items():
            records.append(["decide", txid, logged.outcome, list(logged.participants)])
            if logged.finished:
                records.append(["end", txid])
        return records

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
