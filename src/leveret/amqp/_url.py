"""``amqp://`` and ``amqps://`` URLs: parsing, validation, and credential masking.

A URL names one or more broker addresses, the credentials, the virtual host and
connection options::

    amqp://user:password@host:5672/vhost?heartbeat=30&name=billing%20worker
    amqps://user:password@node1,node2:5673,node3/?cafile=/etc/ca.pem
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from ..exceptions import ConfigurationError

#: The broker leveret talks to unless told otherwise (``$AMQP_URL`` is read by the callers).
DEFAULT_URL = "amqp://guest:guest@localhost/"

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_MASK = "******"


@dataclasses.dataclass(frozen=True)
class ConnectionParameters:
    """Everything needed to open a connection, parsed from a URL.

    ``repr()`` and :meth:`safe_url` never show the password.
    """

    addresses: tuple[tuple[str, int], ...]
    username: str = "guest"
    password: str = dataclasses.field(default="guest", repr=False)
    virtualhost: str = "/"
    tls: bool = False
    heartbeat: int | None = 60
    frame_max: int = 131072
    #: The largest body the broker takes (RabbitMQ's ``max_message_size``, which the
    #: handshake does not tell); a bigger one is refused before it is sent.
    max_message_size: int = 128 * 1024 * 1024
    channel_max: int = 2047
    connection_timeout: float = 10.0
    connection_name: str | None = None
    auth_mechanism: str = "PLAIN"
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def safe_url(self, address: tuple[str, int] | None = None) -> str:
        """The URL with the password masked; one address, or all of them."""
        scheme = "amqps" if self.tls else "amqp"
        hosts = [address] if address else list(self.addresses)
        netloc = ",".join(_format_host(h, p) for h, p in hosts)
        user = quote(self.username, safe="")
        userinfo = f"{user}:{_MASK}@" if self.password else f"{user}@"
        vhost = "" if self.virtualhost == "/" else quote(self.virtualhost, safe="")
        return f"{scheme}://{userinfo}{netloc}/{vhost}"

    def __repr__(self) -> str:
        return f"ConnectionParameters({self.safe_url()!r})"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context built from the URL's options, or ``None`` for ``amqp://``.

        The context verifies the broker's certificate (against ``cafile``, or the
        system's trusted CAs) and its host name; ``certfile`` and ``keyfile`` are
        the client certificate for EXTERNAL authentication.

        Raises:
            ConfigurationError: a file cannot be read or holds no usable
                certificate or key; the message names the option and the file.
        """
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigurationError(
                f"URL option cafile={self.cafile!r} is not usable: {exc.strerror or exc}"
            ) from exc
        if self.certfile:
            try:
                # A password callback, so that an encrypted key fails here instead
                # of OpenSSL prompting for a pass phrase on the terminal.
                context.load_cert_chain(self.certfile, self.keyfile, password=self._no_password)
            except OSError as exc:
                files = f"certfile={self.certfile!r}"
                if self.keyfile:
                    files += f", keyfile={self.keyfile!r}"
                raise ConfigurationError(
                    f"URL options {files} are not a usable certificate and private key: "
                    f"{exc.strerror or exc}"
                ) from exc
        return context

    def _no_password(self) -> bytes:
        key = self.keyfile or self.certfile
        raise ConfigurationError(
            f"the private key in {key!r} is encrypted: decrypt it, or pass an ssl.SSLContext "
            "that has loaded it (ssl_context=)"
        )


