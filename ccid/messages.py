"""Every CCID 1.1 message as a construct spec: the readable, executable specification.

This is the cold path (tests, tools, trace decoding); per-transfer framing lives in
``ccid.framing`` and is proven byte-identical to these specs by property tests.

Field names are the CCID specification's. ``parse_message`` turns a bulk frame into a frozen
dataclass, ``build_message`` does the reverse, ``parse_interrupt`` reads the interrupt
endpoint, and the ``*_request`` functions build the class-specific control requests.
Malformed input raises ``ProtocolError`` (from the reader) or ``UsageError`` (from the
caller); no construct exception escapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from construct import (
    Bytes,
    Const,
    Construct,
    ConstructError,
    FixedSized,
    GreedyBytes,
    If,
    IfThenElse,
    Int8ub,
    Int16ul,
    Int32ul,
    Padding,
    Rebuild,
    Struct,
    Switch,
    Terminated,
    len_,
    this,
)

from ccid._args import as_bytes as _as_bytes
from ccid.constants import (
    HEADER_SIZE,
    ClassRequest,
    ClockStatus,
    CommandStatus,
    ICCStatus,
    MessageType,
    describe_error,
)
from ccid.descriptor import parse_clock_frequencies, parse_data_rates
from ccid.errors import ProtocolError, UsageError

__all__ = [
    "CONTROL_SETUP",
    "FRAME",
    "HARDWARE_ERROR",
    "HEADER",
    "NOTIFY_SLOT_CHANGE",
    "PIN_MODIFY",
    "PIN_OPERATION",
    "PIN_VERIFY",
    "SPECS",
    "T0APDU",
    "T0_PARAMETERS",
    "T1_PARAMETERS",
    "Abort",
    "ControlSetup",
    "DataBlock",
    "DataRateAndClock",
    "Escape",
    "EscapeReply",
    "GetParameters",
    "GetSlotStatus",
    "HardwareError",
    "IccClock",
    "IccPowerOff",
    "IccPowerOn",
    "Mechanical",
    "Message",
    "NotifySlotChange",
    "PINModify",
    "PINOperation",
    "PINVerify",
    "Parameters",
    "ParsedMessage",
    "Reply",
    "ResetParameters",
    "Secure",
    "SetDataRateAndClockFrequency",
    "SetParameters",
    "SlotChange",
    "SlotStatus",
    "T0Parameters",
    "T1Parameters",
    "XfrBlock",
    "abort_request",
    "build_message",
    "decode_status",
    "get_clock_frequencies_request",
    "get_data_rates_request",
    "message_class",
    "notify_length",
    "parse_class_reply",
    "parse_interrupt",
    "parse_message",
]

M = MessageType

# --- the generic frame ------------------------------------------------------------------

#: The 10-byte header every bulk message starts with; bytes 7..9 depend on the message.
HEADER = Struct(
    "bMessageType" / Int8ub,
    "dwLength" / Int32ul,
    "bSlot" / Int8ub,
    "bSeq" / Int8ub,
    "abParameters" / Bytes(3),
)

#: Any bulk frame: header, then exactly dwLength bytes of abData.
FRAME = Struct(
    "bMessageType" / Int8ub,
    "dwLength" / Rebuild(Int32ul, len_(this.abData)),
    "bSlot" / Int8ub,
    "bSeq" / Int8ub,
    "abParameters" / Bytes(3),
    "abData" / Bytes(this.dwLength),
    Terminated,
)

# --- structures carried in abData -------------------------------------------------------

#: abProtocolDataStructure for T=0 (CCID 1.1 table 6.1-7), 5 bytes.
T0_PARAMETERS = Struct(
    "bmFindexDindex" / Int8ub,  # Fi index in the high nibble, Di index in the low one
    "bmTCCKST0" / Int8ub,  # bit 1: inverse convention
    "bGuardTimeT0" / Int8ub,  # extra guard time (TC1)
    "bWaitingIntegerT0" / Int8ub,  # WI (TC2)
    "bClockStop" / Int8ub,  # 0 not allowed, 1 low, 2 high, 3 either
    Terminated,
)

#: abProtocolDataStructure for T=1 (CCID 1.1 table 6.1-8), 7 bytes.
T1_PARAMETERS = Struct(
    "bmFindexDindex" / Int8ub,
    "bmTCCKST1" / Int8ub,  # bit 0: CRC (else LRC), bit 1: inverse convention; 0x10 set
    "bGuardTimeT1" / Int8ub,
    "bmWaitingIntegersT1" / Int8ub,  # BWI in the high nibble, CWI in the low one
    "bClockStop" / Int8ub,
    "bIFSC" / Int8ub,
    "bNadValue" / Int8ub,
    Terminated,
)

# Synchronous-card protocol numbers are not in CCID 1.1: their structure stays raw bytes.
_PROTOCOL_DATA = Switch(this.bProtocolNum, {0: T0_PARAMETERS, 1: T1_PARAMETERS},
                        default=GreedyBytes)

#: PIN verification data structure (CCID 1.1 6.1.11.7), after bPINOperation 0.
PIN_VERIFY = Struct(
    "bTimeOut" / Int8ub,
    "bmFormatString" / Int8ub,
    "bmPINBlockString" / Int8ub,
    "bmPINLengthFormat" / Int8ub,
    "wPINMaxExtraDigit" / Int16ul,  # 0xXXYY: XX minimum, YY maximum PIN digits
    "bEntryValidationCondition" / Int8ub,
    "bNumberMessage" / Int8ub,
    "wLangId" / Int16ul,
    "bMsgIndex" / Int8ub,
    "bTeoPrologue" / Bytes(3),
    "abPINApdu" / GreedyBytes,
)

#: PIN modification data structure (CCID 1.1 6.1.11.8), after bPINOperation 1.
#: bMsgIndex2 is present unless bNumberMessage is 0, bMsgIndex3 only for 3 (and 0xFF,
#: "default messages", which pinpad firmware receives with all three indexes).
PIN_MODIFY = Struct(
    "bTimeOut" / Int8ub,
    "bmFormatString" / Int8ub,
    "bmPINBlockString" / Int8ub,
    "bmPINLengthFormat" / Int8ub,
    "bInsertionOffsetOld" / Int8ub,
    "bInsertionOffsetNew" / Int8ub,
    "wPINMaxExtraDigit" / Int16ul,
    "bConfirmPIN" / Int8ub,  # bit 0: confirm the new PIN, bit 1: enter the current PIN
    "bEntryValidationCondition" / Int8ub,
    "bNumberMessage" / Int8ub,
    "wLangId" / Int16ul,
    "bMsgIndex1" / Int8ub,
    "bMsgIndex2" / If(this.bNumberMessage != 0, Int8ub),
    "bMsgIndex3" / If(this.bNumberMessage >= 3, Int8ub),
    "bTeoPrologue" / Bytes(3),
    "abPINApdu" / GreedyBytes,
)

#: abPINOperationDataStructure of PC_to_RDR_Secure. Operations 2..6 (transfer, wait,
#: cancel, resend, next part) carry no defined structure: raw bytes.
PIN_OPERATION = Struct(
    "bPINOperation" / Int8ub,
    "abPINDataStructure" / Switch(this.bPINOperation, {0: PIN_VERIFY, 1: PIN_MODIFY},
                                  default=GreedyBytes),
)

# Only the first (or only) part of a Secure command holds the structure; continuation
# parts at extended APDU level (wLevelParameter 2, 3, 0x10) are plain bytes.
_SECURE_DATA = IfThenElse(this.wLevelParameter <= 1, PIN_OPERATION, GreedyBytes)


# --- message specs ----------------------------------------------------------------------


def _sized(name: str, spec: Construct, key: str, optional: bool = False
           ) -> Callable[[Any], int]:
    """dwLength of a structured abData: the size of its built form (``key`` selects it)."""

    def length(ctx: Any) -> int:
        value = ctx[name]
        if optional and value is None:
            return 0
        return len(spec.build(value, **{key: ctx[key]}))

    return length


def _message(msg_type: MessageType, *fields: Any) -> Any:
    return Struct("bMessageType" / Const(int(msg_type), Int8ub), *fields, Terminated)


_NO_DATA = "dwLength" / Const(0, Int32ul)
_DATA = "dwLength" / Rebuild(Int32ul, len_(this.abData))
_SLOT_SEQ = ("bSlot" / Int8ub, "bSeq" / Int8ub)
_STATUS = ("bStatus" / Int8ub, "bError" / Int8ub)
_ABDATA = "abData" / Bytes(this.dwLength)

#: One construct spec per bulk message, by bMessageType.
SPECS: dict[MessageType, Any] = {
    # --- PC_to_RDR (bulk-OUT), CCID 1.1 section 6.1
    M.PC_to_RDR_IccPowerOn: _message(
        M.PC_to_RDR_IccPowerOn, _NO_DATA, *_SLOT_SEQ,
        "bPowerSelect" / Int8ub, Padding(2)),
    M.PC_to_RDR_IccPowerOff: _message(
        M.PC_to_RDR_IccPowerOff, _NO_DATA, *_SLOT_SEQ, Padding(3)),
    M.PC_to_RDR_GetSlotStatus: _message(
        M.PC_to_RDR_GetSlotStatus, _NO_DATA, *_SLOT_SEQ, Padding(3)),
    M.PC_to_RDR_XfrBlock: _message(
        M.PC_to_RDR_XfrBlock, _DATA, *_SLOT_SEQ,
        "bBWI" / Int8ub, "wLevelParameter" / Int16ul, _ABDATA),
    M.PC_to_RDR_GetParameters: _message(
        M.PC_to_RDR_GetParameters, _NO_DATA, *_SLOT_SEQ, Padding(3)),
    M.PC_to_RDR_ResetParameters: _message(
        M.PC_to_RDR_ResetParameters, _NO_DATA, *_SLOT_SEQ, Padding(3)),
    M.PC_to_RDR_SetParameters: _message(
        M.PC_to_RDR_SetParameters,
        "dwLength" / Rebuild(Int32ul, _sized("abProtocolDataStructure", _PROTOCOL_DATA,
                                             "bProtocolNum")),
        *_SLOT_SEQ, "bProtocolNum" / Int8ub, Padding(2),
        "abProtocolDataStructure" / FixedSized(this.dwLength, _PROTOCOL_DATA)),
    M.PC_to_RDR_Escape: _message(
        M.PC_to_RDR_Escape, _DATA, *_SLOT_SEQ, Padding(3), _ABDATA),
    M.PC_to_RDR_IccClock: _message(
        M.PC_to_RDR_IccClock, _NO_DATA, *_SLOT_SEQ,
        "bClockCommand" / Int8ub, Padding(2)),  # 0 restart, 1 stop
    M.PC_to_RDR_T0APDU: _message(
        M.PC_to_RDR_T0APDU, _NO_DATA, *_SLOT_SEQ,
        "bmChanges" / Int8ub, "bClassGetResponse" / Int8ub, "bClassEnvelope" / Int8ub),
    M.PC_to_RDR_Secure: _message(
        M.PC_to_RDR_Secure,
        "dwLength" / Rebuild(Int32ul, _sized("abPINOperationDataStructure", _SECURE_DATA,
                                            "wLevelParameter")),
        *_SLOT_SEQ, "bBWI" / Int8ub, "wLevelParameter" / Int16ul,
        "abPINOperationDataStructure" / FixedSized(this.dwLength, _SECURE_DATA)),
    M.PC_to_RDR_Mechanical: _message(
        M.PC_to_RDR_Mechanical, _NO_DATA, *_SLOT_SEQ, "bFunction" / Int8ub, Padding(2)),
    M.PC_to_RDR_Abort: _message(
        M.PC_to_RDR_Abort, _NO_DATA, *_SLOT_SEQ, Padding(3)),
    M.PC_to_RDR_SetDataRateAndClockFrequency: _message(
        M.PC_to_RDR_SetDataRateAndClockFrequency, "dwLength" / Const(8, Int32ul),
        *_SLOT_SEQ, Padding(3), "dwClockFrequency" / Int32ul, "dwDataRate" / Int32ul),
    # --- RDR_to_PC (bulk-IN), CCID 1.1 section 6.2
    M.RDR_to_PC_DataBlock: _message(
        M.RDR_to_PC_DataBlock, _DATA, *_SLOT_SEQ, *_STATUS,
        "bChainParameter" / Int8ub, _ABDATA),
    M.RDR_to_PC_SlotStatus: _message(
        M.RDR_to_PC_SlotStatus, _NO_DATA, *_SLOT_SEQ, *_STATUS, "bClockStatus" / Int8ub),
    # A failed Get/Set/ResetParameters may come back without a structure (dwLength 0).
    M.RDR_to_PC_Parameters: _message(
        M.RDR_to_PC_Parameters,
        "dwLength" / Rebuild(Int32ul, _sized("abProtocolDataStructure", _PROTOCOL_DATA,
                                             "bProtocolNum", optional=True)),
        *_SLOT_SEQ, *_STATUS, "bProtocolNum" / Int8ub,
        "abProtocolDataStructure" / If(this.dwLength != 0,
                                       FixedSized(this.dwLength, _PROTOCOL_DATA))),
    M.RDR_to_PC_Escape: _message(
        M.RDR_to_PC_Escape, _DATA, *_SLOT_SEQ, *_STATUS, Padding(1), _ABDATA),
    M.RDR_to_PC_DataRateAndClockFrequency: _message(
        M.RDR_to_PC_DataRateAndClockFrequency, "dwLength" / Const(8, Int32ul),
        *_SLOT_SEQ, *_STATUS, Padding(1), "dwClockFrequency" / Int32ul, "dwDataRate" / Int32ul),
}

# --- interrupt-IN (CCID 1.1 section 6.3) ------------------------------------------------


def notify_length(slot_count: int) -> int:
    """Bytes of bmSlotICCState for ``slot_count`` slots: 2 bits per slot, rounded up."""
    return (slot_count * 2 + 7) // 8


#: RDR_to_PC_NotifySlotChange; parse with ``slot_count=`` (bit 2n: present, 2n+1: changed).
NOTIFY_SLOT_CHANGE = Struct(
    "bMessageType" / Const(int(M.RDR_to_PC_NotifySlotChange), Int8ub),
    "bmSlotICCState" / Bytes(lambda ctx: notify_length(ctx._params.slot_count)),
)

#: RDR_to_PC_HardwareError.
HARDWARE_ERROR = Struct(
    "bMessageType" / Const(int(M.RDR_to_PC_HardwareError), Int8ub),
    "bSlot" / Int8ub,
    "bSeq" / Int8ub,
    "bHardwareErrorCode" / Int8ub,  # 0x01: overcurrent
)

#: A USB control SETUP packet (8 bytes).
CONTROL_SETUP = Struct(
    "bmRequestType" / Int8ub,
    "bRequest" / Int8ub,
    "wValue" / Int16ul,
    "wIndex" / Int16ul,
    "wLength" / Int16ul,
)


# --- status -----------------------------------------------------------------------------


def decode_status(bStatus: int) -> tuple[ICCStatus, CommandStatus]:
    """(bmICCStatus, bmCommandStatus) of a bStatus byte; bits 2-5 (RFU) are ignored.

    The reserved value 3 in either field is a ProtocolError.
    """
    icc = bStatus & 0x03
    command = (bStatus >> 6) & 0x03
    if icc == 3:
        raise ProtocolError(f"bStatus 0x{bStatus:02X} has the reserved bmICCStatus 3")
    if command == 3:
        raise ProtocolError(f"bStatus 0x{bStatus:02X} has the reserved bmCommandStatus 3")
    return ICCStatus(icc), CommandStatus(command)


# --- parsed structures ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class T0Parameters:
    """abProtocolDataStructure for T=0."""

    bmFindexDindex: int = 0x11
    bmTCCKST0: int = 0
    bGuardTimeT0: int = 0
    bWaitingIntegerT0: int = 10
    bClockStop: int = 0

    @property
    def inverse_convention(self) -> bool:
        """True when the card uses the inverse convention (TS = 0x3F)."""
        return bool(self.bmTCCKST0 & 0x02)


@dataclass(frozen=True, slots=True)
class T1Parameters:
    """abProtocolDataStructure for T=1."""

    bmFindexDindex: int = 0x11
    bmTCCKST1: int = 0x10
    bGuardTimeT1: int = 0
    bmWaitingIntegersT1: int = 0x4D
    bClockStop: int = 0
    bIFSC: int = 32
    bNadValue: int = 0

    @property
    def crc(self) -> bool:
        """True for a CRC epilogue, False for LRC."""
        return bool(self.bmTCCKST1 & 0x01)

    @property
    def inverse_convention(self) -> bool:
        """True when the card uses the inverse convention."""
        return bool(self.bmTCCKST1 & 0x02)

    @property
    def bwi(self) -> int:
        """Block waiting time integer."""
        return self.bmWaitingIntegersT1 >> 4

    @property
    def cwi(self) -> int:
        """Character waiting time integer."""
        return self.bmWaitingIntegersT1 & 0x0F


@dataclass(frozen=True, slots=True)
class PINVerify:
    """PIN verification data structure."""

    bTimeOut: int = 0
    bmFormatString: int = 0
    bmPINBlockString: int = 0
    bmPINLengthFormat: int = 0
    wPINMaxExtraDigit: int = 0
    bEntryValidationCondition: int = 0x02
    bNumberMessage: int = 0
    wLangId: int = 0x0409
    bMsgIndex: int = 0
    bTeoPrologue: bytes = b"\x00\x00\x00"
    abPINApdu: bytes = b""


@dataclass(frozen=True, slots=True)
class PINModify:
    """PIN modification data structure; bMsgIndex2/3 are None when absent on the wire."""

    bTimeOut: int = 0
    bmFormatString: int = 0
    bmPINBlockString: int = 0
    bmPINLengthFormat: int = 0
    bInsertionOffsetOld: int = 0
    bInsertionOffsetNew: int = 0
    wPINMaxExtraDigit: int = 0
    bConfirmPIN: int = 0
    bEntryValidationCondition: int = 0x02
    bNumberMessage: int = 0
    wLangId: int = 0x0409
    bMsgIndex1: int = 0
    bMsgIndex2: int | None = None
    bMsgIndex3: int | None = None
    bTeoPrologue: bytes = b"\x00\x00\x00"
    abPINApdu: bytes = b""


@dataclass(frozen=True, slots=True)
class PINOperation:
    """abPINOperationDataStructure: bPINOperation and its data structure."""

    bPINOperation: int = 0
    #: PINVerify for operation 0, PINModify for 1, bytes (usually empty) for 2..6.
    abPINDataStructure: PINVerify | PINModify | bytes = dataclasses.field(
        default_factory=PINVerify)


# --- parsed messages --------------------------------------------------------------------


class Message:
    """Base of every parsed message: ``to_bytes()`` builds it back."""

    __slots__ = ()
    message_type: ClassVar[MessageType]

    def to_bytes(self) -> bytes:
        """The message as it travels on the wire."""
        return _build_dataclass(self)


class Reply(Message):
    """Base of RDR_to_PC bulk replies: bStatus and bError decoded."""

    __slots__ = ()
    bStatus: int
    bError: int

    @property
    def icc_status(self) -> ICCStatus:
        """bmICCStatus (ProtocolError for the reserved value)."""
        return decode_status(self.bStatus)[0]

    @property
    def command_status(self) -> CommandStatus:
        """bmCommandStatus (ProtocolError for the reserved value)."""
        return decode_status(self.bStatus)[1]

    @property
    def failed(self) -> bool:
        """True when bmCommandStatus says the command failed (bError is meaningful)."""
        return self.command_status is CommandStatus.FAILED

    @property
    def error_text(self) -> str:
        """Readable meaning of bError."""
        return describe_error(self.bError)


@dataclass(frozen=True, slots=True)
class IccPowerOn(Message):
    """PC_to_RDR_IccPowerOn (bPowerSelect: see constants.PowerSelect)."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_IccPowerOn
    bSlot: int = 0
    bSeq: int = 0
    bPowerSelect: int = 0


