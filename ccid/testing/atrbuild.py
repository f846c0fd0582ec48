"""Build Answers-to-Reset for virtual cards (ISO/IEC 7816-3 clause 8), and read back their fields.

An implementation of its own, independent of the host's parser (``ccid.protocol.atr``), so the
two can check each other. ``build_atr`` lays out TS, T0, the interface-byte groups chained by
TD bytes, the historical bytes and TCK (present unless T=0 is the only protocol indicated).
``atr_fields`` is the card's lenient view of an ATR it was given: it never raises, so a test can
hand a card a deliberately broken ATR.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccid.constants import Voltage
from ccid.errors import UsageError

__all__ = [
    "ATR_INVERSE_T0",
    "ATR_JAVACARD_T1",
    "ATR_OPENPGP",
    "ATR_SIM_T0",
    "ATR_T0_T1",
    "ATRFields",
    "atr_fields",
    "build_atr",
    "inverse_line_bytes",
    "tck",
]

TS_DIRECT = 0x3B
TS_INVERSE = 0x3F
MAX_ATR_LENGTH = 33  # TS plus at most 32 characters
DEFAULT_IFS = 32
DEFAULT_BWI = 4
DEFAULT_CWI = 13
DEFAULT_WI = 10


def tck(body: bytes) -> int:
    """The check byte: XOR of T0 .. last historical byte (TS excluded)."""
    value = 0
    for b in body[1:]:
        value ^= b
    return value


def _byte(name: str, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 0xFF:
        raise UsageError(f"{name}={value!r} is not a byte")
    return value


def build_atr(
    protocols: tuple[int, ...] = (0,),
    *,
    inverse: bool = False,
    ta1: int | None = None,
    tb1: int | None = None,
    tc1: int | None = None,
    specific: int | None = None,
    specific_changeable: bool = True,
    implicit: bool = False,
    tc2: int | None = None,
    ifsc: int | None = None,
    bwi: int | None = None,
    cwi: int | None = None,
    crc: bool | None = None,
    classes: Voltage | int | None = None,
    clock_stop: int | None = None,
    historical: bytes = b"",
) -> bytes:
    """An ATR offering ``protocols`` in the given order (TD1 names the first one).

    ``ta1`` is FiDi, ``tb1`` the deprecated VPP byte, ``tc1`` the extra guard time N,
    ``specific`` the protocol of the specific mode (TA2; bit 8 set unless
    ``specific_changeable``, bit 5 set when ``implicit``), ``tc2`` the T=0 WI.
    ``ifsc`` / ``bwi`` + ``cwi`` / ``crc`` fill the T=1 group (TA/TB/TC after a TD naming T=1);
    ``classes`` (bit 1 A = 5 V, bit 2 B = 3 V, bit 3 C = 1.8 V) and ``clock_stop`` (0..3) fill the
    T=15 group. Absent arguments leave their bytes out. TS is 3F for ``inverse`` (the bytes
    that follow are logical values, as readers deliver them). Bad arguments raise UsageError.
    """
    if not protocols:
        raise UsageError("an ATR must offer at least one protocol")
    for p in protocols:
        if not 0 <= p <= 14:
            raise UsageError(f"protocol T={p} cannot be offered in TD (0..14)")
    if len(historical) > 15:
        raise UsageError(f"{len(historical)} historical bytes: at most 15 fit in T0")
    for name, v in (("ta1", ta1), ("tb1", tb1), ("tc1", tc1), ("tc2", tc2)):
        _byte(name, v)
    if ifsc is not None and not 1 <= ifsc <= 254:
        raise UsageError(f"IFSC {ifsc} outside 1..254")
    if (bwi is not None and not 0 <= bwi <= 15) or (cwi is not None and not 0 <= cwi <= 15):
        raise UsageError("BWI and CWI are 4-bit values")
    if specific is not None and not 0 <= specific <= 15:
        raise UsageError(f"specific-mode protocol T={specific} is not 4 bits")
    if clock_stop is not None and not 0 <= clock_stop <= 3:
        raise UsageError("clock_stop is 0..3")
    if classes is not None and not 0 < int(classes) <= 0x3F:
        raise UsageError("classes must name at least one of A, B, C (6 bits)")

    ta2 = None
    if specific is not None:
        ta2 = specific | (0 if specific_changeable else 0x80) | (0x10 if implicit else 0)

    # Groups after level 2: (T announced by the TD before it, TA, TB, TC).
    tail: list[tuple[int, int | None, int | None, int | None]] = []
    t1_params = ifsc is not None or bwi is not None or cwi is not None or crc is not None
    if t1_params and 1 not in protocols:
        raise UsageError("T=1 parameters given but T=1 is not offered")
    for i, p in enumerate(protocols):
        if p == 1 and t1_params:
            tb = None
            if bwi is not None or cwi is not None:
                tb = ((DEFAULT_BWI if bwi is None else bwi) << 4) | (
                    DEFAULT_CWI if cwi is None else cwi)
            tail.append((1, ifsc, tb, None if crc is None else int(crc)))
        elif i > 0:
            tail.append((p, None, None, None))
    if classes is not None or clock_stop is not None:
        ta15 = ((clock_stop or 0) << 6) | (int(classes) if classes is not None else 0x01)
        tail.append((15, ta15, None, None))

    # Level i+1 holds (TA, TB, TC); TD(i) names the T of level i+1 (TD1: the first protocol).
    levels: list[tuple[int | None, int | None, int | None]] = [(ta1, tb1, tc1), (ta2, None, tc2)]
    announced = [protocols[0]] + [t for t, _, _, _ in tail]
    levels.extend((ta, tb, tc) for _, ta, tb, tc in tail)
    if not tail and levels[1] == (None, None, None) and protocols[0] == 0:
        levels.pop()  # T=0 alone is implicit: no TD1 at all

    def presence(level: tuple[int | None, int | None, int | None]) -> int:
        ta, tb, tc = level
        return (0x10 if ta is not None else 0) | (0x20 if tb is not None else 0) | (
            0x40 if tc is not None else 0)

    out = bytearray([TS_INVERSE if inverse else TS_DIRECT])
    out.append(presence(levels[0]) | (0x80 if len(levels) > 1 else 0) | len(historical))
    for i, level in enumerate(levels):
        out.extend(b for b in level if b is not None)
        if i + 1 < len(levels):
            more = 0x80 if i + 2 < len(levels) else 0
            out.append(presence(levels[i + 1]) | more | announced[i])
    out.extend(historical)
    if any(t != 0 for t in announced[: len(levels) - 1]):
        out.append(tck(bytes(out)))
    if len(out) > MAX_ATR_LENGTH:
        raise UsageError(f"ATR of {len(out)} bytes exceeds {MAX_ATR_LENGTH}")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ATRFields:
    """What a virtual card needs from its own ATR; ``problems`` lists what was wrong."""

    protocols: tuple[int, ...]
    ta1: int | None
    tc1: int | None
    ta2: int | None
    wi: int
    ifsc: int
    bwi: int
    cwi: int
    crc: bool
    classes: int | None
    historical: bytes
    problems: tuple[str, ...]

    @property
    def specific_protocol(self) -> int | None:
        """T of the specific mode (TA2 present), else None (negotiable mode)."""
        return None if self.ta2 is None else self.ta2 & 0x0F


def atr_fields(atr: bytes) -> ATRFields:
    """Walk an ATR leniently; never raises (defaults stand in for what is missing)."""
    problems: list[str] = []
    ta: dict[int, int] = {}
    tb: dict[int, int] = {}
    tc: dict[int, int] = {}
    level_t: dict[int, int] = {}  # T announced for level i (by TD(i-1))
    announced: list[int] = []
    pos = 2
    hist = b""
    if len(atr) < 2:
        problems.append("shorter than TS T0")
    elif atr[0] not in (TS_DIRECT, TS_INVERSE):
        problems.append(f"TS {atr[0]:02X} is neither 3B nor 3F")
    if len(atr) >= 2:
        y, k = atr[1] >> 4, atr[1] & 0x0F
        level = 1
        while True:
            for bit, table in ((1, ta), (2, tb), (4, tc)):
                if y & bit:
                    if pos >= len(atr):
                        problems.append("truncated in interface bytes")
                        break
                    table[level] = atr[pos]
                    pos += 1
            if not y & 8 or pos >= len(atr):
                if y & 8:
                    problems.append("truncated before TD")
                break
            td = atr[pos]
            pos += 1
            announced.append(td & 0x0F)
            level += 1
            level_t[level] = td & 0x0F
            y = td >> 4
        hist = bytes(atr[pos : pos + k])
        if len(hist) < k:
            problems.append("truncated in historical bytes")
        pos += k
        needs_tck = any(t != 0 for t in announced)
        if needs_tck:
            if pos >= len(atr):
                problems.append("TCK missing")
            elif tck(bytes(atr[: pos + 1])) != 0:
                problems.append("TCK wrong")
            pos += 1
        if pos < len(atr):
            problems.append("extra bytes after the ATR")
    protocols = tuple(dict.fromkeys(t for t in announced if t != 15)) or (0,)

    def first_for(table: dict[int, int], t: int) -> int | None:
        for lvl in sorted(table):
            if lvl >= 3 and level_t.get(lvl) == t:
                return table[lvl]
        return None

    tb_t1 = first_for(tb, 1)
    tc_t1 = first_for(tc, 1)
    ifsc = first_for(ta, 1)
    return ATRFields(
        protocols=protocols,
        ta1=ta.get(1),
        tc1=tc.get(1),
        ta2=ta.get(2),
        wi=tc.get(2, DEFAULT_WI) or DEFAULT_WI,
        ifsc=ifsc if ifsc is not None and 1 <= ifsc <= 254 else DEFAULT_IFS,
        bwi=DEFAULT_BWI if tb_t1 is None else tb_t1 >> 4,
        cwi=DEFAULT_CWI if tb_t1 is None else tb_t1 & 0x0F,
        crc=bool(tc_t1 & 1) if tc_t1 is not None else False,
        classes=None if first_for(ta, 15) is None else (first_for(ta, 15) or 0) & 0x3F,
        historical=hist,
        problems=tuple(problems),
    )


_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def inverse_line_bytes(logical: bytes) -> bytes:
    """The bytes as they travel on the I/O line under the inverse convention.

    Inverse convention sends each byte most significant bit first with state H meaning 0, so
    the line value is the bit-reversed complement (logical 3F becomes 03 on the line... and
    readers decode it back). Given for tests of decoders; ATRs here are logical values.
    """
    return bytes(_BITREV[b] ^ 0xFF for b in logical)


#: T=1 only, JavaCard-like: TA1 13, TB1 00, TC1 00, IFSC 254, BWI 4 CWI 5, LRC.
ATR_JAVACARD_T1 = build_atr(
    (1,), ta1=0x13, tb1=0x00, tc1=0x00, ifsc=0xFE, bwi=4, cwi=5, historical=b"VirtualJC")
#: T=0 only, SIM-like: TA1 94, classes A and B with clock stop, proprietary historical bytes.
ATR_SIM_T0 = build_atr(
    (0,), ta1=0x94, classes=Voltage.V5_0 | Voltage.V3_0, clock_stop=3, historical=b"VirtSIM")
#: Inverse convention, T=0 only, TB1 00 (an old memory/payphone-era style card).
ATR_INVERSE_T0 = build_atr((0,), inverse=True, tb1=0x00, tc1=0x00, historical=b"\x69\x90\x00")
#: T=0 and T=1, TA1 96, IFSC 254, CRC: a dual-protocol card.
ATR_T0_T1 = build_atr(
    (0, 1), ta1=0x96, ifsc=0xFE, bwi=4, cwi=5, crc=True, historical=b"\x80\x31\x80\x65")
#: Layout of an OpenPGP card v2: TA1 18, TC1 FF, T=1 IFSC 254 BWI 7 CWI 5, T=15 classes A+B.
ATR_OPENPGP = build_atr(
    (1,), ta1=0x18, tc1=0xFF, ifsc=0xFE, bwi=7, cwi=5, classes=0x03, clock_stop=0,
    historical=bytes.fromhex("0031C573C0014000" "9000"))
