"""What a trace holds: :class:`TraceRecord`, one per frame, API call or reader fact."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["API", "DIRECTIONS", "META", "TraceRecord"]

#: Frame directions: bulk OUT/IN, control setup(+data OUT) / data IN, interrupt IN.
DIRECTIONS = ("->", "<-", "ctrl->", "ctrl<-", "int<-")
API = "api"  # an API-level call (span), with a name and a duration
META = "meta"  # facts about a reader (descriptor, ids) recorded at open, for replay


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One traced frame (or API call, or reader fact).

    ``data`` holds the bytes as sent or received; masked bytes are zero there and listed
    in ``masked`` as (start, end) spans, so the PIN itself is never kept. ``line`` is the
    line of the trace file the record was read from (None for records made in memory).
    """

    time: float  # wall clock, seconds since the epoch
    mono: float  # monotonic seconds, for durations
    reader: str
    direction: str
    data: bytes = b""
    slot: int | None = None
    masked: tuple[tuple[int, int], ...] = ()
    name: str | None = None  # api: call name; meta: what the info describes
    duration: float | None = None  # api: seconds spent in the call
    info: Mapping[str, Any] | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    def tokens(self) -> list[str]:
        """Two-character hex tokens, ``**`` for masked bytes."""
        out = [f"{b:02X}" for b in self.data]
        for start, end in self.masked:
            for i in range(max(0, start), min(end, len(out))):
                out[i] = "**"
        return out

    def hex(self) -> str:
        return " ".join(self.tokens())

    def matches(self, frame: bytes, *, ignore: Iterable[int] = ()) -> bool:
        """True when ``frame`` equals this record's data, masked bytes and ``ignore`` aside."""
        if len(frame) != len(self.data):
            return False
        skip = set(ignore)
        for start, end in self.masked:
            skip.update(range(start, end))
        if not skip:
            return bytes(frame) == self.data
        return all(i in skip or a == b for i, (a, b) in enumerate(zip(frame, self.data)))
