"""The one place tests send raw messages to a node: protocol messages as a peer would, or plain bytes.

These tests check how a node takes a well-formed but hostile message (a forged Paxos 2b, a PREPARE for a
txid of the wrong kind), so they bypass the client library's own checks. Only this helper says which
credentials such a message carries: when the RPC layer's authentication changes, change it here.
"""

from __future__ import annotations

from typing import Any

import trio

from commit.tooling.localcluster import LocalCluster


async def send_raw(cluster: LocalCluster, to: str, method: str, params: dict[str, Any], *,
                   as_node: str | None = None) -> Any:
    """``method(params)`` on node ``to``, proving node ``as_node``'s key (``to`` itself unless told)."""
    return await cluster.call(to, method, params, as_node=as_node or to)


async def send_bytes_and_hang_up(port: int, data: bytes, wait_s: float) -> None:
    """Connect to a port on 127.0.0.1, send raw bytes (no handshake), read for ``wait_s``, close.

    A refused connection is fine: what is checked is what the node does with such bytes afterwards.
    """
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return
    try:
        await stream.send_all(data)
        with trio.move_on_after(wait_s):
            await stream.receive_some(4096)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
