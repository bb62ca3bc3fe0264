"""The JSON serializer gives the same payloads with the speed extra's orjson and with
stock ``json``: what one writes the other (and aio-pika) reads, and what orjson
refuses or would read or write differently is left to stock json."""

from __future__ import annotations

import datetime
import importlib
import json
import math
from typing import Any

import pytest

from leveret import serializers
from leveret.exceptions import ConfigurationError, SerializationError
from leveret.serializers import JSONSerializer

try:
    importlib.import_module("orjson")
    ORJSON = True
except ImportError:
    ORJSON = False
orjson_installed = pytest.mark.skipif(not ORJSON, reason="needs the speed extra (orjson)")
BACKENDS = [pytest.param(True, id="orjson", marks=orjson_installed), pytest.param(False, id="json")]

PAYLOADS: list[Any] = [
    {"task_id": 1, "text": "h\u00e9llo \u2028 \U0001f600", "items": [1, 2.5, None, True]},
    {"big": 2**70, "negative": -(2**64), "edge": 2**63 - 1, "float": 1e16, "zero": -0.0},
    {"nested": {"a": [{"b": []}, {}]}, "tuple": (1, 2)},
    {7: "int key", 2.5: "float key", True: "bool key", None: "none key"},
    {"id": "1234567890123456789012345", "text": "null"},
    [],
    "just a string",
]


@pytest.mark.parametrize("fast", BACKENDS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_payload_reads_back_as_stock_json_reads_it(fast: bool, payload: Any) -> None:
    ours, stock = JSONSerializer(fast=fast), JSONSerializer(fast=False)
    body = ours.dumps(payload)
    expected = json.loads(json.dumps(payload))
    assert json.loads(body) == expected
    assert ours.loads(body) == expected
    assert ours.loads(stock.dumps(payload)) == expected


@pytest.mark.parametrize("fast", BACKENDS)
def test_nan_and_infinity_are_written_as_stock_json_writes_them(fast: bool) -> None:
    body = JSONSerializer(fast=fast).dumps({"ratio": math.nan, "top": math.inf})
    assert body == b'{"ratio":NaN,"top":Infinity}'
    decoded = JSONSerializer(fast=fast).loads(body)
    assert math.isnan(decoded["ratio"]) and decoded["top"] == math.inf


@pytest.mark.parametrize("fast", BACKENDS)
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"123456789012345678901234567890", 123456789012345678901234567890),
        (b"[-9223372036854775809]", [-9223372036854775809]),
        (b"1e400", math.inf),
        (b'"\\ud800"', "\ud800"),
        ('{"text": "h\u00e9llo"}'.encode("utf-16"), {"text": "h\u00e9llo"}),
    ],
)
def test_bodies_stock_json_reads_are_read_alike(fast: bool, body: bytes, expected: Any) -> None:
    assert JSONSerializer(fast=fast).loads(body) == expected


@pytest.mark.parametrize("fast", BACKENDS)
@pytest.mark.parametrize(
    ("payload", "refusal"),
    [
        ({"when": datetime.datetime(2030, 1, 1)}, "Object of type datetime is not JSON"),
        ({"tags": {"a"}}, "Object of type set is not JSON serializable"),
        ({"raw": b"x"}, "Object of type bytes is not JSON serializable"),
        ({"text": "\ud800"}, "surrogates not allowed"),
        ({(1, 2): "tuple key"}, "keys must be str, int, float, bool or None"),
    ],
)
def test_what_stock_json_refuses_is_refused_alike(fast: bool, payload: Any, refusal: str) -> None:
    with pytest.raises(SerializationError, match="cannot encode as JSON: ") as refused:
        JSONSerializer(fast=fast).dumps(payload)
    assert refusal in str(refused.value)


@pytest.mark.parametrize("fast", BACKENDS)
def test_default_encodes_what_json_cannot_either_way(fast: bool) -> None:
    ours = JSONSerializer(default=repr, fast=fast)
    when = datetime.date(2030, 1, 2)
    assert json.loads(ours.dumps({"when": when, "n": 1})) == {"when": repr(when), "n": 1}


@pytest.mark.parametrize("fast", BACKENDS)
def test_a_body_that_is_not_json_is_refused_alike(fast: bool) -> None:
    for body in (b"", b"{oops", b"\xff\xfe\xfa"):
        with pytest.raises(ValueError):  # noqa: PT011 -- as stock json raises it
            JSONSerializer(fast=fast).loads(body)


def test_json_uses_orjson_by_default_when_it_is_installed() -> None:
    assert JSONSerializer().fast is ORJSON
    assert JSONSerializer(fast=False).fast is False


def test_asking_for_orjson_without_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serializers, "_orjson", None)
    assert JSONSerializer().fast is False
    with pytest.raises(ConfigurationError, match=r"pip install 'leveret\[speed\]'"):
        JSONSerializer(fast=True)
