"""Which bytes of a PC_to_RDR frame are PIN material, so that a trace never holds them.

The rule is "decide from what the frame is, and when in doubt mask":

* a command APDU whose INS is VERIFY (20, 21), CHANGE REFERENCE DATA (24), RESET RETRY
  COUNTER (2C) or ENVELOPE (C2, C3: it may wrap any of them) has its data masked, whatever
  the state says; the header stays readable;
* the PIN structure and APDU template of PC_to_RDR_Secure are masked whole;
* a piece of a command split over several frames (a T=1 I-block after the first, an
  extended-APDU piece with wLevelParameter 2 or 3) carries no header to judge it by: it is
  masked whole unless the start of the same command was seen, was not a PIN command, and
  nothing went wrong since;
* a T=1 block whose information field is masked has its EDC masked too (an LRC or CRC
  would give the PIN away).

The only memory kept per (reader, slot) is what chain is in progress (:class:`MaskState`).
Anything that may break a chain -- a failed reply, a reply for another bSeq, a command
left without a reply, ABORT, a T=1 RESYNCH or ABORT request, a power change, a card
inserted or removed, an interrupt about the slot -- turns it to "unknown", and unknown
means mask. Only a power-on that the reader answered, or the card's answer to a whole
command, makes the slot "idle" again. A trace that starts in the middle of a session
starts unknown: its first T=1 command is masked whole unless it is a PIN command (whose
header is then shown).
"""

from __future__ import annotations

from ccid.constants import CommandStatus, MessageType

__all__ = ["MASK_INS", "PIN_INS", "MaskState", "Masker", "mask_spans"]

#: ISO 7816-4 instructions whose command data is a PIN (or PUK + new PIN); 21 is VERIFY
#: with BER-TLV data.
PIN_INS = frozenset({0x20, 0x21, 0x24, 0x2C})
#: Every instruction whose data is masked: PIN commands and ENVELOPE (C2, C3), whose data is
#: a piece of another command, maybe one of those.
MASK_INS = PIN_INS | frozenset({0xC2, 0xC3})

Spans = tuple[tuple[int, int], ...]

# What chain of frames is in progress on a slot (for T=1 blocks, and for wLevelParameter).
IDLE = 0  # none: the next frame starts a command
PIN = 1  # the command being chained is (or may be) a PIN command
PLAIN = 2  # the command being chained was seen to start, and is not a PIN command
UNKNOWN = 3  # something may have broken a chain: mask what cannot be judged alone

_XFR = MessageType.PC_to_RDR_XfrBlock
_SECURE = MessageType.PC_to_RDR_Secure
_POWER_ON = MessageType.PC_to_RDR_IccPowerOn


class MaskState:
    """What masking remembers about one (reader, slot)."""

    __slots__ = ("last_block", "level", "pending", "t1", "t1_command")

    def __init__(self) -> None:
        self.t1 = UNKNOWN
        self.level = UNKNOWN
        self.pending: tuple[int, int] | None = None  # (message type, bSeq) awaiting a reply
        self.t1_command = False  # the pending command is a T=1 block
        # The last T=1 I-block sent (PCB, length, hash of INF) and its spans: a block sent
        # again after an error gets the same treatment as the first time.
        self.last_block: tuple[int, int, int, Spans] | None = None

    def forget(self) -> None:
        """Something may have broken a chain: until proven otherwise, mask."""
        self.t1 = UNKNOWN
        self.level = UNKNOWN


def _t1_block(payload: bytes) -> tuple[int, bytes, int] | None:
    """(PCB, INF, EDC size) when ``payload`` is a well-formed T=1 block (valid LRC or CRC)."""
    from ccid.framing import T1BlockError, check_t1_block

    if len(payload) < 4 or payload[2] == 0xFF or len(payload) - 3 - payload[2] not in (1, 2):
        return None
    crc = len(payload) - 3 - payload[2] == 2
    try:
        _, pcb, inf = check_t1_block(payload, crc)
    except T1BlockError:
        return None
    return pcb, bytes(inf), 2 if crc else 1


def _data_offset(apdu: bytes) -> int | None:
    """Offset of the command data in a command APDU (short or extended), None if none."""
    if len(apdu) <= 5:
        return None
    if apdu[4] == 0 and len(apdu) > 7:
        return 7  # extended Lc
    return 5


def _looks_masked(apdu: bytes) -> bool:
    return len(apdu) >= 2 and apdu[1] in MASK_INS


def _consistent_start(inf: bytes, more: bool) -> bool:
    """INF can be the start of a command APDU: its Lc agrees with what the block holds."""
    if len(inf) < 5:
        return len(inf) >= 2
    if inf[4] == 0 and len(inf) >= 7:
        lc, body = int.from_bytes(inf[5:7], "big"), len(inf) - 7
    else:
        lc, body = inf[4], len(inf) - 5
    if more:
        return lc > body
    return body - lc in (0, 1, 2, 3) and lc > 0


