"""Publishing many messages to one destination: written a batch at a time, their
confirms pipelined (what :meth:`Channel.publish_many` does)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import ChannelClosedError, MessageTooLargeError, PublishError
from ._confirms import Destination, publish_not_confirmed
from ._frames import Properties, message_frames, property_blocks
from ._states import ChannelState

if TYPE_CHECKING:
    from ._channel import Channel

#: Messages per write: large enough to cost little per message, small enough that the
#: broker works on one batch while the next is built ...
BATCH: Final = 256
#: ... and at most this many written and not confirmed yet: a broker handed a whole
#: large batch at once slows down (flow control), and memory stays bounded.
WINDOW: Final = 2048

_OPEN: Final = ChannelState.OPEN


async def publish_batches(
    channel: Channel,
    bodies: Sequence[bytes],
    key: Destination,
    properties: Properties | None,
    message_ids: Sequence[str] | None,
    headers: Sequence[Mapping[str, Any] | None] | None,
) -> list[PublishError | None]:
    """:meth:`Channel.publish_many` (which says what it returns and raises) to the
    destination ``key``, ``(exchange, routing_key, mandatory)``."""
    count = len(bodies)
    for given in (message_ids, headers):
        if given is not None and len(given) != count:
            raise ValueError(f"publish_many: {len(given)} message ids or headers for {count}")
    shared = properties.as_dict() if properties is not None else {}
    if message_ids is not None:
        shared.pop("message_id", None)
    if headers is not None:
        shared.pop("headers", None)
    blocks = property_blocks(count, shared, message_ids, headers)  # may refuse: none sent
    limit = channel._connection.max_message_size
    for body in bodies:
        if len(body) > limit:
            raise MessageTooLargeError(len(body), limit)  # none sent
    method = channel._publish_cache.get(key) or channel._publish_method(key)
    results: list[PublishError | None] = [None] * count
    futures: list[asyncio.Future[None]] = []
    number = channel.number
    for start in range(0, count, BATCH):
        try:
            if channel._state is not _OPEN:
                await channel._ensure_open()
            connection = channel._connection
            if not connection._may_write:
                await connection._wait_writable()
                if channel._state is not _OPEN:
                    await channel._ensure_open()
        except ChannelClosedError as exc:
            if not start:
                raise
            unsent = publish_not_confirmed(number, exc)
            results[start:] = [unsent] * (count - start)
            break
        protocol = connection._protocol
        assert protocol is not None
        frame_max = connection.frame_max
        if not start:  # the largest block fits in a frame, or nothing is sent
            message_frames(method, number, max(blocks, key=len), b"", frame_max)
        confirms = channel._confirms if channel.publisher_confirms else None
        destination = key if key[2] else None  # mandatory: a return finds its publish
        parts: list[bytes] = []
        for i in range(start, min(start + BATCH, count)):
            body = bodies[i]
            if body.__class__ is not bytes:
                from ._channel import _as_bytes  # the rare path: the check publish makes

                body = _as_bytes(body)
            frames = message_frames(method, number, blocks[i], body, frame_max)
            if frames.__class__ is bytes:
                parts.append(frames)
            else:  # a body of many frames, written from views of it: after what came before
                protocol.write(b"".join(parts))
                protocol.write(frames)
                parts = []
            if confirms is not None:
                future: asyncio.Future[None] = channel._loop.create_future()
                confirms.expect(future, destination, body)
                futures.append(future)
        protocol.write(b"".join(parts))
        await asyncio.sleep(0)  # let this batch go out while the next one is built
        if len(futures) > WINDOW:
            await asyncio.wait([futures[-WINDOW]])
    for i, future in enumerate(futures):
        try:
            await future
        except PublishError as exc:
            results[i] = exc
    return results
