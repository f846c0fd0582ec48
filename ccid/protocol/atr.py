"""Answer-to-Reset decoding (ISO/IEC 7816-3 clause 8).

``parse_atr(raw)`` returns an ``ATR``: the raw interface bytes by level, the historical
bytes, the check byte, and the values derived from them (protocols, Fi/Di, guard time,
T=0 and T=1 parameters, clock stop and class indicator). Any byte string either parses or
raises ``ATRError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from ccid._args import as_bytes as _as_bytes
from ccid.errors import ProtocolError
from ccid.protocol.params import DEFAULT_FI_DI, DI_TABLE, FI_TABLE, FMAX_TABLE

__all__ = ["ATR", "ATRError", "parse_atr"]

#: TS plus at most 32 characters (ISO/IEC 7816-3 8.2.1).
MAX_ATR_LENGTH: Final = 33

_TS_CONVENTION: Final[dict[int, Literal["direct", "inverse"]]] = {
    0x3B: "direct",
    0x3F: "inverse",
}

_CLOCK_STOP_TEXT: Final = (
    "clock stop not supported",
    "clock stop supported in state L",
    "clock stop supported in state H",
    "clock stop supported, no preference",
)

_CLASS_LETTERS: Final = ((0x01, "A (5 V)"), (0x02, "B (3 V)"), (0x04, "C (1.8 V)"))


class ATRError(ProtocolError):
    """The ATR is empty, truncated, too long, has a bad TS or (when checked) a bad TCK."""


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


@dataclass(frozen=True, slots=True, init=False)
class ATR:
    """A decoded ATR. Interface bytes are tuples indexed by level - 1 (``TA[0]`` is TA1).

    ``ATR(raw)`` decodes ``raw`` (the same as ``parse_atr(raw)``); ``ATRError`` when it is
    malformed, and, unless ``check_tck=False``, when its check byte is wrong.
    """

    raw: bytes
    convention: Literal["direct", "inverse"]
    T0: int
    TA: tuple[int | None, ...]
    TB: tuple[int | None, ...]
    TC: tuple[int | None, ...]
    TD: tuple[int | None, ...]
    historical: bytes
    TCK: int | None
    tck_ok: bool

    def __init__(self, raw: bytes, *, check_tck: bool = True) -> None:
        fields = _decode(raw, check_tck)
        for name, value in zip(_FIELDS, fields, strict=True):
            object.__setattr__(self, name, value)

    def __reduce__(self) -> tuple[object, ...]:
        # rebuilt from the bytes, which is all an ATR is; a wrong TCK stays allowed
        return (_rebuild, (self.raw,))

    def __bytes__(self) -> bytes:
        return self.raw

    def __str__(self) -> str:
        return _hex(self.raw)

    # --- lookup helpers ------------------------------------------------------------

    def _level(self, kind: tuple[int | None, ...], i: int) -> int | None:
        return kind[i - 1] if 1 <= i <= len(kind) else None

    def _first_for(self, kind: tuple[int | None, ...], protocol: int) -> int | None:
        """First byte of ``kind`` at a level i >= 3 introduced by a TD(i-1) for ``protocol``."""
        for i in range(3, len(kind) + 1):
            td = self.TD[i - 2]
            if td is not None and td & 0x0F == protocol and kind[i - 1] is not None:
                return kind[i - 1]
        return None

    # --- protocols -----------------------------------------------------------------

    @property
    def protocols(self) -> tuple[int, ...]:
        """Transmission protocols in the order offered; (0,) when no TD1 offers any."""
        seen: list[int] = []
        for td in self.TD:
            if td is None:
                continue
            t = td & 0x0F
            if t != 15 and t not in seen:
                seen.append(t)
        return tuple(seen) if seen else (0,)

    @property
    def first_protocol(self) -> int:
        """The protocol used when no PPS is done (first offered)."""
        return self.protocols[0]

    # --- global bytes ----------------------------------------------------------------

    @property
    def fi_di_index(self) -> int:
        """TA1 as is (Fi index << 4 | Di index), 0x11 when absent."""
        ta1 = self._level(self.TA, 1)
        return DEFAULT_FI_DI if ta1 is None else ta1

    @property
    def Fi(self) -> int | None:
        """Clock rate conversion factor from TA1 (372 by default), None when RFU."""
        return FI_TABLE.get(self.fi_di_index >> 4)

    @property
    def Di(self) -> int | None:
        """Baud rate adjustment factor from TA1 (1 by default), None when RFU."""
        return DI_TABLE.get(self.fi_di_index & 0x0F)

    @property
    def f_max(self) -> int | None:
        """Maximum clock frequency in Hz for TA1's Fi, None when RFU."""
        return FMAX_TABLE.get(self.fi_di_index >> 4)

    @property
    def guard_time_N(self) -> int:
        """Extra guard time N from TC1 (0 by default; 255 means the minimum guard time)."""
        tc1 = self._level(self.TC, 1)
        return 0 if tc1 is None else tc1

    @property
    def specific_mode(self) -> bool:
        """True when TA2 is present: the card runs a specific protocol, no PPS."""
        return self._level(self.TA, 2) is not None

    @property
    def specific_protocol(self) -> int | None:
        """The protocol of specific mode (TA2 bits 4-1), None in negotiable mode."""
        ta2 = self._level(self.TA, 2)
        return None if ta2 is None else ta2 & 0x0F

    @property
    def can_change_mode(self) -> bool | None:
        """TA2 bit 8 clear: the card can switch to negotiable mode (after a warm reset)."""
        ta2 = self._level(self.TA, 2)
        return None if ta2 is None else not ta2 & 0x80

    @property
    def implicit_params(self) -> bool | None:
        """TA2 bit 5 set: Fi/Di are implicit, not those of TA1."""
        ta2 = self._level(self.TA, 2)
        return None if ta2 is None else bool(ta2 & 0x10)

    @property
    def wi(self) -> int:
        """T=0 waiting integer from TC2 (10 by default; 0 is reserved and read as 10)."""
        tc2 = self._level(self.TC, 2)
        return tc2 if tc2 else 10

    # --- T=1 -------------------------------------------------------------------------

    @property
    def ifsc(self) -> int:
        """T=1 IFSC from the first TA for T=1 (32 by default; 0x00 and 0xFF reserved)."""
        value = self._first_for(self.TA, 1)
        return value if value is not None and 0x01 <= value <= 0xFE else 32

    @property
    def bwi(self) -> int:
        """T=1 block waiting integer: high nibble of the first TB for T=1 (4 by default)."""
        value = self._first_for(self.TB, 1)
        return 4 if value is None else value >> 4

    @property
    def cwi(self) -> int:
        """T=1 character waiting integer: low nibble of the first TB for T=1 (13 by default)."""
        value = self._first_for(self.TB, 1)
        return 13 if value is None else value & 0x0F

    @property
    def edc(self) -> Literal["lrc", "crc"]:
        """T=1 error detection code from bit 1 of the first TC for T=1 (LRC by default)."""
        value = self._first_for(self.TC, 1)
        return "crc" if value is not None and value & 0x01 else "lrc"

    # --- T=15 ------------------------------------------------------------------------

    @property
    def clock_stop(self) -> int | None:
        """Clock stop indicator X (TA for T=15, bits 8-7): 0 no, 1 L, 2 H, 3 either."""
        value = self._first_for(self.TA, 15)
        return None if value is None else value >> 6

    @property
    def class_indicator(self) -> int | None:
        """Class indicator Y (TA for T=15, bits 6-1): bit 1 A, bit 2 B, bit 3 C."""
        value = self._first_for(self.TA, 15)
        return None if value is None else value & 0x3F

    @property
    def classes(self) -> tuple[str, ...]:
        """Supported classes as letters ("A", "B", "C"); empty when not indicated."""
        y = self.class_indicator
        if y is None:
            return ()
        return tuple(text[0] for bit, text in _CLASS_LETTERS if y & bit)

    # --- human-readable ------------------------------------------------------------

    def describe(self) -> list[str]:
        """One line per ATR byte (or group) saying what it means."""
        lines = [f"ATR: {_hex(self.raw)}"]
        lines.append(f"TS = 0x{self.raw[0]:02X} --> {self.convention} convention")
        present = [n for bit, n in ((0x10, "TA1"), (0x20, "TB1"), (0x40, "TC1"), (0x80, "TD1"))
                   if self.T0 & bit]
        lines.append(
            f"T0 = 0x{self.T0:02X} --> Y1: {' '.join(present) or 'no interface bytes'}, "
            f"K = {self.T0 & 0x0F} historical bytes"
        )
        for level in range(1, len(self.TA) + 1):
            prev_td = self.TD[level - 2] if level >= 2 else None
            protocol = None if prev_td is None else prev_td & 0x0F
            for name, kind in (("TA", self.TA), ("TB", self.TB), ("TC", self.TC),
                               ("TD", self.TD)):
                value = kind[level - 1]
                if value is None:
                    continue
                text = self._meaning(name, level, value, protocol)
                lines.append(f"{name}({level}) = 0x{value:02X} --> {text}")
        if self.historical:
            printable = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in self.historical)
            lines.append(
                f"Historical bytes ({len(self.historical)}): {_hex(self.historical)} "
                f"\"{printable}\""
            )
        else:
            lines.append("No historical bytes")
        if self.TCK is None:
            lines.append("No TCK (only T=0 offered)")
        else:
            lines.append(
                f"TCK = 0x{self.TCK:02X} --> {'correct' if self.tck_ok else 'WRONG'} checksum"
            )
        lines.append(
            "Protocols offered: " + ", ".join(f"T={t}" for t in self.protocols)
            + (f"; specific mode T={self.specific_protocol}" if self.specific_mode else "")
        )
        return lines

    def _meaning(self, name: str, level: int, value: int, protocol: int | None) -> str:
        if name == "TD":
            nxt = [n for bit, n in ((0x10, "TA"), (0x20, "TB"), (0x40, "TC"), (0x80, "TD"))
                   if value & bit]
            follow = " ".join(f"{n}{level + 1}" for n in nxt) or "no more interface bytes"
            t = value & 0x0F
            note = " (global interface bytes follow)" if t == 15 else ""
            if t == 15 and level == 1:
                note = " (invalid in TD1)"
            return f"Y{level + 1}: {follow}, protocol T={t}{note}"
        if level == 1:
            return self._global_meaning(name, value)
        if level == 2:
            if name == "TA":
                can = "cannot" if value & 0x80 else "can"
                params = "implicit" if value & 0x10 else "defined by TA1"
                return (f"specific mode, protocol T={value & 0x0F}; card {can} change mode; "
                        f"Fi/Di {params}")
            if name == "TB":
                return f"programming voltage PI2={value} (deprecated)"
            return f"T=0 work waiting integer WI={value}" + (" (reserved)" if value == 0 else "")
        if protocol == 1:
            if name == "TA":
                ok = "" if 0x01 <= value <= 0xFE else " (reserved value)"
                return f"T=1 IFSC={value}{ok}"
            if name == "TB":
                return f"T=1 BWI={value >> 4}, CWI={value & 0x0F}"
            return "T=1 error detection: " + ("CRC" if value & 0x01 else "LRC")
        if protocol == 15:
            if name == "TA":
                classes = ", ".join(t for bit, t in _CLASS_LETTERS if value & 0x3F & bit)
                return f"{_CLOCK_STOP_TEXT[value >> 6]}; classes: {classes or 'none'}"
            if name == "TB":
                return f"SPU use 0x{value:02X}"
        return f"specific to T={protocol}"

    def _global_meaning(self, name: str, value: int) -> str:
        if name == "TA":
            fi = FI_TABLE.get(value >> 4)
            di = DI_TABLE.get(value & 0x0F)
            fmax = FMAX_TABLE.get(value >> 4)
            if fi is None or di is None or fmax is None:
                return f"Fi index {value >> 4}, Di index {value & 0x0F}: reserved (RFU) value"
            rate = round(4_000_000 * di / fi)
            return (f"Fi={fi}, Di={di}, {fi / di:.3f} cycles/etu "
                    f"({rate} bit/s at 4 MHz), f(max)={fmax / 1e6:g} MHz")
        if name == "TB":
            return f"programming voltage (deprecated): PI1={value & 0x1F}, II={(value >> 5) & 3}"
        if value == 255:
            return "extra guard time N=255: minimum guard time (12 etu T=0, 11 etu T=1)"
        return f"extra guard time N={value} etu"


