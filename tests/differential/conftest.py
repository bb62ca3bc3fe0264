"""Fixtures of the differential suite: every test runs its scenario on both brokers."""

from __future__ import annotations

import pytest


@pytest.fixture
def url(amqp_url: str) -> str:
    """RabbitMQ's URL (the test is skipped, or fails under CI, without it)."""
    return amqp_url
