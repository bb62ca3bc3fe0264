"""The byte layer: frames out of one receive buffer, writes batched per loop turn, heartbeats.

:class:`FrameProtocol` parses every complete frame in ``data_received`` and
hands it straight to the handler registered for its channel (channel 0 is the
connection). Nothing here creates a task or a future per frame. Every frame
leaves through :meth:`FrameProtocol.write`: writes are collected and flushed
once per event-loop iteration, so a burst of publishes or acks costs one
``send`` call. The frames of a body larger than one frame are made one at a time
as the socket drains (the body is never copied whole into a send buffer), and
what is written after them waits its turn.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol, cast

from ..exceptions import ProtocolError
from ._codec import (
    FRAME_BODY,
    FRAME_END,
    FRAME_END_OCTET,
    FRAME_HEADER,
    FRAME_HEADER_STRUCT,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
)

log = logging.getLogger("leveret.amqp")

_unpack_frame_header = FRAME_HEADER_STRUCT.unpack_from
HEARTBEAT_FRAME = FRAME_HEADER_STRUCT.pack(FRAME_HEARTBEAT, 0, 0) + FRAME_END
#: Ticks are half an interval apart: four silent ticks are two intervals of silence.
_MISSED_HEARTBEAT_TICKS = 4


def _stray_frame(kind: int, channel: int) -> str:
    if kind == FRAME_HEARTBEAT:
        return f"heartbeat frame on channel {channel} (heartbeats belong to channel 0)"
    return f"frame of type {kind} on channel {channel}, which is not open"


class FrameHandler(Protocol):
    """Receives the frames of one channel."""

    def on_method(self, buf: bytes, start: int, end: int) -> None: ...

    def on_header(self, buf: bytes, start: int, end: int) -> None: ...

    def on_body(self, body: bytes) -> None: ...


class TransportEvents(Protocol):
    """What the protocol reports to its connection."""

    def frame_error(self, protocol: FrameProtocol, exc: ProtocolError) -> None:
        """The peer broke the framing; the frames after the bad one were dropped."""

    def transport_lost(self, protocol: FrameProtocol, exc: Exception | None) -> None:
        """The socket is closed (``exc`` says why, ``None`` for a clean close)."""

    def write_flow_changed(self, protocol: FrameProtocol) -> None:
        """The socket's write buffer filled up or drained (see ``write_paused``)."""


