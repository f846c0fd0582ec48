"""The virtual reader's pinpad: PC_to_RDR_Secure (PIN verify and modify), what its display
shows, how it formats the PIN into the APDU, and the T=1 prologue a TPDU pinpad checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ccid.constants import HEADER_SIZE, ExchangeLevel, MessageType, SlotErrorCode
from ccid.framing import build_t1_block
from ccid.testing.model import SlotState

if TYPE_CHECKING:
    from ccid.testing.reader import VirtualReader

__all__ = [
    "PinEntry",
    "PinStructureLayout",
    "build_pin_apdu",
    "pin_structure_layout",
    "secure",
    "secure_t1",
]

M = MessageType
E = SlotErrorCode


@dataclass(frozen=True, slots=True)
class PinEntry:
    """What the user types on the virtual pinpad (digits as text)."""

    pin: str
    new_pin: str | None = None
    confirm: str | None = None


def secure(reader: VirtualReader, s: SlotState, seq: int, frame: bytes, payload: bytes,
           pin_fault: int | None) -> tuple[bytes, float]:
    """PC_to_RDR_Secure: the user types the PIN, the pinpad sends the APDU to the card."""
    cmd = M.PC_to_RDR_Secure
    if not payload:
        return reader._fail(cmd, s.index, seq, 1), 0.0
    op = payload[0]
    support = reader.descriptor.bPINSupport
    if op not in (0, 1):
        return reader._fail(cmd, s.index, seq, 10), 0.0
    if not support & (1 << op):
        return reader._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
    err = reader._exchange_check(s, cmd, seq)
    if err is not None:
        return err, 0.0
    if pin_fault is not None:
        return reader._fail(cmd, s.index, seq, pin_fault), 0.0
    try:
        layout = pin_structure_layout(payload)
    except ValueError:
        return reader._fail(cmd, s.index, seq, 1), 0.0
    if reader.pin_sizes is not None:
        low, high = reader.pin_sizes
        if not low <= layout.min_digits <= layout.max_digits <= high:
            # bError: offset of wPINMaxExtraDigit in the message (CCID 6.2.6).
            return reader._fail(cmd, s.index, seq, HEADER_SIZE + layout.max_digits_at), 0.0
    prompts = reader.prompts
    reader.displayed.append([
        (prompts[i] if prompts is not None and 0 <= i < len(prompts) else "")
        for i in layout.messages])
    entry = reader.pin_entry
    if entry is None:
        return reader._fail(cmd, s.index, seq, E.PIN_TIMEOUT), 0.0
    typed = [entry.pin] if layout.operation == 0 else [
        *([entry.pin] if payload[9] & 0x02 else []), entry.new_pin or ""]
    if layout.max_digits and any(len(p) < layout.min_digits for p in typed):
        # Too few digits: the pinpad refuses the validation key until the time-out.
        return reader._fail(cmd, s.index, seq, E.PIN_TIMEOUT), 0.0
    try:
        apdu = build_pin_apdu(payload, entry)
    except ValueError:
        return reader._fail(cmd, s.index, seq, 11), 0.0
    delay = float(getattr(s.card, "delay", 0.0) or 0.0)
    s.pps_window = False
    if reader.level == ExchangeLevel.TPDU and s.protocol == 1:
        return secure_t1(reader, s, seq, payload, layout.apdu_at - 3, apdu, delay)
    resp = bytes(s.card.process_apdu(apdu))
    if not resp:
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    return reader._ok(cmd, s, seq, 0, resp), delay

def secure_t1(reader: VirtualReader, s: SlotState, seq: int, payload: bytes, at: int,
              apdu: bytes, delay: float) -> tuple[bytes, float]:
    """TPDU pinpad, T=1 card: the I-block from bTeoPrologue (at ``at``) and the PIN
    APDU goes to the card; its block comes back as is. A prologue that is not one
    whole I-block of this APDU fails with bError = its offset in the message; a wrong
    N(S) is the card's to refuse (its R-block comes back)."""
    cmd = M.PC_to_RDR_Secure
    nad, pcb, length = payload[at : at + 3]
    for offset, bad in ((0, nad != s.nad), (1, bool(pcb & 0xA0)),
                        (2, length != len(apdu))):
        if bad:
            return reader._fail(cmd, s.index, seq, HEADER_SIZE + at + offset), 0.0
    answer = s.card.t1_block(build_t1_block(nad, pcb, apdu, bool(s.tcckst & 0x01)))
    if answer is None:
        return reader._fail(cmd, s.index, seq, E.ICC_MUTE), delay
    return reader._ok(cmd, s, seq, 0, bytes(answer)), delay


