"""The CCID class protocol, sans-IO: build commands, match replies, decode status.

Nothing here touches USB (DESIGN rule 1). The reader layer asks the engine for a command
(a :class:`Pending` holding the frame to write), writes it, and feeds every frame it reads
back to :meth:`Engine.receive`, which answers with an event:

* :class:`Reply` - the answer to the pending command (check ``ok`` or call
  :meth:`Engine.raise_for_status`);
* :class:`TimeExtension` - the reader asks for more time (bmCommandStatus 2): keep waiting,
  ``multiplier`` times the usual wait, bounded by the caller's own ceiling;
* :class:`Discarded` - a stale frame of an earlier command (wrong bSeq): read again.

A frame that does not match (wrong type or slot, bad length) raises ``ProtocolError``;
too many stale frames in a row do too, so a confused reader never loops forever.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterator
from dataclasses import dataclass, field

from ccid import framing
from ccid.constants import (
    HEADER_SIZE,
    REPLY_TYPE,
    ChainParameter,
    CommandStatus,
    ICCStatus,
    LevelParameter,
    MessageType,
    PowerSelect,
    SlotErrorCode,
    describe_error,
)
from ccid.errors import (
    CardMuteError,
    CCIDError,
    NoCardError,
    ProtocolError,
    SlotBusyError,
    SlotError,
    UsageError,
)
from ccid.framing import FrameStatus

__all__ = [
    "DEFAULT_MAX_STALE",
    "ChainedResponse",
    "Discarded",
    "Engine",
    "Event",
    "FrameAssembler",
    "Pending",
    "Reply",
    "TimeExtension",
    "describe_offset",
]

# The framing twins' raw functions (int status, no enum wrapping): per-frame hot path.
_reply_code = framing.reply_code
_frame_size = framing._frame_size
_build_frame_raw = framing.build_frame_raw
_WRONG_SEQ = int(FrameStatus.WRONG_SEQ)
_TIME_EXTENSION = int(CommandStatus.TIME_EXTENSION)

#: Stale frames tolerated while waiting for one reply before giving up.
DEFAULT_MAX_STALE = 8

M = MessageType

# Field names by byte offset of a PC_to_RDR header, for "bad value at offset N" errors.
_HEADER_FIELDS = {
    0: "bMessageType", 1: "dwLength", 2: "dwLength", 3: "dwLength", 4: "dwLength",
    5: "bSlot", 6: "bSeq",
}
_SPECIFIC_FIELDS: dict[int, tuple[str, str, str]] = {
    M.PC_to_RDR_IccPowerOn: ("bPowerSelect", "abRFU", "abRFU"),
    M.PC_to_RDR_XfrBlock: ("bBWI", "wLevelParameter", "wLevelParameter"),
    M.PC_to_RDR_SetParameters: ("bProtocolNum", "abRFU", "abRFU"),
    M.PC_to_RDR_IccClock: ("bClockCommand", "abRFU", "abRFU"),
    M.PC_to_RDR_T0APDU: ("bmChanges", "bClassGetResponse", "bClassEnvelope"),
    M.PC_to_RDR_Secure: ("bBWI", "wLevelParameter", "wLevelParameter"),
    M.PC_to_RDR_Mechanical: ("bFunction", "abRFU", "abRFU"),
}


def describe_offset(msg_type: int, offset: int) -> str:
    """Name the command field at byte ``offset`` (what a bError 0x01..0x7F points at)."""
    if offset in _HEADER_FIELDS:
        return _HEADER_FIELDS[offset]
    if 7 <= offset <= 9:
        names = _SPECIFIC_FIELDS.get(msg_type, ("abRFU", "abRFU", "abRFU"))
        return names[offset - 7]
    return f"abData[{offset - HEADER_SIZE}]"


# --- events ----------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    """A command written (or about to be) and the reply it waits for."""

    msg_type: int
    slot: int
    seq: int
    expect_type: int
    frame: bytes
    #: Stale frames discarded so far while waiting for this reply.
    stale: int = 0
    #: Time extensions received so far.
    extensions: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded RDR_to_PC bulk message answering a pending command."""

    msg_type: int
    slot: int
    seq: int
    bStatus: int
    bError: int
    #: Byte 9: bChainParameter (DataBlock), bClockStatus (SlotStatus), bProtocolNum, ...
    specific: int
    data: bytes

    @property
    def icc_status(self) -> ICCStatus:
        """Card present and active, present and inactive, or absent."""
        value = self.bStatus & 0x03
        return ICCStatus(value) if value <= 2 else ICCStatus.ABSENT

    @property
    def command_status(self) -> CommandStatus:
        """OK, failed or time extension."""
        value = (self.bStatus >> 6) & 0x03
        return CommandStatus(value) if value <= 2 else CommandStatus.FAILED

    @property
    def ok(self) -> bool:
        """The command succeeded (bmCommandStatus 0)."""
        return self.bStatus & 0xC0 == 0

    @property
    def card_present(self) -> bool:
        """A card is in the slot (active or not)."""
        return self.icc_status != ICCStatus.ABSENT

    @property
    def chain(self) -> int:
        """bChainParameter of a DataBlock."""
        return self.specific


