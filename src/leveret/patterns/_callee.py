"""Callees: serve one RPC method from its queue, reply, then ack.

A call is skipped (acked, not run) when its caller's deadline has passed,
rejected when it has nowhere to reply, and answered with an error when it was
redelivered too often (it may crash its callee), has no ``correlation_id``, does
not decode or does not fit the function. Otherwise the function runs and its
result, or the exception it raised, is the reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..amqp import Delivery
from ..exceptions import AMQPError, CallRedeliveredError, ConfigurationError
from ._call import KeywordCall
from ._handler import Handler, Result
from ._observe import FAILED, REJECTED, REQUEUED, SKIPPED, SUCCEEDED, Observers, Outcome
from ._seam import PatternChannel
from ._settle import settle

#: Header carrying a call's deadline (seconds since the epoch) to the callee.
DEADLINE_HEADER = "x-leveret-deadline"


class Callee(Handler):
    """The consumer of one RPC method's queue (made by :meth:`RPC.register`).

    ``decode`` turns a call into keyword arguments, ``encode`` a result into a
    body, ``encode_error`` an exception into one (the RPC's serialization);
    replies are sent with ``content_type`` and ``delivery_mode``.
    ``host_exceptions`` logs each exception the function raises with its traceback.
    """

    kind = "call"

    def __init__(
        self,
        channel: PatternChannel,
        queue: str,
        call: KeywordCall,
        *,
        decode: Callable[[Delivery], Any],
        encode: Callable[[Any], bytes],
        encode_error: Callable[[BaseException], bytes],
        content_type: str,
        delivery_mode: int,
        host_exceptions: Callable[[], bool],
        limit: int,
        broker_counts: bool,
        max_redeliveries: int,
        observers: Observers,
    ) -> None:
        super().__init__(
            channel,
            queue,
            call,
            limit=limit,
            broker_counts=broker_counts,
            max_redeliveries=max_redeliveries,
            observers=observers,
        )
        self._decode = decode
        self._encode = encode
        self._encode_error = encode_error
        self._content_type = content_type
        self._delivery_mode = delivery_mode
        self._host_exceptions = host_exceptions

    async def _running_elsewhere(self, delivery: Delivery) -> Outcome:
        # The run going on here replies to the caller; a second run would only be a
        # second reply.
        self._log(logging.WARNING, delivery, "came back while it still runs here; acked, not run")
        settle(delivery, "ack", what=self._what(delivery))
        return SKIPPED

    async def _process(self, delivery: Delivery) -> Result:
        """Run one call, reply, settle."""
        props = delivery.properties
        headers = props.headers or {}
        deadline = headers.get(DEADLINE_HEADER) if headers else None
        if (
            deadline is not None
            and isinstance(deadline, int | float)
            and not isinstance(deadline, bool)  # True is an int to Python, not a deadline
            and time.time() > deadline
        ):
            self._log(
                logging.INFO,
                delivery,
                "skipped: its caller's deadline passed %.3f s ago",
                time.time() - deadline,
            )
            settle(delivery, "ack", what=self._what(delivery))
            return SKIPPED, None
        if not props.reply_to:
            self._log(
                logging.ERROR,
                delivery,
                "no reply_to, so no result can be sent; rejected without requeue",
            )
            settle(delivery, "reject", what=self._what(delivery))
            return REJECTED, None
        redeliveries = (
            0 if self._uncounted(delivery, headers) else await self._redeliveries(delivery, headers)
        )
        if redeliveries is None:
            return REQUEUED, None
        kind = "result"
        error: BaseException | None = None
        name = self.name
        try:
            if redeliveries > self._max_redeliveries:
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
            problem = self.call.check(kwargs)
            if problem is not None:
                raise TypeError(f"{name}(): {problem}")
            body = self._encode(await self._run(delivery, kwargs))
        except Exception as exc:
            if self._host_exceptions():
                self._log(logging.ERROR, delivery, "raised", exc_info=exc)
            else:
                self._log(logging.INFO, delivery, "raised %s: %s", type(exc).__name__, exc)
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
                content_type=self._content_type,
                delivery_mode=self._delivery_mode,
                type=kind,
                confirm=False,
            )
        except AMQPError as exc:
            self._log(logging.WARNING, delivery, "the reply could not be sent: %s", exc)
            settle(delivery, "nack", requeue=True, what=self._what(delivery))
            return REQUEUED, exc
        except ConfigurationError as exc:
            # Nothing was sent: the call's reply_to or correlation_id does not go out
            # again (bytes that were not UTF-8 can exceed 255 once decoded). There is
            # nowhere to reply, and a requeue would only fail the same way.
            self._log(
                logging.ERROR,
                delivery,
                "the reply cannot be sent (%s); rejected without requeue",
                exc,
            )
            settle(delivery, "reject", what=self._what(delivery))
            return REJECTED, exc
        settle(delivery, "ack", what=lambda: self._what(delivery))
        if self.in_flight == 1:  # the only call here: its caller waits for nothing else
            self.channel.flush()
        return (FAILED, error) if error is not None else (SUCCEEDED, None)
