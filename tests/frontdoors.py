"""Run one end-to-end scenario through each front door: blocking ``ccid`` and ``ccid.aio``.

A scenario is an ``async def scenario(door)`` written against the asyncio shapes
(``await door.open_reader(...)``, ``async with reader.connect() as card``,
``await card.transmit(...)``, ``async for event in reader.events(...)``). Through
``AIO`` those are ``ccid.aio`` itself. Through ``BLOCKING`` they are a shell in which each
``await`` is one direct call of the blocking method, on the loop's thread, with no logic
of its own: the same scenario then checks the blocking API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import pytest

import ccid
import ccid.aio

#: Ceiling of one whole scenario: a hang fails the test instead of blocking the suite.
SCENARIO_SECONDS = 60.0


class _BlockingConnecting:
    def __init__(self, reader: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._reader, self._args, self._kwargs = reader, args, kwargs
        self._card: BlockingCard | None = None

    def __await__(self) -> Generator[Any, None, BlockingCard]:
        return self._connect().__await__()

    async def _connect(self) -> BlockingCard:
        return BlockingCard(self._reader.connect(*self._args, **self._kwargs))

    async def __aenter__(self) -> BlockingCard:
        self._card = await self._connect()
        return self._card

    async def __aexit__(self, *exc: object) -> None:
        if self._card is not None:
            self._card.blocking.__exit__(*exc)


class BlockingCard:
    """``ccid.Card`` with awaitable methods that call it directly."""

    def __init__(self, blocking: ccid.Card) -> None:
        self.blocking = blocking

    def __getattr__(self, name: str) -> Any:  # properties: atr, protocol, slot, connected
        return getattr(self.blocking, name)

    async def __aenter__(self) -> BlockingCard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.blocking.__exit__(*exc)

    async def transmit(self, apdu: bytes, **kw: Any) -> bytes:
        return self.blocking.transmit(apdu, **kw)

    async def reset(self, *args: Any, **kw: Any) -> None:
        self.blocking.reset(*args, **kw)

    async def reconnect(self, *args: Any, **kw: Any) -> None:
        self.blocking.reconnect(*args, **kw)

    async def disconnect(self, *args: Any, **kw: Any) -> None:
        self.blocking.disconnect(*args, **kw)

    async def escape(self, data: bytes, **kw: Any) -> bytes:
        return self.blocking.escape(data, **kw)

    async def verify_pin(self, template: bytes, **kw: Any) -> bytes:
        return self.blocking.verify_pin(template, **kw)

    async def modify_pin(self, template: bytes, **kw: Any) -> bytes:
        return self.blocking.modify_pin(template, **kw)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[BlockingCard]:
        with self.blocking.transaction():
            yield self


class BlockingReader:
    """``ccid.Reader`` with awaitable methods that call it directly."""

    def __init__(self, blocking: ccid.Reader) -> None:
        self.blocking = blocking

    def __getattr__(self, name: str) -> Any:  # name, slots, closed, slot_states, ...
        return getattr(self.blocking, name)

    async def __aenter__(self) -> BlockingReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.blocking.close()

    async def close(self) -> None:
        self.blocking.close()

    async def escape(self, data: bytes, slot: int = 0, **kw: Any) -> bytes:
        return self.blocking.escape(data, slot, **kw)

    async def slot_status(self, slot: int = 0) -> Any:
        return self.blocking.slot_status(slot)

    def connect(self, *args: Any, **kw: Any) -> _BlockingConnecting:
        return _BlockingConnecting(self.blocking, args, kw)

    async def wait_for_event(self, timeout: float | None = None) -> Any:
        return self.blocking.wait_for_event(timeout)

    async def events(self, timeout: float | None = None) -> AsyncGenerator[Any, None]:
        for event in self.blocking.events(timeout):
            yield event


class Door:
    """One front door: how to open a reader and list readers."""

    def __init__(self, name: str, open_reader: Callable[..., Awaitable[Any]],
                 list_readers: Callable[..., Awaitable[Any]]) -> None:
        self.name = name
        self.open_reader = open_reader
        self.list_readers = list_readers

    def __repr__(self) -> str:
        return self.name

    def run(self, scenario: Callable[[Door], Awaitable[None]]) -> None:
        """Run ``scenario(self)`` in a fresh event loop (``asyncio.run``)."""
        async def bounded() -> None:
            await asyncio.wait_for(scenario(self), SCENARIO_SECONDS)

        asyncio.run(bounded())


async def _blocking_open(*args: Any, **kw: Any) -> BlockingReader:
    return BlockingReader(ccid.open_reader(*args, **kw))


async def _blocking_list(*args: Any, **kw: Any) -> Any:
    return ccid.list_readers(*args, **kw)


BLOCKING = Door("blocking", _blocking_open, _blocking_list)
AIO = Door("aio", ccid.aio.open_reader, ccid.aio.list_readers)
DOORS = [BLOCKING, AIO]

#: ``@doors`` on a test taking a ``door`` argument runs it through both front doors.
doors = pytest.mark.parametrize("door", DOORS, ids=lambda d: d.name)


async def next_event(reader: Any, wait: float = 5.0) -> Any:
    """The reader's next event through its front door; fails when none comes in time."""
    event = await reader.wait_for_event(wait)
    assert event is not None, "no event arrived"
    return event


async def drain(reader: Any, quiet: float = 0.2) -> list[Any]:
    """Events already queued or arriving until ``quiet`` seconds pass without one."""
    out = []
    while (event := await reader.wait_for_event(quiet)) is not None:
        out.append(event)
    return out
