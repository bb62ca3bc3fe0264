"""Every error leveret raises, in one rooted tree.

::

    LeveretError
    ├── ConfigurationError            a bad URL or option; nothing was sent
    ├── AMQPError                     the wire or the broker said no
    │   ├── AMQPConnectionError       the connection is unusable
    │   │   ├── ConnectError          could not reach or log in to the broker
    │   │   │   └── AuthenticationError
    │   │   ├── ConnectionLostError   the socket died under us
    │   │   │   └── HeartbeatTimeoutError
    │   │   └── ConnectionClosedError the connection was closed by its owner
    │   ├── ChannelClosedError        the channel was closed (the cause is chained)
    │   ├── BrokerError               the broker closed a channel or the connection
    │   │   ├── NotFoundError (404), AccessRefusedError (403),
    │   │   │   ResourceLockedError (405), ...
    │   │   ├── PreconditionFailedError (406)
    │   │   │   └── ConsumerTimeoutError  a delivery stayed unacked past consumer_timeout
    │   │   └── ConnectionForcedError (320, also an AMQPConnectionError)
    │   ├── PublishError              a publish the broker did not take
    │   │   ├── PublishNackedError
    │   │   ├── MessageReturnedError  unroutable mandatory message (attached)
    │   │   ├── MessageTooLargeError  a body over the broker's max_message_size
    │   │   └── PublishNotConfirmedError
    │   ├── ConsumerCancelledError    the broker cancelled a consumer
    │   ├── DeliveryError             ack/nack/reject that cannot be sent
    │   └── ProtocolError             the peer broke AMQP 0-9-1 framing
    │       └── UnexpectedConfirmError  a confirm for a publish never sent or confirmed
    └── PatternError                  Master/Worker and RPC (see leveret.patterns)
        ├── SerializationError        a payload that does not encode or decode
        ├── UnroutableError           no queue takes that task or method name
        │                             (also a MessageReturnedError, so a PublishError)
        ├── NoCalleeError             an RPC call's method has no callee consuming now
        │                             (also a TimeoutError)
        ├── BatchPublishError         some tasks of a create_tasks() batch were not
        │                             taken (also a PublishError)
        ├── CallInterruptedError      an RPC call's reply path closed first
        ├── CallRedeliveredError      a call redelivered too often to run again
        ├── NoCurrentTaskError        current_task() outside a task function
        ├── MessageProcessingError    raised by a task function to settle its task
        │   ├── NackMessage
        │   └── RejectMessage
        └── RemoteError               an exception raised by an RPC callee

Broker errors come from a single table of reply codes (:data:`REPLY_CODES`);
each carries the broker's ``reply_code`` and ``reply_text``, whether it
closed a ``"channel"`` or the ``"connection"``, and the method that failed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .amqp import ReturnedMessage

#: What the broker closed: a ``"channel"`` or the whole ``"connection"``.
Scope = Literal["channel", "connection"]


class LeveretError(Exception):
    """Root of every exception leveret raises."""


class ConfigurationError(LeveretError, ValueError):
    """A URL, option or argument is invalid; nothing was sent."""


class AMQPError(LeveretError):
    """Something went wrong on the AMQP connection or was refused by the broker."""


class AMQPConnectionError(AMQPError):
    """The connection is not usable."""


class ConnectError(AMQPConnectionError):
    """The broker could not be reached, or the AMQP handshake failed."""


class AuthenticationError(ConnectError):
    """The broker refused the credentials or the SASL mechanism."""


class ConnectionLostError(AMQPConnectionError):
    """The socket closed or failed without an AMQP close from the broker."""


class HeartbeatTimeoutError(ConnectionLostError):
    """Nothing arrived from the broker for two heartbeat intervals."""


class ConnectionClosedError(AMQPConnectionError):
    """The connection was closed by its owner and cannot be used any more."""


class ChannelClosedError(AMQPError):
    """The channel is closed; the reason, if any, is chained as ``__cause__``."""


class ProtocolError(AMQPError):
    """The peer sent bytes that are not valid AMQP 0-9-1.

    The connection is closed over it (a robust one reconnects); what was in flight
    on it fails with this error as its cause.
    """


class UnexpectedConfirmError(ProtocolError):
    """The broker sent a ``basic.ack`` or ``basic.nack`` for a publish the channel
    never sent, or one it had confirmed already."""


class BrokerError(AMQPError):
    """The broker closed a channel or the connection with a reply code.

    Attributes:
        reply_code: the AMQP reply code (e.g. 404).
        reply_text: the broker's explanation, verbatim.
        scope: ``"channel"`` or ``"connection"``: what the broker closed.
        method: the AMQP method that caused it (``"queue.declare"``), or ``None``.
    """

    reply_code: int = 0

    def __init__(
        self,
        reply_code: int,
        reply_text: str,
        *,
        scope: Scope = "channel",
        method: str | None = None,
    ) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.scope = scope
        self.method = method
        what = f"{method}: " if method else ""
        super().__init__(f"{what}{reply_code} {reply_text} (the broker closed the {scope})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_broker_error,
            (type(self), self.reply_code, self.reply_text, self.scope, self.method),
        )


def _rebuild_broker_error(
    cls: type[BrokerError], code: int, text: str, scope: Scope, method: str | None
) -> BrokerError:
    return cls(code, text, scope=scope, method=method)


class ContentTooLargeError(BrokerError):
    reply_code = 311


class NoRouteError(BrokerError):
    reply_code = 312


class NoConsumersError(BrokerError):
    reply_code = 313


class ConnectionForcedError(BrokerError, AMQPConnectionError):
    """An operator or the broker's shutdown closed the connection (320)."""

    reply_code = 320


