"""TLS (``amqps://``) and EXTERNAL authentication against a private RabbitMQ node.

The node has a TLS listener whose certificate is issued by a throwaway CA the
test makes with trustme; nothing on the machine trusts that CA, so a client
only gets through if it is told to. The node runs as the ``rabbitmq`` user, so
the certificate files live in a folder of their own that it may read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from leveret.amqp import Connection, connect, parse_url
from leveret.exceptions import AuthenticationError, ConfigurationError, ConnectError
from tests.support.brokers import NODES_ROOT, PrivateNode

CLIENT_CN = "leveret-tls-client"
# The node index this module owns: see the list in tests/support/brokers.py.
NODE_INDEX = 4


@dataclasses.dataclass(frozen=True)
class TLSBroker:
    node: PrivateNode
    ca: trustme.CA
    cafile: Path
    certfile: Path
    keyfile: Path

    def url(
        self, query: str = "", *, userinfo: str = "guest:guest@", host: str = "127.0.0.1"
    ) -> str:
        """An ``amqps://`` URL of the node's TLS listener."""
        return f"amqps://{userinfo}{host}:{self.node.tls_port}/{'?' + query if query else ''}"

    @property
    def cafile_query(self) -> str:
        return f"cafile={quote(str(self.cafile))}"

    @property
    def client_cert_query(self) -> str:
        return f"certfile={quote(str(self.certfile))}&keyfile={quote(str(self.keyfile))}"


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TLSBroker]:
    """One node for the module: TLS on ``tls_port`` (PLAIN and EXTERNAL), plain AMQP on ``port``."""
    if shutil.which("rabbitmq-server") is None:
        message = "rabbitmq-server is not installed: cannot start a private node"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI=true: tests that need the broker must not skip)")
        pytest.skip(message)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN)
    tls_dir = NODES_ROOT / f"lvt{os.getpid()}n{NODE_INDEX}-tls"
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
    }
    node = PrivateNode(NODE_INDEX, plugins=["rabbitmq_auth_mechanism_ssl"])
    node.config.extend(
        [
            f"listeners.ssl.default = 127.0.0.1:{node.tls_port}",
            f"ssl_options.cacertfile = {tls_dir / 'ca.pem'}",
            f"ssl_options.certfile = {tls_dir / 'server.pem'}",
            f"ssl_options.keyfile = {tls_dir / 'server.key'}",
            # Ask for a client certificate, but let clients without one log in with PLAIN.
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
            "auth_mechanisms.1 = PLAIN",
            "auth_mechanisms.2 = EXTERNAL",
            "ssl_cert_login_from = common_name",
        ]
    )
    try:
        tls_dir.mkdir(parents=True, exist_ok=True)
        for name, blob in files.items():
            blob.write_to_path(str(tls_dir / name))
            shutil.chown(tls_dir / name, "rabbitmq", "rabbitmq")
        shutil.chown(tls_dir, "rabbitmq", "rabbitmq")
        node.start()
        # EXTERNAL logs in the user named after the certificate's CN; it needs no password.
        node.ctl("add_user", CLIENT_CN, secrets.token_hex(16))
        node.ctl("clear_password", CLIENT_CN)
        node.ctl("set_permissions", "-p", "/", CLIENT_CN, ".*", ".*", ".*")
        yield TLSBroker(
            node=node,
            ca=ca,
            cafile=tls_dir / "ca.pem",
            certfile=tls_dir / "client.pem",
            keyfile=tls_dir / "client.key",
        )
    finally:
        node.destroy()
        shutil.rmtree(tls_dir, ignore_errors=True)


async def _round_trip(conn: Connection) -> bytes:
    """Publish a message to a fresh queue and consume it back; return its body."""
    channel = await conn.channel()
    queue = (await channel.queue_declare("", exclusive=True)).queue
    body = uuid.uuid4().bytes
    await channel.publish(body, routing_key=queue)
    async with asyncio.timeout(10), channel.iterate(queue) as deliveries:
        async for delivery in deliveries:
            delivery.ack()
            assert delivery.body == body
            return delivery.body
    raise AssertionError("the consumer ended without a delivery")


