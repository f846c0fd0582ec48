"""Faults to inject into a virtual reader: each failure path of a driver needs one.

A fault is a frozen description; ``VirtualReader.inject(fault)`` arms it. It applies to the
commands it matches (message types, slot, payload prefix) ``count`` times (``None``: for
ever), in the order faults were injected. Faults that are not about one command
(``ClaimedElsewhere``) apply to the reader as a whole until removed with
``VirtualReader.clear_faults()``.

Each fault does its own effect, in the stages of one command (every stage runs the faults
taken for the command in injection order): ``before_command`` (the write itself fails),
``shape`` (before the reader runs the command: card pulled, PIN entry spoiled, delays,
refusals, trickling), ``after_command`` (time extensions, once the reply is known),
``mangle`` (the reply's bytes) and ``after_reply`` (once the reply is scheduled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ccid.constants import HEADER_SIZE, MessageType, SlotErrorCode
from ccid.testing.model import StallNow, UnplugAfter, UnplugNow

__all__ = [
    "BadLength",
    "CardRemoved",
    "ChainByte",
    "ClaimedElsewhere",
    "Fault",
    "FaultTarget",
    "Garbage",
    "NoAnswer",
    "PinCancelled",
    "PinTimeout",
    "Refuse",
    "RefuseUntilEscape",
    "ReplyPlan",
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


#: A scheduled reply: (seconds from now, frame or None for never, final frame of the command).
Frame = tuple[float, "bytes | None", bool]


class FaultTarget(Protocol):
    """The parts of a virtual reader a fault acts on (``VirtualReader`` provides them)."""

    wedged: bool
    halted_in: bool
    halted_out: bool

    def remove(self, slot: int = 0) -> Any: ...


@dataclass(slots=True)
class ReplyPlan:
    """One command's answer as its faults shape it: the reader fills it, the faults change it.

    ``wtx_frame(multiplier)`` builds a time extension for the command; ``previous`` is the
    reader's last reply before this command; ``frames`` are the frames sent before the reply.
    """

    reader: FaultTarget
    cmd: int
    slot: int
    seq: int
    wtx_frame: Callable[[int], bytes]
    previous: bytes | None
    delay: float = 0.0
    pin_error: int | None = None
    refusal: int | None = None
    trickle: Trickle | None = None
    frames: list[Frame] = field(default_factory=list)


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

    def takes(self, msg_type: int, slot: int, payload: bytes) -> bool:
        """Whether this command spoils one of ``count`` (``matches`` unless said otherwise)."""
        return self.matches(msg_type, slot, payload)

    def disarmed_by(self, escape: bytes) -> bool:
        """Whether a PC_to_RDR_Escape with this payload removes the fault."""
        return False

    def before_command(self, plan: ReplyPlan) -> None:
        """As the command is written (may raise a model signal: the write fails)."""

    def shape(self, plan: ReplyPlan) -> None:
        """Before the reader runs the command."""

    def after_command(self, plan: ReplyPlan) -> None:
        """Once the reader ran the command, before the reply is mangled."""

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        """The reply as sent (None: never answered)."""
        return reply

    def after_reply(self, plan: ReplyPlan) -> None:
        """Once the reply is scheduled (may raise a model signal)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeExtension(Fault):
    """``times`` replies with bmCommandStatus 2 (bError = ``multiplier``) before the answer,
    one every ``interval`` seconds."""

    times: int = 1
    multiplier: int = 1
    interval: float = 0.0

    def after_command(self, plan: ReplyPlan) -> None:
        for k in range(self.times):
            plan.frames.append(((k + 1) * self.interval, plan.wtx_frame(self.multiplier & 0xFF),
                                False))
        plan.delay += self.times * self.interval


@dataclass(frozen=True, slots=True, kw_only=True)
class NoAnswer(Fault):
    """The command is never answered (the slot stays busy until ABORT).

    ``wedge``: the reader's firmware hangs as the Gemalto CT700 does after an unanswered
    escape: every later bulk-OUT write times out, until the device is reset or re-plugged.
    """

    wedge: bool = False

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        if self.wedge:
            plan.reader.wedged = True
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongSeq(Fault):
    """The reply carries bSeq + ``delta``."""

    delta: int = 1

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        return reply[:6] + bytes(((plan.seq + self.delta) & 0xFF,)) + reply[7:]


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongSlot(Fault):
    """The reply carries bSlot + ``delta``."""

    delta: int = 1

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        return reply[:5] + bytes(((plan.slot + self.delta) & 0xFF,)) + reply[6:]


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongType(Fault):
    """The reply carries bMessageType ``msg_type`` (default: RDR_to_PC_DataRateAndClock)."""

    msg_type: int = 0x84

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        return bytes((self.msg_type,)) + reply[1:]


@dataclass(frozen=True, slots=True, kw_only=True)
class BadLength(Fault):
    """The reply's dwLength lies by ``delta`` bytes (the bytes sent stay the same)."""

    delta: int = 4

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        n = max(0, len(reply) - HEADER_SIZE + self.delta) & 0xFFFFFFFF
        return reply[:1] + n.to_bytes(4, "little") + reply[5:]