@dataclass(frozen=True, slots=True)
class IccPowerOff(Message):
    """PC_to_RDR_IccPowerOff."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_IccPowerOff
    bSlot: int = 0
    bSeq: int = 0


@dataclass(frozen=True, slots=True)
class GetSlotStatus(Message):
    """PC_to_RDR_GetSlotStatus."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_GetSlotStatus
    bSlot: int = 0
    bSeq: int = 0


@dataclass(frozen=True, slots=True)
class XfrBlock(Message):
    """PC_to_RDR_XfrBlock."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_XfrBlock
    bSlot: int = 0
    bSeq: int = 0
    bBWI: int = 0
    wLevelParameter: int = 0
    abData: bytes = b""


@dataclass(frozen=True, slots=True)
class GetParameters(Message):
    """PC_to_RDR_GetParameters."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_GetParameters
    bSlot: int = 0
    bSeq: int = 0


@dataclass(frozen=True, slots=True)
class ResetParameters(Message):
    """PC_to_RDR_ResetParameters."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_ResetParameters
    bSlot: int = 0
    bSeq: int = 0


@dataclass(frozen=True, slots=True)
class SetParameters(Message):
    """PC_to_RDR_SetParameters: T0Parameters for bProtocolNum 0, T1Parameters for 1."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_SetParameters
    bSlot: int = 0
    bSeq: int = 0
    bProtocolNum: int = 0
    abProtocolDataStructure: T0Parameters | T1Parameters | bytes | None = None