# --- PIN block formatting (PC_to_RDR_Secure) ----------------------------------------------


def _put_bits(buf: bytearray, bitpos: int, nbits: int, value: int) -> None:
    for k in range(nbits):
        bit = (value >> (nbits - 1 - k)) & 1
        pos = bitpos + k
        byte, shift = pos // 8, 7 - pos % 8
        if byte >= len(buf):
            raise ValueError("PIN does not fit in the APDU")
        buf[byte] = (buf[byte] & ~(1 << shift)) | (bit << shift)


def _insert_pin(data: bytearray, pin: str, fmt: int, block: int, lenfmt: int,
                offset_bytes: int | None = None) -> None:
    if not pin.isdigit():
        raise ValueError("PIN digits only")
    bytes_units = bool(fmt & 0x80)
    pos = (fmt >> 3) & 0x0F
    right = bool(fmt & 0x04)
    kind = fmt & 0x03
    digit_bits = 4 if kind == 1 else 8
    start = pos * 8 if bytes_units else pos
    if offset_bytes is not None:
        start = offset_bytes * 8
    block_bytes = block & 0x0F
    pin_bits = digit_bits * len(pin)
    if right and block_bytes:
        start += block_bytes * 8 - pin_bits
    for i, ch in enumerate(pin):
        digit = int(ch)
        value = 0x30 + digit if kind == 2 else digit
        _put_bits(data, start + i * digit_bits, digit_bits, value)
    len_bits = (block >> 4) & 0x0F
    if len_bits and offset_bytes is None:
        lpos = (lenfmt & 0x0F) * (8 if lenfmt & 0x10 else 1)
        _put_bits(data, lpos, len_bits, len(pin))


@dataclass(frozen=True, slots=True)
class PinStructureLayout:
    """Where things are in a PIN verify (op 0) or modify (op 1) operation structure."""

    operation: int
    min_digits: int
    max_digits: int
    #: Offset of wPINMaxExtraDigit in the structure (bPINOperation at 0).
    max_digits_at: int
    #: Message indexes the pinpad displays, in order.
    messages: tuple[int, ...]
    #: Offset of the APDU template.
    apdu_at: int


def pin_structure_layout(payload: bytes) -> PinStructureLayout:
    """Read a PC_to_RDR_Secure verify/modify structure (ValueError when malformed)."""
    op = payload[0] if payload else -1
    if op == 0:
        if len(payload) < 15 + 5:
            raise ValueError("PIN verify structure too short")
        count = payload[8]
        messages = () if count == 0 else (payload[11],)
        return PinStructureLayout(0, payload[6], payload[5], 5, messages, 15)
    if op == 1:
        if len(payload) < 15:
            raise ValueError("PIN modify structure too short")
        count = payload[11]
        n = 1 + (count != 0) + (count >= 3)
        shown = 3 if count == 0xFF else min(count, n)
        start = 15 + (n - 1) + 3
        if len(payload) < start + 5:
            raise ValueError("PIN modify structure too short")
        return PinStructureLayout(1, payload[8], payload[7], 7,
                                  tuple(payload[14 : 14 + n][:shown]), start)
    raise ValueError("not a PIN verify or modify structure")


def build_pin_apdu(payload: bytes, entry: PinEntry) -> bytes:
    """The APDU a pinpad sends after the user typed ``entry`` (verify or modify).

    Digits beyond the structure's maximum (wPINMaxExtraDigit) are not taken, as a pinpad
    stops accepting keys there.
    """
    layout = pin_structure_layout(payload)
    limit = layout.max_digits or None
    fmt, block, lenfmt = payload[2], payload[3], payload[4]
    apdu = bytearray(payload[layout.apdu_at:])
    if len(apdu) < 5 or len(apdu) != 5 + apdu[4]:
        raise ValueError("PIN structure has no well-formed APDU")
    if layout.operation == 0:
        data = bytearray(apdu[5:])
        _insert_pin(data, entry.pin[:limit], fmt, block, lenfmt)
        return bytes(apdu[:5] + data)
    if layout.operation == 1:
        off_old, off_new = payload[5], payload[6]
        confirm = payload[9]
        if entry.new_pin is None:
            raise ValueError("PIN modify needs a new PIN")
        if confirm & 0x01 and entry.confirm is not None and entry.confirm != entry.new_pin:
            raise ValueError("new PIN and confirmation differ")
        data = bytearray(apdu[5:])
        if confirm & 0x02:
            _insert_pin(data, entry.pin[:limit], fmt, block, lenfmt, off_old)
        _insert_pin(data, entry.new_pin[:limit], fmt, block, lenfmt, off_new)
        return bytes(apdu[:5] + data)
    raise ValueError("unknown PIN operation")