def _truncated(what: str, raw: bytes) -> ATRError:
    return ATRError(f"truncated ATR: {what} missing after {len(raw)} bytes ({_hex(raw)})")


_FIELDS: Final = ("raw", "convention", "T0", "TA", "TB", "TC", "TD", "historical", "TCK",
                  "tck_ok")


def _rebuild(raw: bytes) -> ATR:
    return ATR(raw, check_tck=False)


def parse_atr(raw: bytes, *, check_tck: bool = True) -> ATR:
    """Decode an ATR; ``ATRError`` when it is malformed.

    TCK is required when any TD offers a protocol other than T=0; a single extra byte
    after an ATR offering only T=0 is read as a (non-required) TCK and checked too.
    With ``check_tck=False`` a wrong TCK gives ``tck_ok=False`` instead of an error.
    ``ATR(raw, check_tck=...)`` is the same call.
    """
    return ATR(raw, check_tck=check_tck)


_Decoded = tuple[
    bytes,
    Literal["direct", "inverse"],
    int,
    tuple[int | None, ...],
    tuple[int | None, ...],
    tuple[int | None, ...],
    tuple[int | None, ...],
    bytes,
    int | None,
    bool,
]


def _decode(raw: bytes, check_tck: bool) -> _Decoded:
    """The ATR's fields in ``_FIELDS`` order (see ``parse_atr``)."""
    raw = _as_bytes(raw, "the ATR")
    if not raw:
        raise ATRError("empty ATR")
    if len(raw) > MAX_ATR_LENGTH:
        raise ATRError(f"ATR of {len(raw)} bytes is longer than {MAX_ATR_LENGTH}")
    convention = _TS_CONVENTION.get(raw[0])
    if convention is None:
        raise ATRError(f"TS 0x{raw[0]:02X} is neither 0x3B (direct) nor 0x3F (inverse)")
    if len(raw) < 2:
        raise _truncated("T0", raw)
    t0 = raw[1]
    pos = 2
    y = t0 >> 4
    ta: list[int | None] = []
    tb: list[int | None] = []
    tc: list[int | None] = []
    td: list[int | None] = []
    tck_required = False
    level = 1
    # Each level with a further TD consumes at least that byte: bounded by len(raw).
    while True:
        values: list[int | None] = []
        for bit, name in ((0x1, "TA"), (0x2, "TB"), (0x4, "TC"), (0x8, "TD")):
            if y & bit:
                if pos >= len(raw):
                    raise _truncated(f"{name}{level}", raw)
                values.append(raw[pos])
                pos += 1
            else:
                values.append(None)
        ta.append(values[0])
        tb.append(values[1])
        tc.append(values[2])
        td.append(values[3])
        next_td = values[3]
        if next_td is None:
            break
        if next_td & 0x0F != 0:
            tck_required = True
        y = next_td >> 4
        level += 1
    k = t0 & 0x0F
    if pos + k > len(raw):
        raise _truncated(f"{k - (len(raw) - pos)} of {k} historical bytes", raw)
    historical = raw[pos : pos + k]
    pos += k
    tck: int | None = None
    if tck_required:
        if pos >= len(raw):
            raise _truncated("TCK", raw)
        tck = raw[pos]
        pos += 1
    elif len(raw) - pos == 1:
        tck = raw[pos]
        pos += 1
    if pos < len(raw):
        raise ATRError(
            f"{len(raw) - pos} unexpected bytes after the end of the ATR: {_hex(raw[pos:])}"
        )
    tck_ok = True
    if tck is not None:
        check = 0
        for byte in raw[1:]:
            check ^= byte
        tck_ok = check == 0
        if not tck_ok and check_tck:
            expected = check ^ tck
            raise ATRError(f"wrong TCK 0x{tck:02X}, expected 0x{expected:02X} ({_hex(raw)})")
    return (raw, convention, t0, tuple(ta), tuple(tb), tuple(tc), tuple(td), historical, tck,
            tck_ok)
