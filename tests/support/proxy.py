"""A TCP proxy of the test's own, to cut or stall the path between client and broker.

It runs in the test's event loop. ``stall()`` stops forwarding in both
directions without closing anything (a silent network: no FIN, no RST);
``resume()`` forwards again; ``reset()`` aborts every connection (the client
sees a reset). ``inject(data)`` plays a hostile broker: it writes bytes to every
client between two of the broker's frames (the broker's bytes are forwarded a
whole frame at a time for that).
"""

from __future__ import annotations

import asyncio
import socket
import struct

_FRAME_HEADER = struct.Struct(">BHI")


class _Pipe(asyncio.Protocol):
    def __init__(self, proxy: TCPProxy, *, framed: bool = False) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.backlog: list[bytes] = []
        #: From the broker: forward whole frames only, keep a partial one here.
        self.framed = framed
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.proxy.stalled:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.framed:
            data = self._whole_frames(self.partial + data)
            if not data:
                return
        if self.peer is None or self.peer.transport is None:
            self.backlog.append(data)
        else:
            self.peer.transport.write(data)

    def _whole_frames(self, data: bytes) -> bytes:
        """The complete frames at the start of ``data``; the rest waits in ``partial``."""
        end = 0
        while len(data) - end >= 8:
            _, _, size = _FRAME_HEADER.unpack_from(data, end)
            if len(data) < end + 8 + size:
                break
            end += 8 + size
        self.partial = data[end:]
        return data[:end]

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.pipes.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class TCPProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.pipes: set[_Pipe] = set()
        self.stalled = False
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def start(self) -> TCPProxy:
        loop = asyncio.get_running_loop()

        def accept() -> _Pipe:
            client = _Pipe(self)
            self.pipes.add(client)
            task = loop.create_task(self._connect_upstream(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return client

        self.server = await loop.create_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _connect_upstream(self, client: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Pipe(self, framed=True)
        try:
            await loop.create_connection(lambda: upstream, *self.target)
        except OSError:
            if client.transport is not None:
                client.transport.abort()
            return
        self.connections += 1
        self.pipes.add(upstream)
        upstream.peer, client.peer = client, upstream
        assert upstream.transport is not None
        for data in client.backlog:
            upstream.transport.write(data)
        client.backlog.clear()

    def inject(self, data: bytes) -> int:
        """Write ``data`` to every client as if the broker sent it, between two of the
        broker's frames; returns how many clients got it."""
        clients = 0
        for pipe in list(self.pipes):
            client = pipe.peer
            if pipe.framed and client is not None and client.transport is not None:
                client.transport.write(data)
                clients += 1
        return clients

    def stall(self) -> None:
        """Stop forwarding both ways; the sockets stay open and silent."""
        self.stalled = True
        for pipe in self.pipes:
            if pipe.transport is not None:
                pipe.transport.pause_reading()

    def resume(self) -> None:
        self.stalled = False
        for pipe in self.pipes:
            if pipe.transport is not None and not pipe.transport.is_closing():
                pipe.transport.resume_reading()

    def reset(self) -> None:
        """Abort every connection with a TCP reset."""
        for pipe in list(self.pipes):
            if pipe.transport is not None:
                sock = pipe.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                pipe.transport.abort()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.reset()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await asyncio.sleep(0)
