"""Cancelling a task from anywhere: what ``leveret cancel`` calls."""

from __future__ import annotations

from ..patterns import PatternChannel, publish_revocation


async def cancel(channel: PatternChannel, task: str, message_id: str) -> None:
    """Revoke task ``message_id`` of ``task`` in the whole fleet (see
    :meth:`leveret.patterns.Master.cancel` for what happens to it).

    Raises:
        PublishError, ChannelClosedError: the broker did not take it.
    """
    await publish_revocation(channel, task, message_id)
