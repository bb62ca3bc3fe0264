"""``rabbitmqctl`` against the shared broker: find and close a connection by its name."""

from __future__ import annotations

import subprocess


def connection_pid(name: str) -> str:
    """The broker-side pid of the connection whose connection_name is ``name``."""
    out = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "--no-table-headers", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if name in line:
            return line.split()[0]
    raise AssertionError(f"no connection named {name!r} in {out!r}")


def close_connection(name: str, explanation: str) -> None:
    """Have the broker close the connection named ``name`` (reply code 320)."""
    subprocess.run(
        ["rabbitmqctl", "close_connection", connection_pid(name), explanation],
        check=True,
        capture_output=True,
    )
