# tests/test_shop.py
import json

import pytest
from shop.tasks import app, outbox, price, send_receipt


@pytest.mark.asyncio  # needed in pytest-asyncio's strict mode (its default), harmless in auto
async def test_a_receipt_goes_out_through_a_worker() -> None:
    outbox.clear()
    async with app.testing() as running:  # a private in-memory broker: no RabbitMQ
        await send_receipt.send(order=42, email="a@example.com")
        await running.drain()  # until the tasks sent so far are done
    assert outbox == ["receipt for order 42 to a@example.com"]


@pytest.mark.asyncio
async def test_a_bad_address_ends_in_the_dead_letter_queue() -> None:
    async with app.testing() as running:
        await send_receipt.send(order=7, email="nowhere")
        await running.drain()
        [letter] = await running.dead_letters(send_receipt)
    assert json.loads(letter.body) == {"order": 7, "email": "nowhere"}


@pytest.mark.asyncio
async def test_a_price_comes_back_from_a_remote_call() -> None:
    async with app.testing():
        assert await price.call(sku="x", quantity=3) == 28.5


@pytest.mark.asyncio
async def test_arguments_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(TypeError, match="unexpected argument orderr"):
        await send_receipt.send(orderr=1, email="a@example.com")  # type: ignore[call-arg]


def test_the_handles_are_the_plain_functions_too() -> None:
    assert price(sku="x", quantity=2) == 19.0
