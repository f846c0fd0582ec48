"""SCardControl for served readers: PC/SC part 10 features as libccid offers them.

CM_IOCTL_GET_FEATURE_REQUEST lists the features as TLVs (tag, length 4, big-endian
control code); the pinpad features turn the client's PIN_VERIFY/PIN_MODIFY_STRUCTURE
into the CCID PC_to_RDR_Secure payload; GET_TLV_PROPERTIES and IFD_PIN_PROPERTIES
describe the reader. The escape (FEATURE_CCID_ESC_COMMAND) is only offered when the
server is started with ``--allow-escape``, as libccid only offers it when its driver
option allows it.
"""

from __future__ import annotations

import struct
from typing import Any

from ccid.constants import ExchangeLevel, PINSupport

__all__ = [
    "ControlError", "control", "feature_list", "pin_modify_payload", "pin_verify_payload",
    "tlv_properties",
]


def scard_ctl_code(code: int) -> int:
    """SCARD_CTL_CODE on pcsc-lite (Linux, macOS ...)."""
    return 0x42000000 + code


CM_IOCTL_GET_FEATURE_REQUEST = scard_ctl_code(3400)
IOCTL_SMARTCARD_VENDOR_IFD_EXCHANGE = scard_ctl_code(1)
_CLASS2_IOCTL_MAGIC = 0x330000

FEATURE_VERIFY_PIN_DIRECT = 0x06
FEATURE_MODIFY_PIN_DIRECT = 0x07
FEATURE_IFD_PIN_PROPERTIES = 0x0A
FEATURE_GET_TLV_PROPERTIES = 0x12
FEATURE_CCID_ESC_COMMAND = 0x13

IOCTL_FEATURE_VERIFY_PIN_DIRECT = scard_ctl_code(_CLASS2_IOCTL_MAGIC + FEATURE_VERIFY_PIN_DIRECT)
IOCTL_FEATURE_MODIFY_PIN_DIRECT = scard_ctl_code(_CLASS2_IOCTL_MAGIC + FEATURE_MODIFY_PIN_DIRECT)
IOCTL_FEATURE_IFD_PIN_PROPERTIES = scard_ctl_code(_CLASS2_IOCTL_MAGIC
                                                  + FEATURE_IFD_PIN_PROPERTIES)
IOCTL_FEATURE_GET_TLV_PROPERTIES = scard_ctl_code(_CLASS2_IOCTL_MAGIC
                                                  + FEATURE_GET_TLV_PROPERTIES)

# GET_TLV_PROPERTIES tags (PC/SC part 10)
PROPERTY_wLcdLayout = 0x01
PROPERTY_bEntryValidationCondition = 0x02
PROPERTY_bTimeOut2 = 0x03
PROPERTY_wLcdMaxCharacters = 0x04
PROPERTY_wLcdMaxLines = 0x05
PROPERTY_bMinPINSize = 0x06
PROPERTY_bMaxPINSize = 0x07
PROPERTY_bPPDUSupport = 0x09
PROPERTY_dwMaxAPDUDataSize = 0x0A
PROPERTY_wIdVendor = 0x0B
PROPERTY_wIdProduct = 0x0C

#: PIN_VERIFY_STRUCTURE up to abData (packed, little-endian), and PIN_MODIFY_STRUCTURE's.
_VERIFY_HEAD = struct.Struct("<BBBBBHBBHB3sI")
_MODIFY_HEAD = struct.Struct("<BBBBBBBHBBBHBBB3sI")
#: Seconds the pinpad may take when the structure says 0 (the reader's default).
DEFAULT_PIN_TIMEOUT = 30.0


class ControlError(Exception):
    """SCardControl fails with this PC/SC return code name."""

    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code = code


def _tlv(tag: int, ioctl: int) -> bytes:
    return struct.pack(">BBI", tag, 4, ioctl)


def feature_list(reader: Any, allow_escape: bool) -> bytes:
    """The CM_IOCTL_GET_FEATURE_REQUEST answer."""
    pins = PINSupport(reader.pin_support)
    out = b""
    if pins & PINSupport.VERIFY:
        out += _tlv(FEATURE_VERIFY_PIN_DIRECT, IOCTL_FEATURE_VERIFY_PIN_DIRECT)
    if pins & PINSupport.MODIFY:
        out += _tlv(FEATURE_MODIFY_PIN_DIRECT, IOCTL_FEATURE_MODIFY_PIN_DIRECT)
    if pins:
        out += _tlv(FEATURE_IFD_PIN_PROPERTIES, IOCTL_FEATURE_IFD_PIN_PROPERTIES)
    out += _tlv(FEATURE_GET_TLV_PROPERTIES, IOCTL_FEATURE_GET_TLV_PROPERTIES)
    if allow_escape:
        out += _tlv(FEATURE_CCID_ESC_COMMAND, IOCTL_SMARTCARD_VENDOR_IFD_EXCHANGE)
    return out


def _pin_sizes(reader: Any) -> tuple[int, int, int] | None:
    """(min, max, validation) the reader's firmware states, or the known GemPC Pinpad v1."""
    fw: Any = reader.firmware_features
    if fw is not None and getattr(fw, "max_pin_size", None):
        return (int(fw.min_pin_size), int(fw.max_pin_size),
                int(getattr(fw, "entry_validation_condition", None) or 0x02))
    info = reader.info
    if (info.vid, info.pid, info.bcd_device) == (0x08E6, 0x3478, 0x0100):
        return 4, 8, 0x02
    return None


