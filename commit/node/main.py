"""A node as an operating-system process: its log file, its pid file, and the signals that stop it.

``node.py start NODE_ID`` lands here. The node runs in the foreground until
SIGTERM or SIGINT, then stops its replicas cleanly (``serve_node`` is
cancelled, not killed) and removes its pid file.

A node whose files are damaged (``CorruptFile``), or that cannot write them as
it starts (``StorageUnavailable``: a full disk), refuses to start: the message,
which names the file and the byte, is logged and printed on stderr, and the
process exits with ``REFUSED`` (no traceback, and no retry: a supervisor that
restarts it gets the same answer until an operator acts, docs/OPERATIONS.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import trio

from commit.config import ClusterConfig
from commit.node.serve import serve_node
from consensus.raft_transport import raise_open_file_limit
from consensus.errors import CorruptFile, StorageUnavailable

log = logging.getLogger("node")

REFUSED = 1  # the exit code of a node that refused to start


def _configure_logging(config: ClusterConfig, node_id: str) -> None:
    handler = logging.FileHandler(config.node_log(node_id))
    handler.setFormatter(logging.Formatter(f"%(asctime)s {node_id} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


async def _serve_until_signalled(config: ClusterConfig, node_id: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_node, config, node_id)
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group``, however deep the nurseries nested it."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def run_node_process(config: ClusterConfig, node_id: str) -> int:
    """Run node ``node_id`` in this process until it is signalled to stop; the process's exit code."""
    config.node(node_id)
    config.node_dir(node_id).mkdir(parents=True, exist_ok=True)
    _configure_logging(config, node_id)
    log.info("open files: at most %d", raise_open_file_limit())
    pid_file = config.node_pid_file(node_id)
    pid_file.write_text(str(os.getpid()))
    # Outside the trio signal receiver the node ignores these: a Ctrl-C in a terminal sends SIGINT to
    # every node and `up` then sends SIGTERM, and trio redelivers signals still pending when its
    # receiver closes, which with default handlers would kill the node half-way through shutdown.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    refusal: BaseException | None = None
    try:
        trio.run(_serve_until_signalled, config, node_id)
    except* (CorruptFile, StorageUnavailable) as group:
        refusal = _first(group)
        log.critical("node %s refuses to start: %s", node_id, refusal)
        print(f"node {node_id} refuses to start: {refusal}", file=sys.stderr, flush=True)
    finally:
        pid_file.unlink(missing_ok=True)
        log.info("stopped")
    return 0 if refusal is None else REFUSED
