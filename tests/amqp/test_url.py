import pytest

from leveret.amqp import parse_url, parse_urls
from leveret.exceptions import ConfigurationError


def test_url_parts_and_query_options_are_parsed() -> None:
    params = parse_url(
        "amqp://user:p%40ss@rabbit.example:5673/my%2Fvhost?heartbeat=15&frame_max=8192"
        "&channel_max=64&connection_timeout=2.5&name=aio-pika%20master"
    )
    assert params.addresses == (("rabbit.example", 5673),)
    assert (params.username, params.password) == ("user", "p@ss")
    assert params.virtualhost == "my/vhost"
    assert (params.heartbeat, params.frame_max, params.channel_max) == (15, 8192, 64)
    assert params.connection_timeout == 2.5
    assert params.connection_name == "aio-pika master"
    assert not params.tls


def test_defaults_follow_rabbitmq_conventions() -> None:
    params = parse_url("amqp://localhost")
    assert params.addresses == (("localhost", 5672),)
    assert params.virtualhost == "/"
    assert (params.username, params.password) == ("guest", "guest")
    tls = parse_url("amqps://h/%2F")
    assert tls.tls and tls.addresses == (("h", 5671),) and tls.virtualhost == "/"


def test_several_hosts_and_ipv6_literals() -> None:
    params = parse_url("amqp://guest:guest@a,b:5673,[::1]:5674/")
    assert params.addresses == (("a", 5672), ("b", 5673), ("::1", 5674))
    merged = parse_urls(["amqp://guest:guest@a/", "amqp://guest:guest@b:5999/"])
    assert merged.addresses == (("a", 5672), ("b", 5999))


def test_urls_of_one_cluster_must_agree_on_credentials() -> None:
    with pytest.raises(ConfigurationError, match="differs"):
        parse_urls(["amqp://a:x@h1/", "amqp://b:x@h2/"])


def test_password_never_appears_in_repr_or_errors() -> None:
    params = parse_url("amqp://admin:s3cret-pw@host/")
    assert "s3cret-pw" not in repr(params)
    assert "s3cret-pw" not in params.safe_url()
    assert "******" in params.safe_url()
    with pytest.raises(ConfigurationError) as info:
        parse_url("amqp://admin:s3cret-pw@host/?heartbeat=soon")
    assert "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host/", "scheme 'http'"),
        ("amqp://host:99999/", "port=99999"),
        ("amqp://host/?heartbeat=-1", "heartbeat=-1"),
        ("amqp://host/?frame_max=100", "frame_max=100"),
        ("amqp://host/?connection_timeout=0", "connection_timeout=0"),
        ("amqp://host/?auth_mechanism=kerberos", "auth_mechanism='kerberos'"),
        ("amqp://host/?hearbeat=5", "unknown URL option 'hearbeat'"),
    ],
)
def test_bad_urls_raise_errors_that_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        parse_url(url)


def test_keyword_overrides_win_over_the_query() -> None:
    params = parse_url("amqp://h/?heartbeat=30", heartbeat=5, name="worker")
    assert params.heartbeat == 5
    assert params.connection_name == "worker"
