"""What to tell someone whose broker could not be reached: the failure, and the fix that
fits it (the command line's one-line errors)."""

from __future__ import annotations

import socket
import ssl

from .amqp import parse_urls
from .exceptions import (
    AMQPConnectionError,
    AuthenticationError,
    BrokerError,
    ConnectError,
    ProtocolError,
)

START_RABBITMQ = (
    "Is RabbitMQ running? Start it with rabbitmq-server -detached, "
    "or point --url (or AMQP_URL) at your broker."
)
CHECK_ADDRESS = "Check the host and port in the URL (--url or AMQP_URL)."


def connect_failure(exc: ConnectError, url: str) -> str:
    """One line: which broker, what went wrong, and what to do about it.

    ``url`` is the URL that was tried; it is shown with its password masked.
    The failure is read from the error's cause (the socket's, TLS's or the
    broker's own error), so the hint fits it: wrong credentials, an unknown
    virtual host, TLS trouble, a refused connection, a host name that does not
    resolve, no answer.
    """
    params = parse_urls(url)
    problem, hint = _diagnose(exc)
    if problem is None or len(params.addresses) > 1:
        # Several addresses: the error lists what each said.
        return f"{exc}. {hint}"
    return f"cannot connect to {params.safe_url()}: {problem}. {hint}"


def _diagnose(exc: ConnectError) -> tuple[str | None, str]:
    """(what went wrong, in a few words or ``None`` to show the error itself; the hint)."""
    cause = exc.__cause__
    if isinstance(exc, AuthenticationError):
        if isinstance(cause, BrokerError):
            return (
                "the broker refused the user name or password "
                f"({cause.reply_text.partition(' ')[0] or cause.reply_code})",
                "Check the credentials in the URL (--url or AMQP_URL).",
            )
        return None, "Check auth_mechanism in the URL and what the broker offers."
    if isinstance(cause, BrokerError):
        if cause.reply_code == 530:  # NOT_ALLOWED: no such vhost, or no access to it
            return (
                cause.reply_text,
                "Check the virtual host (the URL's path): it must exist "
                "(rabbitmqctl add_vhost NAME) and the user needs permissions on it "
                "(rabbitmqctl set_permissions).",
            )
        return f"{cause.reply_code} {cause.reply_text}", CHECK_ADDRESS
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the broker's TLS certificate could not be verified ({cause.verify_message})",
            "Name the CA that signed it in the URL: ?cafile=/path/to/ca.pem.",
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"the TLS handshake failed ({cause.reason or cause})",
            "Is that port a TLS listener? RabbitMQ takes amqps:// on 5671 by default "
            "and amqp:// on 5672.",
        )
    if isinstance(cause, socket.gaierror):
        return f"the host name does not resolve ({cause.strerror})", CHECK_ADDRESS
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused", START_RABBITMQ
    if isinstance(cause, TimeoutError):
        return (
            "no answer in time",
            "Check the host and port in the URL (--url or AMQP_URL), and that no "
            "firewall drops the connection.",
        )
    if isinstance(cause, AMQPConnectionError | ProtocolError):
        return (
            "the server closed the connection during the AMQP handshake",
            "Is it RabbitMQ on that port, and does it expect TLS (amqps://)?",
        )
    if isinstance(cause, OSError):
        return cause.strerror or str(cause), CHECK_ADDRESS
    return None, START_RABBITMQ
