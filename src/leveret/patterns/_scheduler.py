"""The scheduler: each tick of an app's schedules fires once, however many processes run.

Leadership is a message. The durable single-active-consumer queue
``leveret.scheduler.<app>`` holds one *token*: a JSON object of the last tick
fired per schedule id. Every scheduler consumes the queue with prefetch 1; the
broker delivers the token to one consumer at a time, and that one leads for as
long as it holds the token unacked. At each due tick the leader, on a
transactional channel, publishes the tick's tasks (message id
``<schedule id>@<tick>``), publishes the updated token and acks the one it
holds, and commits: the tick and the token move together or not at all. The
broker then delivers the new token back to the same consumer (still the active
one). A leader that dies holding the token has committed nothing of its open
transaction; the broker requeues the token to the next consumer, which fires
what is due.

A tick that fell due while no leader was alive fires once when one is back,
late: however many ticks a gap holds, only the latest of them fires. A
schedule the token does not know yet starts from now (its first tick is the
next one). The token is written at least every ``refresh`` seconds, so a held
delivery never comes near the broker's ``consumer_timeout``. Schedules the
token knows and this process does not are kept in it (another process may run
them).

When the queue is empty and has no consumer, a starting scheduler puts a new
token in it. Two starting at once may both do so: a leader that receives a
token other than the one it wrote last drops it, keeping the later tick of
each schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from ..amqp import AsyncClosing, Delivery, ReturnedMessage, TaskOwner
from ..exceptions import AMQPError, ConfigurationError, NotFoundError
from ..serializers import Serializer
from ._master import Master
from ._observe import Observer, Observers
from ._schedule import UTC, ScheduledTask
from ._seam import GetChannel, TxChannel

log = logging.getLogger("leveret.patterns")

#: How often the leader rewrites the token when no tick is due (seconds).
DEFAULT_REFRESH: Final = 30.0
_TOKEN_TYPE: Final = "leveret.scheduler.token"


def scheduler_queue(app: str) -> str:
    """The queue whose token elects the scheduler of the app named ``app``."""
    return f"leveret.scheduler.{app}"


class Scheduler(AsyncClosing):
    """Fires an app's schedules, each tick once across every process running one.

    Made by :meth:`create` (which starts it); :meth:`close` stops it and hands the
    token to another process. ``leading`` tells whether this one leads now.
    """

    def __init__(
        self,
        channel: TxChannel,
        app: str,
        entries: Sequence[ScheduledTask],
        master: Master,
        *,
        refresh: float,
    ) -> None:
        self.channel = channel
        self.queue = scheduler_queue(app)
        self.entries = list(entries)
        self.refresh = refresh
        self._master = master
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._tasks = TaskOwner(log)
        #: Last tick fired (or, for a schedule new to the token, when it was added).
        self._fired: dict[str, datetime.datetime] = {}
        # The token this consumer wrote last, while its channel lives: any other is an extra.
        self._written: str | None = None
        self._held: Delivery | None = None
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()

    @classmethod
    async def create(
        cls,
        channel: TxChannel,
        app: str,
        entries: Iterable[ScheduledTask],
        *,
        serializer: str | Serializer | None = None,
        observers: Observers | Iterable[Observer] | None = None,
        refresh: float = DEFAULT_REFRESH,
    ) -> Scheduler:
        """Start a scheduler for ``entries`` on ``channel`` (opened with
        ``publisher_confirms=False``; it becomes the scheduler's, which closes it).

        Raises:
            ConfigurationError: ``refresh`` is not in (0, 60], or two entries share
                an id.
            SerializationError: an entry's kwargs do not encode.
            AMQPError: the broker refused the queue or the transaction.
        """
        if not 0 < refresh <= 60:
            raise ConfigurationError(f"refresh={refresh!r}: it is in (0, 60] seconds")
        entries = list(entries)
        ids = [entry.id for entry in entries]
        for entry_id in ids:
            if ids.count(entry_id) > 1:
                raise ConfigurationError(
                    f"schedule {entry_id!r} is declared twice: give one a name= of its own"
                )
        master = Master(channel, serializer=serializer, observers=observers)
        for entry in entries:  # a tick that cannot be encoded would stall the leader
            master._encode(dict(entry.schedule.kwargs))
        self = cls(channel, app, entries, master, refresh=refresh)
        channel.return_callbacks.append(self._on_return)
        channel.close_callbacks.append(self._on_close)
        await channel.tx_select()
        ok = await channel.queue_declare(
            self.queue, durable=True, arguments={"x-single-active-consumer": True}
        )
        if ok.message_count == 0 and ok.consumer_count == 0:
            await self._publish_token()
            await channel.tx_commit()
        await channel.consume(self.queue, self._inbox.put_nowait, prefetch_count=1)
        self._tasks.spawn(self._run(), f"leveret scheduler {app}")
        return self

    @property
    def leading(self) -> bool:
        """True while this scheduler holds the token (or waits for the one it just wrote)."""
        return self._held is not None or self._written is not None

    async def close(self, timeout: float | None = None) -> None:
        """Stop firing and close the channel: the broker hands the token to the next
        scheduler (an open transaction is discarded). ``timeout`` is accepted for
        :func:`serve`'s sake: nothing here runs long."""
        del timeout
        await self._tasks.cancel_all()
        self._held = None
        await self.channel.close()

    # -- the leader's loop ----------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._lead()
        except Exception:
            # Never sit on the token: closing the channel hands it to another process.
            log.exception("scheduler %s failed; handing the token on", self.queue)
            await self.channel.close()

    async def _lead(self) -> None:
        while True:
            delivery = await self._next_delivery()
            if delivery is not None:
                self._held = await self._take(delivery)
            if self._held is None:
                continue
            now = _now()
            due = [
                (entry, tick)
                for entry in self.entries
                if (tick := entry.schedule.due(self._fired[entry.id], now)) is not None
            ]
            if due or self._loop.time() - self._last_write >= self.refresh:
                await self._hand_on(self._held, due)

    async def _next_delivery(self) -> Delivery | None:
        """The next token delivered; ``None`` when it is time to look at the clock."""
        if self._held is None:
            return await self._inbox.get()
        try:
            async with asyncio.timeout(self._until_due()):
                return await self._inbox.get()
        except TimeoutError:
            return None

    def _until_due(self) -> float:
        now = _now()
        waits = [self.refresh - (self._loop.time() - self._last_write)]
        for entry in self.entries:
            tick = next(entry.schedule.ticks_after(self._fired[entry.id]))
            waits.append((tick - now).total_seconds())
        return max(0.0, min(waits)) + 0.001

    async def _take(self, delivery: Delivery) -> Delivery | None:
        """A token delivered: the one to hold (returned), or an extra, dropped (None)."""
        fired = read_token(delivery.body)
        if fired is None:
            # Taken as a token that knows nothing: dropping the only token would leave
            # the app without a scheduler; the next write makes it a proper one.
            log.error(
                "scheduler %s: a message that is not a token (%r); reading it as an empty one",
                self.queue,
                delivery.body[:80],
            )
            fired = {}
        for schedule_id, tick in fired.items():
            if schedule_id not in self._fired or tick > self._fired[schedule_id]:
                self._fired[schedule_id] = tick
        now = _now()
        for entry in self.entries:
            self._fired.setdefault(entry.id, now)
        token_id = delivery.properties.message_id
        if self._written is None or token_id == self._written:
            if self._written is None:
                log.info("scheduler %s: this process leads now", self.queue)
            return delivery
        # Inline, never beside a _hand_on: a commit takes all the channel's open work.
        try:
            delivery.ack()
            await self.channel.tx_commit()
        except AMQPError as exc:
            log.warning("scheduler %s: could not drop an extra token: %s", self.queue, exc)
        return None

    async def _hand_on(
        self, held: Delivery, due: list[tuple[ScheduledTask, datetime.datetime]]
    ) -> None:
        """Fire ``due`` and move the token on, in one transaction."""
        self._held = None
        fired = dict(self._fired)
        fired.update({entry.id: tick for entry, tick in due})
        try:
            held.ack()  # first: a token of a closed channel's life refuses, before any publish
            for entry, tick in due:
                await self._master.create_task(
                    entry.task, entry.schedule.kwargs, message_id=entry.message_id(tick)
                )
            token_id = await self._publish_token(fired)
            await self.channel.tx_commit()
        except AMQPError as exc:
            # Nothing of the transaction counts; whoever holds the token next fires it.
            # Rolled back, or a later commit on a reopened channel would carry it along.
            with contextlib.suppress(AMQPError):
                await self.channel.tx_rollback()
            log.warning("scheduler %s: lost the token (%s); another process leads", self.queue, exc)
            self._written = None
            return
        self._fired = fired
        self._written = token_id
        self._last_write = self._loop.time()
        now = _now()
        for entry, tick in due:
            late = (now - tick).total_seconds()
            log.debug(
                "scheduler %s: fired %s (%.3f s late)", self.queue, entry.message_id(tick), late
            )

    async def _publish_token(self, fired: Mapping[str, datetime.datetime] | None = None) -> str:
        token_id = secrets.token_hex(8)
        body = {
            "fired": {key: tick.isoformat() for key, tick in (fired or {}).items()},
            "written": _now().isoformat(),
        }
        await self.channel.publish(
            json.dumps(body, sort_keys=True).encode(),
            routing_key=self.queue,
            delivery_mode=2,
            content_type="application/json",
            message_id=token_id,
            type=_TOKEN_TYPE,
        )
        return token_id

    # -- the channel's callbacks ------------------------------------------------------

    def _on_close(self, channel: Any, reason: BaseException | None) -> None:
        """The channel closed: the broker has taken the token back (a robust channel
        reopens and consumes again, as one more candidate)."""
        self._held = None
        self._written = None

    def _on_return(self, message: ReturnedMessage) -> None:
        log.warning(
            "scheduler %s: tick %s of task %r dropped: no queue takes it (no worker ever "
            "declared it)",
            self.queue,
            message.properties.message_id,
            message.routing_key,
        )


def read_token(body: bytes) -> dict[str, datetime.datetime] | None:
    """The last tick fired per schedule id in a token's body (for a schedule the
    token learnt of and has not fired yet: when it learnt of it), or ``None`` if
    ``body`` is not a token."""
    try:
        fired = json.loads(body)["fired"]
        ticks = {str(key): datetime.datetime.fromisoformat(tick) for key, tick in fired.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if any(tick.tzinfo is None for tick in ticks.values()):
        return None  # a time without its zone would not compare with the others
    return ticks


async def read_last_fired(channel: GetChannel, app: str) -> dict[str, datetime.datetime] | None:
    """The last tick fired per schedule id of the app named ``app``, if it can be read
    without disturbing a leader: when no scheduler consumes the queue, its token is
    fetched and put straight back. ``None`` while schedulers run (the leader holds the
    token, unacked); empty if the app never ran one.

    (A scheduler that starts in the instant the token is out makes a second token; the
    leader drops it, as it drops any extra.) A passive declare of a missing queue
    closes ``channel`` (as it does for ``leveret status``).
    """
    try:
        ok = await channel.queue_declare(scheduler_queue(app), passive=True)
    except NotFoundError:
        return {}
    if ok.consumer_count or not ok.message_count:
        return None
    delivery = await channel.get(scheduler_queue(app))
    if delivery is None:
        return None
    delivery.nack(requeue=True)
    return read_token(delivery.body)


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)
