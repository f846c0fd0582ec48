"""Hot-path framing: PC_to_RDR frames, RDR_to_PC checks, T=1 blocks, extended-APDU chunks.

Runs in C (``ccid/_fast.c`` through cffi) when the extension was built, else in the
pure-Python twin ``ccid._framing_py``; both give identical results. ``BACKEND`` says which
one is in use; ``CCID_PURE_PYTHON=1`` forces the twin.
"""

from __future__ import annotations

import os
from enum import IntEnum
from types import ModuleType

from ccid import _framing_py as _py
from ccid.errors import ProtocolError, UsageError

__all__ = [
    "BACKEND",
    "CHAIN_EXTENDED",
    "CHAIN_T1",
    "Chain",
    "FrameStatus",
    "T1BlockError",
    "T1Status",
    "build_frame",
    "build_t1_block",
    "check_reply",
    "check_t1_block",
    "crc16",
    "frame_size",
    "join_chained",
    "lrc",
    "parse_header",
    "reply_header",
    "split_extended",
]


class FrameStatus(IntEnum):
    """Outcome of checking an RDR_to_PC frame against the command it answers."""

    OK = _py.OK
    SHORT_HEADER = _py.SHORT_HEADER  # fewer than 10 bytes
    INCOMPLETE = _py.INCOMPLETE  # fewer bytes than dwLength announces: read more
    WRONG_TYPE = _py.WRONG_TYPE
    WRONG_SLOT = _py.WRONG_SLOT
    WRONG_SEQ = _py.WRONG_SEQ  # stale frame of an earlier command
    TOO_LONG = _py.TOO_LONG  # announces more than dwMaxCCIDMessageLength
    TRAILING = _py.TRAILING  # more bytes than dwLength announces


# Indexing a tuple is ~10x cheaper than FrameStatus(code) on this per-transfer path.
_FRAME_STATUS: tuple[FrameStatus, ...] = tuple(FrameStatus(c) for c in range(len(FrameStatus)))


class T1Status(IntEnum):
    """Outcome of checking a T=1 block."""

    OK = _py.T1_OK
    SHORT = _py.T1_SHORT
    LENGTH = _py.T1_LENGTH
    EDC = _py.T1_EDC
    INF_TOO_LONG = _py.T1_INF_TOO_LONG


class T1BlockError(ProtocolError):
    """A T=1 block is malformed or fails its EDC; ``status`` says which."""

    def __init__(self, message: str, status: T1Status) -> None:
        self.status = status
        super().__init__(message)


_T1_TEXT = {
    T1Status.SHORT: "T=1 block shorter than prologue + EDC",
    T1Status.LENGTH: "T=1 block length does not match its LEN byte",
    T1Status.EDC: "T=1 block fails its EDC check",
    T1Status.INF_TOO_LONG: "T=1 block announces LEN 0xFF (reserved)",
}


def _load_backend() -> tuple[str, ModuleType | None]:
    if os.environ.get("CCID_PURE_PYTHON") == "1":
        return "python", None
    try:
        from ccid import _fast  # optional compiled twin
    except ImportError:
        return "python", None
    return "cffi", _fast


BACKEND, _impl = _load_backend()
_active: ModuleType = _impl if _impl is not None else _py

# Bind the active implementation's functions directly: no per-call dispatch cost. These
# raw bindings trust their arguments (the engine and the reader call them per frame with
# bytes and ints they built); the public functions below check theirs.
build_frame_raw = _active.build_frame
_frame_size = _active.frame_size
_check_reply = _active.check_reply
_lrc = _active.lrc
#: (buf, expect_type, slot, seq, max_length) -> check status | bStatus << 8 | bError << 16
#: | byte 9 << 24 in one call; ``code & 0xC0FF == 0`` is the complete, successful reply.
#: Unchecked: :func:`reply_header` is the checked form.
reply_header_raw = _active.reply_header
#: reply_header_raw with the length passed by the caller: ``(buf, len(buf), expect_type,
#: slot, seq, max_length)``, ``buf`` a ``bytes`` object. In C this is the bare function.
reply_code = _active.reply_code
_crc16 = _active.crc16
_build_t1 = _active.build_t1_block
_check_t1 = _active.check_t1_block
_split = _active.split_extended
_join = _active.join_chained

#: A chained exchange driven one reply at a time (T=1 blocks, extended-APDU pieces): one
#: C call per reply checks it and builds the next frame. See ``_framing_py.Chain``.
Chain = _active.Chain
CHAIN_EXTENDED: int = _py.CHAIN_EXTENDED
CHAIN_T1: int = _py.CHAIN_T1

_BYTES_LIKE = (bytes, bytearray, memoryview)
# What the twins raise for arguments of the wrong type or range: the caller's mistake.
_MISUSE = (TypeError, ValueError, IndexError, OverflowError, AttributeError)


def _need_bytes(value: object, what: str) -> None:
    if not isinstance(value, _BYTES_LIKE):
        raise UsageError(f"{what} must be bytes-like, not {type(value).__name__}")


def _need_int(value: object, what: str, high: int = 0xFF) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise UsageError(f"{what} must be an integer 0..{high}, not {value!r}")


def _misuse(exc: Exception, what: str) -> UsageError:
    return UsageError(f"bad argument to {what}: {exc}")