class InvalidPathError(BrokerError):
    reply_code = 402


class AccessRefusedError(BrokerError):
    reply_code = 403


class NotFoundError(BrokerError):
    reply_code = 404


class ResourceLockedError(BrokerError):
    reply_code = 405


class PreconditionFailedError(BrokerError):
    reply_code = 406


class FrameError(BrokerError):
    reply_code = 501


class CommandSyntaxError(BrokerError):
    reply_code = 502


class CommandInvalidError(BrokerError):
    reply_code = 503


class ChannelError(BrokerError):
    reply_code = 504


class UnexpectedFrameError(BrokerError):
    reply_code = 505


class ResourceError(BrokerError):
    reply_code = 506


class NotAllowedError(BrokerError):
    reply_code = 530


class NotImplementedByBrokerError(BrokerError):
    reply_code = 540


class InternalBrokerError(BrokerError):
    reply_code = 541


REPLY_CODES: dict[int, type[BrokerError]] = {
    cls.reply_code: cls
    for cls in (
        ContentTooLargeError,
        NoRouteError,
        NoConsumersError,
        ConnectionForcedError,
        InvalidPathError,
        AccessRefusedError,
        NotFoundError,
        ResourceLockedError,
        PreconditionFailedError,
        FrameError,
        CommandSyntaxError,
        CommandInvalidError,
        ChannelError,
        UnexpectedFrameError,
        ResourceError,
        NotAllowedError,
        NotImplementedByBrokerError,
        InternalBrokerError,
    )
}


class ConsumerTimeoutError(PreconditionFailedError):
    """RabbitMQ closed the channel because a delivery stayed unacked longer than its
    ``consumer_timeout`` (``406 PRECONDITION_FAILED - delivery acknowledgement on
    channel 1 timed out``); it requeued every unacked delivery of the channel.

    Attributes:
        timeout: the broker's consumer_timeout in seconds, when its text says.
    """

    @property
    def timeout(self) -> float | None:
        found = _CONSUMER_TIMEOUT.search(self.reply_text)
        return int(found.group(1)) / 1000 if found else None


_CONSUMER_TIMEOUT = re.compile(r"Timeout value used: (\d+) ms")


def broker_error(
    reply_code: int, reply_text: str, *, scope: Scope, method: str | None = None
) -> BrokerError:
    """Build the most specific :class:`BrokerError` for a reply code (and, for a 406
    about an unacked delivery, :class:`ConsumerTimeoutError`)."""
    cls = REPLY_CODES.get(reply_code, BrokerError)
    if (
        cls is PreconditionFailedError
        and "acknowledgement" in reply_text
        and "timed out" in reply_text
    ):
        cls = ConsumerTimeoutError
    return cls(reply_code, reply_text, scope=scope, method=method)


class PublishError(AMQPError):
    """The broker did not take a published message."""


class PublishNackedError(PublishError):
    """The broker answered the publish with ``basic.nack`` (e.g. queue overflow)."""


class MessageReturnedError(PublishError):
    """A mandatory message could not be routed to any queue.

    Attributes:
        message: the :class:`~leveret.amqp.ReturnedMessage` the broker sent back.
    """

    def __init__(self, message: ReturnedMessage) -> None:
        self.message = message
        super().__init__(
            f"message to exchange {message.exchange!r} with routing key "
            f"{message.routing_key!r} was returned: {message.reply_code} {message.reply_text}"
        )


