"""Pure-Python twin of ``ccid/_fast.c``: the per-transfer framing work.

Every function here has a C counterpart with identical results (property tests prove it).
Errors are reported as status codes or raised as ``ccid.errors`` exceptions by the
``ccid.framing`` front, so both twins share one error vocabulary.
"""

from __future__ import annotations

from operator import index

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


def reply_code(buf: bytes, n: int, expect_type: int, slot: int, seq: int,
               max_length: int) -> int:
    """:func:`reply_header` for the per-frame path: ``buf`` is ``bytes`` and ``n`` its
    length (in C the length cannot be taken from the object, so the caller passes it)."""
    return reply_header(buf if n == len(buf) else buf[:n], expect_type, slot, seq, max_length)


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


# --- chained exchanges (twin of ccid_chain_first / ccid_chain_step) ----------------------

CHAIN_EXTENDED = 0
CHAIN_T1 = 1


class Chain:
    """A chained exchange driven one reply at a time: the per-block loop of T=1 TPDU
    exchanges (``mode`` CHAIN_T1) and of extended-APDU pieces (CHAIN_EXTENDED).

    Made once per slot and mode, used for one exchange after the other. :meth:`first`
    starts an exchange and gives its first XfrBlock frame; :meth:`step` takes the reply to
    the frame in flight and gives the next frame, ``b""`` when the exchange is complete
    (:meth:`response`), or None when the reply is not the expected, successful one: the
    state is then untouched and the caller's general code takes over, from the fields
    (``phase``, ``ns``, ``nr``, ``offset``, ``sent``, ``seq``, :meth:`response`).
    ``chunk``: bytes per piece (extended) or IFSC (T=1).
    """

    __slots__ = (
        "_cmd",
        "_resp",
        "chunk",
        "crc",
        "ifsd",
        "max_length",
        "mode",
        "nad",
        "nr",
        "ns",
        "offset",
        "phase",
        "resp_cap",
        "sent",
        "seq",
        "slot",
    )

    def __init__(self, mode: int, *, chunk: int, slot: int = 0, max_length: int = 0,
                 nad: int = 0, crc: bool = False, ifsd: int = 254,
                 resp_cap: int = 65_538) -> None:
        mode, chunk, slot, max_length, nad, ifsd, resp_cap = _check_chain_args(
            mode, chunk, slot, max_length, nad, ifsd, resp_cap)
        self.mode, self.slot, self.chunk, self.max_length = mode, slot, chunk, max_length
        self.nad, self.crc, self.ifsd = nad, bool(crc), ifsd
        self.resp_cap = resp_cap
        self._cmd = b""
        self._resp = bytearray()
        self.seq = self.phase = self.offset = self.sent = self.ns = self.nr = 0

    @property
    def resp_len(self) -> int:
        """Response bytes gathered so far."""
        return len(self._resp)

    def response(self) -> bytes:
        """The response gathered so far (all of it once :meth:`step` returned ``b""``)."""
        return bytes(self._resp)

    def first(self, seq: int, cmd: bytes, *, ns: int = 0, nr: int = 0, chunk: int = 0,
              ifsd: int = 0) -> bytes:
        """Start an exchange of ``cmd``: its first frame, with bSeq ``seq``. T=1: ``ns``
        and ``nr`` are the sequence numbers to start from; ``chunk`` (IFSC) and ``ifsd``,
        when not 0, replace the current ones. Refused arguments (TypeError, ValueError)
        leave the chain as it was."""
        cmd = _as_bytes(cmd, "a command")
        seq, ns, nr, chunk, ifsd = _check_first_args(self.mode, seq, ns, nr, chunk, ifsd)
        if chunk:
            self.chunk = chunk
        if ifsd:
            self.ifsd = ifsd
        self._cmd = cmd
        self.ns, self.nr = ns, nr
        self.offset = 0
        self._resp.clear()
        self.sent = min(len(cmd), self.chunk)
        if self.mode == CHAIN_T1:
            return self._i_frame(seq)
        level = 0x0000 if len(cmd) <= self.chunk else 0x0001
        self.phase = 0 if self.sent < len(cmd) else 1
        self.seq = seq
        return build_frame(0x6F, self.slot, seq, 0, level, 0, cmd[: self.sent])

    def step(self, seq: int, reply: bytes) -> bytes | None:
        """Next frame (bSeq ``seq``), ``b""`` when complete, None: not the expected reply."""
        _check_seq(seq)
        reply = _as_reply(reply)
        n = len(reply)
        if n < HEADER_SIZE or reply[0] != 0x80 or reply[5] != self.slot or \
                reply[6] != self.seq or int.from_bytes(reply[1:5], "little") != n - HEADER_SIZE \
                or (self.max_length and n > self.max_length) or reply[7] & 0xC0:
            return None
        if self.mode == CHAIN_T1:
            return self._t1_step(seq, bytes(reply[HEADER_SIZE:]))
        return self._extended_step(seq, reply)

    def _gather(self, data: bytes) -> bool:
        if len(self._resp) + len(data) > self.resp_cap:
            return False
        self._resp += data
        return True

    def _extended_step(self, seq: int, reply: bytes) -> bytes | None:
        chain = reply[9]
        cmd = self._cmd
        if self.phase == 0:
            offset = self.offset + self.sent
            if chain != 0x10 or offset >= len(cmd):
                return None
            sent = min(len(cmd) - offset, self.chunk)
            last = offset + sent >= len(cmd)
            self.offset, self.sent, self.phase, self.seq = offset, sent, 1 if last else 0, seq
            return build_frame(0x6F, self.slot, seq, 0, 0x02 if last else 0x03, 0,
                               cmd[offset : offset + sent])
        if chain not in ((0x00, 0x01) if self.phase == 1 else (0x03, 0x02)):
            return None
        if not self._gather(bytes(reply[HEADER_SIZE:])):
            return None
        if chain in (0x00, 0x02):
            self.phase = 3
            return b""
        self.phase, self.seq = 2, seq
        return build_frame(0x6F, self.slot, seq, 0, 0x10, 0x00, b"")

    def _i_frame(self, seq: int) -> bytes:
        cmd = self._cmd
        more = self.offset + self.sent < len(cmd)
        block = build_t1_block(self.nad, (self.ns << 6) | (0x20 if more else 0),
                               cmd[self.offset : self.offset + self.sent], self.crc)
        self.phase, self.seq = (1 if more else 2), seq
        return build_frame(0x6F, self.slot, seq, 0, 0, 0, block)

    def _t1_step(self, seq: int, block: bytes) -> bytes | None:
        status, _nad, pcb, inf = check_t1_block(block, self.crc)
        if status:
            return None
        cmd = self._cmd
        if self.phase == 1:
            if pcb & 0xC0 != 0x80 or pcb & 0x2F or inf or (pcb >> 4) & 1 == self.ns or \
                    self.offset + self.sent >= len(cmd):
                return None
            self.offset += self.sent
            self.ns ^= 1
            self.sent = min(len(cmd) - self.offset, self.chunk)
            return self._i_frame(seq)
        if self.phase not in (2, 3):
            return None
        if pcb & 0x80 or pcb & 0x1F or len(inf) > self.ifsd or (pcb >> 6) & 1 != self.nr or \
                (pcb & 0x20 and not inf):
            return None
        if not self._gather(inf):
            return None
        if self.phase == 2:
            self.ns ^= 1  # the card's I-block acknowledges our last one
        self.nr ^= 1
        if not pcb & 0x20:
            self.phase = 0
            return b""
        self.phase, self.seq = 3, seq
        return build_frame(0x6F, self.slot, seq, 0, 0, 0,
                           build_t1_block(self.nad, 0x80 | (self.nr << 4), b"", self.crc))