@dataclass(frozen=True, slots=True)
class Escape(Message):
    """PC_to_RDR_Escape."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_Escape
    bSlot: int = 0
    bSeq: int = 0
    abData: bytes = b""


@dataclass(frozen=True, slots=True)
class IccClock(Message):
    """PC_to_RDR_IccClock (bClockCommand 0 restarts, 1 stops the clock)."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_IccClock
    bSlot: int = 0
    bSeq: int = 0
    bClockCommand: int = 0


@dataclass(frozen=True, slots=True)
class T0APDU(Message):
    """PC_to_RDR_T0APDU."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_T0APDU
    bSlot: int = 0
    bSeq: int = 0
    bmChanges: int = 0
    bClassGetResponse: int = 0
    bClassEnvelope: int = 0


@dataclass(frozen=True, slots=True)
class Secure(Message):
    """PC_to_RDR_Secure; continuation parts (wLevelParameter > 1) carry raw bytes."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_Secure
    bSlot: int = 0
    bSeq: int = 0
    bBWI: int = 0
    wLevelParameter: int = 0
    abPINOperationDataStructure: PINOperation | bytes = dataclasses.field(
        default_factory=PINOperation)


@dataclass(frozen=True, slots=True)
class Mechanical(Message):
    """PC_to_RDR_Mechanical (bFunction: see constants.MechanicalFunction)."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_Mechanical
    bSlot: int = 0
    bSeq: int = 0
    bFunction: int = 0


@dataclass(frozen=True, slots=True)
class Abort(Message):
    """PC_to_RDR_Abort (sent after the ABORT control request)."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_Abort
    bSlot: int = 0
    bSeq: int = 0


