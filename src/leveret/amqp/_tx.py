"""The client's refusals of transaction methods, shared by both brokers' channels.

RabbitMQ closes a channel (406) that mixes confirm and transaction mode or ends a
transaction it never began; leveret refuses both before sending, and says how.
"""

from __future__ import annotations

from ..exceptions import ConfigurationError


def transactions_refused(channel: int) -> ConfigurationError:
    """The error of ``tx_select`` on a channel in confirm mode."""
    return ConfigurationError(
        f"channel {channel} confirms publishes, so it cannot be transactional: "
        "open the channel with publisher_confirms=False to use tx_select()"
    )


def not_transactional(channel: int, method: str) -> ConfigurationError:
    """The error of ``tx.commit``/``tx.rollback`` (``method``) before ``tx_select``."""
    return ConfigurationError(
        f"channel {channel} is not transactional: call tx_select() before {method}"
    )
