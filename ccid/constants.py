"""Every CCID code in one place: message types, status and error codes, feature bits.

Names follow the USB CCID 1.1 specification so that a reader of the spec finds them.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "HEADER_SIZE",
    "REPLY_TYPE",
    "ChainParameter",
    "ClassRequest",
    "ClockStatus",
    "CommandStatus",
    "ExchangeLevel",
    "Features",
    "ICCStatus",
    "LevelParameter",
    "MechanicalFunction",
    "MessageType",
    "PINSupport",
    "PowerSelect",
    "Protocols",
    "SlotErrorCode",
    "Voltage",
    "describe_error",
]

#: Every bulk message starts with a 10-byte header.
HEADER_SIZE = 10

#: USB class code of a CCID interface.
CCID_CLASS = 0x0B
#: bDescriptorType of the CCID class descriptor (0xFF on some pre-1.0 readers).
CCID_DESCRIPTOR_TYPE = 0x21
CCID_DESCRIPTOR_LENGTH = 54


class MessageType(IntEnum):
    """bMessageType of bulk and interrupt messages."""

    # PC_to_RDR (bulk-OUT)
    PC_to_RDR_SetParameters = 0x61
    PC_to_RDR_IccPowerOn = 0x62
    PC_to_RDR_IccPowerOff = 0x63
    PC_to_RDR_GetSlotStatus = 0x65
    PC_to_RDR_Secure = 0x69
    PC_to_RDR_T0APDU = 0x6A
    PC_to_RDR_Escape = 0x6B
    PC_to_RDR_GetParameters = 0x6C
    PC_to_RDR_ResetParameters = 0x6D
    PC_to_RDR_IccClock = 0x6E
    PC_to_RDR_XfrBlock = 0x6F
    PC_to_RDR_Mechanical = 0x71
    PC_to_RDR_Abort = 0x72
    PC_to_RDR_SetDataRateAndClockFrequency = 0x73
    # RDR_to_PC (bulk-IN)
    RDR_to_PC_DataBlock = 0x80
    RDR_to_PC_SlotStatus = 0x81
    RDR_to_PC_Parameters = 0x82
    RDR_to_PC_Escape = 0x83
    RDR_to_PC_DataRateAndClockFrequency = 0x84
    # RDR_to_PC (interrupt-IN)
    RDR_to_PC_NotifySlotChange = 0x50
    RDR_to_PC_HardwareError = 0x51


M = MessageType

#: The reply type each command must get (CCID 1.1 section 6.1 and 6.2).
REPLY_TYPE: dict[int, int] = {
    M.PC_to_RDR_IccPowerOn: M.RDR_to_PC_DataBlock,
    M.PC_to_RDR_IccPowerOff: M.RDR_to_PC_SlotStatus,
    M.PC_to_RDR_GetSlotStatus: M.RDR_to_PC_SlotStatus,
    M.PC_to_RDR_XfrBlock: M.RDR_to_PC_DataBlock,
    M.PC_to_RDR_GetParameters: M.RDR_to_PC_Parameters,
    M.PC_to_RDR_ResetParameters: M.RDR_to_PC_Parameters,
    M.PC_to_RDR_SetParameters: M.RDR_to_PC_Parameters,
    M.PC_to_RDR_Escape: M.RDR_to_PC_Escape,
    M.PC_to_RDR_IccClock: M.RDR_to_PC_SlotStatus,
    M.PC_to_RDR_T0APDU: M.RDR_to_PC_SlotStatus,
    M.PC_to_RDR_Secure: M.RDR_to_PC_DataBlock,
    M.PC_to_RDR_Mechanical: M.RDR_to_PC_SlotStatus,
    M.PC_to_RDR_Abort: M.RDR_to_PC_SlotStatus,
    M.PC_to_RDR_SetDataRateAndClockFrequency: M.RDR_to_PC_DataRateAndClockFrequency,
}


class ClassRequest(IntEnum):
    """CCID class-specific control requests (bmRequestType 0xA1 in, 0x21 out)."""

    ABORT = 0x01
    GET_CLOCK_FREQUENCIES = 0x02
    GET_DATA_RATES = 0x03


class ICCStatus(IntEnum):
    """bmICCStatus: bits 0-1 of bStatus."""

    ACTIVE = 0
    INACTIVE = 1
    ABSENT = 2


class CommandStatus(IntEnum):
    """bmCommandStatus: bits 6-7 of bStatus."""

    OK = 0
    FAILED = 1
    TIME_EXTENSION = 2


class ClockStatus(IntEnum):
    """bClockStatus of RDR_to_PC_SlotStatus."""

    RUNNING = 0
    STOPPED_LOW = 1
    STOPPED_HIGH = 2
    STOPPED_UNKNOWN = 3


class SlotErrorCode(IntEnum):
    """Named bError values (CCID 1.1 table 6.2-2); 0x01..0x7F are parameter offsets."""

    CMD_NOT_SUPPORTED = 0x00
    CMD_SLOT_BUSY = 0xE0
    PIN_CANCELLED = 0xEF
    PIN_TIMEOUT = 0xF0
    BUSY_WITH_AUTO_SEQUENCE = 0xF2
    DEACTIVATED_PROTOCOL = 0xF3
    PROCEDURE_BYTE_CONFLICT = 0xF4
    ICC_CLASS_NOT_SUPPORTED = 0xF5
    ICC_PROTOCOL_NOT_SUPPORTED = 0xF6
    BAD_ATR_TCK = 0xF7
    BAD_ATR_TS = 0xF8
    HW_ERROR = 0xFB
    XFR_OVERRUN = 0xFC
    XFR_PARITY_ERROR = 0xFD
    ICC_MUTE = 0xFE
    CMD_ABORTED = 0xFF


_ERROR_TEXT: dict[int, str] = {
    SlotErrorCode.CMD_NOT_SUPPORTED: "command not supported by the reader",
    SlotErrorCode.CMD_SLOT_BUSY: "slot busy with another command",
    SlotErrorCode.PIN_CANCELLED: "PIN entry cancelled by the user",
    SlotErrorCode.PIN_TIMEOUT: "PIN entry timed out",
    SlotErrorCode.BUSY_WITH_AUTO_SEQUENCE: "reader busy with an automatic sequence (PPS, power-on)",
    SlotErrorCode.DEACTIVATED_PROTOCOL: "protocol deactivated",
    SlotErrorCode.PROCEDURE_BYTE_CONFLICT: "T=0 procedure byte conflict",
    SlotErrorCode.ICC_CLASS_NOT_SUPPORTED: "card voltage class not supported",
    SlotErrorCode.ICC_PROTOCOL_NOT_SUPPORTED: "card protocol not supported",
    SlotErrorCode.BAD_ATR_TCK: "ATR has a bad TCK",
    SlotErrorCode.BAD_ATR_TS: "ATR has a bad TS",
    SlotErrorCode.HW_ERROR: "reader hardware error",
    SlotErrorCode.XFR_OVERRUN: "transfer overrun",
    SlotErrorCode.XFR_PARITY_ERROR: "parity error talking to the card",
    SlotErrorCode.ICC_MUTE: "card mute (no answer, or no card)",
    SlotErrorCode.CMD_ABORTED: "command aborted",
}


def describe_error(bError: int) -> str:
    """Readable meaning of a bError byte, for any value 0..255."""
    if bError in _ERROR_TEXT:
        return _ERROR_TEXT[bError]
    if 0x01 <= bError <= 0x7F:
        return f"bad value at offset {bError} of the command"
    if 0x81 <= bError <= 0xC0:
        return f"vendor-defined error 0x{bError:02X}"
    return f"reserved error code 0x{bError:02X}"


class Features(IntFlag):
    """dwFeatures bits of the CCID class descriptor."""

    NONE = 0
    AUTO_CONF_ATR = 0x00000002
    AUTO_ACTIVATION = 0x00000004
    AUTO_VOLTAGE = 0x00000008
    AUTO_CLOCK = 0x00000010
    AUTO_BAUD = 0x00000020
    AUTO_PPS_PROPRIETARY = 0x00000040
    AUTO_PPS_CURRENT = 0x00000080
    CLOCK_STOP = 0x00000100
    NAD_NOT_ZERO = 0x00000200
    AUTO_IFSD = 0x00000400
    ICCD_TOKEN = 0x00000800
    LEVEL_TPDU = 0x00010000
    LEVEL_SHORT_APDU = 0x00020000
    LEVEL_EXTENDED_APDU = 0x00040000
    USB_WAKE_UP = 0x00100000


#: Bits 16-18 of dwFeatures select the exchange level.
EXCHANGE_LEVEL_MASK = 0x00070000


class ExchangeLevel(IntEnum):
    """Exchange level declared in dwFeatures (bits 16-18)."""

    CHARACTER = 0x00000000
    TPDU = 0x00010000
    SHORT_APDU = 0x00020000
    EXTENDED_APDU = 0x00040000


class Voltage(IntFlag):
    """bVoltageSupport bits."""

    NONE = 0
    V5_0 = 0x01
    V3_0 = 0x02
    V1_8 = 0x04


class PowerSelect(IntEnum):
    """bPowerSelect of PC_to_RDR_IccPowerOn."""

    AUTO = 0
    V5_0 = 1
    V3_0 = 2
    V1_8 = 3


class Protocols(IntFlag):
    """dwProtocols bits."""

    NONE = 0
    T0 = 0x01
    T1 = 0x02


class PINSupport(IntFlag):
    """bPINSupport bits."""

    NONE = 0
    VERIFY = 0x01
    MODIFY = 0x02


class LevelParameter(IntEnum):
    """wLevelParameter of XfrBlock at extended APDU level (CCID 1.1 6.1.4)."""

    COMPLETE = 0x0000  # the command APDU begins and ends with this message
    BEGIN = 0x0001  # begins, continues in the next message
    END = 0x0002  # continues a previous message and ends
    MIDDLE = 0x0003  # continues a previous message, more to come
    CONTINUE_RESPONSE = 0x0010  # empty: asks the reader for the next response part


class ChainParameter(IntEnum):
    """bChainParameter of RDR_to_PC_DataBlock at extended APDU level."""

    COMPLETE = 0x00
    BEGIN = 0x01
    END = 0x02
    MIDDLE = 0x03
    CONTINUE_REQUESTED = 0x10  # empty data block: the reader expects more of the command


class MechanicalFunction(IntEnum):
    """bFunction of PC_to_RDR_Mechanical."""

    ACCEPT = 0x01
    EJECT = 0x02
    CAPTURE = 0x03
    LOCK = 0x04
    UNLOCK = 0x05