@dataclass(frozen=True, slots=True)
class SetDataRateAndClockFrequency(Message):
    """PC_to_RDR_SetDataRateAndClockFrequency (kHz, bps)."""

    message_type: ClassVar[MessageType] = M.PC_to_RDR_SetDataRateAndClockFrequency
    bSlot: int = 0
    bSeq: int = 0
    dwClockFrequency: int = 0
    dwDataRate: int = 0


@dataclass(frozen=True, slots=True)
class DataBlock(Reply):
    """RDR_to_PC_DataBlock."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_DataBlock
    bSlot: int = 0
    bSeq: int = 0
    bStatus: int = 0
    bError: int = 0
    bChainParameter: int = 0
    abData: bytes = b""


@dataclass(frozen=True, slots=True)
class SlotStatus(Reply):
    """RDR_to_PC_SlotStatus."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_SlotStatus
    bSlot: int = 0
    bSeq: int = 0
    bStatus: int = 0
    bError: int = 0
    bClockStatus: int = 0

    @property
    def clock_status(self) -> ClockStatus:
        """bClockStatus decoded (any value 0..3; higher bits are not defined)."""
        return ClockStatus(self.bClockStatus & 0x03)


@dataclass(frozen=True, slots=True)
class Parameters(Reply):
    """RDR_to_PC_Parameters; abProtocolDataStructure is None when dwLength is 0."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_Parameters
    bSlot: int = 0
    bSeq: int = 0
    bStatus: int = 0
    bError: int = 0
    bProtocolNum: int = 0
    abProtocolDataStructure: T0Parameters | T1Parameters | bytes | None = None


@dataclass(frozen=True, slots=True)
class EscapeReply(Reply):
    """RDR_to_PC_Escape."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_Escape
    bSlot: int = 0
    bSeq: int = 0
    bStatus: int = 0
    bError: int = 0
    abData: bytes = b""


