"""Master/Worker: spread tasks over workers that share a queue named after the task.

Wire layout (as aio-pika's ``JsonMaster``): the task's keyword arguments,
serialized, published to the default exchange with the task name as routing
key, persistent, ``mandatory``, with a ``message_id``. A delayed task goes to
the delay ladder instead (see :mod:`._delay`).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ..amqp import AsyncClosing, Properties, ReturnedMessage
from ..exceptions import (
    BatchPublishError,
    ConfigurationError,
    MessageReturnedError,
    NotFoundError,
    PublishError,
    ResourceLockedError,
    SerializationError,
    UnroutableError,
)
from ..serializers import JSON, Serializer
from ._base import Base, CompressedJson, Duration, Proxy, keyword_arguments, milliseconds
from ._call import KeywordCall
from ._cancel import publish_revocation
from ._delay import declare_ladder, delay_seconds, route
from ._observe import Observer, Observers
from ._retry import RetryPolicy, dead_letter_queue
from ._seam import PatternChannel, QueueType, is_quorum
from ._worker import Worker

log = logging.getLogger("leveret.patterns")


class Master(Base, AsyncClosing):
    """Creates tasks, and workers that run them.

    ::

        master = Master(channel)
        await master.create_worker("resize", resize, prefetch_count=32)
        await master.proxy.resize(path="a.png")  # returns once the broker has it
        await master.create_task("resize", {"path": "b.png"}, delay=60)  # in a minute

    Tasks are persistent and ``mandatory``: a task nobody consumes raises
    :class:`~leveret.exceptions.UnroutableError` instead of vanishing. Worker
    queues are durable unless asked otherwise, so confirmed tasks survive a
    broker restart.

    ``requeue`` and ``reject_on_redelivered`` are aio-pika's: with
    ``requeue=True`` a task whose function raised (and that its retry policy does
    not retry) goes back to its queue instead of to its dead-letter queue; it is
    still counted as a redelivery, so after ``max_redeliveries`` it is
    dead-lettered and can never loop forever. aio-pika requeues by default;
    leveret does not. ``reject_on_redelivered=True`` dead-letters a task that
    raises again after it was redelivered instead of requeueing it once more.
    """

    DELIVERY_MODE = 2

    def __init__(
        self,
        channel: PatternChannel,
        requeue: bool = False,
        reject_on_redelivered: bool = False,
        *,
        serializer: str | Serializer | None = None,
        accept: Collection[str] = (),
        prefetch_count: int | None = None,
        observers: Observers | Iterable[Observer] | None = None,
    ) -> None:
        super().__init__(serializer=serializer, accept=accept)
        self.channel = channel
        #: Who sees this master's tasks (by default the process-wide observers).
        self.observers = Observers.of(observers)
        self.proxy = Proxy(self.create_task)
        self.prefetch_count = prefetch_count
        self.requeue = requeue
        self.reject_on_redelivered = reject_on_redelivered
        self.workers: list[Worker] = []
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        # Tasks whose delay ladder this master has declared (once per channel).
        self._ladders: set[str] = set()
        self._ladder_lock = asyncio.Lock()

    async def create_task(
        self,
        channel_name: str,
        kwargs: Mapping[str, Any] = MappingProxyType({}),
        *,
        delay: float | datetime.timedelta | None = None,
        eta: datetime.datetime | None = None,
        expiration: Duration | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        content_encoding: str | None = None,
        timestamp: float | datetime.datetime | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        delivery_mode: int | None = None,
    ) -> None:
        """Publish a task; return once the broker has confirmed it.

        ``delay`` (seconds or a timedelta) or ``eta`` (a timezone-aware datetime)
        makes the task wait on the broker first (rounded up to 16 ms, never early;
        at most :data:`~leveret.patterns.MAX_DELAY`, about 397 days): no worker
        holds it meanwhile. ``delay=0``, ``None`` or an ``eta`` already past is an
        ordinary task.

        ``expiration`` (seconds, a timedelta, or a datetime) drops the task if no
        worker takes it in time. The other keywords are the message properties
        aio-pika's ``create_task`` passes on to its ``Message``; ``delivery_mode=1``
        makes a task transient. ``message_id`` defaults to a unique id.

        Raises:
            UnroutableError: no queue is bound for ``channel_name`` (for a delayed
                task: no queue of that name exists).
            ConfigurationError: ``kwargs`` is not a mapping; ``delay`` and ``eta``
                both given, a naive ``eta``, a delay negative or over the maximum,
                or a delay with an ``expiration`` (it would cut the wait short).
            SerializationError: ``kwargs`` cannot be encoded (the message names the
                argument that does not).
            PublishError, ChannelClosedError: the broker did not take it.
        """
        # ``type`` is a message property here, as in aio-pika's create_task: hence __class__.
        if kwargs.__class__ is not dict:
            kwargs = keyword_arguments(kwargs, f"create_task({channel_name!r})")
        seconds = None if delay is None and eta is None else delay_seconds(channel_name, delay, eta)
        if seconds is not None and expiration is not None:
            raise ConfigurationError(
                f"create_task({channel_name!r}): expiration= cannot go with a delay "
                "(the broker would expire the task while it waits)"
            )
        body = self._encode(kwargs)
        exchange, routing_key = "", channel_name
        if seconds is not None:
            if not await self._ensure_ladder(channel_name):
                raise UnroutableError(
                    f"no queue takes task {channel_name!r}: no worker ever declared it "
                    "(there is no queue of that name for its delay to end in)",
                    ReturnedMessage(
                        312, "NO_ROUTE", "", channel_name, body, Properties(headers=headers)
                    ),
                )
            exchange, routing_key = route(channel_name, seconds)
        if self.observers:
            headers = self.observers.send_headers("task", channel_name, dict(headers or {}))
        try:
            await self.channel.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=True,
                content_type=self.CONTENT_TYPE,
                content_encoding=content_encoding,
                delivery_mode=delivery_mode or self.DELIVERY_MODE,
                priority=priority,
                headers=headers,
                expiration=None if expiration is None else milliseconds(expiration),
                message_id=message_id or f"{self._id_prefix}.{next(self._ids)}",
                correlation_id=correlation_id,
                reply_to=reply_to,
                timestamp=timestamp.timestamp()
                if isinstance(timestamp, datetime.datetime)
                else timestamp,
                type=type,
                user_id=user_id,
                app_id=app_id,
            )
        except MessageReturnedError as exc:
            raise _unroutable(channel_name, exc) from exc

    async def create_tasks(
        self,
        channel_name: str,
        kwargs_list: Iterable[Mapping[str, Any]],
        *,
        expiration: Duration | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        content_encoding: str | None = None,
        timestamp: float | datetime.datetime | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        delivery_mode: int | None = None,
    ) -> None:
        """Publish one task of ``channel_name`` for each mapping of ``kwargs_list``; return
        once the broker has confirmed every one.

        Each task is what :meth:`create_task` would publish with the same options
        (each has them all; each its own message id unless ``message_id`` is given),
        but they are written a batch at a time with their confirms pipelined, which
        takes far less time per task than one ``create_task`` after another.

        Raises:
            ConfigurationError: one of them is not a mapping; nothing was sent.
            SerializationError: one of them cannot be encoded (the message names its
                index and argument); nothing was sent.
            BatchPublishError: some tasks were not taken by the broker (its
                ``failures`` say which, by index, and why); the others were.
            ChannelClosedError: the channel is closed; nothing was sent.
        """
        bodies = []
        for index, kwargs in enumerate(kwargs_list):
            if kwargs.__class__ is not dict:
                if not isinstance(kwargs, Mapping):
                    raise ConfigurationError(
                        f"create_tasks({channel_name!r}): task {index} is "
                        f"{kwargs.__class__.__name__}, not a mapping of keyword arguments "
                        "({'name': value})"
                    )
                kwargs = dict(kwargs)
            try:
                bodies.append(self._encode(kwargs))
            except SerializationError as exc:
                raise SerializationError(f"task {index}: {exc}") from exc
        if not bodies:
            return
        ids = None if message_id else [f"{self._id_prefix}.{next(self._ids)}" for _ in bodies]
        each: list[Mapping[str, Any] | None] | None = None
        if self.observers:  # they may give each task headers of its own (a trace context)
            each = [
                self.observers.send_headers("task", channel_name, dict(headers or {}))
                for _ in bodies
            ]
        properties = Properties(
            content_type=self.CONTENT_TYPE,
            content_encoding=content_encoding,
            delivery_mode=delivery_mode or self.DELIVERY_MODE,
            priority=priority,
            headers=headers if each is None else None,
            expiration=None if expiration is None else milliseconds(expiration),
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            timestamp=timestamp,
            type=type,
            user_id=user_id,
            app_id=app_id,
        )
        results = await self.channel.publish_many(
            bodies,
            routing_key=channel_name,
            mandatory=True,
            properties=properties,
            message_ids=ids,
            headers=each,
        )
        failures: dict[int, PublishError] = {
            index: _unroutable(channel_name, error)
            if isinstance(error, MessageReturnedError)
            else error
            for index, error in enumerate(results)
            if error is not None
        }
        if failures:
            raise BatchPublishError(
                _not_taken(channel_name, failures, len(bodies)), failures, len(bodies)
            )

    async def _ensure_ladder(self, task: str) -> bool:
        """Declare ``task``'s delay ladder unless this master did already; whether
        the task queue exists.

        On a channel of its own: a task queue that does not exist makes the
        broker close the channel that asked (404), and that must not be the
        channel tasks are published on. An exclusive task queue cannot be bound
        from here (405); its worker bound it and declared the ladder when it started.
        """
        if task in self._ladders:
            return True
        async with self._ladder_lock:
            if task in self._ladders:
                return True
            side = await self.channel.connection.channel()
            try:
                await declare_ladder(side, task)
            except NotFoundError:
                return False
            except ResourceLockedError:
                pass  # an exclusive task queue: its worker's connection declared the ladder
            finally:
                await side.close()
            self._ladders.add(task)
            return True

    async def create_worker(
        self,
        queue_name: str,
        func: Callable[..., Any],
        *,
        prefetch_count: int | None = None,
        durable: bool = True,
        exclusive: bool = False,
        passive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        robust: bool = True,
        retries: RetryPolicy | None = None,
        dead_letter: bool = True,
        queue_type: QueueType = "classic",
        time_limit: float | None = None,
    ) -> Worker:
        """Declare the task's queue and consume it with ``func``.

        ``func`` is called with the task's keyword arguments; an ``async def`` runs
        on the event loop, a plain function in the loop's thread pool. The task is
        acked when ``func`` returns. If it raises, ``retries`` (a
        :class:`RetryPolicy`; default: no retry, at most 5 redeliveries) decides
        whether it runs again later; a task that will not run again goes to the
        durable queue ``<queue_name>.dlq`` with headers that say why (unless
        ``dead_letter=False``: then it is rejected; or the master was made with
        ``requeue=True``: then it is requeued). ``raise NackMessage(requeue=...)``
        or ``RejectMessage(requeue=...)`` settles a task that way. At most
        ``prefetch_count`` tasks run at once; a task running longer than
        ``time_limit`` seconds fails with ``TimeoutError``.

        ``durable``, ``exclusive``, ``passive``, ``auto_delete``, ``arguments`` and
        ``timeout`` (seconds for the declarations) are aio-pika's ``declare_queue``
        arguments. A worker declared ``auto_delete`` or ``exclusive`` is
        throwaway: when it closes it also deletes the dead-letter and retry queues
        it made. ``robust`` is accepted for aio-pika's sake: on a robust connection
        a worker always comes back after a reconnect.

        ``queue_type="quorum"`` declares a replicated quorum queue (durable, with a
        delivery limit and broker-side dead-lettering to the same ``.dlq``).

        Raises:
            ConfigurationError: the options contradict each other.
            BrokerError: the broker refused the declaration (e.g. the queue exists
                with other arguments: 406 PRECONDITION_FAILED; ``passive`` and it
                does not exist: 404 NOT_FOUND).
            TimeoutError: the declarations took longer than ``timeout``.
        """
        del robust  # see the docstring
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
        worker = Worker(
            self.channel,
            call,
            self._decode,
            retries=policy,
            dead_letter=dead_letter,
            time_limit=time_limit,
            limit=prefetch_count or self.prefetch_count or call.default_concurrency,
            queue_type=queue_type,
            requeue=self.requeue,
            reject_on_redelivered=self.reject_on_redelivered,
            throwaway=auto_delete or exclusive,
            observers=self.observers,
        )
        async with asyncio.timeout(timeout):
            if dead_letter:
                await worker.declare(dead_letter_queue(queue_name))
            await self.channel.queue_declare(
                queue_name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=None if passive else queue_arguments,
            )
            if policy.max_attempts > 1 or exclusive:
                # Its retries wait there; a sender declares it before a first delay, but
                # cannot bind an exclusive queue of another connection (405).
                await worker.declare_ladder()
            await worker.start()
        self.workers.append(worker)
        return worker

    async def cancel(self, task: str, message_id: str) -> bool:
        """Cancel task ``message_id`` of ``task``, wherever it is; whether it ran here.

        A task still queued, delayed or waiting for a retry never starts: the worker
        it reaches (one started later too) sends it to its dead-letter queue with the
        reason ``cancelled``. A running ``async def`` task gets ``CancelledError`` and
        is dead-lettered the same way, never retried; a running plain function is
        interrupted in its thread (see :meth:`Worker.cancel`). Workers of other
        processes learn it through the fleet (``leveret run`` and ``serve()`` start
        it); revocations are kept for a day, at most 10,000 per task.

        Raises:
            PublishError, ChannelClosedError: the broker did not take it.
        """
        await publish_revocation(self.channel, task, message_id)
        ran = [worker.cancel(message_id) for worker in self.workers if worker.name == task]
        return any(ran)

    async def close(self, timeout: float | None = None) -> None:
        """Close every worker this master created (see :meth:`Worker.close`); ``async
        with Master(channel) as master:`` does it on the way out."""
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.close(timeout) for worker in workers))


class JsonMaster(Master):
    """:class:`Master` with JSON, by the name aio-pika gives it (JSON is leveret's default)."""

    CONTENT_TYPE = JSON
    SERIALIZER = json


class CompressedJsonMaster(CompressedJson, Master):
    """:class:`Master` with gzip-compressed JSON (``application/json;compression=gzip``),
    wire-compatible with aio-pika's ``CompressedJsonMaster``."""


def _unroutable(task: str, returned: MessageReturnedError) -> UnroutableError:
    return UnroutableError(
        f"no queue takes task {task!r}: no worker ever declared it (the broker returned "
        f"it: {returned.message.reply_code} {returned.message.reply_text})",
        returned.message,
    )


def _not_taken(task: str, failures: dict[int, PublishError], count: int) -> str:
    """``2 of 1000 tasks 'resize' were not taken ...: tasks 4, 17: <why>``, each reason
    once with (at most ten of) the indexes it applies to."""
    by_reason: dict[str, list[int]] = {}
    for index, error in failures.items():
        by_reason.setdefault(f"{error.__class__.__name__}: {error}", []).append(index)
    reasons = []
    for reason, indexes in by_reason.items():
        shown = ", ".join(map(str, indexes[:10]))
        more = f" and {len(indexes) - 10} more" if len(indexes) > 10 else ""
        reasons.append(f"task{'s' if len(indexes) > 1 else ''} {shown}{more}: {reason}")
    return (
        f"{len(failures)} of {count} tasks {task!r} were not taken by the broker (the "
        f"others were): {'; '.join(reasons)}"
    )


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
