"""What a robust connection declared, to declare it again after a reconnect."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import BrokerError

if TYPE_CHECKING:
    from ._channel import Channel

log = logging.getLogger("leveret.amqp")

Key = tuple[str, ...]


def _binding_key(kind: str, args: dict[str, Any]) -> Key:
    if kind == "queue-bind":
        return (kind, args["queue"], args["exchange"], args["routing_key"], repr(args["arguments"]))
    source = args["source"]
    return (kind, args["destination"], source, args["routing_key"], repr(args["arguments"]))


class Topology:
    """The declarations a robust connection replays, in the order they were made.

    Only what can be replayed is kept: exchanges, queues and bindings that were
    declared and not deleted since (deleting a queue or an exchange forgets the
    bindings that use it).
    """

    def __init__(self) -> None:
        self._entries: dict[Key, tuple[str, dict[str, Any]]] = {}

    def record(self, method: str, args: dict[str, Any], reply: dict[str, Any]) -> None:
        """Note a declaring method the broker has just confirmed (``reply`` holds the
        arguments of its answer); what cannot be replayed (a purge) is ignored."""
        if method == "exchange.declare":
            if not args["passive"]:
                self._remember(("exchange", args["exchange"]), method, args)
        elif method == "queue.declare":
            if not args["passive"]:
                self._remember(("queue", reply["queue"]), method, args)
        elif method == "queue.bind":
            self._remember(_binding_key("queue-bind", args), method, args)
        elif method == "exchange.bind":
            self._remember(_binding_key("exchange-bind", args), method, args)
        elif method == "queue.unbind":
            self._forget(_binding_key("queue-bind", args))
        elif method == "exchange.unbind":
            self._forget(_binding_key("exchange-bind", args))
        elif method == "queue.delete":
            self._forget(("queue", args["queue"]))
        elif method == "exchange.delete":
            self._forget(("exchange", args["exchange"]))

    def _remember(self, key: Key, method: str, args: dict[str, Any]) -> None:
        if key[0] == "queue" and not args["queue"]:
            args = {**args, "queue": key[1], "server_named": True}
        self._entries[key] = (method, args)

    def _forget(self, key: Key) -> None:
        """Drop a declaration, and with a queue or exchange, the bindings that use it."""
        self._entries.pop(key, None)
        kind, name = key[0], key[1]
        if kind not in ("queue", "exchange"):
            return
        for other in list(self._entries):
            if (
                other[0] == "queue-bind"
                and (
                    (kind == "queue" and other[1] == name)
                    or (kind == "exchange" and other[2] == name)
                )
            ) or (other[0] == "exchange-bind" and kind == "exchange" and name in other[1:3]):
                del self._entries[other]

    async def restore(self, open_channel: Callable[[], Awaitable[Channel]]) -> dict[str, str]:
        """Replay every declaration; returns the renames of server-named queues.

        The declarations go through the public methods of a plain channel from
        ``open_channel`` (so they are not recorded again). A declaration the
        broker refuses is logged and skipped (the broker closed the channel, so a
        new one is opened for the rest).
        """
        renames: dict[str, str] = {}
        restored: dict[Key, tuple[str, dict[str, Any]]] = {}
        channel = await open_channel()
        try:
            for key, (method, args) in self._entries.items():
                server_named = args.get("server_named", False)
                if method == "queue.bind" and args["queue"] in renames:
                    args = {**args, "queue": renames[args["queue"]]}
                    key = ("queue-bind", args["queue"], *key[2:])
                call_args = {k: v for k, v in args.items() if k != "server_named"}
                if server_named:
                    call_args["queue"] = ""
                try:
                    declared = await _replay(channel, method, call_args)
                except BrokerError as exc:
                    log.error(
                        "could not restore %s %s after reconnecting: %s", method, key[1:], exc
                    )
                    channel = await open_channel()
                    restored[key] = (method, args)
                    continue
                if server_named and declared is not None:
                    renames[key[1]] = declared
                    key = ("queue", declared)
                    args = {**args, "queue": declared}
                restored[key] = (method, args)
        finally:
            await channel.close()
        self._entries = restored
        return renames


async def _replay(channel: Channel, method: str, args: dict[str, Any]) -> str | None:
    """Send one recorded declaration; returns the queue's name for a queue.declare."""
    if method == "queue.declare":
        return (await channel.queue_declare(**args)).queue
    if method == "exchange.declare":
        await channel.exchange_declare(**args)
    elif method == "queue.bind":
        await channel.queue_bind(**args)
    else:
        await channel.exchange_bind(**args)
    return None
