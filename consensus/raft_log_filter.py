"""PySyncObj's "truncating already-applied log entries" CRITICAL, at the level it deserves here.

PySyncObj 0.3.17 (syncobj.py ``__onMessageReceived``, 'append_entries') logs that line at CRITICAL
whenever a leader's entries start at or below the follower's last applied index, right before it calls
``__deleteEntriesFrom``; with PySyncObj's own FileJournal that call deletes applied entries. With
``CompactionSafeJournal`` (consensus/durability.py) it only marks where the next appends go: an appended
entry that matches the one in place (same index and term) changes nothing, and only a conflicting one
truncates. The line then reports the routine re-send of entries this replica already holds (the leader
moves a follower's next index back on every stale reply), dozens of times a minute under load and
kill -9. So it becomes a DEBUG line that says so, and the journal itself logs CRITICAL when a conflict
really truncates an applied entry.

The filter is process-wide, on the logger, so it is installed only where every replica of the process
gets that journal: ``consensus.durability.DurableSyncObj``.
"""

from __future__ import annotations

import logging

PYSYNCOBJ_LOGGER = "pysyncobj.syncobj"

# The format string PySyncObj 0.3.17 passes to logger.critical, with args (prevLogIdx + 1, lastApplied).
PYSYNCOBJ_TRUNCATION_ALARM = (
    "truncating already-applied log entries from index %d "
    "(last applied: %d) - state machine may have diverged from "
    "other cluster members"
)

RESENT_ENTRIES = (
    "leader re-sent entries from index %d (last applied: %d); the journal keeps every entry that matches "
    "and truncates only at a conflict"
)


class ResentEntriesFilter(logging.Filter):
    """Turns PySyncObj's truncation alarm into a DEBUG record, or drops it when DEBUG is off.

    A logger filter runs after the logger's level check (already passed at CRITICAL), and handlers
    only compare the record's level with their own, so the record is dropped here unless its logger
    is enabled for DEBUG. Any other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != PYSYNCOBJ_TRUNCATION_ALARM:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        record.msg = RESENT_ENTRIES
        return True


def install_raft_log_filter() -> None:
    """Put one ``ResentEntriesFilter`` on PySyncObj's logger (again is a no-op)."""
    logger = logging.getLogger(PYSYNCOBJ_LOGGER)
    if not any(isinstance(f, ResentEntriesFilter) for f in logger.filters):
        logger.addFilter(ResentEntriesFilter())