@dataclass(frozen=True, slots=True)
class TimeExtension:
    """The reader needs more time: wait ``multiplier`` times the usual (at least once)."""

    multiplier: int
    slot: int
    seq: int


@dataclass(frozen=True, slots=True)
class Discarded:
    """A frame left over from an earlier command; read again."""

    reason: str
    seq: int


Event = Reply | TimeExtension | Discarded


# --- reassembly and chaining -----------------------------------------------------------


class FrameAssembler:
    """Collect bulk-IN reads until one whole RDR_to_PC frame is there.

    ``max_length`` (dwMaxCCIDMessageLength, 0 = none) bounds what a header may announce,
    so a lying dwLength cannot make us wait for gigabytes.
    """

    __slots__ = ("_buf", "max_length")

    def __init__(self, max_length: int = 0) -> None:
        self.max_length = max_length
        self._buf = bytearray()

    def reset(self) -> None:
        """Forget a partial frame (after a timeout or an error)."""
        self._buf.clear()

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held so far."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> bytes | None:
        """Add one read; return the complete frame, or None when more is needed.

        Bytes beyond the announced length in the same read are garbage: ProtocolError.
        """
        if not self._buf:
            n = len(chunk)
            if n >= HEADER_SIZE and _frame_size(chunk) == n and not (
                    self.max_length and n > self.max_length):
                # The common case: one read, one frame.
                return chunk if type(chunk) is bytes else bytes(chunk)
        self._buf += chunk
        size = _frame_size(self._buf)
        if size < 0:
            if not chunk:
                self.reset()
                raise ProtocolError("empty bulk-IN transfer where a frame header was expected")
            return None
        if self.max_length and size > self.max_length:
            head = bytes(self._buf[:HEADER_SIZE]).hex(" ")
            self.reset()
            raise ProtocolError(
                f"reply announces {size} bytes, more than dwMaxCCIDMessageLength "
                f"{self.max_length} (header {head})"
            )
        if len(self._buf) < size:
            if not chunk:
                self.reset()
                raise ProtocolError(
                    f"frame truncated: {size} bytes announced, transfer ended after "
                    f"{len(self._buf)}"
                )
            return None
        if len(self._buf) > size:
            extra = len(self._buf) - size
            head = bytes(self._buf[:HEADER_SIZE]).hex(" ")
            self.reset()
            raise ProtocolError(
                f"{extra} bytes of garbage after a frame announcing {size} bytes "
                f"(header {head})"
            )
        frame = bytes(self._buf)
        self.reset()
        return frame


#: The longest chained response accepted at extended-APDU level: 64 KB + SW1 SW2, and a
#: little room for readers that count differently.
CHAINED_RESPONSE_LIMIT = 65538 + 16


