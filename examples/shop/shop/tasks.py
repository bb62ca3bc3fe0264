# shop/tasks.py
from leveret import App, RejectMessage
from leveret.patterns import RetryPolicy

app = App(prefix="shop")  # AMQP_URL (read when it connects), else amqp://guest:guest@localhost/
outbox: list[str] = []  # stands in for a mail server


@app.task(retries=RetryPolicy(max_attempts=3), prefetch_count=64)
async def send_receipt(*, order: int, email: str) -> None:
    if "@" not in email:
        raise RejectMessage()  # no retry: to the dead-letter queue shop.send_receipt.dlq
    outbox.append(f"receipt for order {order} to {email}")


@app.rpc
def price(*, sku: str, quantity: int) -> float:
    return 9.5 * quantity