class Masker:
    """PIN masking over a stream of frames, one :class:`MaskState` per (reader, slot)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], MaskState] = {}

    def clear(self) -> None:
        self.states.clear()

    def _state(self, reader: str, slot: int) -> MaskState:
        state = self.states.get((reader, slot))
        if state is None:
            state = self.states[(reader, slot)] = MaskState()
        return state

    def _forget_reader(self, reader: str, slots: set[int] | None = None) -> None:
        for (name, slot), state in self.states.items():
            if name == reader and (slots is None or slot in slots):
                state.forget()

    def observe(self, reader: str, direction: str, frame: bytes) -> Spans:
        """Feed one frame; returns the spans of it to mask (commands only)."""
        if direction == "->":
            if len(frame) < 10:
                return ()
            return self._command(self._state(reader, frame[5]), frame)
        if direction == "<-":
            if len(frame) >= 10:
                self._reply(self._state(reader, frame[5]), frame)
        elif direction == "int<-":
            self._interrupt(reader, frame)
        elif direction == "ctrl->" and len(frame) >= 2 and frame[1] == 0x01:
            self._forget_reader(reader)  # class request ABORT
        return ()

    def _interrupt(self, reader: str, msg: bytes) -> None:
        if len(msg) >= 2 and msg[0] == MessageType.RDR_to_PC_NotifySlotChange:
            changed = {i for i in range(4 * (len(msg) - 1))
                       if msg[1 + (2 * i) // 8] >> ((2 * i) % 8 + 1) & 1}
            self._forget_reader(reader, changed)
        elif len(msg) >= 2 and msg[0] == MessageType.RDR_to_PC_HardwareError:
            self._forget_reader(reader, {msg[1]})
        else:
            self._forget_reader(reader)

    def _reply(self, state: MaskState, frame: bytes) -> None:
        status = frame[7]
        if status >> 6 == CommandStatus.TIME_EXTENSION:
            return
        pending, state.pending = state.pending, None
        t1_command, state.t1_command = state.t1_command, False
        if pending is None or pending[1] != frame[6] or status >> 6 != CommandStatus.OK \
                or status & 0x03:
            state.forget()  # a failure, a reply out of turn, or no active card
            return
        if pending[0] == _POWER_ON:
            state.t1 = state.level = IDLE  # a fresh ATR: no command can be half sent
            return
        if pending[0] != _XFR:
            return
        if t1_command:
            block = _t1_block(frame[10:])
            if block is not None and block[0] & 0x80 == 0:
                state.t1 = IDLE  # the card answers with an I-block: our command is whole
        if frame[9] in (0x00, 0x02):
            # bChainParameter: the response begins and ends, or ends here. The command
            # pieces (if any) were all taken.
            state.level = IDLE

    def _command(self, state: MaskState, frame: bytes) -> Spans:
        if state.pending is not None:
            state.forget()  # the previous command never got its reply
        state.pending = (frame[0], frame[6])
        state.t1_command = False
        msg = frame[0]
        if msg == _SECURE:
            # bPINOperation stays readable; the PIN structure and template are masked whole.
            return ((11, len(frame)),) if len(frame) > 11 else ()
        if msg != _XFR:
            if msg in (MessageType.PC_to_RDR_Abort, MessageType.PC_to_RDR_IccPowerOff,
                       _POWER_ON):
                state.forget()
            return ()
        spans: list[tuple[int, int]] = []
        payload = frame[10:]
        level = frame[8] | (frame[9] << 8)
        block = _t1_block(payload)
        if block is not None:
            state.t1_command = True
            spans += self._t1(state, block, len(frame))
        spans += self._levelled(state, payload, level, block is not None)
        return _merge(spans)

    def _t1(self, state: MaskState, block: tuple[int, bytes, int], size: int) -> Spans:
        pcb, inf, edc = block
        if pcb & 0x80:  # R-block or S-block
            if pcb & 0xC0 == 0xC0 and pcb & 0x3F in (0x00, 0x02):
                state.forget()  # RESYNCH or ABORT request: the chain is gone
            return ()
        more = bool(pcb & 0x20)
        key = hash(inf)
        last = state.last_block
        if last is not None and last[:3] == (pcb, len(inf), key):
            return last[3]  # sent again: the same answer as the first time
        whole = ((13, size - edc), (size - edc, size))
        head = _data_offset(inf)
        start = () if head is None else ((13 + head, size - edc), (size - edc, size))
        spans: Spans
        if state.t1 == IDLE:
            pin = _looks_masked(inf)
            spans = start if pin else ()
            state.t1 = PIN if pin else PLAIN
        elif state.t1 == PLAIN:
            pin = _looks_masked(inf)
            spans = start if pin else ()
            if pin:
                state.t1 = PIN
        elif state.t1 == PIN:
            spans = whole
        else:  # unknown: only a block that is plainly the start of a PIN command shows more
            shown = _looks_masked(inf) and _consistent_start(inf, more)
            spans = start if shown and start else whole
            if shown:
                state.t1 = PIN
        if not inf:
            spans = ()
        state.last_block = (pcb, len(inf), key, spans)
        return spans

    def _levelled(self, state: MaskState, payload: bytes, level: int, t1: bool) -> Spans:
        size = 10 + len(payload)
        if level in (0x0002, 0x0003):  # a continuation piece of an extended APDU
            return () if state.level == PLAIN or not payload else ((10, size),)
        if level == 0x0010:
            return ()  # an empty piece asking for more of the response
        pin = _looks_masked(payload)
        if level == 0x0001:
            state.level = PIN if pin else PLAIN
        elif not t1:
            state.level = IDLE
        if not pin:
            return ()
        if t1 and not _consistent_start(payload, level == 0x0001):
            return ()  # a T=1 block, not an APDU: judged as a block above
        off = _data_offset(payload)
        return () if off is None else ((10 + off, size),)


def _merge(spans: list[tuple[int, int]]) -> Spans:
    out: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[0] < s[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


def mask_spans(frame: bytes) -> Spans:
    """(start, end) byte spans of ``frame`` (a PC_to_RDR message) that hold PIN material.

    Judged alone, as the first frame of a trace: a piece that may continue an earlier
    command is masked whole.
    """
    if len(frame) < 10:
        return ()
    return Masker().observe("", "->", bytes(frame))