@dataclass(frozen=True, slots=True, kw_only=True)
class Truncate(Fault):
    """Only the first ``keep`` bytes of the reply are sent."""

    keep: int = 5

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        return reply[: self.keep]


@dataclass(frozen=True, slots=True, kw_only=True)
class Garbage(Fault):
    """The reply is replaced by ``data``."""

    data: bytes = b"\xde\xad\xbe\xef"

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        return bytes(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleFrame(Fault):
    """A copy of the previous reply (old bSeq) is sent before the real one."""

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        if plan.previous is not None:
            plan.frames.append((0.0, plan.previous, False))
        return reply


@dataclass(frozen=True, slots=True, kw_only=True)
class Stall(Fault):
    """Halt an endpoint: ``"out"``: the command's write fails with EPIPE and is lost;
    ``"in"``: the reply is kept but bulk-IN reads fail with EPIPE until clear_halt."""

    endpoint: str = "in"

    def before_command(self, plan: ReplyPlan) -> None:
        if self.endpoint == "out":
            plan.reader.halted_out = True
            raise StallNow()

    def after_reply(self, plan: ReplyPlan) -> None:
        if self.endpoint == "in":
            plan.reader.halted_in = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Unplug(Fault):
    """The reader is unplugged: ``"write"`` as the command arrives (the write fails with
    ENODEV), ``"reply"`` after the command ran, before its reply is read."""

    stage: str = "reply"

    def before_command(self, plan: ReplyPlan) -> None:
        if self.stage == "write":
            raise UnplugNow()

    def after_reply(self, plan: ReplyPlan) -> None:
        if self.stage == "reply":
            raise UnplugAfter()


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowCard(Fault):
    """The reply comes ``delay`` seconds late (on top of the card's own delay)."""

    delay: float = 0.5

    def shape(self, plan: ReplyPlan) -> None:
        plan.delay += self.delay


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

    def shape(self, plan: ReplyPlan) -> None:
        if plan.trickle is None:  # the first Trickle taken sets the pace
            plan.trickle = self

    def pieces(self, reply: bytes, delay: float) -> list[Frame]:
        """The reply cut into its pieces; all but the last are not final (ABORT drops
        those still to come)."""
        if self.pad > 0 and len(reply) >= HEADER_SIZE:
            n = (int.from_bytes(reply[1:5], "little") + self.pad) & 0xFFFFFFFF
            reply = reply[:1] + n.to_bytes(4, "little") + reply[5:] + bytes(self.pad)
        step = max(1, self.piece)
        cuts = range(0, len(reply), step)
        return [(delay + k * self.interval, reply[at:at + step], k == len(cuts) - 1)
                for k, at in enumerate(cuts)]


@dataclass(frozen=True, slots=True, kw_only=True)
class CardRemoved(Fault):
    """The card is pulled out while the command runs: the reply says ICC absent, bError
    ICC_MUTE, and a NotifySlotChange follows."""

    def shape(self, plan: ReplyPlan) -> None:
        plan.reader.remove(plan.slot)


@dataclass(frozen=True, slots=True, kw_only=True)
class PinCancelled(Fault):
    """The user presses Cancel on the pinpad: PC_to_RDR_Secure fails with bError 0xEF."""

    def shape(self, plan: ReplyPlan) -> None:
        plan.pin_error = SlotErrorCode.PIN_CANCELLED


@dataclass(frozen=True, slots=True, kw_only=True)
class PinTimeout(Fault):
    """Nobody types the PIN: PC_to_RDR_Secure fails with bError 0xF0."""

    def shape(self, plan: ReplyPlan) -> None:
        plan.pin_error = SlotErrorCode.PIN_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedElsewhere(Fault):
    """Another process (pcscd) holds the interface: claim_interface fails with EBUSY."""

    def takes(self, msg_type: int, slot: int, payload: bytes) -> bool:
        return False  # about the interface, not a command: the backend asks has_fault


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse(Fault):
    """The command fails with bError ``error`` and does nothing (e.g. a SetParameters the
    firmware refuses although the link works at the current parameters)."""

    error: int = 0x00

    def shape(self, plan: ReplyPlan) -> None:
        if plan.refusal is None:  # the first refusal taken answers
            plan.refusal = self.error & 0xFF


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

    def takes(self, msg_type: int, slot: int, payload: bytes) -> bool:
        # The escape is what switches the mode: never refused.
        return msg_type != MessageType.PC_to_RDR_Escape and self.matches(msg_type, slot, payload)

    def disarmed_by(self, escape: bytes) -> bool:
        return escape.startswith(self.escape)

    def shape(self, plan: ReplyPlan) -> None:
        if plan.refusal is None:  # the first refusal taken answers
            plan.refusal = self.error & 0xFF


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainByte(Fault):
    """The reply's byte 9 (bChainParameter of a DataBlock) carries ``value``: firmware that
    leaves garbage in a field its real exchange level does not use."""

    value: int = 0x01

    def mangle(self, reply: bytes, plan: ReplyPlan) -> bytes | None:
        if len(reply) < HEADER_SIZE:
            return reply
        return reply[:9] + bytes((self.value & 0xFF,)) + reply[10:]
