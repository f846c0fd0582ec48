"""Checks of what callers pass: UsageError, never TypeError, and nothing sent."""

from __future__ import annotations

import math
import numbers
from typing import Any

from ccid.errors import UsageError

__all__ = ["as_bytes", "as_flag", "as_protocol", "as_seconds"]


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


def as_seconds(value: Any, what: str, reader: str | None = None, slot: int | None = None,
               *, zero: bool = False) -> float:
    """A finite, positive number of seconds (``zero``: 0 allowed), or UsageError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{what} must be a number of seconds, not {value!r}", reader=reader,
                         slot=slot)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        limit = "0 or more" if zero else "more than 0"
        raise UsageError(f"{what} must be a finite number of seconds, {limit}; got {value!r}",
                         reader=reader, slot=slot)
    return seconds


def as_flag(value: Any, what: str, reader: str | None = None) -> bool:
    """True/False (or 1/0), or UsageError: ``bool("no")`` would be True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UsageError(f"{what} must be True or False, not {value!r}", reader=reader)


def as_protocol(protocol: Any, reader: str | None = None, slot: int | None = None
                ) -> int | None:
    """None (the card's choice), 0 or 1 from None, 0/1 or "T=0"/"T=1" ("T0", "0" too)."""
    if protocol is None:
        return None
    if isinstance(protocol, str):
        text = protocol.strip().upper().replace(" ", "")
        if text in ("T=0", "T0", "0"):
            return 0
        if text in ("T=1", "T1", "1"):
            return 1
    elif isinstance(protocol, int) and not isinstance(protocol, bool) and protocol in (0, 1):
        return protocol
    raise UsageError(f"protocol must be None, 0, 1, 'T=0' or 'T=1', not {protocol!r}",
                     reader=reader, slot=slot)
