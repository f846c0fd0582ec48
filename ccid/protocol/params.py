"""Transmission parameters: Fi/Di tables, data-rate choice, PPS, SetParameters, timeouts.

Sans-IO: every function takes numbers or bytes and returns numbers or bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Final

from ccid.errors import ProtocolError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ccid.protocol.atr import ATR

__all__ = [
    "DEFAULT_FI_DI",
    "DI_TABLE",
    "FI_TABLE",
    "FMAX_TABLE",
    "PPSError",
    "T0Parameters",
    "T1Parameters",
    "baud_rate",
    "build_pps_request",
    "check_pps_response",
    "choose_fi_di",
    "effective_fi_di",
    "etu_seconds",
    "parameters_from_atr",
    "t0_wwt_seconds",
    "t1_bwt_seconds",
    "t1_cwt_seconds",
]

#: TA1 value meaning "default": Fi = 372, Di = 1.
DEFAULT_FI_DI: Final = 0x11

# ISO/IEC 7816-3 Table 7: clock rate conversion factor Fi by the high nibble of TA1.
# Indexes missing from the mappings are RFU.
FI_TABLE: Final[Mapping[int, int]] = MappingProxyType({
    0x0: 372, 0x1: 372, 0x2: 558, 0x3: 744, 0x4: 1116, 0x5: 1488, 0x6: 1860,
    0x9: 512, 0xA: 768, 0xB: 1024, 0xC: 1536, 0xD: 2048,
})

#: ISO/IEC 7816-3 Table 7: maximum clock frequency f(max) in Hz, same index as FI_TABLE.
FMAX_TABLE: Final[Mapping[int, int]] = MappingProxyType({
    0x0: 4_000_000, 0x1: 5_000_000, 0x2: 6_000_000, 0x3: 8_000_000, 0x4: 12_000_000,
    0x5: 16_000_000, 0x6: 20_000_000, 0x9: 5_000_000, 0xA: 7_500_000, 0xB: 10_000_000,
    0xC: 15_000_000, 0xD: 20_000_000,
})

#: ISO/IEC 7816-3 Table 8: baud rate adjustment factor Di by the low nibble of TA1.
DI_TABLE: Final[Mapping[int, int]] = MappingProxyType({
    0x1: 1, 0x2: 2, 0x3: 4, 0x4: 8, 0x5: 16, 0x6: 32, 0x7: 64, 0x8: 12, 0x9: 20,
})


class PPSError(ProtocolError):
    """A PPS response is malformed or does not accept our request (ISO/IEC 7816-3 9.3)."""


# --- data rates ------------------------------------------------------------------------


def baud_rate(fi: int, di: int, clock_khz: int) -> int:
    """Data rate in bit/s for factors ``fi`` (e.g. 372) and ``di`` (e.g. 1), rounded."""
    if fi <= 0 or di <= 0 or clock_khz <= 0:
        raise UsageError(f"baud_rate needs positive values, got Fi={fi} Di={di} f={clock_khz} kHz")
    # Integer rounding to nearest, as readers print their GET_DATA_RATES lists.
    return (2 * di * clock_khz * 1000 + fi) // (2 * fi)


def _factors(fi_di: int) -> tuple[int, int] | None:
    """(Fi, Di) of a TA1-style byte, None when either nibble is RFU."""
    fi = FI_TABLE.get(fi_di >> 4)
    di = DI_TABLE.get(fi_di & 0x0F)
    if fi is None or di is None:
        return None
    return fi, di


def _candidates(ta1: int) -> list[int]:
    """TA1 first, then the same Fi with every smaller Di (largest first), then 0x11."""
    out: list[int] = []
    factors = _factors(ta1)
    if factors is not None:
        fi_index = ta1 >> 4
        card_di = factors[1]
        out.append(ta1)
        smaller = sorted(
            ((di, index) for index, di in DI_TABLE.items() if di < card_di), reverse=True
        )
        out.extend((fi_index << 4) | index for _, index in smaller)
    if DEFAULT_FI_DI not in out:
        out.append(DEFAULT_FI_DI)
    return out


def choose_fi_di(
    atr: ATR, *, clock_khz: int, data_rates: Sequence[int], max_data_rate: int
) -> tuple[int, int]:
    """Pick the fastest Fi/Di both the card and the reader support.

    Returns ``(fi_di, bps)``: the TA1-style byte ``Fi index << 4 | Di index`` and its rate.

    Rule, kept simple on purpose:

    * candidates, in order: the card's TA1; then the same Fi with each smaller Di, largest
      first (a card that handles Di handles any smaller Di at the same Fi); then 0x11;
    * a candidate other than 0x11 is skipped when the reader clock exceeds that Fi's f(max);
    * if the reader gave a GET_DATA_RATES list (``data_rates`` non-empty), the candidate's
      rate at ``clock_khz`` must equal a listed rate within ±2 bit/s (readers round);
      otherwise it must not exceed ``max_data_rate`` (dwMaxDataRate; 0 means no limit);
    * 0x11 is the answer when nothing faster fits (a candidate no faster than 0x11 stops
      the search): every card and reader must support it.

    Specific mode (TA2 present) is the caller's business: there the card uses TA1 as is.
    """
    if clock_khz <= 0:
        raise UsageError(f"clock_khz must be positive, got {clock_khz}")
    default_rate = baud_rate(372, 1, clock_khz)
    for candidate in _candidates(atr.fi_di_index):
        factors = _factors(candidate)
        if factors is None:  # pragma: no cover - _candidates only yields valid pairs
            continue
        rate = baud_rate(factors[0], factors[1], clock_khz)
        if candidate == DEFAULT_FI_DI or rate <= default_rate:
            return DEFAULT_FI_DI, default_rate
        if clock_khz * 1000 > FMAX_TABLE[candidate >> 4]:
            continue
        if data_rates:
            if any(abs(rate - listed) <= 2 for listed in data_rates):
                return candidate, rate
        elif max_data_rate <= 0 or rate <= max_data_rate:
            return candidate, rate
    # _candidates always ends with DEFAULT_FI_DI, which returns above.
    raise AssertionError("unreachable")  # pragma: no cover


# --- PPS -------------------------------------------------------------------------------

_PPS1_PRESENT = 0x10
_PPS2_PRESENT = 0x20
_PPS3_PRESENT = 0x40


def _xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def build_pps_request(protocol: int, fi_di: int | None) -> bytes:
    """PPSS PPS0 [PPS1] PCK asking for ``protocol`` and, if given, the TA1-style ``fi_di``."""
    if not 0 <= protocol <= 14:
        raise UsageError(f"PPS protocol must be 0..14, got {protocol}")
    request = bytearray([0xFF, protocol])
    if fi_di is not None:
        if not 0 <= fi_di <= 0xFF:
            raise UsageError(f"PPS1 must be a byte, got {fi_di}")
        request[1] |= _PPS1_PRESENT
        request.append(fi_di)
    request.append(_xor(bytes(request)))
    return bytes(request)


def _split_pps(message: bytes, who: str) -> tuple[int, dict[int, int]]:
    """(PPS0, {1: PPS1, 2: PPS2, 3: PPS3}) of a well-formed PPS message."""
    if len(message) < 3:
        raise PPSError(f"PPS {who} of {len(message)} bytes is too short")
    if message[0] != 0xFF:
        raise PPSError(f"PPS {who} starts with 0x{message[0]:02X}, not PPSS 0xFF")
    pps0 = message[1]
    if pps0 & 0x80:
        raise PPSError(f"PPS {who}: PPS0 0x{pps0:02X} sets the reserved bit 8")
    present = [n for n, bit in ((1, _PPS1_PRESENT), (2, _PPS2_PRESENT), (3, _PPS3_PRESENT))
               if pps0 & bit]
    expected = 3 + len(present)
    if len(message) != expected:
        raise PPSError(
            f"PPS {who} is {len(message)} bytes, PPS0 0x{pps0:02X} announces {expected}"
        )
    if _xor(message) != 0:
        raise PPSError(f"PPS {who} has a wrong PCK 0x{message[-1]:02X}")
    return pps0, {n: message[2 + i] for i, n in enumerate(present)}


def check_pps_response(request: bytes, response: bytes) -> int | None:
    """Check the card's PPS answer to ``request``; return the negotiated TA1-style byte.

    ``None`` means the card answered without PPS1: it keeps the default Fd/Dd (0x11).
    Raises PPSError when the answer is malformed or refuses the request (ISO/IEC 7816-3
    9.3: PPSS and the protocol echoed, PPS1 either echoed or absent, PPS2/PPS3 echoed or
    absent, nothing the request did not ask for, a correct PCK).
    """
    try:
        req0, req = _split_pps(request, "request")
    except PPSError as exc:
        raise UsageError(f"not a valid PPS request: {exc.message}") from None
    resp0, resp = _split_pps(response, "response")
    if (resp0 & 0x0F) != (req0 & 0x0F):
        raise PPSError(
            f"card answered PPS for T={resp0 & 0x0F}, requested T={req0 & 0x0F}"
        )
    for n, value in resp.items():
        if n not in req:
            raise PPSError(f"card answered PPS{n} that was not requested")
        if value != req[n]:
            raise PPSError(
                f"card answered PPS{n}=0x{value:02X}, requested 0x{req[n]:02X}"
            )
    return resp.get(1)


# --- SetParameters structures ----------------------------------------------------------


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise UsageError(f"{name} must be a byte, got {value}")


@dataclass(frozen=True, slots=True)
class T0Parameters:
    """abProtocolDataStructure of PC_to_RDR_SetParameters for T=0 (5 bytes)."""

    bmFindexDindex: int = DEFAULT_FI_DI
    bmTCCKST0: int = 0x00
    bGuardTimeT0: int = 0x00
    bWaitingIntegerT0: int = 0x0A
    bClockStop: int = 0x00

    SIZE: ClassVar[int] = 5
    protocol: ClassVar[int] = 0

    def __post_init__(self) -> None:
        for name in ("bmFindexDindex", "bmTCCKST0", "bGuardTimeT0", "bWaitingIntegerT0",
                     "bClockStop"):
            _check_byte(name, getattr(self, name))

    def to_bytes(self) -> bytes:
        """The 5 bytes sent to the reader."""
        return bytes([self.bmFindexDindex, self.bmTCCKST0, self.bGuardTimeT0,
                      self.bWaitingIntegerT0, self.bClockStop])

    @classmethod
    def from_bytes(cls, data: bytes) -> T0Parameters:
        """Parse the 5 bytes of a T=0 structure (from RDR_to_PC_Parameters)."""
        if len(data) != cls.SIZE:
            raise ProtocolError(f"T=0 parameters are {len(data)} bytes, expected 5")
        return cls(*data)


@dataclass(frozen=True, slots=True)
class T1Parameters:
    """abProtocolDataStructure of PC_to_RDR_SetParameters for T=1 (7 bytes)."""

    bmFindexDindex: int = DEFAULT_FI_DI
    bmTCCKST1: int = 0x10
    bGuardTimeT1: int = 0x00
    bmWaitingIntegersT1: int = 0x4D
    bClockStop: int = 0x00
    bIFSC: int = 0x20
    bNadValue: int = 0x00

    SIZE: ClassVar[int] = 7
    protocol: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for name in ("bmFindexDindex", "bmTCCKST1", "bGuardTimeT1", "bmWaitingIntegersT1",
                     "bClockStop", "bIFSC", "bNadValue"):
            _check_byte(name, getattr(self, name))

    def to_bytes(self) -> bytes:
        """The 7 bytes sent to the reader."""
        return bytes([self.bmFindexDindex, self.bmTCCKST1, self.bGuardTimeT1,
                      self.bmWaitingIntegersT1, self.bClockStop, self.bIFSC, self.bNadValue])

    @classmethod
    def from_bytes(cls, data: bytes) -> T1Parameters:
        """Parse the 7 bytes of a T=1 structure (from RDR_to_PC_Parameters)."""
        if len(data) != cls.SIZE:
            raise ProtocolError(f"T=1 parameters are {len(data)} bytes, expected 7")
        return cls(*data)


def effective_fi_di(atr: ATR, fi_di: int | None) -> int:
    """The Fi/Di byte in force: ``fi_di`` if given, else what the card uses without PPS.

    Without PPS the card runs at 0x11, except in specific mode with explicit parameters
    (TA2 present, bit 5 clear) where it already runs at TA1.
    """
    if fi_di is not None:
        if not 0 <= fi_di <= 0xFF:
            raise UsageError(f"fi_di must be a byte, got {fi_di}")
        return fi_di
    if atr.specific_mode and not atr.implicit_params:
        return atr.fi_di_index
    return DEFAULT_FI_DI


def parameters_from_atr(atr: ATR, protocol: int, fi_di: int | None) -> T0Parameters | T1Parameters:
    """SetParameters structure for ``protocol`` from the ATR and the negotiated Fi/Di.

    ``fi_di`` is what PPS settled (``None``: no PPS, see ``effective_fi_di``).
    """
    value = effective_fi_di(atr, fi_di)
    inverse = atr.convention == "inverse"
    guard = atr.guard_time_N
    clock_stop = atr.clock_stop if atr.clock_stop is not None else 0
    if protocol == 0:
        return T0Parameters(
            bmFindexDindex=value,
            bmTCCKST0=0x02 if inverse else 0x00,
            bGuardTimeT0=guard,
            bWaitingIntegerT0=atr.wi,
            bClockStop=clock_stop,
        )
    if protocol == 1:
        return T1Parameters(
            bmFindexDindex=value,
            bmTCCKST1=0x10 | (0x01 if atr.edc == "crc" else 0) | (0x02 if inverse else 0),
            bGuardTimeT1=guard,
            bmWaitingIntegersT1=((atr.bwi & 0x0F) << 4) | (atr.cwi & 0x0F),
            bClockStop=clock_stop,
            bIFSC=atr.ifsc,
            bNadValue=0,
        )
    raise UsageError(f"SetParameters exists for T=0 and T=1 only, not T={protocol}")


# --- timeouts --------------------------------------------------------------------------

#: Lowest block/work waiting time we ever use: readers add their own latency on top.
MIN_WAIT_SECONDS: Final = 1.0
#: Lowest character waiting time returned (USB round trips dwarf a few etu anyway).
MIN_CWT_SECONDS: Final = 0.01


def _fi_di_factors(fi_di: int) -> tuple[int, int]:
    factors = _factors(fi_di)
    if factors is None:
        raise UsageError(f"Fi/Di byte 0x{fi_di:02X} uses reserved (RFU) values")
    return factors


def _clock_hz(clock_khz: int) -> int:
    if clock_khz <= 0:
        raise UsageError(f"clock_khz must be positive, got {clock_khz}")
    return clock_khz * 1000


def etu_seconds(fi_di: int, clock_khz: int) -> float:
    """Duration of one elementary time unit: Fi / (Di * f)."""
    fi, di = _fi_di_factors(fi_di)
    return fi / (di * _clock_hz(clock_khz))


def t0_wwt_seconds(atr: ATR, clock_khz: int, fi_di: int | None = None,
                   *, floor: float = MIN_WAIT_SECONDS) -> float:
    """T=0 work waiting time: WWT = 960 * WI * Fi / f, never below ``floor`` (1 s)."""
    fi, _ = _fi_di_factors(effective_fi_di(atr, fi_di))
    return max(floor, 960 * atr.wi * fi / _clock_hz(clock_khz))


def t1_bwt_seconds(atr: ATR, clock_khz: int, fi_di: int | None = None,
                   *, floor: float = MIN_WAIT_SECONDS) -> float:
    """T=1 block waiting time: 11 etu + 2^BWI * 960 * 372 / f, never below ``floor`` (1 s)."""
    etu = etu_seconds(effective_fi_di(atr, fi_di), clock_khz)
    bwi = min(atr.bwi, 9)  # BWI 10..15 is RFU; cap rather than wait for hours
    return max(floor, 11 * etu + (1 << bwi) * 960 * 372 / _clock_hz(clock_khz))


def t1_cwt_seconds(atr: ATR, clock_khz: int, fi_di: int | None = None,
                   *, floor: float = MIN_CWT_SECONDS) -> float:
    """T=1 character waiting time: (11 + 2^CWI) etu, never below ``floor`` (10 ms)."""
    etu = etu_seconds(effective_fi_di(atr, fi_di), clock_khz)
    return max(floor, (11 + (1 << atr.cwi)) * etu)