class FrameProtocol(asyncio.Protocol):
    """One AMQP connection's socket: frame parsing, batched writes, back-pressure, heartbeats."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handlers: dict[int, FrameHandler],
        events: TransportEvents,
    ) -> None:
        self.loop = loop
        self.handlers = handlers
        self.events = events
        self.transport: asyncio.Transport | None = None
        #: Resolved once the socket is closed (and the connection was told).
        self.lost: asyncio.Future[None] = loop.create_future()
        self.frame_max = 0  # 0: not negotiated yet, no limit enforced
        self.write_paused = False
        #: Set by every complete frame read and every flush; cleared by each heartbeat tick.
        self._received = False
        self._sent = False
        self._heartbeat: asyncio.TimerHandle | None = None
        self._pending = b""
        self._out: list[bytes] = []
        #: While frames of a large body go out: everything to write, in order (the
        #: frames being made, and the bytes written after them).
        self._backlog: deque[bytes | Iterator[bytes]] = deque()
        self._before_flush: list[Callable[[], None]] = []
        self._flush_scheduled = False
        self._closed = False
        #: Set by the first framing error: nothing more is parsed on this socket.
        self._broken = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's have asyncio.Transport's methods, not its class.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._stop_heartbeat()
        self._out.clear()
        self._backlog.clear()
        self._before_flush.clear()
        self.events.transport_lost(self, exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.events.write_flow_changed(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._backlog and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)
        self.events.write_flow_changed(self)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return  # the connection is closing over an earlier frame
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
                if buf[end] != FRAME_END_OCTET:
                    raise ProtocolError(f"frame on channel {channel} has no frame-end octet")
                handler = handlers.get(channel)
                if handler is None or (channel and kind == FRAME_HEARTBEAT):
                    raise ProtocolError(_stray_frame(kind, channel))
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
            self._failed(exc)
            return
        except (IndexError, ValueError, struct.error) as exc:
            # A decoder read past what the peer sent: one error path for every malformed frame.
            self._failed(ProtocolError(f"malformed frame: {exc}"))
            return
        if pos:
            # Only a complete frame is proof of life: a partial one may never complete.
            self._received = True
            self._pending = buf[pos:] if pos < size else b""
        else:
            self._pending = buf

    @property
    def incomplete(self) -> int:
        """Bytes of a frame received in part and waiting for the rest (0: none)."""
        return len(self._pending)

    def _failed(self, exc: ProtocolError) -> None:
        """Stop parsing for good and tell the connection (once)."""
        self._pending = b""
        if not self._broken:
            self._broken = True
            self.events.frame_error(self, exc)

    # -- writing ------------------------------------------------------------------

    def write(self, data: bytes | Iterator[bytes]) -> None:
        """Queue bytes; they go out in one send at the end of this loop turn. An
        iterator of frames (a large body's) goes out as the socket takes it, and
        what is written after it waits behind it.

        Once the socket is gone this does nothing: whatever waits for an answer
        is failed by the connection instead.
        """
        if self._closed:
            return
        if isinstance(data, bytes):
            self._out.append(data)
        else:
            if self._out:
                self._backlog.append(b"".join(self._out))
                self._out.clear()
            self._backlog.append(data)
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
        if self._backlog:
            self._write_backlog(all_of_it=False)
            return
        if not self._out or self.transport is None or self._closed:
            self._out.clear()
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._sent = True
        self.transport.write(data)

    def _write_backlog(self, *, all_of_it: bool) -> None:
        """Hand the backlog to the socket in order until its buffer is full (or,
        ``all_of_it``, to the end); the rest goes when it drains (resume_writing)."""
        backlog = self._backlog
        transport = self.transport
        if transport is None or self._closed:
            backlog.clear()
            self._out.clear()
            return
        if self._out:
            backlog.append(b"".join(self._out))
            self._out.clear()
        self._sent = True
        while backlog and (all_of_it or not self.write_paused):
            item = backlog[0]
            if isinstance(item, bytes):
                backlog.popleft()
                transport.write(item)
            else:
                frame = next(item, None)
                if frame is None:
                    backlog.popleft()
                else:
                    transport.write(frame)

    def close(self) -> None:
        """Flush what is queued, then close the socket gracefully."""
        self._stop_heartbeat()
        if self.transport is not None and not self._closed:
            self.flush()
            if self._backlog:
                self._write_backlog(all_of_it=True)
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket at once (no flush): used when the peer is gone."""
        self._stop_heartbeat()
        if self.transport is not None:
            self.transport.abort()

    # -- heartbeats -----------------------------------------------------------------

    def start_heartbeat(self, interval: int, on_silence: Callable[[], None]) -> None:
        """Send a heartbeat when nothing else went out for half an ``interval`` (in
        seconds; 0: none), and call ``on_silence`` once nothing came in for two
        intervals. Stops when the socket closes."""
        if interval:
            self._heartbeat = self.loop.call_later(
                interval / 2, self._heartbeat_tick, interval, on_silence, 0
            )

    def _heartbeat_tick(self, interval: int, on_silence: Callable[[], None], silent: int) -> None:
        if self._received:
            self._received = False
            silent = 0
        else:
            silent += 1
            if silent >= _MISSED_HEARTBEAT_TICKS:
                self._heartbeat = None
                on_silence()
                return
        if not self._sent:
            self.write(HEARTBEAT_FRAME)
        self._sent = False
        self._heartbeat = self.loop.call_later(
            interval / 2, self._heartbeat_tick, interval, on_silence, silent
        )

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