def _broker_connections(node: PrivateNode) -> list[list[str]]:
    out = node.ctl(
        "list_connections", "user", "auth_mechanism", "ssl", "client_properties", "-q"
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


async def test_amqps_url_with_cafile_publishes_and_consumes(tls_broker: TLSBroker) -> None:
    name = f"leveret-tls-{uuid.uuid4().hex[:8]}"
    url = tls_broker.url(f"{tls_broker.cafile_query}&name={name}")
    async with await connect(url) as conn:
        assert await _round_trip(conn)
        [(user, mechanism, over_tls, _)] = [
            row for row in _broker_connections(tls_broker.node) if name in row[3]
        ]
        assert (user, mechanism, over_tls) == ("guest", "PLAIN", "true")


async def test_users_own_ssl_context_is_used_for_amqps(tls_broker: TLSBroker) -> None:
    context = ssl.create_default_context()
    tls_broker.ca.configure_trust(context)
    async with await connect(tls_broker.url(), ssl_context=context) as conn:
        assert await _round_trip(conn)


async def test_untrusted_server_certificate_fails_with_a_clear_connect_error(
    tls_broker: TLSBroker,
) -> None:
    password = "not-to-be-shown-" + secrets.token_hex(4)
    url = tls_broker.url(userinfo=f"guest:{password}@")
    with pytest.raises(ConnectError) as caught:
        await connect(url)
    message = str(caught.value)
    assert "certificate" in message and "verif" in message
    assert f"127.0.0.1:{tls_broker.node.tls_port}" in message
    assert password not in message


async def test_certificate_for_another_host_is_refused(tls_broker: TLSBroker) -> None:
    # The certificate names 127.0.0.1 only: reaching the same listener as
    # "localhost" must fail, which it does only if the host is checked.
    url = tls_broker.url(tls_broker.cafile_query, host="localhost")
    with pytest.raises(ConnectError, match="certificate") as caught:
        await connect(url)
    assert f"localhost:{tls_broker.node.tls_port}" in str(caught.value)


async def test_external_auth_logs_in_with_the_client_certificate_and_no_password(
    tls_broker: TLSBroker,
) -> None:
    name = f"leveret-external-{uuid.uuid4().hex[:8]}"
    query = (
        f"auth_mechanism=EXTERNAL&{tls_broker.cafile_query}&"
        f"{tls_broker.client_cert_query}&name={name}"
    )
    async with await connect(tls_broker.url(query, userinfo="")) as conn:
        assert await _round_trip(conn)
        [(user, mechanism, over_tls, _)] = [
            row for row in _broker_connections(tls_broker.node) if name in row[3]
        ]
        assert (user, mechanism, over_tls) == (CLIENT_CN, "EXTERNAL", "true")


async def test_external_auth_where_the_broker_does_not_offer_it_names_what_it_offers(
    tls_broker: TLSBroker,
) -> None:
    # The node's plain listener: RabbitMQ offers EXTERNAL only over TLS.
    url = f"amqp://127.0.0.1:{tls_broker.node.port}/?auth_mechanism=EXTERNAL"
    with pytest.raises(AuthenticationError, match=r"offers PLAIN, not EXTERNAL"):
        await connect(url)


async def test_amqps_to_a_plain_listener_says_the_tls_handshake_failed(
    tls_broker: TLSBroker,
) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{tls_broker.node.port}/?{tls_broker.cafile_query}"
    with pytest.raises(ConnectError, match="TLS") as caught:
        await connect(url)
    assert f"127.0.0.1:{tls_broker.node.port}" in str(caught.value)


async def test_plain_amqp_to_the_tls_listener_hints_at_tls(tls_broker: TLSBroker) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{tls_broker.node.tls_port}/"
    with pytest.raises(ConnectError, match="is TLS set as the server expects"):
        await connect(url)


def test_tls_file_options_on_a_plain_amqp_url_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="cafile needs TLS: use amqps://"):
        parse_url("amqp://guest:guest@127.0.0.1/?cafile=/etc/ssl/ca.pem")


def test_keyfile_without_certfile_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="keyfile needs certfile"):
        parse_url("amqps://127.0.0.1/?auth_mechanism=EXTERNAL&keyfile=/etc/ssl/client.key")


async def test_missing_cafile_fails_naming_the_file(tls_broker: TLSBroker, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    url = tls_broker.url(f"cafile={quote(str(missing))}")
    with pytest.raises(ConfigurationError, match=r"cafile=.*no-such-ca\.pem.*No such file"):
        await connect(url)


async def test_encrypted_client_key_fails_instead_of_prompting_for_a_pass_phrase(
    tls_broker: TLSBroker, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(tls_broker.keyfile.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    url = tls_broker.url(
        f"auth_mechanism=EXTERNAL&{tls_broker.cafile_query}"
        f"&certfile={quote(str(tls_broker.certfile))}&keyfile={quote(str(encrypted))}",
        userinfo="",
    )
    with pytest.raises(ConfigurationError, match=r"encrypted\.key' is encrypted"):
        await connect(url)
