"""The virtual reader's clock and data-rate model: which Fi/Di it accepts, the T=1 block
waiting time, PC_to_RDR_IccClock and SetDataRateAndClockFrequency, and how it answers the
GET_DATA_RATES / GET_CLOCK_FREQUENCIES class requests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ccid.constants import MessageType, SlotErrorCode
from ccid.protocol.params import DI_TABLE, FI_TABLE
from ccid.testing.model import SlotState

if TYPE_CHECKING:
    from ccid.testing.reader import VirtualReader

__all__ = [
    "answer_from_dump",
    "answer_payload",
    "bwt_seconds",
    "clock_status",
    "data_rate_supported",
    "fidi_rate",
    "fidi_rate_ok",
    "icc_clock",
    "set_rate_clock",
]

M = MessageType
E = SlotErrorCode


def data_rate_supported(reader: VirtualReader, rate: int, slot: int | None = None) -> bool:
    """See ``VirtualReader.data_rate_supported``."""
    d = reader.descriptor
    rates = reader.data_rates if d.bNumDataRatesSupported else ()
    if slot is not None:
        rates = reader.slot_data_rates.get(slot, rates)
    if rates:
        return any(abs(r - rate) <= 2 for r in rates)
    top = d.dwMaxDataRate or d.dwDataRate
    # dwMaxDataRate is often nominal (ICCD tokens: "9600" at 3.58 MHz is 9,624 bps).
    return rate <= top + max(2, top // 100)


def fidi_rate(reader: VirtualReader, s: SlotState, fidi: int) -> int | None:
    """The bit rate of ``fidi`` at the slot's clock (None: not an ISO Fi/Di)."""
    fi, di = FI_TABLE.get(fidi >> 4), DI_TABLE.get(fidi & 0x0F)
    if fi is None or di is None:
        return None
    clock = s.clock_khz or reader.descriptor.dwDefaultClock
    return round(clock * 1000 * di / fi)


def fidi_rate_ok(reader: VirtualReader, s: SlotState, fidi: int) -> bool:
    """Whether the slot's hardware runs ``fidi`` at its clock."""
    # Fd/Dd (0x11) is the default every reader supports (ISO/IEC 7816-3; CCID dwDataRate
    # declares its rate, often nominally: "9600" at 4 MHz is really 10,753 bps).
    if fidi == 0x11:
        return True
    rate = fidi_rate(reader, s, fidi)
    return rate is not None and data_rate_supported(reader, rate, s.index)


def bwt_seconds(reader: VirtualReader, s: SlotState) -> float:
    """T=1 block waiting time of the slot's parameters (ISO/IEC 7816-3 11.4.3)."""
    clock = (s.clock_khz or reader.descriptor.dwDefaultClock or 4000) * 1000.0
    fi = FI_TABLE.get(s.fidi >> 4, 372)
    di = DI_TABLE.get(s.fidi & 0x0F, 1)
    return 11 * fi / (di * clock) + (1 << (s.waiting >> 4)) * 960 * 372 / clock


def clock_status(s: SlotState) -> int:
    """bClockStatus of a SlotStatus reply."""
    if s.card is None or not s.active:
        return 0
    return 1 if s.clock_stopped else 0


def icc_clock(reader: VirtualReader, s: SlotState, seq: int, frame: bytes, payload: bytes
              ) -> tuple[bytes, float]:
    """PC_to_RDR_IccClock: restart (0) or stop (1) the card's clock."""
    cmd = M.PC_to_RDR_IccClock
    if frame[7] > 1:
        return reader._fail(cmd, s.index, seq, 7), 0.0
    if s.card is None or not s.active:
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), 0.0
    s.clock_stopped = frame[7] == 1
    return reader._ok(cmd, s, seq, clock_status(s)), 0.0


def set_rate_clock(reader: VirtualReader, s: SlotState, seq: int, frame: bytes,
                   payload: bytes) -> tuple[bytes, float]:
    """PC_to_RDR_SetDataRateAndClockFrequency: the nearest clock and rate at or below."""
    cmd = M.PC_to_RDR_SetDataRateAndClockFrequency
    if len(payload) != 8:
        return reader._fail(cmd, s.index, seq, 1), 0.0
    want_clock = int.from_bytes(payload[:4], "little")
    want_rate = int.from_bytes(payload[4:], "little")
    d = reader.descriptor
    if reader.clocks:
        below = [c for c in reader.clocks if c <= want_clock]
        clock = max(below) if below else min(reader.clocks)
    else:
        clock = max(min(want_clock, d.dwMaximumClock or want_clock),
                    min(d.dwDefaultClock, want_clock) or d.dwDefaultClock)
    if reader.data_rates:
        below = [r for r in reader.data_rates if r <= want_rate + 2]
        rate = max(below) if below else min(reader.data_rates)
    else:
        rate = min(want_rate, d.dwMaxDataRate or want_rate)
    s.clock_khz, s.data_rate = clock, rate
    data = clock.to_bytes(4, "little") + rate.to_bytes(4, "little")
    return reader._ok(cmd, s, seq, 0, data), 0.0


def answer_payload(answer: bytes | str | None, values: Sequence[int]) -> bytes | str:
    """A GET_DATA_RATES / GET_CLOCK_FREQUENCIES answer: bytes, or "stall" / "timeout"."""
    if answer is not None:
        return answer
    if not values:
        return "stall"
    return b"".join((v & 0xFFFFFFFF).to_bytes(4, "little") for v in values)


def answer_from_dump(values: Sequence[int], error: str | None, notes: Iterable[str],
                     what: str) -> bytes | str | None:
    """How a dumped reader answered the request: list, odd-sized payload, stall or timeout."""
    for note in notes:
        if note.startswith(f"wrong size for {what}: "):
            return bytes(int(note.rsplit(":", 1)[1]))
    if values:
        return None
    text = (error or "").lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    return "stall"
