"""Checks of what callers pass: UsageError, never TypeError, and nothing sent."""

from __future__ import annotations

from typing import Any

from ccid.errors import UsageError

__all__ = ["as_bytes"]


def as_bytes(value: Any, what: str, reader: str | None = None, slot: int | None = None) -> bytes:
    """``value`` as bytes: bytes-like objects and sequences of byte values are accepted.

    An int is refused (``bytes(5)`` is five zero bytes, never what the caller meant), and
    so is a str (hex text must go through ``bytes.fromhex``).
    """
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        raise UsageError(f"{what} must be bytes, not str (use bytes.fromhex({value[:16]!r}))",
                         reader=reader, slot=slot)
    if value is not None and not isinstance(value, int):
        try:
            return bytes(memoryview(value))
        except TypeError:
            pass
        if isinstance(value, list | tuple):
            try:
                return bytes(value)
            except (TypeError, ValueError):
                raise UsageError(f"{what} must hold byte values 0..255", reader=reader,
                                 slot=slot) from None
    raise UsageError(f"{what} must be bytes, not {type(value).__name__}", reader=reader,
                     slot=slot)
