"""Pure-Python twin of ``ccid/_fast.c``: the per-transfer framing work.

Every function here has a C counterpart with identical results (property tests prove it).
Errors are reported as status codes or raised as ``ccid.errors`` exceptions by the
``ccid.framing`` front, so both twins share one error vocabulary.
"""

from __future__ import annotations

from ccid.constants import HEADER_SIZE

# status codes shared with _fast.c (see ccid.framing.FrameStatus)
OK = 0
SHORT_HEADER = 1
INCOMPLETE = 2
WRONG_TYPE = 3
WRONG_SLOT = 4
WRONG_SEQ = 5
TOO_LONG = 6
TRAILING = 7

# T=1 block check codes (see ccid.framing.T1Status)
T1_OK = 0
T1_SHORT = 1
T1_LENGTH = 2
T1_EDC = 3
T1_INF_TOO_LONG = 4


def build_frame(msg_type: int, slot: int, seq: int, p1: int, p2: int, p3: int,
                payload: bytes) -> bytes:
    """10-byte header (type, dwLength LE, slot, seq, 3 message-specific bytes) + payload."""
    n = len(payload)
    return bytes((msg_type, n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF, (n >> 24) & 0xFF,
                  slot, seq, p1, p2, p3)) + payload


def frame_size(buf: bytes) -> int:
    """Total size announced by a header (10 + dwLength), or -1 when fewer than 10 bytes."""
    if len(buf) < HEADER_SIZE:
        return -1
    return HEADER_SIZE + int.from_bytes(buf[1:5], "little")


def check_reply(buf: bytes, expect_type: int, slot: int, seq: int, max_length: int) -> int:
    """Validate an RDR_to_PC frame against the command it answers; return a status code.

    Order matters: sequence first (a stale frame from an earlier command is discarded by the
    caller), then slot and type, then lengths.
    """
    n = len(buf)
    if n < HEADER_SIZE:
        return SHORT_HEADER
    if buf[6] != seq:
        return WRONG_SEQ
    if buf[5] != slot:
        return WRONG_SLOT
    if buf[0] != expect_type:
        return WRONG_TYPE
    length = int.from_bytes(buf[1:5], "little")
    if max_length and HEADER_SIZE + length > max_length:
        return TOO_LONG
    if n < HEADER_SIZE + length:
        return INCOMPLETE
    if n > HEADER_SIZE + length:
        return TRAILING
    return OK


def reply_header(buf: bytes, expect_type: int, slot: int, seq: int, max_length: int) -> int:
    """check_reply's status in bits 0-7, then bStatus, bError and byte 9 in bits 8-31.

    Only the status when the frame is shorter than its header. ``code & 0xC0FF == 0``:
    the complete, successful reply to the command.
    """
    status = check_reply(buf, expect_type, slot, seq, max_length)
    if status == SHORT_HEADER:
        return status
    return status | buf[7] << 8 | buf[8] << 16 | buf[9] << 24


def lrc(data: bytes) -> int:
    """Longitudinal redundancy check: XOR of all bytes."""
    value = 0
    for b in data:
        value ^= b
    return value


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        v = i
        for _ in range(8):
            v = (v >> 1) ^ 0x8408 if v & 1 else v >> 1
        table.append(v)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """T=1 CRC: CRC-16/CCITT bit-reflected (poly 0x8408), init 0xFFFF, no final XOR.

    Sent most significant byte first, as host drivers and readers do in practice.
    """
    v = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        v = (v >> 8) ^ table[(v ^ b) & 0xFF]
    return v


def build_t1_block(nad: int, pcb: int, inf: bytes, crc: bool) -> bytes:
    """NAD PCB LEN INF EDC, with LRC (1 byte) or CRC (2 bytes)."""
    head = bytes((nad, pcb, len(inf))) + inf
    if crc:
        v = crc16(head)
        return head + bytes(((v >> 8) & 0xFF, v & 0xFF))
    return head + bytes((lrc(head),))


def check_t1_block(block: bytes, crc: bool) -> tuple[int, int, int, bytes]:
    """Return (status, nad, pcb, inf); status is one of the T1_* codes."""
    edc_len = 2 if crc else 1
    n = len(block)
    if n < 3 + edc_len:
        return T1_SHORT, 0, 0, b""
    length = block[2]
    if length == 0xFF:
        return T1_INF_TOO_LONG, block[0], block[1], b""
    if n != 3 + length + edc_len:
        return T1_LENGTH, block[0], block[1], b""
    body = block[: 3 + length]
    if crc:
        v = crc16(body)
        ok = block[-2] == (v >> 8) & 0xFF and block[-1] == v & 0xFF
    else:
        ok = lrc(body) == block[-1]
    if not ok:
        return T1_EDC, block[0], block[1], b""
    return T1_OK, block[0], block[1], bytes(block[3 : 3 + length])


def split_extended(apdu: bytes, chunk: int) -> list[tuple[int, bytes]]:
    """Cut a command APDU into (wLevelParameter, part) pieces of at most ``chunk`` bytes."""
    n = len(apdu)
    if n <= chunk:
        return [(0x0000, bytes(apdu))]
    parts: list[tuple[int, bytes]] = []
    for start in range(0, n, chunk):
        if start == 0:
            level = 0x0001
        elif start + chunk >= n:
            level = 0x0002
        else:
            level = 0x0003
        parts.append((level, bytes(apdu[start : start + chunk])))
    return parts


def join_chained(parts: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """Join (bChainParameter, data) pieces; return (status, data). Status 0 is OK.

    Accepted chains: one 0x00 piece, or 0x01 (0x03)* 0x02. Status 1: empty list,
    2: bad first piece, 3: bad middle piece, 4: chain not terminated.
    """
    if not parts:
        return 1, b""
    first = parts[0][0]
    if len(parts) == 1:
        return (0, parts[0][1]) if first == 0x00 else (4 if first in (0x01, 0x03) else 2, b"")
    if first != 0x01:
        return 2, b""
    for level, _ in parts[1:-1]:
        if level != 0x03:
            return 3, b""
    if parts[-1][0] != 0x02:
        return 4, b""
    return 0, b"".join(p[1] for p in parts)
