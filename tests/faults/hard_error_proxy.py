"""A TCP proxy that plays a broker closing the connection while a consumer is restored.

Once :attr:`HardErrorProxy.armed`, the next connection it accepts is forwarded
as usual until the client sends ``basic.consume``. That frame goes no further:
the proxy answers it with ``connection.close`` 541 INTERNAL_ERROR, as a
RabbitMQ node does when the channel crashes (seen on a cluster node taking over
a quorum queue whose leader had just stopped), and closes both sides. Other
connections are forwarded untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

_PROTOCOL_HEADER_SIZE = 8
_FRAME_METHOD = 1
_BASIC_CONSUME = struct.pack(">HH", 60, 20)


def _connection_close(reply_code: int, reply_text: str, class_id: int, method_id: int) -> bytes:
    text = reply_text.encode()
    payload = struct.pack(">HHH", 10, 50, reply_code) + bytes([len(text)]) + text
    payload += struct.pack(">HH", class_id, method_id)
    return struct.pack(">BHI", _FRAME_METHOD, 0, len(payload)) + payload + b"\xce"


class HardErrorProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.armed = False
        self.sabotaged = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def start(self) -> HardErrorProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def reset(self) -> None:
        """Abort every connection (the clients see it drop)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client)
        sabotage, self.armed = self.armed, False
        writers = [client]
        try:
            broker_reader, broker = await asyncio.open_connection(*self.target)
            writers.append(broker)
            self._writers.add(broker)
            pumps = [
                asyncio.create_task(self._pump(broker_reader, client)),
                asyncio.create_task(
                    self._consume_sabotaged(client_reader, broker, client)
                    if sabotage
                    else self._pump(client_reader, broker)
                ),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass
        finally:
            for writer in writers:
                writer.transport.abort()
                self._writers.discard(writer)
            self._handlers.discard(task)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

    async def _consume_sabotaged(
        self,
        client_reader: asyncio.StreamReader,
        broker: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        """Forward frame by frame; answer the first basic.consume with connection.close 541."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            broker.write(await client_reader.readexactly(_PROTOCOL_HEADER_SIZE))
            while True:
                header = await client_reader.readexactly(7)
                kind, _, size = struct.unpack(">BHI", header)
                rest = await client_reader.readexactly(size + 1)
                if kind == _FRAME_METHOD and rest[:4] == _BASIC_CONSUME:
                    break
                broker.write(header + rest)
                await broker.drain()
            self.sabotaged += 1
            client.write(_connection_close(541, "INTERNAL_ERROR", 60, 20))
            await client.drain()
            # The client answers close-ok and closes the socket.
            async with asyncio.timeout(5):
                while await client_reader.read(65536):
                    pass