@dataclass(frozen=True, slots=True)
class DataRateAndClock(Reply):
    """RDR_to_PC_DataRateAndClockFrequency (kHz, bps)."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_DataRateAndClockFrequency
    bSlot: int = 0
    bSeq: int = 0
    bStatus: int = 0
    bError: int = 0
    dwClockFrequency: int = 0
    dwDataRate: int = 0


@dataclass(frozen=True, slots=True)
class SlotChange:
    """One slot's state in NotifySlotChange."""

    present: bool
    changed: bool


@dataclass(frozen=True, slots=True)
class NotifySlotChange(Message):
    """RDR_to_PC_NotifySlotChange: one SlotChange per slot, slot 0 first."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_NotifySlotChange
    slots: tuple[SlotChange, ...] = ()


@dataclass(frozen=True, slots=True)
class HardwareError(Message):
    """RDR_to_PC_HardwareError (bHardwareErrorCode 0x01: overcurrent)."""

    message_type: ClassVar[MessageType] = M.RDR_to_PC_HardwareError
    bSlot: int = 0
    bSeq: int = 0
    bHardwareErrorCode: int = 0


ParsedMessage: TypeAlias = (
    IccPowerOn | IccPowerOff | GetSlotStatus | XfrBlock | GetParameters | ResetParameters
    | SetParameters | Escape | IccClock | T0APDU | Secure | Mechanical | Abort
    | SetDataRateAndClockFrequency | DataBlock | SlotStatus | Parameters | EscapeReply
    | DataRateAndClock
)

_BULK_CLASSES: tuple[type[Message], ...] = (
    IccPowerOn, IccPowerOff, GetSlotStatus, XfrBlock, GetParameters, ResetParameters,
    SetParameters, Escape, IccClock, T0APDU, Secure, Mechanical, Abort,
    SetDataRateAndClockFrequency, DataBlock, SlotStatus, Parameters, EscapeReply,
    DataRateAndClock,
)
_ALL_CLASSES: tuple[type[Message], ...] = (*_BULK_CLASSES, NotifySlotChange, HardwareError)
_CLASSES: dict[int, type[Message]] = {cls.message_type: cls for cls in _ALL_CLASSES}


def message_class(name_or_type: str | int) -> type[Message]:
    """The dataclass of a message, by bMessageType or by name.

    Names: the class name ('IccPowerOn', 'EscapeReply'), the spec name
    ('PC_to_RDR_IccPowerOn', 'RDR_to_PC_Escape'), or the spec name without its direction
    when that is unambiguous ('DataRateAndClockFrequency').
    """
    if isinstance(name_or_type, int):
        cls = _CLASSES.get(int(name_or_type))
        if cls is None:
            raise UsageError(f"unknown bMessageType 0x{int(name_or_type) & 0xFF:02X}")
        return cls
    cls = _BY_NAME.get(name_or_type)
    if cls is None:
        raise UsageError(f"unknown CCID message name {name_or_type!r}")
    return cls


def _names() -> dict[str, type[Message]]:
    by_name: dict[str, type[Message]] = {}
    short: dict[str, list[type[Message]]] = {}
    for msg_type, cls in _CLASSES.items():
        spec_name = MessageType(msg_type).name
        by_name[spec_name] = cls
        short.setdefault(spec_name.split("_", 3)[-1], []).append(cls)
    for name, classes in short.items():
        if len(classes) == 1:
            by_name.setdefault(name, classes[0])
    for cls in _CLASSES.values():
        by_name[cls.__name__] = cls  # class names win ('Escape' is the command)
    return by_name


_BY_NAME = _names()


# --- building ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Dataclasses to dicts, for construct."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _build_dataclass(msg: Message) -> bytes:
    if isinstance(msg, NotifySlotChange):
        return _build_notify(msg)
    spec = HARDWARE_ERROR if isinstance(msg, HardwareError) else SPECS[msg.message_type]
    if isinstance(msg, Secure) and isinstance(msg.abPINOperationDataStructure, PINOperation):
        pin = msg.abPINOperationDataStructure.abPINDataStructure
        if isinstance(pin, PINModify):
            # A message index the layout has no room for would be dropped silently.
            for name, present in (("bMsgIndex2", pin.bNumberMessage != 0),
                                  ("bMsgIndex3", pin.bNumberMessage >= 3)):
                if (getattr(pin, name) is not None) != present:
                    raise UsageError(
                        f"PIN modification with bNumberMessage {pin.bNumberMessage}:"
                        f" {name} must be {'given' if present else 'None'}")
    try:
        return bytes(spec.build(_plain(msg)))
    except (ConstructError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"cannot build {msg.message_type.name}: {_why(exc)}") from exc


def _build_notify(msg: NotifySlotChange) -> bytes:
    bits = 0
    for n, slot in enumerate(msg.slots):
        bits |= (int(bool(slot.present)) << (2 * n)) | (int(bool(slot.changed)) << (2 * n + 1))
    size = notify_length(len(msg.slots))
    return bytes((M.RDR_to_PC_NotifySlotChange,)) + bits.to_bytes(size, "little")


def _coerce_protocol(number: int, value: Any) -> Any:
    if isinstance(value, Mapping):
        cls = T1Parameters if number == 1 else T0Parameters
        return _make(cls, value)
    return value


def _coerce_pin(value: Any) -> Any:
    if isinstance(value, Mapping):
        value = _make(PINOperation, value)
    if isinstance(value, PINOperation) and isinstance(value.abPINDataStructure, Mapping):
        cls = PINModify if value.bPINOperation == 1 else PINVerify
        value = PINOperation(value.bPINOperation, _make(cls, value.abPINDataStructure))
    return value


def _make(cls: Callable[..., Any], fields: Mapping[str, Any]) -> Any:
    try:
        return cls(**fields)
    except TypeError as exc:
        raise UsageError(f"{getattr(cls, '__name__', cls)}: {exc}") from exc


def build_message(name_or_type: str | int, **fields: Any) -> bytes:
    """Build any message from its spec field names; missing fields default to 0 / empty.

    Nested structures may be given as dataclasses or as mappings of their field names
    (``abProtocolDataStructure={'bmFindexDindex': 0x96, ...}``). ``NotifySlotChange``
    takes ``slots=[SlotChange(...), ...]`` (or (present, changed) pairs).
    """
    cls = message_class(name_or_type)
    if "abProtocolDataStructure" in fields:
        fields["abProtocolDataStructure"] = _coerce_protocol(
            fields.get("bProtocolNum", 0), fields["abProtocolDataStructure"])
    if "abPINOperationDataStructure" in fields:
        fields["abPINOperationDataStructure"] = _coerce_pin(fields["abPINOperationDataStructure"])
    if cls is NotifySlotChange and "slots" in fields:
        fields["slots"] = tuple(
            s if isinstance(s, SlotChange) else SlotChange(*s) for s in fields["slots"])
    msg: Message = _make(cls, fields)
    return msg.to_bytes()


# --- parsing ----------------------------------------------------------------------------


def _why(exc: Exception) -> str:
    """One-line reason from a construct (or builtin) exception."""
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    path = getattr(exc, "path", None)
    if path:
        where = str(path).replace("(parsing)", "").replace("(building)", "")
        where = where.replace(" -> ", ".").strip(" .")
        if where:
            return f"{where}: {reason}"
    return reason


def _convert(value: Any) -> Any:
    """construct Containers of our structures to their dataclasses."""
    if not isinstance(value, dict):
        return value
    if "bmTCCKST0" in value:
        cls: type[Any] = T0Parameters
    elif "bmTCCKST1" in value:
        cls = T1Parameters
    elif "bInsertionOffsetOld" in value:
        cls = PINModify
    elif "bMsgIndex" in value:
        cls = PINVerify
    else:
        cls = PINOperation
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: _convert(value[name]) for name in names})


def _from_container(cls: type[Message], parsed: Any) -> Message:
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: _convert(parsed[name]) for name in names})


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse one bulk message (either direction) into its dataclass.

    A short buffer, an unknown bMessageType, a dwLength that disagrees with the bytes or a
    malformed structure raise ProtocolError.
    """
    raw = _as_bytes(raw, "the CCID message")
    if len(raw) < HEADER_SIZE:
        raise ProtocolError(
            f"CCID message of {len(raw)} bytes is shorter than the 10-byte header"
            + (f" ({raw.hex(' ')})" if raw else ""))
    kind = raw[0]
    if kind in (M.RDR_to_PC_NotifySlotChange, M.RDR_to_PC_HardwareError):
        raise ProtocolError(
            f"bMessageType 0x{kind:02X} is an interrupt message: use parse_interrupt")
    if kind not in _CLASSES:
        raise ProtocolError(f"unknown bMessageType 0x{kind:02X}")
    msg_type = MessageType(kind)
    length = int.from_bytes(raw[1:5], "little")
    if len(raw) != HEADER_SIZE + length:
        raise ProtocolError(
            f"{msg_type.name}: dwLength {length} but {len(raw) - HEADER_SIZE} bytes follow"
            " the header")
    if kind in (M.PC_to_RDR_SetParameters, M.RDR_to_PC_Parameters):
        protocol = raw[7] if kind == M.PC_to_RDR_SetParameters else raw[9]  # bProtocolNum
        size = {0: 5, 1: 7}.get(protocol)
        empty_ok = length == 0 and kind == M.RDR_to_PC_Parameters
        if size is not None and length != size and not empty_ok:
            raise ProtocolError(
                f"{msg_type.name}: the T={protocol} abProtocolDataStructure is {size} bytes,"
                f" dwLength says {length}")
    try:
        parsed = SPECS[msg_type].parse(raw)
    except (ConstructError, ValueError, KeyError) as exc:
        raise ProtocolError(f"malformed {msg_type.name}: {_why(exc)}") from exc
    return _from_container(_CLASSES[kind], parsed)  # type: ignore[return-value]


