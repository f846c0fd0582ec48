"""Faults to inject into a virtual reader: each failure path of a driver needs one.

A fault is a frozen description; ``VirtualReader.inject(fault)`` arms it. It applies to the
commands it matches (message types, slot, payload prefix) ``count`` times (``None``: for
ever), in the order faults were injected. Faults that are not about one command
(``ClaimedElsewhere``) apply to the reader as a whole until removed with
``VirtualReader.clear_faults()``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadLength",
    "CardRemoved",
    "ChainByte",
    "ClaimedElsewhere",
    "Fault",
    "Garbage",
    "NoAnswer",
    "PinCancelled",
    "PinTimeout",
    "Refuse",
    "RefuseUntilEscape",
    "SlowCard",
    "StaleFrame",
    "Stall",
    "TimeExtension",
    "Trickle",
    "Truncate",
    "Unplug",
    "WrongSeq",
    "WrongSlot",
    "WrongType",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """What every fault matches on.

    ``commands``: PC_to_RDR message types (None: any); ``slot``: bSlot (None: any);
    ``prefix``: the command's payload must start with these bytes; ``count``: how many
    matching commands it spoils (None: all of them).
    """

    commands: frozenset[int] | None = None
    slot: int | None = None
    prefix: bytes | None = None
    count: int | None = 1

    def matches(self, msg_type: int, slot: int, payload: bytes) -> bool:
        if self.commands is not None and msg_type not in self.commands:
            return False
        if self.slot is not None and slot != self.slot:
            return False
        return self.prefix is None or bytes(payload).startswith(self.prefix)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeExtension(Fault):
    """``times`` replies with bmCommandStatus 2 (bError = ``multiplier``) before the answer,
    one every ``interval`` seconds."""

    times: int = 1
    multiplier: int = 1
    interval: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NoAnswer(Fault):
    """The command is never answered (the slot stays busy until ABORT).

    ``wedge``: the reader's firmware hangs as the Gemalto CT700 does after an unanswered
    escape: every later bulk-OUT write times out, until the device is reset or re-plugged.
    """

    wedge: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongSeq(Fault):
    """The reply carries bSeq + ``delta``."""

    delta: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongSlot(Fault):
    """The reply carries bSlot + ``delta``."""

    delta: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongType(Fault):
    """The reply carries bMessageType ``msg_type`` (default: RDR_to_PC_DataRateAndClock)."""

    msg_type: int = 0x84


@dataclass(frozen=True, slots=True, kw_only=True)
class BadLength(Fault):
    """The reply's dwLength lies by ``delta`` bytes (the bytes sent stay the same)."""

    delta: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Truncate(Fault):
    """Only the first ``keep`` bytes of the reply are sent."""

    keep: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Garbage(Fault):
    """The reply is replaced by ``data``."""

    data: bytes = b"\xde\xad\xbe\xef"


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleFrame(Fault):
    """A copy of the previous reply (old bSeq) is sent before the real one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stall(Fault):
    """Halt an endpoint: ``"out"``: the command's write fails with EPIPE and is lost;
    ``"in"``: the reply is kept but bulk-IN reads fail with EPIPE until clear_halt."""

    endpoint: str = "in"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unplug(Fault):
    """The reader is unplugged: ``"write"`` as the command arrives (the write fails with
    ENODEV), ``"reply"`` after the command ran, before its reply is read."""

    stage: str = "reply"


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowCard(Fault):
    """The reply comes ``delay`` seconds late (on top of the card's own delay)."""

    delay: float = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Trickle(Fault):
    """The reply dribbles out: ``piece`` bytes at a time (each piece its own bulk-IN
    transfer, ending with a short packet, or a zero-length one when ``piece`` is a multiple
    of wMaxPacketSize), one piece every ``interval`` seconds, the first at once.

    ``pad``: bytes of filler (0x00) added after the reply, with dwLength counting them, so
    the frame takes longer to complete (a reader stuck sending a frame). ABORT stops the
    pieces not yet sent; the frame then ends as an abort failure with the command's bSeq.
    """

    piece: int = 1
    interval: float = 0.2
    pad: int = 0
    #: The pieces are packets of ONE transfer (``piece`` should then be wMaxPacketSize):
    #: no short or zero-length packet between them, as a reader sending a long frame slowly.
    one_transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CardRemoved(Fault):
    """The card is pulled out while the command runs: the reply says ICC absent, bError
    ICC_MUTE, and a NotifySlotChange follows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PinCancelled(Fault):
    """The user presses Cancel on the pinpad: PC_to_RDR_Secure fails with bError 0xEF."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PinTimeout(Fault):
    """Nobody types the PIN: PC_to_RDR_Secure fails with bError 0xF0."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedElsewhere(Fault):
    """Another process (pcscd) holds the interface: claim_interface fails with EBUSY."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse(Fault):
    """The command fails with bError ``error`` and does nothing (e.g. a SetParameters the
    firmware refuses although the link works at the current parameters)."""

    error: int = 0x00


@dataclass(frozen=True, slots=True, kw_only=True)
class RefuseUntilEscape(Fault):
    """Matched commands fail with bError ``error`` until an escape whose payload starts
    with ``escape`` arrives (a mode switch by vendor escape); the escape then disarms the
    fault and is answered with success (by ``escape_handler`` when there is one).

    Default: a GemPC433-Swap in EMV mode refusing some cards' power-on (bError 0xBB) until
    the ISO-mode escape 1F 01.
    """

    error: int = 0xBB
    escape: bytes = b"\x1f\x01"
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainByte(Fault):
    """The reply's byte 9 (bChainParameter of a DataBlock) carries ``value``: firmware that
    leaves garbage in a field its real exchange level does not use."""

    value: int = 0x01
