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
import builtins
import contextlib
import enum
import inspect
import itertools
import json
import logging
import secrets
import time
import traceback
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple, Self

from ..amqp import Delivery, ReturnedMessage
from ..exceptions import (
    AMQPError,
    CallInterruptedError,
    ConfigurationError,
    RemoteError,
    SerializationError,
    UnroutableError,
)
from ..serializers import JSON, JSONSerializer, Serializer
from . import _observe
from ._base import (
    Base,
    CompressedJson,
    Duration,
    KeywordCall,
    PatternChannel,
    Proxy,
    is_quorum,
    milliseconds,
)
from ._master import DEFAULT_PREFETCH
from ._retry import DELIVERY_COUNT_HEADER, REDELIVERIES_HEADER, int_header
from ._runner import Runner
from ._settle import move, settle

log = logging.getLogger("leveret.patterns")

REPLY_TO = "amq.rabbitmq.reply-to"
#: Header carrying a call's deadline (seconds since the epoch) to the callee.
DEADLINE_HEADER = "x-leveret-deadline"
#: The dead-letter exchange aio-pika gives callee queues: its callers get their
#: expired calls back through it. Declared the same way here, so leveret and
#: aio-pika callees can share a method's queue.
DLX_NAME = "rpc.dlx"


class RPCMessageType(enum.StrEnum):
    """The ``type`` property of RPC messages (aio-pika's names and values)."""

    ERROR = "error"
    RESULT = "result"
    CALL = "call"


_BUILTIN_EXCEPTIONS: dict[str, type[Exception]] = {
    name: value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception)
}
_REMOTE_CLASSES: dict[type[Exception], type[RemoteError]] = {}


def _remote_class(cls: type[Exception]) -> type[RemoteError]:
    """``RemoteValueError``: a :class:`RemoteError` that is also a ``ValueError``."""
    remote = _REMOTE_CLASSES.get(cls)
    if remote is None:
        try:
            remote = type(f"Remote{cls.__name__}", (RemoteError, cls), {"__module__": __name__})
        except TypeError:  # an exception type that cannot be mixed in
            remote = RemoteError
        _REMOTE_CLASSES[cls] = remote
    return remote


class CallRedeliveredError(RuntimeError):
    """Sent to the caller of a call that was redelivered too often to run again."""


class _Callee(NamedTuple):
    call: KeywordCall
    consumer_tag: str
    runner: Runner


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


