"""The options of an open reader: one frozen object, checked once when the reader opens.

``open_reader(..., timeout=10, events=False)`` becomes ``ReaderOptions.from_kwargs(...)``;
every front door (blocking, asyncio, the PC/SC server) passes the same keywords and gets
the same UsageError for a bad one. Value checks shared with per-call arguments (seconds,
flags, protocols, bytes) live in ``ccid._args``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from ccid._args import as_flag, as_seconds
from ccid.errors import UsageError

__all__ = [
    "DEFAULT_CEILING",
    "READER_WAIT",
    "TICK_SECONDS",
    "WAKEABLE_TICK_SECONDS",
    "Disposition",
    "Mode",
    "ReaderOptions",
    "check_disposition",
    "check_mode",
]

#: Default overall ceiling of one call (transmit, connect, escape), seconds.
DEFAULT_CEILING: Final = 60.0
#: Wait for replies to commands that do not involve the card (status, parameters).
READER_WAIT: Final = 5.0
#: How long one interrupt read lasts where the backend cannot end it early (libusb's
#: synchronous transfers): what stopping the monitor (so a reader's close()) may wait, and
#: what an idle reader costs (4 wake-ups a second). Interrupt messages are one packet each:
#: a read that times out loses none.
TICK_SECONDS: Final = 0.25
#: The same where the backend can end a read early (``wake_reads``): close() does, so
#: closing stays prompt while an idle reader wakes once in that many seconds.
WAKEABLE_TICK_SECONDS: Final = 2.0

Mode = Literal["shared", "exclusive", "direct"]
Disposition = Literal["leave", "reset", "unpower", "eject"]
_MODES: Final = ("shared", "exclusive", "direct")
_DISPOSITIONS: Final = ("leave", "reset", "unpower", "eject")


@dataclass(frozen=True, slots=True)
class ReaderOptions:
    """What ``open_reader`` accepts besides the selector and the backend."""

    #: Overall ceiling of one call, seconds.
    timeout: float = DEFAULT_CEILING
    #: Card polling period of readers without an interrupt endpoint, seconds.
    poll_interval: float = 0.5
    #: Start the slot monitor (card events, removal detection).
    events: bool = True
    #: Open readers whose firmware the database knows to be broken (with a warning).
    allow_bad_firmware: bool = False
    #: Refuse ATRs with a wrong TCK.
    check_tck: bool = True
    #: T=0: answer 61xx / 6Cxx with GET RESPONSE / the right Le automatically.
    auto_get_response: bool = True
    #: T=1 IFSD to ask for (None: the reader's most, up to 254).
    ifsd: int | None = None
    #: Apply the database's quirks.
    quirks: bool = True
    #: Wait for each reply while opening, seconds (slow-at-plug-in quirks multiply it).
    open_timeout: float = READER_WAIT

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every option name."""
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any], reader: str | None = None
                    ) -> ReaderOptions:
        """Check ``options`` (keywords of ``open_reader``); UsageError naming the first bad
        one, or the unknown names and the known ones."""
        known = cls.names()
        unknown = set(options) - known
        if unknown:
            raise UsageError(f"unknown open_reader option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}", reader=reader)
        default = cls()
        get = options.get
        # in the order open_reader has always checked them (the first bad one is named)
        timeout = as_seconds(get("timeout", default.timeout), "timeout", reader)
        poll_interval = as_seconds(get("poll_interval", default.poll_interval),
                                   "poll_interval", reader)
        check_tck = as_flag(get("check_tck", default.check_tck), "check_tck", reader)
        auto_get_response = as_flag(get("auto_get_response", default.auto_get_response),
                                    "auto_get_response", reader)
        ifsd = get("ifsd")
        if ifsd is not None and (isinstance(ifsd, bool) or not isinstance(ifsd, int)
                                 or not 1 <= ifsd <= 254):
            raise UsageError(f"ifsd must be None or an integer 1..254, not {ifsd!r}",
                             reader=reader)
        return cls(
            timeout=timeout,
            poll_interval=poll_interval,
            check_tck=check_tck,
            auto_get_response=auto_get_response,
            ifsd=ifsd,
            allow_bad_firmware=as_flag(get("allow_bad_firmware", default.allow_bad_firmware),
                                       "allow_bad_firmware", reader),
            quirks=as_flag(get("quirks", default.quirks), "quirks", reader),
            events=as_flag(get("events", default.events), "events", reader),
            open_timeout=as_seconds(get("open_timeout", default.open_timeout),
                                    "open_timeout", reader),
        )


def check_mode(mode: Any, reader: str | None = None, slot: int | None = None) -> Mode:
    """A connect mode, or UsageError."""
    if mode not in _MODES:
        raise UsageError(f"mode must be 'shared', 'exclusive' or 'direct', not {mode!r}",
                         reader=reader, slot=slot)
    return mode  # type: ignore[no-any-return]


def check_disposition(disposition: Any, reader: str | None = None,
                      slot: int | None = None) -> Disposition:
    """A disconnect disposition, or UsageError."""
    if disposition not in _DISPOSITIONS:
        raise UsageError(f"disposition must be leave, reset, unpower or eject, "
                         f"not {disposition!r}", reader=reader, slot=slot)
    return disposition  # type: ignore[no-any-return]
