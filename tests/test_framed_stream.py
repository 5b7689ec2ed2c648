"""``consensus.rpc.FramedStream``'s coalesced sends: frames queued during a write go out in the next one,
in order, and a failed write fails the frames behind it instead of leaving their senders waiting."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from consensus.rpc import FramedStream

MAX = 1 << 20


class CountingStream(trio.abc.Stream):
    """A memory stream that counts its writes, and can be made to fail or stall them."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0
        self.fail = False
        self.stall = trio.Event()
        self.stall.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.stall.wait()
        if self.fail:
            raise trio.BrokenResourceError("peer gone")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def framed_pair() -> tuple[FramedStream, CountingStream, FramedStream]:
    left, right = trio.testing.memory_stream_pair()
    counting = CountingStream(left)
    return FramedStream(counting, MAX), counting, FramedStream(right, MAX)


async def test_frames_queued_during_a_write_share_the_next_one_in_order() -> None:
    sender, counting, receiver = framed_pair()
    counting.stall = trio.Event()
    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(sender.send, [i, "m", {}])
            await trio.testing.wait_all_tasks_blocked()
        counting.stall.set()
    assert counting.writes == 2  # the first frame alone, then the 49 queued behind it
    for _ in range(50):
        got.append(await receiver.receive())
    assert [m[0] for m in got] == list(range(50))
    assert sender.queued_bytes == 0


async def test_a_failed_write_fails_its_frames_and_those_behind_it() -> None:
    sender, counting, _ = framed_pair()
    counting.stall = trio.Event()
    counting.fail = True
    errors: list[BaseException] = []

    async def send(i: int) -> None:
        try:
            await sender.send([i, "m", {}])
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(send, i)
            await trio.testing.wait_all_tasks_blocked()
        counting.stall.set()
    assert len(errors) == 5  # nobody is left waiting for a write that will never come


async def test_a_sender_cancelled_mid_write_leaves_no_one_waiting() -> None:
    sender, counting, _ = framed_pair()
    counting.stall = trio.Event()  # the first write never ends on its own
    errors: list[BaseException] = []
    writer = trio.CancelScope()

    async def first() -> None:
        with writer:
            await sender.send([0, "m", {}])

    async def queued() -> None:
        try:
            await sender.send([1, "m", {}])
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queued)
        await trio.testing.wait_all_tasks_blocked()
        writer.cancel()
    assert writer.cancelled_caught
    assert len(errors) == 1
