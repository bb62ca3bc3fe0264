"""Connecting by URL, above both clients: the scheme picks the broker.

``amqp://`` and ``amqps://`` go to :mod:`leveret.amqp` (RabbitMQ), ``memory://``
to :mod:`leveret.testing` (the in-memory broker); each is imported when a URL
first needs it. What comes back is a :class:`ConnectionLike`, which both
connections are (checked statically below), so code written against it runs on
either broker. :func:`safe_url` shows any of these URLs without its password.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from .amqp import DEFAULT_URL, parse_urls
from .exceptions import ConfigurationError
from .patterns import GetChannel

_MASK = "******"


class ChannelLike(GetChannel, Protocol):
    """A channel of either broker: the pattern seam, ``basic.get``, and its own life."""

    @property
    def number(self) -> int:
        """The channel number on its connection."""

    @property
    def is_open(self) -> bool:
        """True while the channel can be used."""

    @property
    def connection(self) -> ConnectionLike:
        """The connection the channel belongs to."""

    async def close(self) -> None:
        """Close the channel (idempotent)."""


class ConnectionLike(Protocol):
    """What :func:`connect` and :func:`connect_robust` return, whatever the broker.

    :class:`leveret.amqp.Connection` (and its robust kind) and
    :class:`leveret.testing.MemoryConnection` are both one; for what only one of
    them has (``server_properties``, ``reconnects`` ...), use that class.
    """

    #: Called with ``(connection, reason)`` once it is closed for good (plain or
    #: async); ``reason`` is ``None`` when its owner closed it.
    close_callbacks: list[Callable[[Any, BaseException | None], Any]]

    @property
    def is_open(self) -> bool:
        """True while the connection can carry channels."""

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed for good."""

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks publishing, else ``None``."""

    async def channel(self, *, publisher_confirms: bool = True) -> ChannelLike:
        """Open a new channel."""

    async def close(self, *, timeout: float = 5.0) -> None:
        """Close the connection and its channels (idempotent)."""

    async def __aenter__(self) -> ConnectionLike: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


Connect = Callable[..., Awaitable[ConnectionLike]]


class _Client(NamedTuple):
    connect: Connect
    connect_robust: Connect


def _amqp() -> _Client:
    from . import amqp

    return _Client(amqp.connect, amqp.connect_robust)


def _memory() -> _Client:
    # An in-memory connection never drops: the one kind serves both.
    from . import testing

    return _Client(testing.connect_memory, testing.connect_memory)


#: The client of each URL scheme, imported when first used.
_CLIENTS: Final[Mapping[str, Callable[[], _Client]]] = {
    "amqp": _amqp,
    "amqps": _amqp,
    "memory": _memory,
}


def _client(url: str | Sequence[str]) -> _Client:
    """The client for ``url``'s scheme (several URLs name the nodes of one cluster).

    Raises:
        ConfigurationError: no client speaks that scheme.
    """
    first = url if isinstance(url, str) else next(iter(url), "")
    scheme = first.partition("://")[0].lower()
    if isinstance(url, str) or scheme != "memory":
        load = _CLIENTS.get(scheme)
        if load is not None:
            return load()
    if scheme == "memory":
        raise ConfigurationError("a memory:// URL names one broker: pass it alone, not a list")
    raise ConfigurationError(
        f"URL scheme {scheme!r} is not supported: use amqp:// or amqps:// (RabbitMQ), "
        "or memory:// (the in-memory broker of leveret.testing)"
    )


async def connect(url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> ConnectionLike:
    """Open a connection to the broker ``url`` names.

    ``amqp://`` and ``amqps://`` take the options of :func:`leveret.amqp.connect`;
    ``memory://`` (a fresh private broker) or ``memory://name`` (the broker
    registered under that name) connects as :func:`leveret.testing.connect_memory`,
    which accepts the same options.

    Raises:
        ConfigurationError: the URL or an option is invalid; the message names it.
        ConnectError: no broker address could be reached, or the handshake failed.
        AuthenticationError: the broker refused the credentials.
    """
    return await _client(url).connect(url, **options)


async def connect_robust(url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> ConnectionLike:
    """Open a connection that survives broker restarts and network failures.

    As :func:`connect`, with the options of :func:`leveret.amqp.connect_robust`
    for RabbitMQ (an in-memory connection never drops).

    Raises:
        ConfigurationError, ConnectError, AuthenticationError: as for :func:`connect`
            (the first connection is not retried: a wrong address should fail fast).
    """
    return await _client(url).connect_robust(url, **options)


def safe_url(url: str | Sequence[str]) -> str:
    """``url`` as it may be shown: the password masked, whatever the scheme.

    Never raises: a URL that does not parse is shown with whatever stands
    between ``:`` and ``@`` masked.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if all(u.partition("://")[0].lower() in ("amqp", "amqps") for u in urls):
        try:
            return parse_urls(url).safe_url()
        except ConfigurationError:
            pass
    return ", ".join(_mask_password(u) for u in urls)


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:{_MASK}@{hosts}{rest[end:]}"


if TYPE_CHECKING:
    # Both brokers' connections and channels are what this module promises.
    from .amqp import Channel, Connection, RobustConnection
    from .patterns import TxChannel
    from .testing import MemoryChannel, MemoryConnection

    _connections: tuple[type[ConnectionLike], ...] = (
        Connection,
        RobustConnection,
        MemoryConnection,
    )
    _channels: tuple[type[ChannelLike], ...] = (Channel, MemoryChannel)
    # And both can carry a scheduler (transactions).
    _tx_channels: tuple[type[TxChannel], ...] = (Channel, MemoryChannel)
