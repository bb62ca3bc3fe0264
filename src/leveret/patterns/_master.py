"""Master/Worker: spread tasks over workers that share a queue named after the task.

Wire layout (as aio-pika's ``JsonMaster``): the task's keyword arguments,
serialized, published to the default exchange with the task name as routing
key, persistent, ``mandatory``, with a ``message_id``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from ..exceptions import MessageReturnedError, UnroutableError
from ..serializers import Serializer
from . import _observe
from ._base import Base, KeywordCall, PatternChannel, Proxy, is_quorum
from ._retry import RetryPolicy, dead_letter_queue
from ._worker import Worker

log = logging.getLogger("leveret.patterns")

#: Unacked tasks per worker. RabbitMQ advises 100-300 for throughput; 256 keeps
#: the broker streaming to a busy worker while bounding what a crash requeues.
DEFAULT_PREFETCH = 256


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
        body = self._encode(kwargs if type(kwargs) is dict else dict(kwargs))
        if _observe.observers:
            headers = _observe.send_headers("task", channel_name, dict(headers or {}))
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
        retries: RetryPolicy | None = None,
        dead_letter: bool = True,
        queue_type: str = "classic",
        time_limit: float | None = None,
    ) -> Worker:
        """Declare the task's queue and consume it with ``func``.

        ``func`` is called with the task's keyword arguments; an ``async def`` runs
        on the event loop, a plain function in the loop's thread pool. The task is
        acked when ``func`` returns. If it raises, ``retries`` (a
        :class:`RetryPolicy`; default: no retry, at most 5 redeliveries) decides
        whether it runs again later; a task that will not run again goes to the
        durable queue ``<queue_name>.dlq`` with headers that say why (unless
        ``dead_letter=False``: then it is rejected). ``raise NackMessage(requeue=...)``
        or ``RejectMessage(requeue=...)`` settles a task that way. At most
        ``prefetch_count`` tasks run at once; a task running longer than
        ``time_limit`` seconds fails with ``TimeoutError``.

        ``queue_type="quorum"`` declares a replicated quorum queue (durable, with a
        delivery limit and broker-side dead-lettering to the same ``.dlq``).

        Raises:
            ConfigurationError: the options contradict each other.
            BrokerError: the broker refused the declaration (e.g. the queue exists
                with other arguments: 406 PRECONDITION_FAILED).
        """
        call = KeywordCall(queue_name, func)
        policy = retries or RetryPolicy()
        queue_arguments = dict(arguments or {})
        if is_quorum(
            queue_name, queue_type, durable=durable, exclusive=exclusive, auto_delete=auto_delete
        ):
            queue_arguments = {
                **_quorum_arguments(queue_name, policy, dead_letter),
                **queue_arguments,
            }
        if dead_letter:
            await self._declare_dead_letter_queue(queue_name, queue_type)
        await self.channel.queue_declare(
            queue_name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=queue_arguments,
        )
        worker = Worker(
            self,
            call,
            retries=policy,
            dead_letter=dead_letter,
            time_limit=time_limit,
            retry_arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue_name,
            },
            limit=prefetch_count or self.prefetch_count,
            queue_type=queue_type,
        )
        await worker._start()
        self.workers.append(worker)
        return worker

    async def _declare_dead_letter_queue(self, task: str, queue_type: str = "classic") -> None:
        arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
        await self.channel.queue_declare(dead_letter_queue(task), durable=True, arguments=arguments)

    def _on_channel_closed(self, channel: PatternChannel, reason: BaseException | None) -> None:
        if channel.is_closed:  # a robust channel that will reopen is not closed
            for worker in self.workers:
                worker._runner.abandon()

    async def close(self, timeout: float | None = None) -> None:
        """Close every worker this master created (see :meth:`Worker.close`)."""
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.close(timeout) for worker in workers))


def _quorum_arguments(queue: str, policy: RetryPolicy, dead_letter: bool) -> dict[str, Any]:
    """A quorum queue counts deliveries itself; past the limit it dead-letters them."""
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": policy.max_redeliveries,
    }
    if dead_letter:
        arguments.update(
            {
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_letter_queue(queue),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        )
    return arguments