def parse_interrupt(raw: bytes, slot_count: int) -> NotifySlotChange | HardwareError:
    """Parse an interrupt-IN message for a reader with ``slot_count`` slots.

    Bytes after the message are ignored (some readers pad the packet); a short or
    unknown message raises ProtocolError.
    """
    if not 1 <= slot_count <= 256:
        raise UsageError(f"slot_count {slot_count} is outside 1..256")
    raw = _as_bytes(raw, "the interrupt message")
    if not raw:
        raise ProtocolError("empty interrupt message")
    kind = raw[0]
    try:
        if kind == M.RDR_to_PC_NotifySlotChange:
            need = 1 + notify_length(slot_count)
            if len(raw) < need:
                raise ProtocolError(
                    f"RDR_to_PC_NotifySlotChange of {len(raw)} bytes, {need} needed for"
                    f" {slot_count} slot(s)")
            state = int.from_bytes(
                NOTIFY_SLOT_CHANGE.parse(raw, slot_count=slot_count).bmSlotICCState, "little")
            return NotifySlotChange(tuple(
                SlotChange(present=bool(state >> (2 * n) & 1),
                           changed=bool(state >> (2 * n + 1) & 1))
                for n in range(slot_count)))
        if kind == M.RDR_to_PC_HardwareError:
            if len(raw) < 4:
                raise ProtocolError(f"RDR_to_PC_HardwareError of {len(raw)} bytes, 4 needed")
            parsed = HARDWARE_ERROR.parse(raw)
            return HardwareError(parsed.bSlot, parsed.bSeq, parsed.bHardwareErrorCode)
    except ConstructError as exc:
        raise ProtocolError(f"malformed interrupt message: {_why(exc)}") from exc
    raise ProtocolError(f"unknown interrupt message type 0x{kind:02X}")