class ChainedResponse:
    """Join the pieces of an extended-APDU-level response (bChainParameter 1, 3.., 2)."""

    __slots__ = ("_limit", "_parts", "_size")

    def __init__(self, limit: int = CHAINED_RESPONSE_LIMIT) -> None:
        self._parts: list[tuple[int, bytes]] = []
        self._size = 0
        self._limit = limit

    def add(self, chain: int, data: bytes) -> bool:
        """Add one DataBlock; True when the response is complete."""
        if chain == ChainParameter.CONTINUE_REQUESTED:
            raise ProtocolError("reader asks for more command data while answering")
        if chain not in (0x00, 0x01, 0x02, 0x03):
            raise ProtocolError(f"unknown bChainParameter 0x{chain:02X}")
        if not self._parts and chain in (0x02, 0x03):
            raise ProtocolError(
                f"chained response starts with bChainParameter 0x{chain:02X}"
            )
        if self._parts and chain in (0x00, 0x01):
            raise ProtocolError(
                f"chained response piece with bChainParameter 0x{chain:02X} after the first"
            )
        self._size += len(data)
        if self._size > self._limit:
            raise ProtocolError(f"chained response longer than {self._limit} bytes")
        self._parts.append((chain, data))
        return chain in (0x00, 0x02)

    def result(self) -> bytes:
        """The joined response."""
        return framing.join_chained(self._parts)


# --- the engine ------------------------------------------------------------------------


