"""Opening a connection: the socket, then the AMQP handshake (protocol header,
start/start-ok, tune/tune-ok, open/open-ok).

:func:`open_socket` reaches the broker, wording each way that can fail for the
user; :func:`handshake` runs over the connection's channel 0 (it only sends
frames and waits for the broker's methods) and returns what both sides agreed on
as a :class:`Tuning`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .._version import __version__
from ..exceptions import (
    AuthenticationError,
    BrokerError,
    ConnectError,
    ConnectionLostError,
    ProtocolError,
)
from ._codec import Method, encode_method_frame
from ._url import ConnectionParameters

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

#: What we tell the broker we understand (a user's ``capabilities`` may add or override).
CAPABILITIES = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
    "publisher_confirms": True,
}

Expect = Callable[[tuple[str, ...]], asyncio.Future[Method]]


class Tuning(NamedTuple):
    """What the handshake settled: the broker's properties and the negotiated limits."""

    server_properties: dict[str, Any]
    channel_max: int
    frame_max: int
    heartbeat: int


def negotiate(client: int | None, server: int) -> int:
    """Tune a limit: the smaller non-zero value; 0 means "no limit" on either side."""
    if client is None:
        return server
    if client == 0 or server == 0:
        return max(client, server)
    return min(client, server)


def client_properties(params: ConnectionParameters, user: Mapping[str, Any]) -> dict[str, Any]:
    """The ``client_properties`` of ``connection.start-ok``: ours, then the user's."""
    capabilities = dict(CAPABILITIES)
    properties: dict[str, Any] = {
        "product": "leveret",
        "version": __version__,
        "platform": f"Python {sys.version.split()[0]}",
    }
    if params.connection_name:
        properties["connection_name"] = params.connection_name
    user = dict(user)
    capabilities.update(user.pop("capabilities", {}))
    properties.update(user)
    properties["capabilities"] = capabilities
    return properties


async def open_socket(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.Protocol,
    address: tuple[str, int],
    context: ssl.SSLContext | None,
    url: str,
) -> None:
    """Connect ``protocol`` to ``address`` (with TLS when there is a ``context``).

    Raises:
        ConnectError: the socket or the TLS handshake failed; the message says
            how, for ``url`` (which shows no password).
    """
    host, port = address
    try:
        await loop.create_connection(
            lambda: protocol,
            host,
            port,
            ssl=context,
            server_hostname=host if context else None,
        )
    except ssl.SSLCertVerificationError as exc:
        raise ConnectError(
            f"{url}: the broker's TLS certificate could not be verified: {exc.verify_message}"
        ) from exc
    except ssl.SSLError as exc:
        raise ConnectError(
            f"{url}: TLS handshake failed ({exc.reason or exc}); is the port a TLS listener?"
        ) from exc
    except OSError as exc:
        detail = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise ConnectError(f"{url}: {detail}") from exc


async def handshake(
    start_waiter: asyncio.Future[Method],
    expect: Expect,
    write: Callable[[bytes], None],
    params: ConnectionParameters,
    user_properties: Mapping[str, Any],
    url: str,
) -> Tuning:
    """Send the protocol header, then answer ``connection.start`` (awaited on
    ``start_waiter``) up to ``connection.open-ok``.

    ``expect`` registers a wait for the next channel-0 method of the given names;
    ``write`` sends a frame.

    Raises:
        AuthenticationError: the broker refused the credentials, or does not
            offer the configured mechanism.
        ConnectError: the broker closed the connection during the handshake, or
            the peer went away or is not AMQP (the message says what to check).
    """
    write(PROTOCOL_HEADER)
    try:
        start = (await start_waiter).args
        mechanism = params.auth_mechanism
        offered = start["mechanisms"].decode().split()
        if mechanism not in offered:
            raise AuthenticationError(
                f"{url}: the broker offers {' '.join(offered)}, not {mechanism}"
            )
        if mechanism == "PLAIN":
            response = f"\0{params.username}\0{params.password}".encode()
        else:
            response = b""
        tune_waiter = expect(("connection.tune",))
        write(
            encode_method_frame(
                0,
                "connection.start-ok",
                client_properties=client_properties(params, user_properties),
                mechanism=mechanism,
                response=response,
                locale="en_US",
            )
        )
        tune = (await tune_waiter).args
        tuning = Tuning(
            start["server_properties"],
            negotiate(params.channel_max, tune["channel_max"]) or 65535,
            negotiate(params.frame_max, tune["frame_max"]),
            negotiate(params.heartbeat, tune["heartbeat"]),
        )
        open_waiter = expect(("connection.open-ok",))
        write(
            encode_method_frame(
                0,
                "connection.tune-ok",
                channel_max=tuning.channel_max,
                frame_max=tuning.frame_max,
                heartbeat=tuning.heartbeat,
            )
        )
        write(encode_method_frame(0, "connection.open", virtual_host=params.virtualhost))
        await open_waiter
        return tuning
    except BrokerError as exc:
        if exc.reply_code == 403:
            raise AuthenticationError(f"{url}: {exc.reply_text}") from exc
        raise ConnectError(f"{url}: {exc.reply_text}") from exc
    except (ConnectionLostError, ProtocolError) as exc:
        raise ConnectError(
            f"{url}: the server closed the connection during the AMQP handshake "
            f"(is it RabbitMQ, and is TLS set as the server expects?): {exc}"
        ) from exc
