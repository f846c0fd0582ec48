"""Negotiation as a plan: what to send a card after its ATR, decided without I/O.

Power-up runs in two decisions around at most one exchange with the card:

1. :func:`plan_protocol` (ATR + reader descriptor + data rates + quirks) chooses the
   protocol and the Fi/Di, and says whether the host must send a PPS (``plan.pps``);
2. the session sends that PPS (if any) and learns the Fi/Di in force (``check_pps_response``
   says what the card agreed; a failed PPS resets the card and leaves ``None``);
3. :func:`plan_settings` turns the plan and that Fi/Di into the SetParameters structure
   (and whether to send it), the host's wait for card answers and the T=1 IFSD steps.

Quirks come in as objects with any of the hooks ``max_data_rate``, ``skip_pps``,
``adjust_bwi``, ``extra_card_time``, ``negotiate_ifsd``, ``tolerate_set_parameters_failure``
(``ccid.quirks.Quirk`` has them all); those hooks are pure functions of their arguments,
so calling them keeps the plan pure. This module never imports the quirks or the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ccid.constants import ExchangeLevel, Features
from ccid.descriptor import CCIDDescriptor
from ccid.errors import CardError, UsageError
from ccid.protocol.atr import ATR
from ccid.protocol.params import (
    DEFAULT_FI_DI,
    build_pps_request,
    check_pps_response,
    choose_fi_di,
    parameters_from_atr,
    t0_wwt_seconds,
    t1_bwt_seconds,
)

__all__ = [
    "CARD_WAIT_FLOOR",
    "DEFAULT_IFSD",
    "ProtocolPlan",
    "Settings",
    "card_wait",
    "plan_protocol",
    "plan_settings",
    "pps_outcome",
]

#: Shortest host-side wait for one card answer: readers add their own latency.
CARD_WAIT_FLOOR: Final = 3.0
#: The T=1 IFSD in force until an S(IFS request) changes it (ISO/IEC 7816-3 11.4.2).
DEFAULT_IFSD: Final = 32
#: Clock assumed when the descriptor's dwDefaultClock is 0 (kHz).
_FALLBACK_CLOCK_KHZ: Final = 4000
_AUTO_PPS = Features.AUTO_PPS_CURRENT


@dataclass(frozen=True, slots=True)
class ProtocolPlan:
    """What to do after the ATR, before SetParameters."""

    #: 0 or 1.
    protocol: int
    #: dwDefaultClock (kHz) the rates and waits are computed at.
    clock_khz: int
    #: The Fi/Di in force when no PPS is sent: None for the card's own (0x11, or TA1 in
    #: specific mode), else the value the reader negotiates itself (AUTO_PPS readers).
    fi_di: int | None
    #: The PPS request the host sends at TPDU level, or None.
    pps: bytes | None = None
    #: The Fi/Di that PPS proposes (for messages); None without PPS.
    pps_fi_di: int | None = None
    #: The reader negotiates the parameters with the card itself (dwFeatures
    #: AUTO_PPS_PROPRIETARY): it gets neither a PPS nor SetParameters.
    by_reader: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    """The parameters the session installs once the Fi/Di is known."""

    protocol: int
    #: Fi/Di in force (None: the card's own, see ``ccid.protocol.params.effective_fi_di``).
    fi_di: int | None
    #: The SetParameters structure (abProtocolDataStructure).
    parameters: bytes
    #: False when the reader configures itself from the ATR and no PPS changed anything,
    #: or negotiates the parameters itself.
    send_parameters: bool
    #: A failed SetParameters is only a warning (a quirk says the reader refuses it).
    tolerate_failure: bool
    #: The T=1 BWI written into ``parameters`` (after quirks); the ATR's for T=0.
    bwi: int
    #: Host-side wait for one card answer, seconds.
    wait: float
    #: T=1: IFSD the protocol object starts with.
    ifsd: int = DEFAULT_IFSD
    #: T=1 at TPDU level: the IFSD to ask for with S(IFS request), or None.
    ifs_request: int | None = None


def _hooks(quirks: Sequence[Any], name: str) -> list[Any]:
    return [q for q in quirks if hasattr(q, name)]


def _mismatch(message: str, reader: str | None, slot: int | None) -> CardError:
    return CardError(message, reader=reader, slot=slot, pcsc_code="SCARD_E_PROTO_MISMATCH")


def choose_protocol(atr: ATR, descriptor: CCIDDescriptor, wanted: int | None, *,
                    reader: str | None = None, slot: int | None = None) -> int:
    """T=0 or T=1 for this card on this reader (``wanted``: the caller's demand), or
    CardError (SCARD_E_PROTO_MISMATCH) naming why none fits."""
    reader_protocols = [p for p in (0, 1) if descriptor.dwProtocols & (1 << p)] or [0, 1]
    offered = [p for p in atr.protocols if p in (0, 1)]
    if not offered:
        raise _mismatch(f"the card offers no T=0/T=1 protocol (ATR {atr})", reader, slot)
    if atr.specific_mode:
        protocol = atr.specific_protocol if atr.specific_protocol in (0, 1) else offered[0]
        if wanted is not None and wanted != protocol:
            raise _mismatch(f"the card is in specific mode T={protocol}; T={wanted} is not "
                            "possible", reader, slot)
    elif wanted is not None:
        if wanted not in offered:
            raise _mismatch(f"the card does not offer T={wanted} (ATR {atr})", reader, slot)
        protocol = wanted
    else:
        usable = [p for p in offered if p in reader_protocols]
        protocol = usable[0] if usable else offered[0]
    if protocol not in reader_protocols:
        raise _mismatch(f"the reader does not support T={protocol}", reader, slot)
    return protocol


def plan_protocol(atr: ATR, descriptor: CCIDDescriptor, *, wanted: int | None = None,
                  data_rates: Sequence[int] = (), slot: int = 0,
                  quirks: Sequence[Any] = (), reader: str | None = None) -> ProtocolPlan:
    """Protocol, Fi/Di and PPS-or-not for ``atr`` on a reader with ``descriptor`` (after
    its quirks) whose GET_DATA_RATES for ``slot`` gave ``data_rates``."""
    protocol = choose_protocol(atr, descriptor, wanted, reader=reader, slot=slot)
    clock = descriptor.dwDefaultClock or _FALLBACK_CLOCK_KHZ
    if descriptor.dwFeatures & Features.AUTO_PPS_PROPRIETARY:
        # "Automatic parameters negotiation made by the CCID" (CCID 5.1): the reader picks
        # the parameters with its own algorithm. libccid sends it no PPS and no
        # SetParameters (a Fi/Di of ours could contradict what the reader settled).
        return ProtocolPlan(protocol, clock, None, by_reader=True)
    if atr.specific_mode:
        return ProtocolPlan(protocol, clock, None)  # the card already runs at its parameters
    max_rate = descriptor.dwMaxDataRate
    for quirk in _hooks(quirks, "max_data_rate"):
        max_rate = int(quirk.max_data_rate(max_rate, slot=slot))
    best, _bps = choose_fi_di(atr, clock_khz=clock, data_rates=data_rates,
                              max_data_rate=max_rate)
    auto_pps = descriptor.dwFeatures & _AUTO_PPS
    skip = False
    for quirk in _hooks(quirks, "skip_pps"):
        skip = bool(quirk.skip_pps(skip))
    tpdu = descriptor.exchange_level in (ExchangeLevel.TPDU, ExchangeLevel.CHARACTER)
    if skip and tpdu and not auto_pps and protocol != atr.first_protocol:
        # Only a PPS selects another protocol than the card's first one (ISO/IEC 7816-3
        # 9.1); this reader must not get one.
        names = ", ".join(q.id for q in _hooks(quirks, "skip_pps") if q.skip_pps(False))
        raise _mismatch(
            f"T={protocol} needs a PPS (the card starts in T={atr.first_protocol}) and this "
            f"reader cannot send one (quirk {names}); connect with T={atr.first_protocol}",
            reader, slot)
    if auto_pps:
        # AUTO_PPS_CURRENT: the reader makes the PPS from the SetParameters it gets.
        return ProtocolPlan(protocol, clock, best)
    needs_pps = protocol != atr.first_protocol or best != DEFAULT_FI_DI
    if skip or not tpdu or not needs_pps:
        return ProtocolPlan(protocol, clock, None)
    request = build_pps_request(protocol, None if best == DEFAULT_FI_DI else best)
    return ProtocolPlan(protocol, clock, None, request, best)


def pps_outcome(plan: ProtocolPlan, response: bytes) -> int:
    """The Fi/Di in force after the card answered ``plan.pps`` with ``response``; PPSError
    when the answer is malformed or refuses the request."""
    if plan.pps is None:
        raise UsageError("this plan sends no PPS")
    agreed = check_pps_response(plan.pps, response)
    return DEFAULT_FI_DI if agreed is None else agreed


def card_wait(atr: ATR, protocol: int, fi_di: int | None, clock_khz: int, *,
              bwi: int | None = None, extra: float = 0.0) -> float:
    """Host-side wait for one card answer: 1.5 x the card's BWT (T=1) or WWT (T=0) plus a
    second and ``extra`` (quirks), at least ``CARD_WAIT_FLOOR``. ``bwi``: the BWI sent to
    the reader when a quirk raised it above the ATR's."""
    try:
        if protocol == 1:
            wait = t1_bwt_seconds(atr, clock_khz, fi_di)
            if bwi is not None and bwi > atr.bwi:
                grow = (1 << min(bwi, 9)) - (1 << min(atr.bwi, 9))
                wait += grow * 960 * 372 / (clock_khz * 1000.0)
        else:
            wait = t0_wwt_seconds(atr, clock_khz, fi_di)
    except UsageError:  # RFU Fi/Di: keep the floor
        wait = CARD_WAIT_FLOOR
    wait += extra
    return max(CARD_WAIT_FLOOR, wait * 1.5 + 1.0)


def plan_settings(atr: ATR, plan: ProtocolPlan, descriptor: CCIDDescriptor, *,
                  fi_di: int | None, quirks: Sequence[Any] = (), ifsd: int | None = None,
                  raw_atr: bytes | None = None) -> Settings:
    """SetParameters, waits and IFSD once the Fi/Di in force is known.

    ``fi_di``: ``plan.fi_di`` when no PPS was sent, else what the PPS settled (None after
    a failed PPS). ``ifsd``: the caller's wish (None: the reader's most, up to 254).
    ``raw_atr``: the ATR's bytes as the card sent them (quirk hooks get them).
    """
    raw = bytes(atr) if raw_atr is None else bytes(raw_atr)
    protocol = plan.protocol
    structure = bytearray(parameters_from_atr(atr, protocol, fi_di).to_bytes())
    bwi = atr.bwi
    if protocol == 1:
        bwi = structure[3] >> 4
        for quirk in _hooks(quirks, "adjust_bwi"):
            bwi = int(quirk.adjust_bwi(bwi, raw))
        structure[3] = (bwi << 4) | (structure[3] & 0x0F)
    send = not plan.by_reader and (
        not descriptor.dwFeatures & Features.AUTO_CONF_ATR or fi_di is not None)
    tolerate = any(q.tolerate_set_parameters_failure()
                   for q in _hooks(quirks, "tolerate_set_parameters_failure"))
    extra = sum(float(q.extra_card_time(raw)) for q in _hooks(quirks, "extra_card_time"))
    wait = card_wait(atr, protocol, fi_di, plan.clock_khz, bwi=bwi, extra=extra)
    start_ifsd, request = DEFAULT_IFSD, None
    if protocol == 1 and descriptor.exchange_level == ExchangeLevel.TPDU:
        start_ifsd, request = _ifsd_steps(descriptor, quirks, ifsd)
    return Settings(protocol, fi_di, bytes(structure), bool(send), tolerate, bwi, wait,
                    start_ifsd, request)


def _ifsd_steps(descriptor: CCIDDescriptor, quirks: Sequence[Any],
                wish: int | None) -> tuple[int, int | None]:
    """(IFSD to start with, S(IFS request) value or None) at TPDU level."""
    # dwMaxIFSD 0 announces no room beyond the T=1 default: stay at IFSD 32 (a request
    # for IFSD 0 would be invalid, ISO/IEC 7816-3 11.4.2).
    most = min(254, descriptor.dwMaxIFSD or DEFAULT_IFSD)
    ifsd = max(1, min(int(wish or most), most))
    negotiate = not descriptor.dwFeatures & Features.AUTO_IFSD
    for quirk in _hooks(quirks, "negotiate_ifsd"):
        negotiate = bool(quirk.negotiate_ifsd(negotiate))
    if not negotiate:
        return ifsd, None  # the reader told the card itself
    return DEFAULT_IFSD, (ifsd if ifsd != DEFAULT_IFSD else None)