def build_frame(msg_type: int, slot: int, seq: int, p1: int = 0, p2: int = 0, p3: int = 0,
                payload: bytes = b"") -> bytes:
    """One PC_to_RDR frame: 10-byte header then payload."""
    for value, what in ((msg_type, "bMessageType"), (slot, "bSlot"), (seq, "bSeq"),
                        (p1, "byte 7"), (p2, "byte 8"), (p3, "byte 9")):
        _need_int(value, what)
    _need_bytes(payload, "payload")
    return build_frame_raw(msg_type, slot, seq, p1, p2, p3, payload)  # type: ignore[no-any-return]


def parse_header(buf: bytes) -> tuple[int, int, int, int, int, int, int]:
    """(bMessageType, dwLength, bSlot, bSeq, byte7, byte8, byte9) of a frame."""
    _need_bytes(buf, "frame")
    if len(buf) < 10:
        raise ProtocolError(f"frame of {len(buf)} bytes is shorter than the 10-byte header")
    return (buf[0], int.from_bytes(buf[1:5], "little"), buf[5], buf[6], buf[7], buf[8], buf[9])


def _check_args(buf: object, expect_type: object, slot: object, seq: object,
                max_length: object) -> None:
    _need_bytes(buf, "frame")
    _need_int(expect_type, "expected bMessageType")
    _need_int(slot, "bSlot")
    _need_int(seq, "bSeq")
    _need_int(max_length, "max_length", 0xFFFFFFFF)


def check_reply(buf: bytes, expect_type: int, slot: int, seq: int,
                max_length: int = 0) -> FrameStatus:
    """Check an RDR_to_PC frame against the command sent (max_length 0: no limit)."""
    _check_args(buf, expect_type, slot, seq, max_length)
    code: int = _check_reply(buf, expect_type, slot, seq, max_length)
    return _FRAME_STATUS[code]


def reply_header(buf: bytes, expect_type: int, slot: int, seq: int, max_length: int) -> int:
    """:class:`FrameStatus` code | bStatus << 8 | bError << 16 | byte 9 << 24 of a reply
    (only the status when it is shorter than a header)."""
    _check_args(buf, expect_type, slot, seq, max_length)
    return reply_header_raw(buf, expect_type, slot, seq, max_length)  # type: ignore[no-any-return]


def frame_size(buf: bytes) -> int:
    """Total size a header announces (10 + dwLength), or -1 when fewer than 10 bytes."""
    _need_bytes(buf, "frame")
    return _frame_size(buf)  # type: ignore[no-any-return]


def lrc(data: bytes) -> int:
    """Longitudinal redundancy check: XOR of all bytes."""
    _need_bytes(data, "data")
    return _lrc(data)  # type: ignore[no-any-return]


def crc16(data: bytes) -> int:
    """T=1 CRC (reflected 0x8408, init 0xFFFF, no final XOR)."""
    _need_bytes(data, "data")
    return _crc16(data)  # type: ignore[no-any-return]


def build_t1_block(nad: int, pcb: int, inf: bytes, crc: bool) -> bytes:
    """A T=1 block: NAD PCB LEN INF EDC."""
    _need_int(nad, "NAD")
    _need_int(pcb, "PCB")
    _need_bytes(inf, "INF")
    if len(inf) > 254:
        raise ProtocolError(f"T=1 INF of {len(inf)} bytes exceeds 254")
    return _build_t1(nad, pcb, inf, bool(crc))  # type: ignore[no-any-return]


def check_t1_block(block: bytes, crc: bool) -> tuple[int, int, bytes]:
    """(NAD, PCB, INF) of a valid T=1 block; T1BlockError otherwise."""
    _need_bytes(block, "T=1 block")
    status, nad, pcb, inf = _check_t1(block, bool(crc))
    if status:
        code = T1Status(status)
        raise T1BlockError(f"{_T1_TEXT[code]} ({bytes(block[:8]).hex(' ')}…)", code)
    return nad, pcb, inf


def split_extended(apdu: bytes, chunk: int) -> list[tuple[int, bytes]]:
    """(wLevelParameter, part) pieces of at most ``chunk`` bytes for extended-APDU level."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise UsageError(f"chunk size must be a positive integer, not {chunk!r}")
    _need_bytes(apdu, "APDU")
    return _split(apdu, chunk)  # type: ignore[no-any-return]


_JOIN_TEXT = {
    1: "no response pieces",
    2: "chained response does not start with bChainParameter 0x00 or 0x01",
    3: "chained response has a middle piece that is not 0x03",
    4: "chained response does not end with bChainParameter 0x02",
}


def join_chained(parts: list[tuple[int, bytes]]) -> bytes:
    """Join a chained response's (bChainParameter, data) pieces; ProtocolError if disordered."""
    if not isinstance(parts, list | tuple):
        raise UsageError(f"pieces must be a list of (bChainParameter, data), not "
                         f"{type(parts).__name__}")
    try:
        status, data = _join(parts)
    except _MISUSE as exc:
        raise _misuse(exc, "join_chained") from None
    if status:
        raise ProtocolError(_JOIN_TEXT[status])
    if type(data) is not bytes:
        if not isinstance(data, _BYTES_LIKE):
            raise UsageError(f"response pieces must be bytes-like, not {type(data).__name__}")
        data = bytes(data)
    return data
