"""pcsc-lite's client/server messages: layouts, sizes and constants (protocol 4:4-4:6).

Every message is a fixed C struct of 32-bit fields in the host's byte order (the client and
the server share a machine); the layouts follow pcsc-lite's ``winscard_msg.h`` and
``readers.h``. A request is an ``rxHeader`` (body size, command) then the body; TRANSMIT and
CONTROL bodies are followed by ``cbSendLength`` bytes of data.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

# --- limits of the protocol (pcsclite.h) --------------------------------------------------

MAX_READERNAME: Final = 128
MAX_ATR_SIZE: Final = 33
MAX_BUFFER_SIZE: Final = 264
#: 4 header + 3 Lc + 64 KiB data + 3 Le + 2 SW: the largest TRANSMIT/CONTROL buffer
MAX_BUFFER_SIZE_EXTENDED: Final = 4 + 3 + (1 << 16) + 3 + 2
#: Fixed length of the reader-state array up to protocol 4:5.
PCSCLITE_MAX_READERS_CONTEXTS: Final = 16

PROTOCOL_MAJOR: Final = 4
#: Minor versions served: 4 (pcsc-lite 1.8.24-2.3), 5 (2.4), 6 (2.5).
PROTOCOL_MINORS: Final = (4, 5, 6)
PROTOCOL_MINOR_NEWEST: Final = 6


class Command(IntEnum):
    ESTABLISH_CONTEXT = 0x01
    RELEASE_CONTEXT = 0x02
    LIST_READERS = 0x03
    CONNECT = 0x04
    RECONNECT = 0x05
    DISCONNECT = 0x06
    BEGIN_TRANSACTION = 0x07
    END_TRANSACTION = 0x08
    TRANSMIT = 0x09
    CONTROL = 0x0A
    STATUS = 0x0B
    GET_STATUS_CHANGE = 0x0C
    CANCEL = 0x0D
    CANCEL_TRANSACTION = 0x0E
    GET_ATTRIB = 0x0F
    SET_ATTRIB = 0x10
    VERSION = 0x11
    GET_READERS_STATE = 0x12
    WAIT_READER_STATE_CHANGE = 0x13
    STOP_WAITING_READER_STATE_CHANGE = 0x14
    GET_READER_EVENTS = 0x15  # 4:5
    GET_READERS_STATE_SIZE = 0x16  # 4:6
    GET_READERS_STATE_ARRAY = 0x17  # 4:6


# --- return codes (pcsclite.h) -------------------------------------------------------------

RV: Final[dict[str, int]] = {
    "SCARD_S_SUCCESS": 0x00000000,
    "SCARD_F_INTERNAL_ERROR": 0x80100001,
    "SCARD_E_CANCELLED": 0x80100002,
    "SCARD_E_INVALID_HANDLE": 0x80100003,
    "SCARD_E_INVALID_PARAMETER": 0x80100004,
    "SCARD_E_INVALID_TARGET": 0x80100005,
    "SCARD_E_NO_MEMORY": 0x80100006,
    "SCARD_F_WAITED_TOO_LONG": 0x80100007,
    "SCARD_E_INSUFFICIENT_BUFFER": 0x80100008,
    "SCARD_E_UNKNOWN_READER": 0x80100009,
    "SCARD_E_TIMEOUT": 0x8010000A,
    "SCARD_E_SHARING_VIOLATION": 0x8010000B,
    "SCARD_E_NO_SMARTCARD": 0x8010000C,
    "SCARD_E_UNKNOWN_CARD": 0x8010000D,
    "SCARD_E_CANT_DISPOSE": 0x8010000E,
    "SCARD_E_PROTO_MISMATCH": 0x8010000F,
    "SCARD_E_NOT_READY": 0x80100010,
    "SCARD_E_INVALID_VALUE": 0x80100011,
    "SCARD_E_SYSTEM_CANCELLED": 0x80100012,
    "SCARD_F_COMM_ERROR": 0x80100013,
    "SCARD_F_UNKNOWN_ERROR": 0x80100014,
    "SCARD_E_INVALID_ATR": 0x80100015,
    "SCARD_E_NOT_TRANSACTED": 0x80100016,
    "SCARD_E_READER_UNAVAILABLE": 0x80100017,
    "SCARD_E_PCI_TOO_SMALL": 0x80100019,
    "SCARD_E_READER_UNSUPPORTED": 0x8010001A,
    "SCARD_E_CARD_UNSUPPORTED": 0x8010001C,
    "SCARD_E_NO_SERVICE": 0x8010001D,
    "SCARD_E_SERVICE_STOPPED": 0x8010001E,
    "SCARD_E_UNEXPECTED": 0x8010001F,
    # pcsc-lite's value (Windows uses 0x80100022)
    "SCARD_E_UNSUPPORTED_FEATURE": 0x8010001F,
    "SCARD_E_NO_READERS_AVAILABLE": 0x8010002E,
    "SCARD_W_UNSUPPORTED_CARD": 0x80100065,
    "SCARD_W_UNRESPONSIVE_CARD": 0x80100066,
    "SCARD_W_UNPOWERED_CARD": 0x80100067,
    "SCARD_W_RESET_CARD": 0x80100068,
    "SCARD_W_REMOVED_CARD": 0x80100069,
    "SCARD_W_SECURITY_VIOLATION": 0x8010006A,
    "SCARD_W_CANCELLED_BY_USER": 0x8010006E,
}
RV_NAME: Final[dict[int, str]] = {v: k for k, v in RV.items()}

SUCCESS: Final = RV["SCARD_S_SUCCESS"]

# share modes, protocols, dispositions
SHARE_EXCLUSIVE: Final = 1
SHARE_SHARED: Final = 2
SHARE_DIRECT: Final = 3
PROTOCOL_UNDEFINED: Final = 0
PROTOCOL_T0: Final = 1
PROTOCOL_T1: Final = 2
PROTOCOL_RAW: Final = 4
PROTOCOL_ANY_OLD: Final = 0x1000
LEAVE_CARD: Final = 0
RESET_CARD: Final = 1
UNPOWER_CARD: Final = 2
EJECT_CARD: Final = 3

# READER_STATE.readerState bits (pcsclite.h: SCARD_UNKNOWN ... SCARD_SPECIFIC)
SCARD_UNKNOWN: Final = 0x0001
SCARD_ABSENT: Final = 0x0002
SCARD_PRESENT: Final = 0x0004
SCARD_SWALLOWED: Final = 0x0008
SCARD_POWERED: Final = 0x0010
SCARD_NEGOTIABLE: Final = 0x0020
SCARD_SPECIFIC: Final = 0x0040

# READER_STATE.readerSharing (eventhandler.h)
SHARING_NO_CONTEXT: Final = 0
SHARING_EXCLUSIVE_CONTEXT: Final = -1

# --- message layouts ------------------------------------------------------------------------
# '=' : host byte order, standard sizes, no implicit padding (every struct below has 32-bit
# fields at 4-byte offsets, so the C layout has no hidden padding except READER_STATE's 3
# bytes after the 33-byte ATR, written out as '3x').

HEADER: Final = struct.Struct("=II")  # rxHeader: size, command
VERSION: Final = struct.Struct("=iiI")  # version_struct: major, minor, rv
CLIENT: Final = struct.Struct("=I")  # client_struct: hContext (not used on the wire)
WAIT_STATE: Final = struct.Struct("=II")  # wait_reader_state_change: timeOut, rv
ESTABLISH: Final = struct.Struct("=III")  # dwScope, hContext, rv
RELEASE: Final = struct.Struct("=II")  # hContext, rv
CONNECT: Final = struct.Struct(f"=I{MAX_READERNAME}sIIiII")
# hContext, szReader, dwShareMode, dwPreferredProtocols, hCard, dwActiveProtocol, rv
RECONNECT: Final = struct.Struct("=iIIIII")
# hCard, dwShareMode, dwPreferredProtocols, dwInitialization, dwActiveProtocol, rv
DISCONNECT: Final = struct.Struct("=iII")  # hCard, dwDisposition, rv
BEGIN: Final = struct.Struct("=iI")  # hCard, rv
END: Final = struct.Struct("=iII")  # hCard, dwDisposition, rv
CANCEL: Final = struct.Struct("=iI")  # hContext, rv
STATUS: Final = struct.Struct("=iI")  # hCard, rv
TRANSMIT: Final = struct.Struct("=iIIIIIII")
# hCard, ioSendPciProtocol, ioSendPciLength, cbSendLength, ioRecvPciProtocol,
# ioRecvPciLength, pcbRecvLength, rv
CONTROL: Final = struct.Struct("=iIIIII")
# hCard, dwControlCode, cbSendLength, cbRecvLength, dwBytesReturned, rv
GETSET: Final = struct.Struct(f"=iI{MAX_BUFFER_SIZE}sII")
# hCard, dwAttrId, pbAttr, cbAttrLen, rv
READER_EVENTS: Final = struct.Struct("=II")  # readerEvents, rv
STATE_SIZE: Final = struct.Struct("=i")  # CMD_GET_READERS_STATE_SIZE answer: int32 count
READER_STATE: Final = struct.Struct(f"={MAX_READERNAME}sIIi{MAX_ATR_SIZE}s3xII")
# readerName, eventCounter, readerState, readerSharing, cardAtr, cardAtrLength, cardProtocol

#: Body layout of each request, by command (None: no body).
REQUEST: Final[dict[int, struct.Struct | None]] = {
    Command.VERSION: VERSION,
    Command.ESTABLISH_CONTEXT: ESTABLISH,
    Command.RELEASE_CONTEXT: RELEASE,
    Command.CONNECT: CONNECT,
    Command.RECONNECT: RECONNECT,
    Command.DISCONNECT: DISCONNECT,
    Command.BEGIN_TRANSACTION: BEGIN,
    Command.END_TRANSACTION: END,
    Command.TRANSMIT: TRANSMIT,
    Command.CONTROL: CONTROL,
    Command.STATUS: STATUS,
    Command.CANCEL: CANCEL,
    Command.GET_ATTRIB: GETSET,
    Command.SET_ATTRIB: GETSET,
    Command.GET_READERS_STATE: None,
    Command.WAIT_READER_STATE_CHANGE: None,
    Command.STOP_WAITING_READER_STATE_CHANGE: None,
    Command.GET_READER_EVENTS: None,
    Command.GET_READERS_STATE_SIZE: None,
    Command.GET_READERS_STATE_ARRAY: None,
}

#: The minor version that introduced a command (absent: every served version has it).
SINCE_MINOR: Final[dict[int, int]] = {
    Command.GET_READER_EVENTS: 5,
    Command.GET_READERS_STATE_SIZE: 6,
    Command.GET_READERS_STATE_ARRAY: 6,
}


def pack_reader_state(name: str, event_counter: int, state: int, sharing: int, atr: bytes,
                      protocol: int) -> bytes:
    """One READER_STATE record (an empty name: a free entry)."""
    raw = name.encode("utf-8")[:MAX_READERNAME - 1]
    return READER_STATE.pack(raw, event_counter & 0xFFFF, state, sharing, atr[:MAX_ATR_SIZE],
                             len(atr[:MAX_ATR_SIZE]), protocol)


EMPTY_READER_STATE: Final = bytes(READER_STATE.size)


def c_string(raw: bytes) -> str:
    """A NUL-terminated C char array as text (undecodable bytes replaced)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def rv_name(rv: int) -> str:
    return RV_NAME.get(rv, f"0x{rv:08X}")