def tlv_properties(reader: Any, allow_escape: bool) -> bytes:
    """The FEATURE_GET_TLV_PROPERTIES answer (tag, length, little-endian value)."""
    desc = reader.descriptor
    layout = int(desc.wLcdLayout)
    out = struct.pack("<BBH", PROPERTY_wLcdLayout, 2, layout)
    if layout:
        out += struct.pack("<BBH", PROPERTY_wLcdMaxCharacters, 2, layout & 0xFF)
        out += struct.pack("<BBH", PROPERTY_wLcdMaxLines, 2, layout >> 8)
    out += struct.pack("<BBB", PROPERTY_bTimeOut2, 1, 0)
    sizes = _pin_sizes(reader)
    if sizes is not None:
        out += struct.pack("<BBB", PROPERTY_bMinPINSize, 1, sizes[0])
        out += struct.pack("<BBB", PROPERTY_bMaxPINSize, 1, sizes[1])
        out += struct.pack("<BBB", PROPERTY_bEntryValidationCondition, 1, sizes[2])
    out += struct.pack("<BBB", PROPERTY_bPPDUSupport, 1, int(allow_escape))
    out += struct.pack("<BBH", PROPERTY_wIdVendor, 2, reader.info.vid)
    out += struct.pack("<BBH", PROPERTY_wIdProduct, 2, reader.info.pid)
    level = reader.exchange_level
    big = level in (ExchangeLevel.EXTENDED_APDU, ExchangeLevel.TPDU)
    out += struct.pack("<BBI", PROPERTY_dwMaxAPDUDataSize, 4, 0x10000 if big else 0)
    return out


def pin_properties(reader: Any) -> bytes:
    """PIN_PROPERTIES_STRUCTURE: wLcdLayout, bEntryValidationCondition, bTimeOut2."""
    return struct.pack("<HBB", int(reader.descriptor.wLcdLayout), 0x07, 0)


def pin_verify_payload(data: bytes) -> tuple[bytes, float]:
    """PIN_VERIFY_STRUCTURE -> (PC_to_RDR_Secure abData, timeout in seconds)."""
    if len(data) < _VERIFY_HEAD.size:
        raise ControlError("SCARD_E_INVALID_PARAMETER",
                           f"PIN_VERIFY_STRUCTURE of {len(data)} bytes is too short")
    (timeout, _timeout2, fmt, block, length_fmt, extra, validation, messages, lang, index,
     prologue, size) = _VERIFY_HEAD.unpack_from(data)
    apdu = data[_VERIFY_HEAD.size:]
    if size != len(apdu) or not 4 <= size <= 0x10000:
        raise ControlError("SCARD_E_INVALID_PARAMETER",
                           f"ulDataLength {size} does not match the {len(apdu)} APDU bytes")
    body = struct.pack("<BBBBBHBBHB3s", 0x00, timeout, fmt, block, length_fmt, extra,
                       validation, messages, lang, index, prologue)
    return body + apdu, float(timeout or DEFAULT_PIN_TIMEOUT)


def pin_modify_payload(data: bytes) -> tuple[bytes, float]:
    """PIN_MODIFY_STRUCTURE -> (PC_to_RDR_Secure abData, timeout in seconds)."""
    if len(data) < _MODIFY_HEAD.size:
        raise ControlError("SCARD_E_INVALID_PARAMETER",
                           f"PIN_MODIFY_STRUCTURE of {len(data)} bytes is too short")
    (timeout, _timeout2, fmt, block, length_fmt, off_old, off_new, extra, confirm,
     validation, messages, lang, idx1, idx2, idx3, prologue, size) = \
        _MODIFY_HEAD.unpack_from(data)
    apdu = data[_MODIFY_HEAD.size:]
    if size != len(apdu) or not 4 <= size <= 0x10000:
        raise ControlError("SCARD_E_INVALID_PARAMETER",
                           f"ulDataLength {size} does not match the {len(apdu)} APDU bytes")
    body = struct.pack("<BBBBBBBHBBBHBB", 0x01, timeout, fmt, block, length_fmt, off_old,
                       off_new, extra, confirm, validation, messages, lang, idx1, idx2)
    if messages == 3:  # bMsgIndex3 is there only for a third message (CCID 6.1.11.8)
        body += bytes((idx3,))
    return body + prologue + apdu, float(timeout or DEFAULT_PIN_TIMEOUT)


def _secure(card: Any, payload: bytes, timeout: float) -> bytes:
    # The blocking API builds its own PIN structure (Card.verify_pin/modify_pin); a PC/SC
    # client brings a ready one, so it goes to the reader's Secure path as it is.
    return bytes(card.secure(payload, timeout=timeout))


def control(card: Any, code: int, data: bytes, allow_escape: bool) -> bytes:
    """Answer SCardControl(code, data) on ``card``'s reader and slot."""
    reader = card.reader
    if code == CM_IOCTL_GET_FEATURE_REQUEST:
        return feature_list(reader, allow_escape)
    if code == IOCTL_FEATURE_GET_TLV_PROPERTIES:
        return tlv_properties(reader, allow_escape)
    pins = PINSupport(reader.pin_support)
    if code == IOCTL_FEATURE_IFD_PIN_PROPERTIES and pins:
        return pin_properties(reader)
    if code == IOCTL_FEATURE_VERIFY_PIN_DIRECT and pins & PINSupport.VERIFY:
        payload, timeout = pin_verify_payload(data)
        return _secure(card, payload, timeout)
    if code == IOCTL_FEATURE_MODIFY_PIN_DIRECT and pins & PINSupport.MODIFY:
        payload, timeout = pin_modify_payload(data)
        return _secure(card, payload, timeout)
    if code == IOCTL_SMARTCARD_VENDOR_IFD_EXCHANGE and allow_escape:
        return bytes(card.escape(data))
    raise ControlError("SCARD_E_UNSUPPORTED_FEATURE",
                       f"control code 0x{code:08X} is not offered by this reader")
