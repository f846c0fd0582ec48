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
from ccid.errors import ProtocolError

__all__ = [
    "BACKEND",
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

# Bind the active implementation's functions directly: no per-call dispatch cost.
build_frame_raw = _active.build_frame
frame_size = _active.frame_size
_check_reply = _active.check_reply
lrc = _active.lrc
#: (buf, expect_type, slot, seq, max_length) -> check status | bStatus << 8 | bError << 16
#: | byte 9 << 24 in one call; ``code & 0xC0FF == 0`` is the complete, successful reply.
reply_header = _active.reply_header
crc16 = _active.crc16
_build_t1 = _active.build_t1_block
_check_t1 = _active.check_t1_block
_split = _active.split_extended
_join = _active.join_chained


def build_frame(msg_type: int, slot: int, seq: int, p1: int = 0, p2: int = 0, p3: int = 0,
                payload: bytes = b"") -> bytes:
    """One PC_to_RDR frame: 10-byte header then payload."""
    return build_frame_raw(msg_type, slot, seq, p1, p2, p3, payload)  # type: ignore[no-any-return]


def parse_header(buf: bytes) -> tuple[int, int, int, int, int, int, int]:
    """(bMessageType, dwLength, bSlot, bSeq, byte7, byte8, byte9) of a frame."""
    if len(buf) < 10:
        raise ProtocolError(f"frame of {len(buf)} bytes is shorter than the 10-byte header")
    return (buf[0], int.from_bytes(buf[1:5], "little"), buf[5], buf[6], buf[7], buf[8], buf[9])


def check_reply(buf: bytes, expect_type: int, slot: int, seq: int,
                max_length: int = 0) -> FrameStatus:
    """Check an RDR_to_PC frame against the command sent (max_length 0: no limit)."""
    code: int = _check_reply(buf, expect_type, slot, seq, max_length)
    return _FRAME_STATUS[code]


def build_t1_block(nad: int, pcb: int, inf: bytes, crc: bool) -> bytes:
    """A T=1 block: NAD PCB LEN INF EDC."""
    if len(inf) > 254:
        raise ProtocolError(f"T=1 INF of {len(inf)} bytes exceeds 254")
    return _build_t1(nad, pcb, inf, crc)  # type: ignore[no-any-return]


def check_t1_block(block: bytes, crc: bool) -> tuple[int, int, bytes]:
    """(NAD, PCB, INF) of a valid T=1 block; T1BlockError otherwise."""
    status, nad, pcb, inf = _check_t1(block, crc)
    if status:
        code = T1Status(status)
        raise T1BlockError(f"{_T1_TEXT[code]} ({bytes(block[:8]).hex(' ')}…)", code)
    return nad, pcb, inf


def split_extended(apdu: bytes, chunk: int) -> list[tuple[int, bytes]]:
    """(wLevelParameter, part) pieces of at most ``chunk`` bytes for extended-APDU level."""
    if chunk <= 0:
        raise ValueError("chunk size must be positive")
    return _split(apdu, chunk)  # type: ignore[no-any-return]


_JOIN_TEXT = {
    1: "no response pieces",
    2: "chained response does not start with bChainParameter 0x00 or 0x01",
    3: "chained response has a middle piece that is not 0x03",
    4: "chained response does not end with bChainParameter 0x02",
}


def join_chained(parts: list[tuple[int, bytes]]) -> bytes:
    """Join a chained response's (bChainParameter, data) pieces; ProtocolError if disordered."""
    status, data = _join(parts)
    if status:
        raise ProtocolError(_JOIN_TEXT[status])
    return data  # type: ignore[no-any-return]