@dataclass(slots=True)
class Engine:
    """Per-reader CCID state: one bSeq counter shared by every slot, reply matching.

    ``max_message_length`` is dwMaxCCIDMessageLength (0 = no limit); ``reader_name`` only
    decorates errors.
    """

    max_message_length: int = 0
    reader_name: str | None = None
    max_stale: int = DEFAULT_MAX_STALE
    slot_count: int = 1
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)
    #: bSeq values of commands still in flight (a reader with several busy slots): the
    #: counter skips them when it wraps, so no reply can be taken for another command's.
    busy_seqs: Container[int] = field(default_factory=frozenset, repr=False)

    # --- building ---------------------------------------------------------------------

    def next_seq(self) -> int:
        """The next bSeq (0..255, wrapping, skipping ``busy_seqs``); atomic under the GIL."""
        seq = next(self._counter) & 0xFF
        busy = self.busy_seqs
        if busy:
            for _ in range(256):
                if seq not in busy:
                    break
                seq = next(self._counter) & 0xFF
        return seq

    def build(self, msg_type: int, slot: int, p1: int = 0, p2: int = 0, p3: int = 0,
              payload: bytes = b"", *, seq: int | None = None) -> Pending:
        """Any PC_to_RDR command; UsageError for a bad slot or a too long message."""
        expect = REPLY_TYPE.get(msg_type)
        if expect is None:
            raise UsageError(f"0x{msg_type:02X} is not a PC_to_RDR command")
        if not 0 <= slot < max(self.slot_count, 1):
            raise UsageError(
                f"slot {slot} does not exist (the reader has {self.slot_count})",
                reader=self.reader_name,
            )
        if self.max_message_length and HEADER_SIZE + len(payload) > self.max_message_length:
            raise UsageError(
                f"command of {HEADER_SIZE + len(payload)} bytes exceeds the reader's "
                f"dwMaxCCIDMessageLength {self.max_message_length}",
                reader=self.reader_name, slot=slot,
            )
        if seq is None:
            seq = self.next_seq()
        frame = framing.build_frame(msg_type, slot, seq, p1, p2, p3, payload)
        return Pending(msg_type, slot, seq, expect, frame)

    def power_on(self, slot: int, power_select: int = PowerSelect.AUTO) -> Pending:
        """PC_to_RDR_IccPowerOn."""
        return self.build(M.PC_to_RDR_IccPowerOn, slot, int(power_select))

    def power_off(self, slot: int) -> Pending:
        """PC_to_RDR_IccPowerOff."""
        return self.build(M.PC_to_RDR_IccPowerOff, slot)

    def get_slot_status(self, slot: int) -> Pending:
        """PC_to_RDR_GetSlotStatus."""
        return self.build(M.PC_to_RDR_GetSlotStatus, slot)

    def xfr_frame(self, slot: int, data: bytes, bwi: int = 0,
                  level: int = LevelParameter.COMPLETE) -> tuple[int, bytes]:
        """PC_to_RDR_XfrBlock (bBWI, wLevelParameter) as (bSeq, frame): the reader's
        per-block path, which makes a Pending only when it needs the general machinery."""
        limit = self.max_message_length
        if not 0 <= slot < self.slot_count or (limit and HEADER_SIZE + len(data) > limit):
            pending = self.build(M.PC_to_RDR_XfrBlock, slot, bwi & 0xFF, level & 0xFF,
                                 (level >> 8) & 0xFF, data)  # raises the right UsageError
            return pending.seq, pending.frame
        seq = self.next_seq()
        return seq, _build_frame_raw(0x6F, slot, seq, bwi & 0xFF, level & 0xFF,
                                     (level >> 8) & 0xFF, data)

    def xfr_block(self, slot: int, data: bytes, bwi: int = 0,
                  level: int = LevelParameter.COMPLETE) -> Pending:
        """PC_to_RDR_XfrBlock (bBWI, wLevelParameter)."""
        seq, frame = self.xfr_frame(slot, data, bwi, level)
        return Pending(0x6F, slot, seq, 0x80, frame)

    def get_parameters(self, slot: int) -> Pending:
        """PC_to_RDR_GetParameters."""
        return self.build(M.PC_to_RDR_GetParameters, slot)

    def reset_parameters(self, slot: int) -> Pending:
        """PC_to_RDR_ResetParameters."""
        return self.build(M.PC_to_RDR_ResetParameters, slot)

    def set_parameters(self, slot: int, protocol: int, structure: bytes) -> Pending:
        """PC_to_RDR_SetParameters (bProtocolNum 0 or 1 and its data structure)."""
        return self.build(M.PC_to_RDR_SetParameters, slot, protocol, payload=structure)

    def escape(self, slot: int, data: bytes) -> Pending:
        """PC_to_RDR_Escape."""
        return self.build(M.PC_to_RDR_Escape, slot, payload=data)

    def icc_clock(self, slot: int, stop: bool) -> Pending:
        """PC_to_RDR_IccClock (0 restart, 1 stop)."""
        return self.build(M.PC_to_RDR_IccClock, slot, 1 if stop else 0)

    def t0_apdu(self, slot: int, changes: int, class_get_response: int,
                class_envelope: int) -> Pending:
        """PC_to_RDR_T0APDU."""
        return self.build(M.PC_to_RDR_T0APDU, slot, changes, class_get_response,
                          class_envelope)

    def secure(self, slot: int, data: bytes, bwi: int = 0, level: int = 0) -> Pending:
        """PC_to_RDR_Secure (PIN verification / modification structure in ``data``)."""
        return self.build(M.PC_to_RDR_Secure, slot, bwi & 0xFF, level & 0xFF,
                          (level >> 8) & 0xFF, data)

    def mechanical(self, slot: int, function: int) -> Pending:
        """PC_to_RDR_Mechanical."""
        return self.build(M.PC_to_RDR_Mechanical, slot, function)

    def abort(self, slot: int, seq: int | None = None) -> Pending:
        """PC_to_RDR_Abort; pass the bSeq used in the ABORT class request."""
        return self.build(M.PC_to_RDR_Abort, slot, seq=seq)

    def set_data_rate_and_clock(self, slot: int, clock_hz: int, data_rate: int) -> Pending:
        """PC_to_RDR_SetDataRateAndClockFrequency."""
        payload = clock_hz.to_bytes(4, "little") + data_rate.to_bytes(4, "little")
        return self.build(M.PC_to_RDR_SetDataRateAndClockFrequency, slot, payload=payload)

    # --- receiving --------------------------------------------------------------------

    def receive(self, frame: bytes, pending: Pending) -> Event:
        """Match one complete bulk-IN frame against ``pending``.

        Returns a Reply, a TimeExtension or Discarded (stale); raises ProtocolError for a
        mismatch (the caller should resynchronise the reader) or after ``max_stale``
        stale frames in a row.
        """
        # One framing call: the check, bStatus, bError and byte 9 together.
        if type(frame) is not bytes:
            frame = bytes(frame)
        code = _reply_code(frame, len(frame), pending.expect_type, pending.slot,
                           pending.seq, self.max_message_length)
        status = code & 0xFF
        if status == _WRONG_SEQ:
            pending.stale += 1
            if pending.stale > self.max_stale:
                raise self._protocol(
                    f"{pending.stale} stale replies in a row while waiting for bSeq "
                    f"{pending.seq}", frame, pending)
            return Discarded(f"stale frame with bSeq {frame[6]}", frame[6])
        if status:
            raise self._protocol(_STATUS_TEXT[FrameStatus(status)], frame, pending)
        bstatus = (code >> 8) & 0xFF
        if bstatus >> 6 == _TIME_EXTENSION:
            pending.extensions += 1
            return TimeExtension((code >> 16) & 0xFF, pending.slot, pending.seq)
        return Reply(frame[0], frame[5], frame[6], bstatus, (code >> 16) & 0xFF, code >> 24,
                     frame[HEADER_SIZE:])

    def _protocol(self, text: str, frame: bytes, pending: Pending) -> ProtocolError:
        head = bytes(frame[:HEADER_SIZE]).hex(" ")
        try:
            cmd = MessageType(pending.msg_type).name
        except ValueError:
            cmd = f"0x{pending.msg_type:02X}"
        return ProtocolError(
            f"{text} (answering {cmd} bSeq {pending.seq}; got header {head})",
            reader=self.reader_name, slot=pending.slot,
        )

    def error_for(self, reply: Reply, pending: Pending | None = None) -> CCIDError:
        """The exception a failed reply stands for (the caller raises it)."""
        code = reply.bError
        text = describe_error(code)
        if 0x01 <= code <= 0x7F and pending is not None:
            text += f" ({describe_offset(pending.msg_type, code)})"
        what = f"bStatus 0x{reply.bStatus:02X}, bError 0x{code:02X}: {text}"
        slot = reply.slot
        name = self.reader_name
        card_command = pending is None or pending.msg_type not in _READER_COMMANDS
        if card_command and reply.icc_status == ICCStatus.ABSENT:
            return NoCardError(f"no card in the slot ({what})", reader=name, slot=slot)
        if card_command and code == SlotErrorCode.ICC_MUTE:
            return CardMuteError(f"the card does not answer ({what})", reader=name, slot=slot)
        if code == SlotErrorCode.CMD_SLOT_BUSY:
            return SlotBusyError(what, bStatus=reply.bStatus, bError=code, reader=name,
                                 slot=slot)
        pcsc = _PCSC_BY_ERROR.get(code)
        return SlotError(what, bStatus=reply.bStatus, bError=code, reader=name, slot=slot,
                         pcsc_code=pcsc)

    def raise_for_status(self, reply: Reply, pending: Pending | None = None) -> Reply:
        """Return ``reply`` when it succeeded, else raise what it stands for."""
        if reply.bStatus & 0xC0:
            raise self.error_for(reply, pending)
        return reply


