"""``async with`` for what must be closed: connections, channels, masters, RPCs."""

from __future__ import annotations

from typing import Self


class AsyncClosing:
    """``async with thing:`` closes ``thing`` on the way out, however the block ends.

    Subclasses define ``close()``; with arguments, each has a default.
    """

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
