"""consensus.raft_log_filter: PySyncObj's false truncation alarm is demoted, nothing else is touched.

These tests put the filter on a logger of their own; that every replica's process has it on PySyncObj's
logger is checked on real replicas (tests/test_snapshot_install.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from consensus.raft_log_filter import PYSYNCOBJ_TRUNCATION_ALARM, ResentEntriesFilter


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own with the filter, so the test does not depend on what else is installed."""
    test_logger = logging.getLogger("tests.raft_log_filter")
    test_filter = ResentEntriesFilter()
    test_logger.addFilter(test_filter)
    yield test_logger
    test_logger.removeFilter(test_filter)


def test_the_alarm_becomes_a_debug_line_that_says_what_happened(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=logger.name)
    logger.critical(PYSYNCOBJ_TRUNCATION_ALARM, 1398, 1401)
    (record,) = caplog.records
    assert (record.levelno, record.levelname) == (logging.DEBUG, "DEBUG")
    assert record.getMessage().startswith("leader re-sent entries from index 1398 (last applied: 1401)")
    assert "diverged" not in caplog.text


def test_the_alarm_is_dropped_when_debug_is_off_and_other_records_pass(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    logger.critical(PYSYNCOBJ_TRUNCATION_ALARM, 1398, 1401)
    logger.critical("something else at %d", 7)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.CRITICAL, "something else at 7")]


def test_the_alarm_text_is_the_one_pysyncobj_logs() -> None:
    """The filter matches PySyncObj 0.3.17's format string exactly; a reworded one would pass unfiltered."""
    import inspect

    import pysyncobj.syncobj

    source = inspect.getsource(pysyncobj.syncobj)
    pieces = ["'truncating already-applied log entries from index %d '",
              "'(last applied: %d) - state machine may have diverged from '", "'other cluster members'"]
    assert all(p in source for p in pieces)
    assert "".join(p.strip("'") for p in pieces) == PYSYNCOBJ_TRUNCATION_ALARM