_STATUS_TEXT = {
    FrameStatus.SHORT_HEADER: "reply shorter than the 10-byte header",
    FrameStatus.INCOMPLETE: "reply shorter than its dwLength",
    FrameStatus.WRONG_TYPE: "reply of the wrong message type",
    FrameStatus.WRONG_SLOT: "reply for another slot",
    FrameStatus.TOO_LONG: "reply longer than dwMaxCCIDMessageLength",
    FrameStatus.TRAILING: "reply longer than its dwLength",
}

#: Commands addressed to the reader itself: the card's absence does not explain a failure.
_READER_COMMANDS = frozenset({
    M.PC_to_RDR_Escape, M.PC_to_RDR_GetSlotStatus, M.PC_to_RDR_Abort,
    M.PC_to_RDR_Mechanical, M.PC_to_RDR_SetDataRateAndClockFrequency,
})

_PCSC_BY_ERROR: dict[int, str] = {
    SlotErrorCode.CMD_NOT_SUPPORTED: "SCARD_E_UNSUPPORTED_FEATURE",
    SlotErrorCode.PIN_CANCELLED: "SCARD_W_CANCELLED_BY_USER",
    SlotErrorCode.PIN_TIMEOUT: "SCARD_E_TIMEOUT",
    SlotErrorCode.ICC_PROTOCOL_NOT_SUPPORTED: "SCARD_E_PROTO_MISMATCH",
    SlotErrorCode.ICC_CLASS_NOT_SUPPORTED: "SCARD_W_UNSUPPORTED_CARD",
    SlotErrorCode.BAD_ATR_TCK: "SCARD_W_UNSUPPORTED_CARD",
    SlotErrorCode.BAD_ATR_TS: "SCARD_W_UNSUPPORTED_CARD",
    SlotErrorCode.CMD_ABORTED: "SCARD_E_CANCELLED",
}
