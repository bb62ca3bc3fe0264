"""The lives of connections and channels, as states with their transitions."""

from __future__ import annotations

import enum


class ConnectionState(enum.Enum):
    """Where a connection is in its life (:attr:`Connection.state`).

    Transitions::

        CONNECTING -> OPEN      the handshake is done
        CONNECTING -> LOST      an attempt failed (a first connect() then raises)
        OPEN       -> LOST      the socket died, the broker closed the connection,
                                the peer broke the protocol, or the heartbeat went silent
        LOST       -> CONNECTING  a robust connection tries again (a plain one
                                stays LOST: closed for good, ``is_closed``)
        any        -> CLOSING   its owner called close()
        CLOSING    -> CLOSED    the socket is closed and the close callbacks ran

    Only OPEN carries channels (``is_open``). A robust connection is OPEN again
    once reconnected; its channels are restored before ``channel()`` returns.
    """

    CONNECTING = "connecting"
    OPEN = "open"
    LOST = "lost"
    CLOSING = "closing"
    CLOSED = "closed"


class ChannelState(enum.Enum):
    """Where a channel is in one incarnation: OPENING -> OPEN -> CLOSING -> CLOSED
    (a robust channel goes from CLOSED to OPENING again when it reopens)."""

    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
