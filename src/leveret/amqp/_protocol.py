"""The byte layer: frames out of one receive buffer, writes batched per loop turn.

:class:`FrameProtocol` parses every complete frame in ``data_received`` and
hands it straight to the handler registered for its channel (channel 0 is the
connection). Nothing here creates a task or a future per frame. Writes are
collected and flushed once per event-loop iteration, so a burst of publishes
or acks costs one ``send`` call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from ..exceptions import ProtocolError
from ._codec import FRAME_BODY, FRAME_HEADER, FRAME_HEADER_STRUCT, FRAME_HEARTBEAT, FRAME_METHOD

log = logging.getLogger("leveret.amqp")

_unpack_frame_header = FRAME_HEADER_STRUCT.unpack_from


class FrameHandler(Protocol):
    """Receives the frames of one channel."""

    def on_method(self, buf: bytes, start: int, end: int) -> None: ...

    def on_header(self, buf: bytes, start: int, end: int) -> None: ...

    def on_body(self, body: bytes) -> None: ...


class ConnectionEvents(Protocol):
    """What the protocol reports to its connection."""

    def frame_error(self, protocol: FrameProtocol, exc: ProtocolError) -> None: ...

    def transport_lost(self, protocol: FrameProtocol, exc: Exception | None) -> None: ...

    def writing_resumed(self) -> None: ...


class FrameProtocol(asyncio.Protocol):
    """One AMQP connection's socket: frame parsing, batched writes, back-pressure."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handlers: dict[int, FrameHandler],
        events: ConnectionEvents,
    ) -> None:
        self.loop = loop
        self.handlers = handlers
        self.events = events
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.frame_max = 0  # 0: not negotiated yet, no limit enforced
        #: Set by every read/flush; cleared by the heartbeat monitor.
        self.received = False
        self.sent = False
        self.write_paused = False
        self._pending = b""
        self._out: list[bytes] = []
        self._before_flush: list[Callable[[], None]] = []
        self._flush_scheduled = False
        self._closed = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._out.clear()
        self._before_flush.clear()
        self.events.transport_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.events.writing_resumed()

    def data_received(self, data: bytes) -> None:
        self.received = True
        buf = self._pending + data if self._pending else data
        size = len(buf)
        pos = 0
        handlers = self.handlers
        frame_max = self.frame_max
        try:
            while size - pos >= 8:
                kind, channel, length = _unpack_frame_header(buf, pos)
                end = pos + 7 + length
                if end >= size:
                    if frame_max and length > frame_max:
                        raise ProtocolError(f"frame of {length} bytes exceeds frame_max")
                    break
                if buf[end] != 0xCE:
                    raise ProtocolError(f"frame on channel {channel} has no frame-end octet")
                handler = handlers.get(channel)
                if handler is not None:
                    if kind == FRAME_METHOD:
                        handler.on_method(buf, pos + 7, end)
                    elif kind == FRAME_BODY:
                        handler.on_body(buf[pos + 7 : end])
                    elif kind == FRAME_HEADER:
                        handler.on_header(buf, pos + 7, end)
                    elif kind != FRAME_HEARTBEAT:
                        raise ProtocolError(f"unknown frame type {kind}")
                pos = end + 1
        except ProtocolError as exc:
            self._pending = b""
            self.events.frame_error(self, exc)
            return
        except (IndexError, ValueError) as exc:
            self._pending = b""
            self.events.frame_error(self, ProtocolError(f"malformed frame: {exc!r}"))
            return
        self._pending = buf[pos:] if pos < size else b""

    # -- writing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes; they go out in one send at the end of this loop turn."""
        if self._closed:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def before_flush(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` just before the next flush, so what it writes (coalesced
        acks) goes out in the same send as everything else of this loop turn."""
        self._before_flush.append(callback)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._before_flush:
            callbacks, self._before_flush = self._before_flush, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("pre-flush callback %r failed", callback)
        self._flush_scheduled = False
        if not self._out or self.transport is None or self._closed:
            self._out.clear()
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self.sent = True
        self.transport.write(data)

    def close(self) -> None:
        """Flush what is queued, then close the socket gracefully."""
        if self.transport is not None and not self._closed:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket at once (no flush): used when the peer is gone."""
        if self.transport is not None:
            self.transport.abort()
