"""What the virtual reader keeps per slot and per scheduled reply, the ATR facts it acts on,
and the signals its model raises to the USB side (``ccid.testing.backend``).

Shared by the reader (``ccid.testing.reader``), its command handlers
(``ccid.testing.commands``), the pinpad (``ccid.testing.pinpad``), the clock model
(``ccid.testing.clock``) and the faults (``ccid.testing.faults``); it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VOLTAGE_BIT",
    "ATRInfo",
    "Pending",
    "SlotState",
    "StallNow",
    "UnplugAfter",
    "UnplugNow",
    "parse_atr",
]

VOLTAGE_BIT = {1: 0x01, 2: 0x02, 3: 0x04}  # bPowerSelect -> bVoltageSupport bit


class UnplugNow(Exception):
    """Raised inside the model: the device must vanish before the write completes."""


class UnplugAfter(Exception):
    """Raised inside the model: the device vanishes once the command ran."""


class StallNow(Exception):
    """Raised inside the model: the bulk-OUT endpoint halts on this write."""


@dataclass(frozen=True, slots=True)
class ATRInfo:
    ta1: int | None
    specific: bool  # TA2 present: specific mode, no PPS
    specific_can_change: bool
    protocols: tuple[int, ...]
    t1_ifsc: int
    t1_bwi_cwi: int
    t1_crc: bool


def parse_atr(atr: bytes) -> ATRInfo:
    """The few ATR facts a reader acts on (no TCK check: the reader does not care)."""
    ta1: int | None = None
    specific = can_change = False
    protocols: list[int] = []
    ifsc, bwi_cwi, crc = 0x20, 0x4D, False
    if len(atr) < 2:
        return ATRInfo(None, False, False, (0,), ifsc, bwi_cwi, crc)
    y = atr[1] >> 4
    pos, i, t_current = 2, 1, 0
    while True:
        ta = tb = tc = td = None
        for bit in (1, 2, 4, 8):
            if y & bit:
                if pos >= len(atr):
                    y = 0
                    break
                value = atr[pos]
                pos += 1
                if bit == 1:
                    ta = value
                elif bit == 2:
                    tb = value
                elif bit == 4:
                    tc = value
                else:
                    td = value
        if i == 1 and ta is not None:
            ta1 = ta
        if i == 2 and ta is not None:
            specific = True
            can_change = not (ta & 0x80)
            protocols.append(ta & 0x0F)
        if i >= 3 and t_current == 1:
            if ta is not None:
                ifsc = ta
            if tb is not None:
                bwi_cwi = tb
            if tc is not None:
                crc = bool(tc & 1)
        if td is None:
            break
        t_current = td & 0x0F
        if t_current not in protocols and t_current in (0, 1):
            protocols.append(t_current)
        y = td >> 4
        i += 1
    return ATRInfo(ta1, specific, can_change, tuple(protocols) or (0,), ifsc, bwi_cwi, crc)


@dataclass(slots=True)
class SlotState:
    index: int
    card: Any = None
    active: bool = False
    clock_stopped: bool = False
    protocol: int = 0
    fidi: int = 0x11  # the reader's side of the link
    card_fidi: int = 0x11  # the card's side
    tcckst: int = 0x00
    guard: int = 0x00
    waiting: int = 0x0A
    clock_stop: int = 0x00
    ifsc: int = 0x20
    nad: int = 0x00
    pps_window: bool = False
    clock_khz: int = 0
    data_rate: int = 0
    cmd_chain: bytearray | None = None
    resp_chain: list[bytes] = field(default_factory=list)
    abort_seq: int | None = None  # ABORT class request received for this bSeq
    held_abort: int | None = None  # PC_to_RDR_Abort waiting for its class request
    t0_get_response: int = 0x00
    t0_envelope: int = 0x00


@dataclass(slots=True)
class Pending:
    due: float
    order: int
    slot: int
    seq: int
    cmd: int
    frame: bytes | None  # None: never answered
    final: bool = True
    open_ended: bool = False  # a piece of a transfer that goes on: no ZLP after it