def _format_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _int_option(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"URL option {name}={value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ConfigurationError(f"URL option {name}={number} is outside {low}..{high}")
    return number


def _float_option(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"URL option {name}={value!r} is not a number") from None
    if not number > 0:
        raise ConfigurationError(f"URL option {name}={number} must be greater than 0")
    return number


def _mechanism(value: str) -> str:
    mechanism = value.upper()
    if mechanism not in ("PLAIN", "EXTERNAL"):
        raise ConfigurationError(f"auth_mechanism={value!r} is not one of PLAIN, EXTERNAL")
    return mechanism


def _parse_hosts(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    addresses: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        else:
            host, port_text = item, ""
        host = unquote(host) or "localhost"
        port = _int_option("port", port_text, 1, 65535) if port_text else default_port
        addresses.append((host, port))
    return tuple(addresses)


def parse_url(url: str, **overrides: Any) -> ConnectionParameters:
    """Parse an AMQP URL; keyword ``overrides`` (not ``None``) win over query options.

    Raises:
        ConfigurationError: the scheme, a port, or an option is invalid; the
            message names it and never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        elsewhere = " (leveret.connect() takes memory:// URLs)" if scheme == "memory" else ""
        raise ConfigurationError(
            f"URL scheme {scheme!r} is not supported: use amqp:// or amqps://{elsewhere}"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist = netloc
    username, colon, password = userinfo.partition(":")
    fields: dict[str, Any] = {
        "addresses": _parse_hosts(hostlist, _DEFAULT_PORTS[scheme]),
        "tls": scheme == "amqps",
        "virtualhost": unquote(path) if path else "/",
    }
    if at:
        fields["username"] = unquote(username)
        fields["password"] = unquote(password) if colon else ""
    options = dict(parse_qsl(query, keep_blank_values=True))
    options.update({k: str(v) for k, v in overrides.items() if v is not None})
    fields.update(_parse_options(options))
    _check_tls_options(scheme, fields)
    return ConnectionParameters(**fields)


def _check_tls_options(scheme: str, fields: Mapping[str, Any]) -> None:
    """Refuse TLS options that would be silently ignored."""
    given = [name for name in ("cafile", "certfile", "keyfile") if fields.get(name)]
    if given and scheme != "amqps":
        # Ignoring them would send the credentials in clear text to a user who asked for TLS.
        raise ConfigurationError(
            f"URL option {', '.join(given)} needs TLS: use amqps:// instead of amqp://"
        )
    if fields.get("keyfile") and not fields.get("certfile"):
        raise ConfigurationError("URL option keyfile needs certfile (the client certificate)")


def parse_urls(urls: str | Sequence[str], **overrides: Any) -> ConnectionParameters:
    """Parse one URL, or several naming the nodes of one cluster.

    Several URLs must agree on everything but their addresses; the result holds
    all the addresses, in order.

    Raises:
        ConfigurationError: a URL is invalid, or the URLs disagree.
    """
    if isinstance(urls, str):
        return parse_url(urls, **overrides)
    if not urls:
        raise ConfigurationError("no broker URL given")
    parsed = [parse_url(url, **overrides) for url in urls]
    first = parsed[0]
    for other in parsed[1:]:
        if dataclasses.replace(other, addresses=first.addresses) != first:
            raise ConfigurationError(
                f"{other.safe_url()} differs from {first.safe_url()} in more than its address"
            )
    addresses = tuple(address for params in parsed for address in params.addresses)
    return dataclasses.replace(first, addresses=addresses)


def _parse_options(options: Mapping[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in options.items():
        if name == "heartbeat":
            fields["heartbeat"] = _int_option(name, value, 0, 65535)
        elif name == "frame_max":
            fields["frame_max"] = _int_option(name, value, 4096, 2**31 - 1)
        elif name == "max_message_size":
            fields["max_message_size"] = _int_option(name, value, 1, 2**31 - 1)
        elif name == "channel_max":
            fields["channel_max"] = _int_option(name, value, 1, 65535)
        elif name == "connection_timeout":
            fields["connection_timeout"] = _float_option(name, value)
        elif name in ("name", "connection_name"):
            fields["connection_name"] = value
        elif name == "auth_mechanism":
            fields["auth_mechanism"] = _mechanism(value)
        elif name in ("cafile", "certfile", "keyfile"):
            fields[name] = value
        else:
            raise ConfigurationError(
                f"unknown URL option {name!r}; known options: auth_mechanism, cafile, "
                "certfile, channel_max, connection_timeout, frame_max, heartbeat, keyfile, "
                "max_message_size, name"
            )
    return fields
