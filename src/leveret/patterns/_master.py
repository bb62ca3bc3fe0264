"""Master/Worker: spread tasks over workers that share a queue named after the task.

Wire layout (as aio-pika's ``JsonMaster``): the task's keyword arguments,
serialized, published to the default exchange with the task name as routing
key, persistent, ``mandatory``, with a ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from ..amqp import Delivery
from ..exceptions import (
    MessageReturnedError,
    PatternError,
    SerializationError,
    UnroutableError,
)
from ..serializers import Serializer
from ._base import Base, KeywordCall, PatternChannel, Proxy
from ._runner import Runner, settle

log = logging.getLogger("leveret.patterns")

#: Unacked tasks per worker. RabbitMQ advises 100-300 for throughput; 256 keeps
#: the broker streaming to a busy worker while bounding what a crash requeues.
DEFAULT_PREFETCH = 256


class MessageProcessingError(PatternError):
    """Raised by a task function to settle its task in a particular way."""

    def __init__(self, requeue: bool = False) -> None:
        self.requeue = requeue
        super().__init__(f"{type(self).__name__}(requeue={requeue})")


class NackMessage(MessageProcessingError):
    """Raise in a task function to ``basic.nack`` the task (``requeue`` as asked)."""


class RejectMessage(MessageProcessingError):
    """Raise in a task function to ``basic.reject`` the task (``requeue`` as asked)."""


class Worker:
    """A consumer of one task queue. :meth:`close` stops it gracefully."""

    def __init__(
        self, channel: PatternChannel, queue: str, consumer_tag: str, runner: Runner
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.consumer_tag = consumer_tag
        self._runner = runner
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Tasks received by this worker and not finished yet."""
        return self._runner.active + self._runner.waiting

    async def close(self, timeout: float | None = None) -> None:
        """Stop consuming; tasks already running finish first.

        Tasks received but not started go back to the queue at once. After
        ``timeout`` seconds the tasks still running are cancelled and requeued.
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.channel.cancel(self.consumer_tag)
        await self._runner.close(timeout)

    def __repr__(self) -> str:
        return f"<Worker queue={self.queue!r} tag={self.consumer_tag!r}>"


class Master(Base):
    """Creates tasks, and workers that run them.

    ::

        master = Master(channel)
        await master.create_worker("resize", resize, prefetch_count=32)
        await master.proxy.resize(path="a.png")  # returns once the broker has it

    Tasks are persistent and ``mandatory``: a task nobody consumes raises
    :class:`~leveret.exceptions.UnroutableError` instead of vanishing. Worker
    queues are durable unless asked otherwise, so confirmed tasks survive a
    broker restart.
    """

    DELIVERY_MODE = 2

    def __init__(
        self,
        channel: PatternChannel,
        *,
        serializer: str | Serializer | None = None,
        accept: Collection[str] = (),
        prefetch_count: int = DEFAULT_PREFETCH,
    ) -> None:
        super().__init__(serializer=serializer, accept=accept)
        self.channel = channel
        self.proxy = Proxy(self.create_task)
        self.prefetch_count = prefetch_count
        self.workers: list[Worker] = []
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        channel.close_callbacks.append(self._on_channel_closed)

    async def create_task(
        self,
        channel_name: str,
        kwargs: Mapping[str, Any] = MappingProxyType({}),
        *,
        expiration: float | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish a task; return once the broker has confirmed it.

        ``expiration`` (seconds) drops the task if no worker takes it in time.

        Raises:
            UnroutableError: no queue is bound for ``channel_name``.
            SerializationError: ``kwargs`` cannot be encoded.
            PublishError, ChannelClosedError: the broker did not take it.
        """
        body = self._encode(dict(kwargs))
        try:
            await self.channel.publish(
                body,
                routing_key=channel_name,
                mandatory=True,
                content_type=self.CONTENT_TYPE,
                delivery_mode=self.DELIVERY_MODE,
                priority=priority,
                headers=headers,
                expiration=None if expiration is None else max(0, round(expiration * 1000)),
                message_id=message_id or f"{self._id_prefix}.{next(self._ids)}",
            )
        except MessageReturnedError as exc:
            raise UnroutableError(
                f"no queue takes task {channel_name!r}: no worker ever declared it "
                f"(the broker returned it: {exc.message.reply_code} {exc.message.reply_text})",
                exc.message,
            ) from None

    async def create_worker(
        self,
        queue_name: str,
        func: Callable[..., Any],
        *,
        prefetch_count: int | None = None,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Worker:
        """Declare the task's queue and consume it with ``func``.

        ``func`` is called with the task's keyword arguments; an ``async def`` runs
        on the event loop, a plain function in the loop's thread pool. The task is
        acked when ``func`` returns. ``raise NackMessage(requeue=...)`` or
        ``RejectMessage(requeue=...)`` settles it that way; any other exception
        rejects it without requeue and logs the traceback (no redelivery loop).
        At most ``prefetch_count`` tasks run at once.
        """
        call = KeywordCall(queue_name, func)
        await self.channel.queue_declare(
            queue_name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        limit = prefetch_count or self.prefetch_count

        async def handle(delivery: Delivery) -> None:
            await self._handle(call, delivery)

        runner = Runner(handle, limit, f"worker {queue_name!r}")
        tag = await self.channel.consume(queue_name, runner.push, prefetch_count=limit)
        worker = Worker(self.channel, queue_name, tag, runner)
        self.workers.append(worker)
        return worker

    async def _handle(self, call: KeywordCall, delivery: Delivery) -> None:
        name = call.name
        try:
            kwargs = self._decode(delivery)
        except SerializationError as exc:
            _reject_bad_task(delivery, name, str(exc))
            return
        problem = call.check(kwargs)
        if problem is not None:
            _reject_bad_task(delivery, name, f"{problem} for {call.func!r}")
            return
        try:
            await call(kwargs)
        except NackMessage as exc:
            settle(delivery, "nack", requeue=exc.requeue, what=f"task {name!r}")
        except RejectMessage as exc:
            settle(delivery, "reject", requeue=exc.requeue, what=f"task {name!r}")
        except asyncio.CancelledError:
            settle(delivery, "nack", requeue=True, what=f"task {name!r}")
            raise
        except Exception:
            log.exception(
                "task %r (message %s) failed; rejected without requeue",
                name,
                delivery.properties.message_id,
            )
            settle(delivery, "reject", what=f"task {name!r}")
        else:
            settle(delivery, "ack", what=f"task {name!r} finished, but")

    def _on_channel_closed(self, channel: PatternChannel, reason: BaseException | None) -> None:
        if channel.is_closed:  # a robust channel that will reopen is not closed
            for worker in self.workers:
                worker._runner.abandon()

    async def close(self, timeout: float | None = None) -> None:
        """Close every worker this master created (see :meth:`Worker.close`)."""
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.close(timeout) for worker in workers))


def _reject_bad_task(delivery: Delivery, name: str, reason: str) -> None:
    log.error(
        "task %r (message %s) rejected without requeue: %s",
        name,
        delivery.properties.message_id,
        reason,
    )
    settle(delivery, "reject", what=f"task {name!r}")