class MessageTooLargeError(PublishError):
    """A body larger than the broker's ``max_message_size``: refused before it was
    sent (the connection's ``max_message_size`` option), or by the broker, which
    closed the channel over it. Either way the refusal is final: the same body is
    refused every time.

    Attributes:
        size: the body's size in bytes.
        limit: the limit in bytes it is over.
    """

    def __init__(self, size: int, limit: int, *, by_broker: str | None = None) -> None:
        self.size = size
        self.limit = limit
        if by_broker is None:
            what = (
                f"message body of {size} bytes is over max_message_size ({limit} bytes); "
                "nothing was sent"
            )
        else:
            what = (
                f"the broker refused a message body of {size} bytes, over its "
                f"max_message_size of {limit} bytes ({by_broker}); it closed the channel "
                "and nothing was routed"
            )
        super().__init__(
            f"{what}. The refusal is final: send a smaller body (or a reference to it), "
            "or raise max_message_size in rabbitmq.conf and the connection's "
            "max_message_size option"
        )


class PublishNotConfirmedError(PublishError):
    """The channel or connection closed before the broker confirmed the publish.

    The broker may or may not have routed the message.
    """


class ConsumerCancelledError(AMQPError):
    """The broker cancelled the consumer (for example, its queue was deleted)."""


class DeliveryError(AMQPError):
    """An ack, nack or reject that cannot be sent (already settled, or stale)."""


class PatternError(LeveretError):
    """Base of the errors raised by :mod:`leveret.patterns`."""


class SerializationError(PatternError):
    """A payload could not be encoded, or a body could not be decoded."""


class UnroutableError(MessageReturnedError, PatternError):
    """A task or call that no queue takes: nothing consumes that name.

    A :class:`MessageReturnedError` too, so ``except PublishError`` around
    ``create_task`` catches it.

    Attributes:
        message: the :class:`~leveret.amqp.ReturnedMessage` the broker sent back.
        returned: the same (its older name).
    """

    def __init__(self, text: str, returned: ReturnedMessage) -> None:
        LeveretError.__init__(self, text)
        self.message = returned

    @property
    def returned(self) -> ReturnedMessage:
        return self.message


class NoCalleeError(PatternError, TimeoutError):
    """An RPC call was routed to its method's queue, but nothing consumes that queue
    (its callees stopped, or never started): the call fails within about a second
    instead of waiting for its timeout. The call stays in the queue until it
    expires, so a callee that starts in time may still run it.

    Also a :class:`TimeoutError`: the reply will not come in time, and code
    written for aio-pika (which waits out the timeout) catches it as before.
    """


class BatchPublishError(PublishError, PatternError):
    """Some tasks of one :meth:`~leveret.patterns.Master.create_tasks` call were not taken
    by the broker; every other task of it was (confirmed).

    Attributes:
        failures: for each task not taken, by its index in the batch, why: an
            :class:`UnroutableError`, :class:`PublishNackedError` or
            :class:`PublishNotConfirmedError` (it may or may not have been routed).
        count: how many tasks the batch had.
    """

    def __init__(self, text: str, failures: dict[int, PublishError], count: int) -> None:
        super().__init__(text)
        self.failures = failures
        self.count = count


class CallInterruptedError(PatternError):
    """An RPC call lost its reply path (channel closed, RPC closed) before the
    reply arrived; the callee may or may not have run it."""


class CallRedeliveredError(PatternError, RuntimeError):
    """What the caller of a call gets when the call was redelivered too often (it
    may crash its callee) to be run again."""


class NoCurrentTaskError(PatternError, LookupError):
    """:func:`~leveret.patterns.current_task` was called outside a task function (a
    ``LookupError`` too, as a missing context variable is)."""


class MessageProcessingError(PatternError):
    """Raised by a task function to settle its task in a particular way."""

    def __init__(self, requeue: bool = False) -> None:
        self.requeue = requeue
        super().__init__(f"{type(self).__name__}(requeue={requeue})")


class NackMessage(MessageProcessingError):
    """Raise in a task function to ``basic.nack`` the task (``requeue`` as asked)."""


class RejectMessage(MessageProcessingError):
    """Raise in a task function to ``basic.reject`` the task (``requeue`` as asked)."""


class RemoteError(PatternError):
    """An exception raised by an RPC callee, rebuilt at the caller.

    Attributes:
        remote_type: the name of the exception class on the callee.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the formatted traceback from the callee, or ``""``.
        remote_args: the exception's ``args`` as the callee encoded them.
    """

    remote_type: str = ""
    remote_message: str = ""
    remote_traceback: str = ""
    remote_args: tuple[Any, ...] = ()