def _as_bytes(data: bytes, what: str) -> bytes:
    """``data`` as ``bytes``: bytes-like objects only (an int would make ``bytes(n)``)."""
    if type(data) is bytes:
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes-like, not {type(data).__name__}")
    return bytes(data)


def _as_reply(reply: bytes) -> bytes:
    return _as_bytes(reply, "a reply frame")


def _check_seq(seq: int) -> None:
    if type(seq) is not int or not 0 <= seq <= 0xFF:
        raise ValueError(f"bSeq must be 0..255, got {seq!r}")


#: Largest response buffer a chain takes (the C twin allocates it up front).
MAX_RESP_CAP = 1 << 24
#: dwMaxCCIDMessageLength is a 32-bit field.
MAX_MAX_LENGTH = 0xFFFFFFFF


def _int(name: str, value: object) -> int:
    """An integer argument (anything with ``__index__``), else TypeError."""
    if isinstance(value, bool):
        return int(value)
    try:
        return index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def _in_range(name: str, value: object, lo: int, hi: int) -> int:
    number = _int(name, value)
    if not lo <= number <= hi:
        raise ValueError(f"{name} must be {lo}..{hi}, got {value!r}")
    return number


def _check_chain_args(mode: int, chunk: int, slot: int, max_length: int, nad: int,
                      ifsd: int, resp_cap: int) -> tuple[int, int, int, int, int, int, int]:
    """Both twins refuse the same arguments with the same error (TypeError for a
    non-integer, ValueError out of range) and take the same normalised values."""
    mode = _int("mode", mode)
    if mode not in (CHAIN_EXTENDED, CHAIN_T1):
        raise ValueError(f"unknown chain mode {mode!r}")
    return (mode, _check_chunk(mode, chunk), _in_range("slot", slot, 0, 0xFF),
            _in_range("max_length", max_length, 0, MAX_MAX_LENGTH),
            _in_range("nad", nad, 0, 0xFF), _in_range("ifsd", ifsd, 0, 254),
            _in_range("resp_cap", resp_cap, 0, MAX_RESP_CAP))


def _check_chunk(mode: int, chunk: int) -> int:
    return _in_range("chunk", chunk, 1, 254 if mode == CHAIN_T1 else 1 << 31)


def _check_first_args(mode: int, seq: int, ns: int, nr: int, chunk: int,
                      ifsd: int) -> tuple[int, int, int, int, int]:
    """What :meth:`Chain.first` refuses (0 for ``chunk``/``ifsd`` keeps the current one),
    and the values it takes."""
    _check_seq(seq)
    ns = _in_range("ns", ns, 0, 1)
    nr = _in_range("nr", nr, 0, 1)
    chunk = _int("chunk", chunk)
    if chunk:
        _check_chunk(mode, chunk)
    return seq, ns, nr, chunk, _in_range("ifsd", ifsd, 0, 254)