# --- class-specific control requests (CCID 1.1 section 5.3) -------------------------------

#: bmRequestType: class request to the interface, host-to-device / device-to-host.
_OUT = 0x21
_IN = 0xA1


@dataclass(frozen=True, slots=True)
class ControlSetup:
    """A USB control request's SETUP fields."""

    bmRequestType: int
    bRequest: int
    wValue: int
    wIndex: int
    wLength: int

    def to_bytes(self) -> bytes:
        """The 8-byte SETUP packet."""
        try:
            return bytes(CONTROL_SETUP.build(_plain(self)))
        except ConstructError as exc:
            raise UsageError(f"cannot build control request: {_why(exc)}") from exc


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise UsageError(f"{name} {value} is outside 0..255")


def abort_request(interface: int, slot: int, seq: int) -> ControlSetup:
    """ABORT: wValue = bSeq << 8 | bSlot; the matching PC_to_RDR_Abort follows on bulk."""
    _check_byte("interface", interface)
    _check_byte("slot", slot)
    _check_byte("seq", seq)
    return ControlSetup(_OUT, ClassRequest.ABORT, (seq << 8) | slot, interface, 0)


def get_clock_frequencies_request(interface: int, max_entries: int = 256) -> ControlSetup:
    """GET_CLOCK_FREQUENCIES asking for up to ``max_entries`` DWORDs.

    Asking for more than bNumClockSupported is deliberate: readers answer more than they
    declare, and a short answer is fine, an overrun is not.
    """
    _check_byte("interface", interface)
    if not 1 <= max_entries <= 0x3FFF:
        raise UsageError(f"max_entries {max_entries} is outside 1..16383")
    return ControlSetup(_IN, ClassRequest.GET_CLOCK_FREQUENCIES, 0, interface, 4 * max_entries)


def get_data_rates_request(interface: int, max_entries: int = 256) -> ControlSetup:
    """GET_DATA_RATES asking for up to ``max_entries`` DWORDs (see above)."""
    _check_byte("interface", interface)
    if not 1 <= max_entries <= 0x3FFF:
        raise UsageError(f"max_entries {max_entries} is outside 1..16383")
    return ControlSetup(_IN, ClassRequest.GET_DATA_RATES, 0, interface, 4 * max_entries)


def parse_class_reply(request: int, payload: bytes,
                      declared: int | None = None) -> tuple[int, ...]:
    """Decode the data stage of a class request (rules in ccid.descriptor).

    ``declared`` is bNumClockSupported / bNumDataRatesSupported. ABORT has no data stage.
    """
    if request == ClassRequest.GET_DATA_RATES:
        return parse_data_rates(payload, declared)
    if request == ClassRequest.GET_CLOCK_FREQUENCIES:
        return parse_clock_frequencies(payload, declared)
    if request == ClassRequest.ABORT:
        if payload:
            raise ProtocolError(f"ABORT answered {len(payload)} data byte(s)")
        return ()
    raise UsageError(f"bRequest 0x{request & 0xFF:02X} is not a CCID class request")
