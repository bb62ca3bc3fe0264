"""RPC: call a function in another process and await its result.

Calls go to the queue named after the method on the default exchange
(``type="call"``, ``correlation_id``, ``reply_to``); replies come back over
RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``), so no reply queue is
declared, and any number of calls share it, told apart by ``correlation_id``.
Errors travel as ``{"error": {"type", "message", "args", ...}}`` with
``type="error"``, as aio-pika's ``JsonRPC`` writes them; we add ``str``,
``module`` and ``traceback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import json
import logging
import secrets
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, Self

from ..amqp import AsyncClosing, Delivery, ReturnedMessage
from ..exceptions import (
    AMQPError,
    CallInterruptedError,
    ConfigurationError,
    NoCalleeError,
    SerializationError,
    UnroutableError,
)
from ..serializers import JSON, JSONSerializer, Serializer
from ._base import Base, CompressedJson, Duration, Proxy, keyword_arguments, milliseconds
from ._call import KeywordCall
from ._callee import DEADLINE_HEADER, Callee
from ._liveness import CalleeWatch, PendingCall
from ._observe import Observer, Observers
from ._remote import error_payload, rebuild_error
from ._seam import PatternChannel, QueueType, is_quorum

log = logging.getLogger("leveret.patterns")

REPLY_TO = "amq.rabbitmq.reply-to"
#: What a call without a timeout waits under: nothing (cheaper than an unbounded timeout).
_UNBOUNDED: Final = contextlib.nullcontext()
#: The dead-letter exchange aio-pika gives callee queues: its callers get their
#: expired calls back through it. Declared the same way here, so leveret and
#: aio-pika callees can share a method's queue.
DLX_NAME = "rpc.dlx"


class RPCMessageType(enum.StrEnum):
    """The ``type`` property of RPC messages (aio-pika's names and values)."""

    ERROR = "error"
    RESULT = "result"
    CALL = "call"


class _ReplyRouter:
    """The one direct reply-to consumer of a channel, shared by every RPC on it.

    RabbitMQ allows one ``amq.rabbitmq.reply-to`` consumer per channel, so the
    RPCs of a channel take turns on it: each reply goes to the RPC whose
    correlation id prefix it carries. The consumer starts with the first RPC and
    stops when the last one closes.
    """

    def __init__(self) -> None:
        self.rpcs: dict[str, RPC] = {}
        self.tag: str | None = None
        self._lock = asyncio.Lock()

    async def join(self, channel: PatternChannel, rpc: RPC) -> None:
        self.rpcs[rpc._id_prefix] = rpc
        try:
            async with self._lock:
                if self.tag is None:
                    self.tag = await channel.consume(REPLY_TO, self._on_reply, no_ack=True)
        except BaseException:
            self.rpcs.pop(rpc._id_prefix, None)
            raise

    async def leave(self, channel: PatternChannel, rpc: RPC) -> None:
        self.rpcs.pop(rpc._id_prefix, None)
        async with self._lock:
            if self.rpcs or self.tag is None:
                return
            tag, self.tag = self.tag, None
            with contextlib.suppress(AMQPError):
                await channel.cancel(tag)

    def _on_reply(self, delivery: Delivery) -> None:
        correlation_id = delivery.properties.correlation_id
        rpc = self.rpcs.get(correlation_id.partition(".")[0]) if correlation_id else None
        if rpc is None:
            log.debug("reply %r matches no RPC on this channel (closed since?)", correlation_id)
            return
        rpc._on_reply(delivery)


#: The reply router of each channel that has an RPC.
_ROUTERS: weakref.WeakKeyDictionary[PatternChannel, _ReplyRouter] = weakref.WeakKeyDictionary()


class RPC(Base, AsyncClosing):
    """Remote procedure calls over one channel.

    ::

        rpc = await RPC.create(channel, timeout=5)
        await rpc.register("multiply", multiply)        # callee side
        assert await rpc.proxy.multiply(x=2, y=3) == 6  # caller side

    ``timeout`` is the default deadline of a call; the call message carries it as
    its ``expiration`` (the broker drops a call nobody took in time) and in a header
    (a callee skips a call whose deadline has passed). Exceptions raised by the
    callee are re-raised at the caller as :class:`~leveret.exceptions.RemoteError`
    subclasses that are also the original type when that type is a builtin
    exception or was registered (``exceptions=`` or :meth:`register_exception`).
    Any number of RPCs may share a channel; replies reach the right one by
    correlation id. ``host_exceptions=True`` (aio-pika's) logs every exception a
    callee raises with its traceback. A call whose method's queue has no consumer
    fails within about a second with :class:`~leveret.exceptions.NoCalleeError`
    (see :mod:`leveret.patterns._liveness`); ``fail_fast=False`` waits instead,
    as aio-pika does.
    """

    DELIVERY_MODE = 1
    DLX_NAME = DLX_NAME

    def __init__(
        self,
        channel: PatternChannel,
        host_exceptions: bool = False,
        *,
        timeout: float | None = None,
        serializer: str | Serializer | None = None,
        accept: Collection[str] = (),
        prefetch_count: int | None = None,
        exceptions: Collection[type[Exception]] = (),
        max_redeliveries: int = 5,
        observers: Observers | Iterable[Observer] | None = None,
        fail_fast: bool = True,
    ) -> None:
        super().__init__(serializer=serializer, accept=accept)
        self.channel = channel
        self.host_exceptions = host_exceptions
        #: Who sees this RPC's calls (by default the process-wide observers).
        self.observers = Observers.of(observers)
        self.timeout = timeout
        self.prefetch_count = prefetch_count
        self.max_redeliveries = max_redeliveries
        self.proxy = Proxy(self.call)
        #: The exchange calls go through ("": the default exchange); see :meth:`initialize`.
        self.exchange = ""
        self._pending: dict[str, PendingCall] = {}
        self._watch = (
            CalleeWatch(channel, self._pending, self._fail_unserved) if fail_fast else None
        )
        self._callees: dict[str, Callee] = {}
        self._exceptions: dict[str, type[Exception]] = {}
        for cls in exceptions:
            self.register_exception(cls)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        self._listening = False
        self._closed = False

    @classmethod
    async def create(
        cls,
        channel: PatternChannel,
        *,
        host_exceptions: bool | None = None,
        auto_delete: bool = True,
        durable: bool = False,
        exchange: str = "",
        exclusive: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        robust: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Create an RPC on ``channel`` and start listening for replies.

        ``kwargs`` go to the constructor (``timeout``, ``serializer``, ``accept``,
        ``prefetch_count``, ``exceptions``, ``max_redeliveries``, ``observers``,
        ``fail_fast``); the rest are aio-pika's :meth:`initialize` arguments.

        Raises:
            TypeError: an argument neither takes.
        """
        try:
            inspect.signature(cls).bind(channel, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.create() {exc}") from None
        rpc = cls(channel, **kwargs)
        if host_exceptions is not None:
            rpc.host_exceptions = host_exceptions
        await rpc.initialize(
            auto_delete,
            durable,
            exchange,
            exclusive=exclusive,
            passive=passive,
            arguments=arguments,
            robust=robust,
        )
        return rpc

    async def initialize(
        self,
        auto_delete: bool = True,
        durable: bool = False,
        exchange: str = "",
        *,
        exclusive: bool = False,
        passive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        robust: bool = True,
    ) -> None:
        """Declare the RPC's exchange, if any, and start listening for replies (idempotent).

        ``exchange`` routes calls through that direct exchange (declared
        ``auto_delete``, and ``durable`` as asked) instead of the default one, as
        aio-pika does: the queue of method ``m`` is then named and bound as
        ``"<exchange>::m"``, so calls on one exchange never reach a callee on
        another. aio-pika's other arguments describe its reply queue; leveret
        replies over direct reply-to and declares none, so ``auto_delete``,
        ``exclusive``, ``passive``, ``arguments`` and ``robust`` are accepted and
        have no effect.
        """
        del auto_delete, exclusive, passive, arguments, robust  # see the docstring
        if self._listening:
            return
        if exchange:
            await self.channel.exchange_declare(
                exchange, "direct", durable=durable, auto_delete=True
            )
        self.exchange = exchange
        router = _ROUTERS.get(self.channel)
        if router is None:
            router = _ROUTERS[self.channel] = _ReplyRouter()
        await router.join(self.channel, self)
        self._listening = True
        self.channel.close_callbacks.append(self._on_channel_closed)
        self.channel.return_callbacks.append(self._on_return)

    def routing_key(self, method_name: str) -> str:
        """The routing key, and callee queue name, of ``method_name`` (aio-pika's format)."""
        return f"{self.exchange}::{method_name}" if self.exchange else method_name

    def register_exception(self, cls: type[Exception]) -> None:
        """Let remote exceptions named ``cls.__name__`` be re-raised as ``cls``."""
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise ConfigurationError(f"{cls!r} is not an exception class")
        self._exceptions[cls.__name__] = cls

    # -- caller ----------------------------------------------------------------------

    async def call(
        self,
        method_name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        expiration: Duration | None = None,
        priority: int | None = None,
        delivery_mode: int | None = None,
    ) -> Any:
        """Call ``method_name`` with ``kwargs`` and return its result.

        ``timeout`` (seconds, default: the RPC's) bounds the whole call;
        ``expiration`` (seconds or a timedelta; default: the timeout) is how long
        the call may wait in the queue before the broker drops it. A call with an
        expiration and no timeout waits at most that long for its reply: over
        direct reply-to the caller cannot see a call expire in its queue, and
        without the bound it would wait forever. ``priority`` and
        ``delivery_mode`` (1 transient, the default; 2 persistent) are the call
        message's.

        Raises:
            TimeoutError: no reply within ``timeout``.
            UnroutableError: nobody registered ``method_name`` (at once).
            NoCalleeError: its queue has no consumer (within about a second).
            RemoteError: the callee raised (see the class docstring).
            CallInterruptedError: the channel or the RPC closed first.
            SerializationError: the arguments or the reply cannot be encoded/decoded.
        """
        observers = self.observers
        if not observers:
            return await self._call(
                method_name, kwargs, timeout, expiration, priority, delivery_mode
            )
        started = time.perf_counter()
        try:
            result = await self._call(
                method_name, kwargs, timeout, expiration, priority, delivery_mode
            )
        except BaseException as exc:
            observers.called(method_name, time.perf_counter() - started, exc)
            raise
        observers.called(method_name, time.perf_counter() - started, None)
        return result

    async def _call(
        self,
        method_name: str,
        kwargs: Mapping[str, Any] | None,
        timeout: float | None,
        expiration: Duration | None,
        priority: int | None,
        delivery_mode: int | None,
    ) -> Any:
        if not self._listening:
            raise ConfigurationError("the RPC is not listening: create it with RPC.create()")
        if timeout is None:
            timeout = self.timeout
        expiration_ms = None if timeout is None else max(1, round(timeout * 1000))
        if expiration is not None:
            expiration_ms = milliseconds(expiration, minimum=1)
            if timeout is None:
                timeout = expiration_ms / 1000
        if kwargs.__class__ is not dict:
            kwargs = {} if kwargs is None else keyword_arguments(kwargs, f"call({method_name!r})")
        body = self._encode(kwargs)
        correlation_id = f"{self._id_prefix}.{next(self._ids)}"
        headers = None if timeout is None else {DEADLINE_HEADER: time.time() + timeout}
        if self.observers:
            headers = self.observers.send_headers("call", method_name, headers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        routing_key = self.routing_key(method_name) if self.exchange else method_name
        self._pending[correlation_id] = PendingCall(
            future, method_name, routing_key, time.monotonic()
        )
        if self._watch is not None:
            self._watch.sent()
        send = self.channel.publish(
            body,
            exchange=self.exchange,
            routing_key=routing_key,
            mandatory=True,
            content_type=self.CONTENT_TYPE,
            delivery_mode=delivery_mode or self.DELIVERY_MODE,
            priority=priority,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            expiration=expiration_ms,
            type="call",
            headers=headers,
            # The reply is the confirmation that matters; an unroutable call
            # comes back through _on_return, which fails it at once.
            confirm=False,
        )
        # No timeout context without a timeout: entering one costs a few µs per call.
        deadline = None if timeout is None else asyncio.timeout(timeout)
        try:
            async with deadline or _UNBOUNDED:
                await send
                if len(self._pending) == 1:  # the only call in flight: no write to wait for
                    self.channel.flush()
                return await future
        except TimeoutError:
            if deadline is not None and deadline.expired():
                raise TimeoutError(f"no reply to {method_name!r} within {timeout:g} s") from None
            raise
        finally:
            self._pending.pop(correlation_id, None)

    def _on_reply(self, delivery: Delivery) -> None:
        correlation_id = delivery.properties.correlation_id
        entry = self._pending.pop(correlation_id, None) if correlation_id else None
        if entry is None:
            log.debug("reply %r matches no pending call (it came after a timeout?)", correlation_id)
            return
        future, name = entry.future, entry.method
        if future.done():
            return
        kind = delivery.properties.type
        try:
            payload = self._decode(delivery)
        except SerializationError as exc:
            future.set_exception(SerializationError(f"reply to {name!r}: {exc}"))
            return
        if kind == "error":
            future.set_exception(rebuild_error(name, payload, self._exceptions))
        elif kind == "call":  # a peer dead-lettered our expired call back to us
            future.set_exception(TimeoutError(f"call to {name!r} expired in its queue"))
        else:
            future.set_result(payload)

    def _on_return(self, message: ReturnedMessage) -> None:
        entry = self._pending.pop(message.properties.correlation_id or "", None)
        if entry is None:
            return  # not one of our calls
        future, name = entry.future, entry.method
        if not future.done():
            future.set_exception(
                UnroutableError(
                    f"nobody serves {name!r}{self._on_exchange()}: no callee registered it "
                    f"(the broker returned the call: {message.reply_code} {message.reply_text})",
                    message,
                )
            )

    def _on_exchange(self) -> str:
        return f" on exchange {self.exchange!r}" if self.exchange else ""

    def _on_channel_closed(self, channel: PatternChannel, reason: BaseException | None) -> None:
        self._fail_pending(f"the channel closed ({reason})")

    def _fail_unserved(self, method: str, before: float, why: str) -> None:
        for correlation_id, call in list(self._pending.items()):
            if call.method == method and call.sent < before:
                del self._pending[correlation_id]
                if not call.future.done():
                    call.future.set_exception(
                        NoCalleeError(
                            f"nobody serves {method!r}{self._on_exchange()} now: {why} "
                            f"(its callees stopped, or never started); the call stays queued "
                            f"until it expires, so a callee that starts in time may still run it"
                        )
                    )

    def _fail_pending(self, why: str) -> None:
        pending = list(self._pending.values())
        self._pending.clear()  # the same dict: the callee watch holds it
        for future, name, _, _ in pending:
            if not future.done():
                future.set_exception(
                    CallInterruptedError(
                        f"no reply to {name!r}: {why}; the callee may or may not have run it"
                    )
                )

    # -- callee ----------------------------------------------------------------------

    @property
    def callees(self) -> dict[str, Callee]:
        """The methods this RPC serves, by name, in the order they were registered."""
        return dict(self._callees)

    async def register(
        self,
        method_name: str,
        func: Callable[..., Any],
        *,
        prefetch_count: int | None = None,
        durable: bool = False,
        exclusive: bool = False,
        passive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        robust: bool = True,
        queue_type: QueueType = "classic",
    ) -> None:
        """Serve ``method_name`` with ``func`` from the queue of that name.

        ``func`` takes keyword arguments; an ``async def`` runs on the event loop,
        a plain function in the loop's thread pool. At most ``prefetch_count``
        calls run at once; a call is acked once its reply is published. A call
        redelivered more than ``max_redeliveries`` times (it may crash its callee)
        is answered with an error instead of being run again.

        The queue is declared as aio-pika's ``register`` declares it: named
        :meth:`routing_key` (``"<exchange>::<method>"`` on an RPC with an
        exchange, and bound to it), with ``x-dead-letter-exchange`` set to
        ``rpc.dlx`` unless ``arguments`` say otherwise, and ``durable``,
        ``exclusive``, ``passive``, ``auto_delete``, ``arguments`` and ``timeout``
        (seconds for the declaration) as given. ``robust`` is accepted for
        aio-pika's sake: on a robust connection a callee always comes back after a
        reconnect. ``queue_type="quorum"`` declares a replicated quorum queue
        (durable).

        Raises:
            ConfigurationError: ``method_name`` is already registered here, or the
                queue options contradict each other.
            BrokerError: the broker refused the declaration.
            TimeoutError: the declaration took longer than ``timeout``.
        """
        del robust  # see the docstring
        if method_name in self._callees:
            raise ConfigurationError(f"{method_name!r} is already registered on this RPC")
        call = KeywordCall(method_name, func)
        queue = self.routing_key(method_name)
        queue_arguments = {"x-dead-letter-exchange": self.DLX_NAME, **(arguments or {})}
        # RPC queues are transient by default; a quorum queue never is.
        durable = durable or queue_type == "quorum"
        quorum = is_quorum(
            queue, queue_type, durable=durable, exclusive=exclusive, auto_delete=auto_delete
        )
        if quorum:
            queue_arguments = {"x-queue-type": "quorum", **queue_arguments}
        callee = Callee(
            self.channel,
            queue,
            call,
            decode=self._decode,
            encode=self._encode,
            encode_error=self._encode_error,
            content_type=self.CONTENT_TYPE,
            delivery_mode=self.DELIVERY_MODE,
            host_exceptions=lambda: self.host_exceptions,
            limit=prefetch_count or self.prefetch_count or call.default_concurrency,
            broker_counts=quorum,  # only a quorum queue's x-delivery-count counts
            max_redeliveries=self.max_redeliveries,
            observers=self.observers,
        )
        async with asyncio.timeout(timeout):
            await self.channel.queue_declare(
                queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=None if passive else queue_arguments,
            )
            if self.exchange:
                await self.channel.queue_bind(queue, self.exchange, queue)
            await callee.start()
        self._callees[method_name] = callee

    async def unregister(
        self, func_or_name: Callable[..., Any] | str, *, timeout: float | None = None
    ) -> None:
        """Stop serving a method (by name or by the function registered).

        Calls already running finish and reply (after ``timeout`` seconds they are
        cancelled and requeued); calls received but not started go back to the queue.

        Raises:
            ConfigurationError: nothing is registered under that name or function.
        """
        for name, callee in self._callees.items():
            if name == func_or_name or callee.call.func is func_or_name:
                break
        else:
            raise ConfigurationError(f"{func_or_name!r} is not registered on this RPC")
        del self._callees[name]
        await callee.close(timeout)

    def serialize_exception(self, exc: BaseException) -> dict[str, Any]:
        """The error object sent to the caller (aio-pika's fields, plus ours); override
        to send other details."""
        return error_payload(exc)

    def _encode_error(self, exc: BaseException) -> bytes:
        payload = self.serialize_exception(exc)
        try:
            return self._encode(payload)
        except SerializationError:
            payload["error"]["args"] = [repr(arg) for arg in exc.args]
            return self._encode(payload)

    async def close(self, timeout: float | None = None) -> None:
        """Stop serving and calling: pending calls fail with
        :class:`~leveret.exceptions.CallInterruptedError`, consumers are cancelled
        (calls being served get ``timeout`` seconds to finish, as in
        :meth:`unregister`), and the channel stays open for other use. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._fail_pending("the RPC was closed")
        if self._watch is not None:
            await self._watch.close()
        for name in list(self._callees):
            await self.unregister(name, timeout=timeout)
        if self._listening:
            self._listening = False
            router = _ROUTERS.get(self.channel)
            if router is not None:
                await router.leave(self.channel, self)
        with contextlib.suppress(ValueError):
            self.channel.close_callbacks.remove(self._on_channel_closed)
        with contextlib.suppress(ValueError):
            self.channel.return_callbacks.remove(self._on_return)


class JsonRPC(RPC):
    """:class:`RPC` with JSON, as aio-pika's ``JsonRPC``: a result JSON cannot encode is
    sent as its ``repr()`` instead of failing the call."""

    CONTENT_TYPE = JSON
    SERIALIZER = json

    def _class_serializer(self) -> Serializer:
        return JSONSerializer(default=repr)


class CompressedJsonRPC(CompressedJson, RPC):
    """:class:`RPC` with gzip-compressed JSON (``application/json;compression=gzip``)."""