class RPC(Base):
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
    callee raises with its traceback.
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
        prefetch_count: int = DEFAULT_PREFETCH,
        exceptions: Collection[type[Exception]] = (),
        max_redeliveries: int = 5,
    ) -> None:
        super().__init__(serializer=serializer, accept=accept)
        self.channel = channel
        self.host_exceptions = host_exceptions
        self.timeout = timeout
        self.prefetch_count = prefetch_count
        self.max_redeliveries = max_redeliveries
        self.proxy = Proxy(self.call)
        #: The exchange calls go through ("": the default exchange); see :meth:`initialize`.
        self.exchange = ""
        self._pending: dict[str, tuple[asyncio.Future[Any], str]] = {}
        self._callees: dict[str, _Callee] = {}
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
        ``prefetch_count``, ``exceptions``, ``max_redeliveries``); the rest are
        aio-pika's :meth:`initialize` arguments.

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
            RemoteError: the callee raised (see the class docstring).
            CallInterruptedError: the channel or the RPC closed first.
            SerializationError: the arguments or the reply cannot be encoded/decoded.
        """
        if not _observe.observers:
            return await self._call(
                method_name, kwargs, timeout, expiration, priority, delivery_mode
            )
        started = time.perf_counter()
        try:
            result = await self._call(
                method_name, kwargs, timeout, expiration, priority, delivery_mode
            )
        except BaseException as exc:
            _observe.called(method_name, time.perf_counter() - started, exc)
            raise
        _observe.called(method_name, time.perf_counter() - started, None)
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
        body = self._encode(kwargs if type(kwargs) is dict else dict(kwargs or {}))
        correlation_id = f"{self._id_prefix}.{next(self._ids)}"
        headers = None if timeout is None else {DEADLINE_HEADER: time.time() + timeout}
        if _observe.observers:
            headers = _observe.send_headers("call", method_name, headers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = (future, method_name)
        send = self.channel.publish(
            body,
            exchange=self.exchange,
            routing_key=self.routing_key(method_name) if self.exchange else method_name,
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
            if deadline is None:
                await send
                return await future
            async with deadline:
                await send
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
        future, name = entry
        if future.done():
            return
        kind = delivery.properties.type
        try:
            payload = self._decode(delivery)
        except SerializationError as exc:
            future.set_exception(SerializationError(f"reply to {name!r}: {exc}"))
            return
        if kind == "error":
            future.set_exception(self._rebuild_error(name, payload))
        elif kind == "call":  # a peer dead-lettered our expired call back to us
            future.set_exception(TimeoutError(f"call to {name!r} expired in its queue"))
        else:
            future.set_result(payload)

    def _on_return(self, message: ReturnedMessage) -> None:
        entry = self._pending.pop(message.properties.correlation_id or "", None)
        if entry is None:
            return  # not one of our calls
        future, name = entry
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

    def _rebuild_error(self, name: str, payload: Any) -> RemoteError:
        info = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(info, dict):
            return RemoteError(
                f"{name!r} failed, and its error reply is malformed: {payload!r:.200}"
            )
        type_name = str(info.get("type", "Exception"))
        text = info.get("str", info.get("message", ""))
        text = text if isinstance(text, str) else repr(text)
        remote_traceback = info.get("traceback")
        remote_args = tuple(info["args"]) if isinstance(info.get("args"), list) else ()
        cls = self._exceptions.get(type_name) or _BUILTIN_EXCEPTIONS.get(type_name)
        error: RemoteError
        if cls is None:
            error = RemoteError(f"{type_name}: {text}")
        else:
            remote = _remote_class(cls)
            try:
                error = remote.__new__(remote)  # never runs an __init__ chosen by the wire
                error.args = remote_args or ((text,) if text else ())
            except Exception:
                error = RemoteError(f"{type_name}: {text}")
        error.remote_type = type_name
        error.remote_message = text
        error.remote_args = remote_args
        if isinstance(remote_traceback, str) and remote_traceback:
            error.remote_traceback = remote_traceback
            error.add_note(f"Raised by the RPC callee of {name!r}:\n{remote_traceback.rstrip()}")
        return error

    def _on_channel_closed(self, channel: PatternChannel, reason: BaseException | None) -> None:
        self._fail_pending(f"the channel closed ({reason})")
        if channel.is_closed:  # a robust channel that will reopen is not closed
            for callee in self._callees.values():
                callee.runner.abandon()

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future, name in pending.values():
            if not future.done():
                future.set_exception(
                    CallInterruptedError(
                        f"no reply to {name!r}: {why}; the callee may or may not have run it"
                    )
                )

    # -- callee ----------------------------------------------------------------------

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
        queue_type: str = "classic",
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
        limit = prefetch_count or self.prefetch_count
        broker_counts = quorum  # only a quorum queue's x-delivery-count counts

        async def handle(delivery: Delivery) -> None:
            await self._handle_call(call, delivery, broker_counts)

        runner = Runner(handle, limit, f"callee {method_name!r}")
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
            tag = await self.channel.consume(queue, runner.push, prefetch_count=limit)
        self._callees[method_name] = _Callee(call, tag, runner)

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
        with contextlib.suppress(AMQPError):
            await self.channel.cancel(callee.consumer_tag)
        await callee.runner.close(timeout)

    async def _handle_call(
        self, call: KeywordCall, delivery: Delivery, broker_counts: bool
    ) -> None:
        if not _observe.observers:
            await self._serve_call(call, delivery, broker_counts)
            return
        tokens = _observe.start("call", call.name, delivery)
        outcome: tuple[str, BaseException | None] = (_observe.REQUEUED, None)
        try:
            outcome = await self._serve_call(call, delivery, broker_counts)
        finally:
            _observe.finish("call", call.name, tokens, *outcome)

    def _log(
        self,
        level: int,
        name: str,
        delivery: Delivery,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log about one call: the line names it, and ``extra`` carries the fields."""
        props = delivery.properties
        log.log(
            level,
            f"call %r (correlation %s, message %s): {message}",
            name,
            props.correlation_id,
            props.message_id,
            *args,
            exc_info=exc_info,
            extra={
                "task": name,
                "message_id": props.message_id,
                "attempt": 1,
                "correlation_id": props.correlation_id,
            },
        )

    async def _serve_call(
        self, call: KeywordCall, delivery: Delivery, broker_counts: bool
    ) -> tuple[str, BaseException | None]:
        """Run one call, reply, settle; returns the outcome for observers."""
        props = delivery.properties
        name = call.name
        deadline = props.headers.get(DEADLINE_HEADER) if props.headers else None
        if (
            isinstance(deadline, int | float)
            and not isinstance(deadline, bool)  # True is an int to Python, not a deadline
            and time.time() > deadline
        ):
            self._log(
                logging.INFO,
                name,
                delivery,
                "skipped: its caller's deadline passed %.3f s ago",
                time.time() - deadline,
            )
            settle(delivery, "ack", what=f"call {name!r}")
            return _observe.SKIPPED, None
        if not props.reply_to:
            self._log(
                logging.ERROR,
                name,
                delivery,
                "no reply_to, so no result can be sent; rejected without requeue",
            )
            settle(delivery, "reject", what=f"call {name!r}")
            return _observe.REJECTED, None
        headers = props.headers or {}
        redeliveries = int_header(headers, REDELIVERIES_HEADER, 0)
        if broker_counts:  # a quorum queue counts deliveries itself
            redeliveries = int_header(headers, DELIVERY_COUNT_HEADER, 0)
        elif delivery.redelivered:  # a classic queue does not: count it here
            redeliveries += 1
            if redeliveries <= self.max_redeliveries:
                await move(
                    self.channel,
                    delivery,
                    name,
                    {REDELIVERIES_HEADER: redeliveries},
                    what=f"call {name!r} ({props.correlation_id})",
                )
                return _observe.REQUEUED, None
        kind = "result"
        error: BaseException | None = None
        try:
            if redeliveries > self.max_redeliveries:
                raise CallRedeliveredError(
                    f"call {name!r} was delivered {redeliveries + 1} times without an answer "
                    "(it may crash its callee); not running it again"
                )
            if not props.correlation_id:
                # Its caller could not tell this reply from others: running the call
                # would do the work for nobody.
                raise ValueError(
                    f"call {name!r} has no correlation_id, so its caller could not match "
                    "the reply; not run"
                )
            kwargs = self._decode(delivery)
            problem = call.check(kwargs)
            if problem is not None:
                raise TypeError(f"{name}(): {problem}")
            body = self._encode(await call(kwargs))
        except asyncio.CancelledError:
            settle(delivery, "nack", requeue=True, what=f"call {name!r}")
            raise
        except Exception as exc:
            if self.host_exceptions:
                self._log(logging.ERROR, name, delivery, "raised", exc_info=exc)
            else:
                self._log(logging.INFO, name, delivery, "raised %s: %s", type(exc).__name__, exc)
            kind = "error"
            error = exc
            body = self._encode_error(exc)
        try:
            # Not waiting for the reply's confirm: the ack below follows the reply on
            # this channel, so the broker has routed the reply before it forgets the call.
            await self.channel.publish(
                body,
                routing_key=props.reply_to,
                correlation_id=props.correlation_id,
                content_type=self.CONTENT_TYPE,
                delivery_mode=self.DELIVERY_MODE,
                type=kind,
                confirm=False,
            )
        except AMQPError as exc:
            self._log(logging.WARNING, name, delivery, "the reply could not be sent: %s", exc)
            settle(delivery, "nack", requeue=True, what=f"call {name!r}")
            return _observe.REQUEUED, exc
        except ConfigurationError as exc:
            # Nothing was sent: the call's reply_to or correlation_id does not go out
            # again (bytes that were not UTF-8 can exceed 255 once decoded). There is
            # nowhere to reply, and a requeue would only fail the same way.
            self._log(
                logging.ERROR,
                name,
                delivery,
                "the reply cannot be sent (%s); rejected without requeue",
                exc,
            )
            settle(delivery, "reject", what=f"call {name!r}")
            return _observe.REJECTED, exc
        settle(delivery, "ack", what=f"call {name!r}")
        return (_observe.FAILED, error) if error is not None else (_observe.SUCCEEDED, None)

    def serialize_exception(self, exc: BaseException) -> dict[str, Any]:
        """The error object sent to the caller (aio-pika's fields, plus ours)."""
        return {
            "error": {
                "type": type(exc).__name__,
                "message": repr(exc),
                "args": list(exc.args),
                "str": str(exc),
                "module": type(exc).__module__,
                "traceback": "".join(traceback.format_exception(exc)),
            }
        }

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
