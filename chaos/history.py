"""The history of a chaos run: every client operation's invocation and completion, in the order they happened.

The format and its meaning are Jepsen's (as the Elle paper, Kingsbury & Alvaro 2020, describes its
histories): a client *invokes* an operation, then it completes as ``ok`` (it happened), ``fail`` (it
certainly did not) or ``info`` (indeterminate: a timeout or ``CommitUnknown``; it may have happened, or may
yet happen, forever). A process has at most one operation open, so a completion pairs with its process's
open invocation; a process whose operation ended ``info`` is never used again (the client goes on under a
fresh id), since that operation stays open for ever. The recorder checks these rules as it records, so a
history that reaches a checker is well formed.

No locks: the runner records from one trio thread. Time comes from an injectable clock (``time.monotonic``
by default), so that tests state the real-time order of operations exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COMPLETIONS = frozenset({"ok", "fail", "info"})


@dataclass(frozen=True)
class Op:
    """One line of a history: an invocation or a completion. ``value`` and the keys inside it are JSON-native."""

    index: int  # position in the history
    type: str  # "invoke", "ok", "fail" or "info"
    process: int  # the client; retired after an "info"
    time: float  # monotonic seconds
    f: str  # the operation's name
    value: Any
    error: str | None = None


class History:
    """A recorder of operations, and the recorded list ``ops``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.ops: list[Op] = []
        self._clock = clock
        self._open: dict[int, Op] = {}  # process -> its invocation awaiting a completion
        self._retired: set[int] = set()  # processes whose last operation ended "info"

    def invoke(self, process: int, f: str, value: Any) -> Op:
        """Record that ``process`` starts operation ``f`` with ``value``."""
        return self.append(Op(len(self.ops), "invoke", process, self._clock(), f, value))

    def complete(self, invoke_op: Op, type: str, value: Any = None, error: str | None = None) -> Op:
        """Record the completion of ``invoke_op``; ``value`` defaults to the invocation's."""
        if self._open.get(invoke_op.process) != invoke_op:
            raise ValueError(f"op {invoke_op.index} is not process {invoke_op.process}'s open invocation")
        value = invoke_op.value if value is None else value
        return self.append(Op(len(self.ops), type, invoke_op.process, self._clock(), invoke_op.f, value, error))

    def append(self, op: Op) -> Op:
        """Record ``op`` as it is (reading a history back), after checking that it keeps the history well formed."""
        if op.index != len(self.ops):
            raise ValueError(f"op {op.index} recorded at position {len(self.ops)}")
        if op.type == "invoke":
            if op.process in self._open or op.process in self._retired:
                raise ValueError(f"op {op.index}: process {op.process} already has an open or indeterminate operation")
            self._open[op.process] = op
        elif op.type in COMPLETIONS:
            invoked = self._open.pop(op.process, None)
            if invoked is None or invoked.f != op.f:
                raise ValueError(f"op {op.index}: {op.type} of {op.f!r} without an open invocation on "
                                 f"process {op.process}")
            if op.type == "info":
                self._retired.add(op.process)
        else:
            raise ValueError(f"op {op.index}: unknown type {op.type!r}")
        self.ops.append(op)
        return op

    def pairs(self) -> list[tuple[Op, Op | None]]:
        """Each invocation with its completion (``None`` while it is open), in invocation order."""
        result: list[tuple[Op, Op | None]] = []
        open_at: dict[int, int] = {}  # process -> position of its open invocation in result
        for op in self.ops:
            if op.type == "invoke":
                open_at[op.process] = len(result)
                result.append((op, None))
            else:
                position = open_at.pop(op.process)
                result[position] = (result[position][0], op)
        return result

    def write_jsonl(self, path: Path | str) -> None:
        """One JSON object per line, with the fields of ``Op``."""
        with open(path, "w", encoding="utf-8") as out:
            for op in self.ops:
                out.write(json.dumps(asdict(op)) + "\n")

    @classmethod
    def read_jsonl(cls, path: Path | str) -> History:
        """The history ``write_jsonl`` wrote, checked op by op as it is read."""
        history = cls()
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    history.append(Op(**json.loads(line)))
        return history
